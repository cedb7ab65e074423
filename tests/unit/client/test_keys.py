"""The sidecar's API keys in their store, on real SQLite and PostgreSQL: a budget is never overspent however many
jobs hold it at once, payments move from held to spent, the holds of a dead sidecar are given back, revoked
keys are refused, expired ones forbidden, and the rpm window counts the last minute only.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from cocoon.client.keys import KeySpending, KeyStore
from cocoon.errors import BadRequest, BudgetExhausted, Forbidden, PaymentRequired, RateLimited, Unauthorized
from cocoon.store import sqlite_file, utcnow


def later() -> datetime:
    """A hold's expiry well ahead of now: now, not at import (a suite can run longer than any fixed margin)."""
    return utcnow() + timedelta(minutes=10)


@pytest.fixture
async def keys(store_url: str) -> AsyncIterator[KeyStore]:
    store = KeyStore(store_url)
    yield store
    await store.close()


def spending(store: KeyStore) -> KeySpending:
    return KeySpending(store)


async def reserve(store: KeyStore, key_id: str, amount: int, owner: str = "me") -> str:
    return await spending(store).reserve(key_id, "req-1", "m", amount, owner=owner, expires_at=later())


def on_disk(folder: Path) -> bytes:
    """Every byte of the SQLite store in ``folder``: the database file and its write-ahead log."""
    return b"".join(p.read_bytes() for p in folder.iterdir() if p.name.startswith("keys.sqlite3"))


async def test_a_key_is_shown_once_and_kept_only_as_its_sha256(tmp_path: Path) -> None:
    store = KeyStore(f"sqlite:///{tmp_path / 'keys.sqlite3'}")
    try:
        key, secret = await store.create("ci-bot", 10**9)
        assert secret.startswith("ck-") and len(secret) >= 3 + 43  # 32 random bytes, URL-safe base64
        assert secret not in repr(key) and key.hint == secret[:7] + "…"
        assert (await spending(store).authenticate(secret)).id == key.id
    finally:
        await store.close()
    stored = on_disk(tmp_path)
    assert secret.encode() not in stored
    assert hashlib.sha256(secret.encode()).hexdigest().encode() in stored


async def test_a_sidecar_without_keys_leaves_nothing_on_disk(tmp_path: Path) -> None:
    store = KeyStore(f"sqlite:///{tmp_path / 'client' / 'keys.sqlite3'}")
    assert not await store.any_key() and await store.keys() == []
    with pytest.raises(Unauthorized, match="Bearer ck-"):
        await spending(store).authenticate("ck-nothing")
    await store.close()
    assert on_disk(tmp_path) == b"" and not await asyncio.to_thread((tmp_path / "client").exists)


async def test_concurrent_jobs_never_hold_more_than_the_budget(keys: KeyStore) -> None:
    key, _ = await keys.create("app", 1000)

    async def one() -> str | None:
        try:
            return await reserve(keys, key.id, 100)
        except BudgetExhausted:
            return None

    held = await asyncio.gather(*(one() for _ in range(50)))
    assert sum(h is not None for h in held) == 10
    after = await keys.find("app")
    assert (after.reserved, after.spent, after.left) == (1000, 0, 0)


async def test_a_payment_moves_from_held_to_spent_and_the_end_gives_back_the_rest(keys: KeyStore) -> None:
    key, _ = await keys.create("app", 1000)
    hold = await reserve(keys, key.id, 300)
    await spending(keys).spend(key.id, hold, "req-1", "m", 120)
    assert ((k := await keys.find("app")).spent, k.reserved) == (120, 180)
    assert await spending(keys).release(key.id, hold) == 180
    assert await spending(keys).release(key.id, hold) == 0  # once only
    after = await keys.find("app")
    assert (after.spent, after.reserved, after.left) == (120, 0, 880)


async def test_a_refusal_says_what_is_left_and_how_to_raise_it(keys: KeyStore) -> None:
    key, _ = await keys.create("app", 1000)
    await reserve(keys, key.id, 700)
    with pytest.raises(BudgetExhausted, match=r"300 nanoton left.*may cost up to 400.*keys topup app") as refused:
        await reserve(keys, key.id, 400)
    assert (refused.value.status, refused.value.code) == (402, "budget_exhausted")


async def test_holds_of_a_dead_sidecar_or_past_their_expiry_are_released(keys: KeyStore) -> None:
    key, _ = await keys.create("app", 1000)
    await reserve(keys, key.id, 200, owner="dead-sidecar")
    await reserve(keys, key.id, 300, owner="live-sidecar")
    await spending(keys).reserve(key.id, "req-2", "m", 100, owner="live-sidecar", expires_at=utcnow())
    assert (await keys.find("app")).reserved == 600

    assert await spending(keys).sweep(lambda owner: owner == "dead-sidecar") == 2
    assert (await keys.find("app")).reserved == 300


async def test_a_payment_after_its_hold_was_swept_is_still_booked(keys: KeyStore) -> None:
    key, _ = await keys.create("app", 1000)
    hold = await reserve(keys, key.id, 300, owner="gone")
    await spending(keys).sweep(lambda owner: True)
    await spending(keys).spend(key.id, hold, "req-1", "m", 50)
    after = await keys.find("app")
    assert (after.spent, after.reserved) == (50, 0)


async def test_a_revoked_key_is_refused_and_an_expired_one_forbidden(keys: KeyStore) -> None:
    old, old_secret = await keys.create("old", 1000)
    _, brief_secret = await keys.create("brief", 1000, expires_at=utcnow() + timedelta(hours=1))
    await keys.revoke("old")
    with pytest.raises(Unauthorized, match="'old' was revoked"):
        await spending(keys).authenticate(old_secret)
    with pytest.raises(Unauthorized):
        await reserve(keys, old.id, 1)
    assert (await spending(keys).authenticate(brief_secret)).name == "brief"
    with pytest.raises(Forbidden, match="'brief' expired"):
        await spending(keys).authenticate(brief_secret, now=utcnow() + timedelta(hours=2))
    with pytest.raises(Unauthorized, match="no such API key"):
        await spending(keys).authenticate("ck-" + "x" * 43)


async def test_a_key_may_use_only_its_models(keys: KeyStore) -> None:
    key, _ = await keys.create("narrow", 1000, models=["gemma-3-270m"])
    await spending(keys).admit(key.id, "gemma-3-270m")
    with pytest.raises(Forbidden, match="may not use the model 'other'") as refused:
        await spending(keys).admit(key.id, "other")
    assert refused.value.param == "model"


async def test_the_rpm_window_is_the_last_minute(keys: KeyStore) -> None:
    key, _ = await keys.create("slow", 1000, rpm=2)
    start = utcnow()
    await spending(keys).admit(key.id, None, now=start)
    await spending(keys).admit(key.id, None, now=start + timedelta(seconds=1))
    with pytest.raises(RateLimited, match="2 requests a minute") as limited:
        await spending(keys).admit(key.id, None, now=start + timedelta(seconds=2))
    assert limited.value.headers() == {"retry-after": "58"}
    await spending(keys).admit(key.id, None, now=start + timedelta(seconds=60.5))  # the first one left the window
    with pytest.raises(RateLimited):
        await spending(keys).admit(key.id, None, now=start + timedelta(seconds=60.6))


async def test_live_budgets_together_stay_within_the_deposit(keys: KeyStore) -> None:
    a, _ = await keys.create("a", 600, ceiling=1000)
    with pytest.raises(PaymentRequired, match=r"can take 0.0000004 TON more at most"):
        await keys.create("b", 500, ceiling=1000)
    hold = await reserve(keys, a.id, 100)
    await spending(keys).spend(a.id, hold, "req-1", "m", 100)  # the deposit is 100 less, and so is a's promise
    await keys.create("b", 400, ceiling=900)
    await keys.revoke("a")
    await keys.create("c", 500, ceiling=900)  # a revoked key promises nothing
    with pytest.raises(PaymentRequired):
        await keys.top_up("c", 1, ceiling=900)


async def test_a_budget_never_goes_below_what_the_key_spent_and_holds(keys: KeyStore) -> None:
    key, _ = await keys.create("app", 1000)
    hold = await reserve(keys, key.id, 300)
    await spending(keys).spend(key.id, hold, "req-1", "m", 200)
    with pytest.raises(BadRequest, match="no less than"):
        await keys.set_budget("app", 299)
    assert (await keys.set_budget(key.id, 300)).left == 0
    assert (await keys.top_up("app", 50)).budget == 350


async def test_names_are_unique_and_plain(keys: KeyStore) -> None:
    await keys.create("app", 1)
    with pytest.raises(BadRequest, match="exists already"):
        await keys.create("app", 1)
    for bad in ("", "has space", "key_lookalike", "x" * 101):
        with pytest.raises(BadRequest):
            await keys.create(bad, 1)


async def test_usage_is_per_key_model_and_day(keys: KeyStore) -> None:
    a, _ = await keys.create("a", 10**6)
    b, _ = await keys.create("b", 10**6)
    run = spending(keys)
    for key_id, request_id, model, cost in [
        (a.id, "r1", "m1", 10),
        (a.id, "r1", "m1", 5),  # a failover's second payment: one request
        (a.id, "r2", "m2", 7),
        (b.id, "r3", "m1", 1),
    ]:
        hold = await run.reserve(key_id, request_id, model, 100, owner="me", expires_at=later())
        await run.spend(key_id, hold, request_id, model, cost)
        await run.release(key_id, hold)
    today = utcnow().date()
    rows = {(u.key, u.model): (u.day, u.requests, u.cost) for u in await keys.usage(utcnow() - timedelta(days=1))}
    assert rows == {("a", "m1"): (today, 1, 15), ("a", "m2"): (today, 1, 7), ("b", "m1"): (today, 1, 1)}
    assert {u.key for u in await keys.usage(utcnow() - timedelta(days=1), key="b")} == {"b"}
    assert await keys.usage(utcnow() + timedelta(minutes=1)) == []


def test_plain_sqlite_urls_name_their_file(tmp_path: Path) -> None:
    assert sqlite_file(f"sqlite:///{tmp_path}/k.sqlite3") == tmp_path / "k.sqlite3"
    assert sqlite_file("postgresql://db/keys") is None
