"""The proxy's store: SQLite by default, PostgreSQL too (each test runs on both), tables made on start, data kept."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cocoon.errors import ConfigError
from cocoon.proxy.money.ledger import PAID, ChainOperation, Charge, ClientAccount, VoucherRecord, WorkerAccount, as_utc
from cocoon.proxy.store import Store, default_url


def test_plain_database_urls_get_their_async_driver() -> None:
    assert Store("postgresql://u:p@db/cocoon").url == "postgresql+asyncpg://u:p@db/cocoon"
    assert Store("postgres://db/cocoon").url == "postgresql+asyncpg://db/cocoon"
    assert Store("sqlite:////tmp/x.sqlite3").url == "sqlite+aiosqlite:////tmp/x.sqlite3"


def test_an_unknown_database_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="neither SQLite nor PostgreSQL"):
        Store("mysql://db/cocoon")


async def test_what_is_committed_is_there_after_a_reopen(store_url: str, tmp_path: Path) -> None:
    store = Store(store_url)
    await store.start()
    async with store.session() as session:
        session.add(VoucherRecord(kind="client", channel="0:ab", cumulative=10**18, signature=bytes(64)))
        await session.commit()
    await store.close()

    reopened = Store(store_url)
    await reopened.start()
    async with reopened.session() as session:
        (record,) = (await session.scalars(select(VoucherRecord))).all()
    await reopened.close()
    assert (record.channel, record.cumulative) == ("0:ab", 10**18)
    if store_url == default_url(tmp_path / "proxy"):
        assert (tmp_path / "proxy" / "proxy.sqlite3").is_file()


async def test_the_books_keep_amounts_past_32_bits_and_utc_times_on_every_database(store_url: str) -> None:
    ton = 10**9  # nanoton
    big = 5_000_000 * ton  # 5M TON: far past 2^31 nanoton
    store = Store(store_url)
    await store.start()
    async with store.session() as session:
        session.add(ClientAccount(channel="0:c1", payer_key=bytes(32), deposit=big, charged=big - 1, claimed=big // 2))
        session.add(WorkerAccount(channel="0:w1", payout="0:p1", funded=big, vouchered=big, claimed=big))
        session.add(
            Charge(
                receipt_id="rcpt-1", request_id="req-1", client_channel="0:c1", worker_channel="0:w1",
                worker_payout="0:p1", worker_id="w-1", model="m", coefficient=1500, prompt_cost=big,
                cached_cost=0, completion_cost=big, cost=2 * big, worker_share=2 * big - big // 20,
                fee=big // 20, status=PAID, receipt=b"\x00",
            )
        )  # fmt: skip
        session.add(ChainOperation(kind="fund", channel="0:w1", amount=big))
        await session.commit()
    async with store.session() as session:
        account = await session.get(ClientAccount, "0:c1")
        fees = await session.scalar(select(func.coalesce(func.sum(Charge.fee), 0)))
        (charge,) = (await session.scalars(select(Charge))).all()
        (operation,) = (await session.scalars(select(ChainOperation))).all()
    await store.close()
    assert account is not None
    assert (account.deposit, account.charged, account.claimed) == (big, big - 1, big // 2)
    assert (charge.cost, charge.worker_share + charge.fee, int(fees)) == (2 * big, 2 * big, big // 20)
    assert operation.amount == big
    assert abs(as_utc(account.checked_at) - datetime.now(UTC)) < timedelta(minutes=1)
    assert as_utc(charge.created_at) <= datetime.now(UTC)


async def test_a_transaction_run_blocking_keeps_what_it_commits_and_nothing_of_what_failed(store_url: str) -> None:
    store = Store(store_url)
    await store.start()

    def add(session: Session, channel: str, fail: bool) -> str:
        session.add(VoucherRecord(kind="client", channel=channel, cumulative=1, signature=bytes(64)))
        session.flush()
        if fail:
            raise RuntimeError("refused after writing")
        session.commit()
        return threading.current_thread().name

    async with store.writing():
        name = await store.transact(lambda s: add(s, "0:kept", False), write=True)
        with pytest.raises(RuntimeError, match="refused after writing"):
            await store.transact(lambda s: add(s, "0:lost", True), write=True)
    channels = await store.transact(lambda s: list(s.scalars(select(VoucherRecord.channel))), write=False)
    await store.close()
    assert channels == ["0:kept"]
    # A SQLite file runs it in the store's writer thread (one hop); PostgreSQL on the event loop's thread.
    on_sqlite = store_url.startswith("sqlite")
    assert name.startswith("cocoon-store-write") if on_sqlite else name == threading.current_thread().name


async def test_a_caller_cancelled_meanwhile_does_not_stop_a_blocking_transaction(tmp_path: Path) -> None:
    store = Store(default_url(tmp_path / "proxy"))
    await store.start()
    started, go_on = threading.Event(), threading.Event()

    def slow(session: Session) -> None:
        started.set()
        go_on.wait(10)
        session.add(VoucherRecord(kind="client", channel="0:late", cumulative=1, signature=bytes(64)))
        session.commit()

    caller = asyncio.create_task(store.transact(slow, write=True))
    await asyncio.to_thread(started.wait, 10)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    go_on.set()
    await store.close()  # waits for the store's threads
    reopened = Store(default_url(tmp_path / "proxy"))
    await reopened.start()
    async with reopened.session() as session:
        assert (await session.scalars(select(VoucherRecord.channel))).all() == ["0:late"]
    await reopened.close()
