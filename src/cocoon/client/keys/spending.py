"""The request path of the sidecar's API keys: authenticate the bearer, admit it within its rpm and models, and
hold its budget for each job, booking what the job paid and giving back the rest.

The budget rule: a job is posted only once its maximum cost is reserved against its key, and that reservation
is one conditional UPDATE, ``reserved += amount WHERE spent + reserved + amount <= budget``. SQLite runs one
writer at a time; PostgreSQL re-checks the condition on the row as the last committed writer left it. So no
number of concurrent requests, in one sidecar or in several sharing a PostgreSQL, can reserve past a budget.
Every change to a key's reservations locks the key's row first (``LOCK_KEY``, an UPDATE), so ``api_keys.reserved`` is
always the sum of its ``key_reservations``.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Result, String, bindparam, delete, insert, or_, select, update
from sqlalchemy.orm import Session

from cocoon.client.keys.store import SEND_KEY, ApiKey, KeyStore, secret_digest
from cocoon.client.keys.tables import ApiKeyRow, KeyHit, KeyReservation, KeySpend
from cocoon.errors import BudgetExhausted, Forbidden, RateLimited, Unauthorized
from cocoon.store import as_utc, table_of, utcnow

log = logging.getLogger("cocoon.client.keys")

RPM_WINDOW = timedelta(seconds=60)

# The request path's statements, built once: Core on the tables, no ORM unit of work, identity map or statement
# building per call. With one hop per transaction (``KeySpending``), a request's five key calls went from 24 ms
# of CPU to 5 on this project's 2-core VM (ORM statements through aiosqlite before).
_keys, _holds, _hits, _spends = (table_of(t) for t in (ApiKeyRow, KeyReservation, KeyHit, KeySpend))
_KEY_ID = bindparam("key_id", type_=String())
FIND_KEY = select(_keys).where(_keys.c.secret_sha256 == bindparam("digest"))
GET_KEY = select(_keys).where(_keys.c.id == _KEY_ID)
LOCK_KEY = update(_keys).where(_keys.c.id == _KEY_ID).values(reserved=_keys.c.reserved)
LOCK_KEY_USED = update(_keys).where(_keys.c.id == _KEY_ID).values(used_at=bindparam("used_at"))
HOLD = (
    update(_keys)
    .where(
        _keys.c.id == _KEY_ID,
        _keys.c.revoked_at.is_(None),
        or_(_keys.c.expires_at.is_(None), _keys.c.expires_at > bindparam("now")),
        _keys.c.spent + _keys.c.reserved + bindparam("amount") <= _keys.c.budget,
    )
    .values(reserved=_keys.c.reserved + bindparam("amount"))
)
SPEND = update(_keys).where(_keys.c.id == _KEY_ID).values(spent=_keys.c.spent + bindparam("cost"))
UNRESERVE = update(_keys).where(_keys.c.id == _KEY_ID).values(reserved=_keys.c.reserved - bindparam("amount"))
ADD_HOLD = insert(_holds)
HELD = select(_holds.c.amount).where(_holds.c.id == bindparam("hold_id"))
TAKE = update(_holds).where(_holds.c.id == bindparam("hold_id")).values(amount=_holds.c.amount - bindparam("taken"))
DROP_HOLD = delete(_holds).where(_holds.c.id == bindparam("hold_id"))
PRUNE_HITS = delete(_hits).where(_hits.c.key_id == _KEY_ID, _hits.c.at <= bindparam("cutoff"))
HITS = select(_hits.c.at).where(_hits.c.key_id == _KEY_ID).order_by(_hits.c.at)
ADD_HIT = insert(_hits)
ADD_SPEND = insert(_spends)


class KeySpending:
    """The key tables of ``store`` as the sidecar's requests use them; safe to share between requests.

    Each call is one transaction run whole by ``Store.transact``: on SQLite one hop to the store's thread, where
    through aiosqlite each of its statements was about four hops between the event loop and aiosqlite's thread
    (with a key, a request's four transactions cost the sidecar more CPU than all else it did for the request).
    """

    def __init__(self, store: KeyStore) -> None:
        self.store = store

    async def authenticate(self, secret: str, now: datetime | None = None) -> ApiKey:
        """The live key whose secret this is; ``Unauthorized`` (unknown or revoked), ``Forbidden`` (expired)."""
        key = None
        if not self.store.missing():
            await self.store.ready()
            digest = secret_digest(secret)

            def find(session: Session) -> ApiKey | None:
                row = session.connection().execute(FIND_KEY, {"digest": digest}).first()
                return None if row is None else ApiKey.of(row)

            key = await self.store.transact(find, write=False)
        if key is None:
            raise Unauthorized(f"this sidecar has no such API key: {SEND_KEY}")
        return _usable(key, now or utcnow())

    async def admit(self, key_id: str, model: str | None, now: datetime | None = None) -> ApiKey:
        """Count one request of the key against its rpm (``RateLimited``, with the seconds until the window has
        room) after checking it is still live and may use ``model`` (``Forbidden``)."""
        at = now or utcnow()

        def work(session: Session) -> ApiKey:
            db = session.connection()
            if not _count(db.execute(LOCK_KEY_USED, {"key_id": key_id, "used_at": at})):
                raise Unauthorized(f"this sidecar has no such API key: {SEND_KEY}")
            key = _usable(ApiKey.of(db.execute(GET_KEY, {"key_id": key_id}).one()), at)
            if model is not None and not key.allows(model):
                raise Forbidden(
                    f"the API key {key.name!r} may not use the model {model!r}, only {', '.join(key.models)}; "
                    "use a key made for it (`cocoon client keys create --models ...`)",
                    param="model",
                )
            if key.rpm:
                db.execute(PRUNE_HITS, {"key_id": key_id, "cutoff": at - RPM_WINDOW})
                hits = db.execute(HITS, {"key_id": key_id}).scalars().all()
                if len(hits) >= key.rpm:
                    # The next request fits once the hit that leaves the window room for it is a minute old.
                    frees = as_utc(hits[len(hits) - key.rpm]) + RPM_WINDOW
                    wait_s = math.ceil((frees - at).total_seconds())
                    raise RateLimited(
                        f"the API key {key.name!r} may make {key.rpm} requests a minute and made {len(hits)} in the "
                        f"last one; retry in {wait_s}s (Retry-After), or ask for a higher rpm",
                        retry_after_s=wait_s,
                    )
                db.execute(ADD_HIT, {"key_id": key_id, "at": at})
            session.commit()
            return key

        async with self.store.writing():
            return await self.store.transact(work, write=True)

    async def reserve(
        self, key_id: str, request_id: str, model: str, amount: int, *, owner: str, expires_at: datetime
    ) -> str:
        """Hold ``amount`` nanoton of the key's budget for one job of ``owner`` until ``expires_at`` (at the
        latest); returns the reservation's id. ``BudgetExhausted`` when the budget left is short of it."""
        now = utcnow()

        def work(session: Session) -> str:
            db = session.connection()
            if not _count(db.execute(HOLD, {"key_id": key_id, "now": now, "amount": amount})):
                row = db.execute(GET_KEY, {"key_id": key_id}).first()
                if row is None:
                    raise Unauthorized(f"this sidecar has no such API key: {SEND_KEY}")
                key = _usable(ApiKey.of(row), now)
                raise BudgetExhausted(
                    f"the API key {key.name!r} has {key.left} nanoton left of its {key.budget} nanoton budget "
                    f"({key.spent} spent, {key.reserved} held by requests in flight) but this request may cost up "
                    f"to {amount} nanoton; raise the budget with `cocoon client keys topup {key.name} --amount "
                    "<TON>`, or lower max_tokens"
                )
            hold_id = "rsv_" + uuid.uuid4().hex
            db.execute(ADD_HOLD, {
                "id": hold_id, "key_id": key_id, "request_id": request_id, "model": model, "amount": amount,
                "owner": owner, "expires_at": expires_at, "created_at": now,
            })  # fmt: skip
            session.commit()
            return hold_id

        async with self.store.writing():
            return await self.store.transact(work, write=True)

    async def spend(self, key_id: str, reservation_id: str, request_id: str, model: str, cost: int) -> None:
        """Book ``cost`` (a payment for the job) as spent, out of what its reservation holds."""

        def work(session: Session) -> int:
            db = session.connection()
            db.execute(SPEND, {"key_id": key_id, "cost": cost})
            held = db.execute(HELD, {"hold_id": reservation_id}).scalar()
            taken = min(cost, held) if held is not None else 0
            if taken:
                db.execute(TAKE, {"hold_id": reservation_id, "taken": taken})
                db.execute(UNRESERVE, {"key_id": key_id, "amount": taken})
            db.execute(ADD_SPEND, {"key_id": key_id, "request_id": request_id, "model": model, "cost": cost})
            session.commit()
            return taken

        async with self.store.writing():
            taken = await self.store.transact(work, write=True)
        if taken < cost:  # the hold is the proxy's own bound on the job: an honest proxy never gets here
            log.warning(
                "a job paid more than it held key=%s request=%s held=%d paid=%d", key_id, request_id, taken, cost
            )

    async def release(self, key_id: str, reservation_id: str) -> int:
        """Give back what the reservation still holds; returns it (0 when it was released already)."""

        def work(session: Session) -> int:
            db = session.connection()
            db.execute(LOCK_KEY, {"key_id": key_id})
            amount = db.execute(HELD, {"hold_id": reservation_id}).scalar()
            if amount is None:
                return 0
            db.execute(DROP_HOLD, {"hold_id": reservation_id})
            db.execute(UNRESERVE, {"key_id": key_id, "amount": amount})
            session.commit()
            return int(amount)

        async with self.store.writing():
            return await self.store.transact(work, write=True)

    async def sweep(self, dead: Callable[[str], bool], now: datetime | None = None) -> int:
        """Release every reservation past its expiry or held by a ``dead`` owner; returns how many."""
        if self.store.missing():
            return 0
        await self.store.ready()
        now = now or utcnow()

        def held(session: Session) -> list[tuple[str, str, datetime, str]]:
            rows = session.scalars(select(KeyReservation)).all()
            return [(r.key_id, r.id, r.expires_at, r.owner) for r in rows]

        rows = await self.store.transact(held, write=False)
        stale = [(key_id, id_) for key_id, id_, expires_at, owner in rows if as_utc(expires_at) <= now or dead(owner)]
        for key_id, id_ in stale:
            await self.release(key_id, id_)
        if stale:
            log.info("released %d reservations of requests that never ended", len(stale))
        return len(stale)


def _usable(key: ApiKey, now: datetime) -> ApiKey:
    state = key.state(now)
    if state == "revoked":
        raise Unauthorized(f"the API key {key.name!r} was revoked; {SEND_KEY}")
    if state == "expired":
        assert key.expires_at is not None
        raise Forbidden(
            f"the API key {key.name!r} expired at {key.expires_at.isoformat(timespec='seconds')}; use another, or "
            "make a new one with `cocoon client keys create`"
        )
    return key


def _count(result: Result[Any]) -> int:
    """Rows an UPDATE matched."""
    return cast(CursorResult[Any], result).rowcount
