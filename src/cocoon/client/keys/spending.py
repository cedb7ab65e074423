"""The request path of the sidecar's API keys: authenticate the bearer, admit it within its rpm and models, and
hold its budget for each job, booking what the job paid and giving back the rest.

The budget rule: a job is posted only once its maximum cost is reserved against its key, and that reservation
is one conditional UPDATE, ``reserved += amount WHERE spent + reserved + amount <= budget``. SQLite runs one
writer at a time; PostgreSQL re-checks the condition on the row as the last committed writer left it. So no
number of concurrent requests, in one sidecar or in several sharing a PostgreSQL, can reserve past a budget.
Every change to a key's reservations locks the key's row first (``_lock_key``), so ``api_keys.reserved`` is
always the sum of its ``key_reservations``.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Result, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from cocoon.client.keys.store import SEND_KEY, ApiKey, KeyStore, secret_digest
from cocoon.client.keys.tables import ApiKeyRow, KeyHit, KeyReservation, KeySpend
from cocoon.errors import BudgetExhausted, Forbidden, RateLimited, Unauthorized
from cocoon.store import as_utc, utcnow

log = logging.getLogger("cocoon.client.keys")

RPM_WINDOW = timedelta(seconds=60)


class KeySpending:
    """The key tables of ``store`` as the sidecar's requests use them; safe to share between requests."""

    def __init__(self, store: KeyStore) -> None:
        self.store = store

    async def authenticate(self, secret: str, now: datetime | None = None) -> ApiKey:
        """The live key whose secret this is; ``Unauthorized`` (unknown or revoked), ``Forbidden`` (expired)."""
        row = None
        if not self.store.missing():
            await self.store.ready()
            async with self.store.session() as session:
                digest = secret_digest(secret)
                row = await session.scalar(select(ApiKeyRow).where(ApiKeyRow.secret_sha256 == digest))
        if row is None:
            raise Unauthorized(f"this sidecar has no such API key: {SEND_KEY}")
        return _usable(ApiKey.of(row), now or utcnow())

    async def admit(self, key_id: str, model: str | None, now: datetime | None = None) -> ApiKey:
        """Count one request of the key against its rpm (``RateLimited``, with the seconds until the window has
        room) after checking it is still live and may use ``model`` (``Forbidden``)."""
        now = now or utcnow()
        async with self.store.writing(), self.store.session() as session:
            if not await self._lock_key(session, key_id, used_at=now):
                raise Unauthorized(f"this sidecar has no such API key: {SEND_KEY}")
            row = await session.get(ApiKeyRow, key_id)
            assert row is not None
            key = _usable(ApiKey.of(row), now)
            if model is not None and not key.allows(model):
                raise Forbidden(
                    f"the API key {key.name!r} may not use the model {model!r}, only {', '.join(key.models)}; "
                    "use a key made for it (`cocoon client keys create --models ...`)",
                    param="model",
                )
            if key.rpm:
                await session.execute(delete(KeyHit).where(KeyHit.key_id == key_id, KeyHit.at <= now - RPM_WINDOW))
                hits = (
                    await session.scalars(select(KeyHit.at).where(KeyHit.key_id == key_id).order_by(KeyHit.at))
                ).all()
                if len(hits) >= key.rpm:
                    # The next request fits once the hit that leaves the window room for it is a minute old.
                    frees = as_utc(hits[len(hits) - key.rpm]) + RPM_WINDOW
                    wait_s = math.ceil((frees - now).total_seconds())
                    raise RateLimited(
                        f"the API key {key.name!r} may make {key.rpm} requests a minute and made {len(hits)} in the "
                        f"last one; retry in {wait_s}s (Retry-After), or ask for a higher rpm",
                        retry_after_s=wait_s,
                    )
                session.add(KeyHit(key_id=key_id, at=now))
            await session.commit()
        return key

    async def reserve(
        self, key_id: str, request_id: str, model: str, amount: int, *, owner: str, expires_at: datetime
    ) -> str:
        """Hold ``amount`` nanoton of the key's budget for one job of ``owner`` until ``expires_at`` (at the
        latest); returns the reservation's id. ``BudgetExhausted`` when the budget left is short of it."""
        now = utcnow()
        async with self.store.writing(), self.store.session() as session:
            held = await session.execute(
                update(ApiKeyRow)
                .where(
                    ApiKeyRow.id == key_id,
                    ApiKeyRow.revoked_at.is_(None),
                    or_(ApiKeyRow.expires_at.is_(None), ApiKeyRow.expires_at > now),
                    ApiKeyRow.spent + ApiKeyRow.reserved + amount <= ApiKeyRow.budget,
                )
                .values(reserved=ApiKeyRow.reserved + amount)
                .execution_options(synchronize_session=False)
            )
            if not _count(held):
                row = await session.get(ApiKeyRow, key_id)
                if row is None:
                    raise Unauthorized(f"this sidecar has no such API key: {SEND_KEY}")
                key = _usable(ApiKey.of(row), now)
                raise BudgetExhausted(
                    f"the API key {key.name!r} has {key.left} nanoton left of its {key.budget} nanoton budget "
                    f"({key.spent} spent, {key.reserved} held by requests in flight) but this request may cost up "
                    f"to {amount} nanoton; raise the budget with `cocoon client keys topup {key.name} --amount "
                    "<TON>`, or lower max_tokens"
                )
            reservation = KeyReservation(
                id="rsv_" + uuid.uuid4().hex, key_id=key_id, request_id=request_id, model=model, amount=amount,
                owner=owner, expires_at=expires_at, created_at=now,
            )  # fmt: skip
            session.add(reservation)
            await session.commit()
        return reservation.id

    async def spend(self, key_id: str, reservation_id: str, request_id: str, model: str, cost: int) -> None:
        """Book ``cost`` (a payment for the job) as spent, out of what its reservation holds."""
        async with self.store.writing(), self.store.session() as session:
            await session.execute(
                update(ApiKeyRow)
                .where(ApiKeyRow.id == key_id)
                .values(spent=ApiKeyRow.spent + cost)
                .execution_options(synchronize_session=False)
            )
            reservation = await session.get(KeyReservation, reservation_id)
            taken = min(cost, reservation.amount) if reservation is not None else 0
            if reservation is not None and taken:
                reservation.amount -= taken
                await self._unreserve(session, key_id, taken)
            session.add(KeySpend(key_id=key_id, request_id=request_id, model=model, cost=cost, at=utcnow()))
            await session.commit()
        if taken < cost:  # the hold is the proxy's own bound on the job: an honest proxy never gets here
            log.warning(
                "a job paid more than it held key=%s request=%s held=%d paid=%d", key_id, request_id, taken, cost
            )

    async def release(self, key_id: str, reservation_id: str) -> int:
        """Give back what the reservation still holds; returns it (0 when it was released already)."""
        async with self.store.writing(), self.store.session() as session:
            await self._lock_key(session, key_id)
            reservation = await session.get(KeyReservation, reservation_id)
            if reservation is None:
                return 0
            amount = reservation.amount
            await session.delete(reservation)
            await self._unreserve(session, key_id, amount)
            await session.commit()
        return amount

    async def sweep(self, dead: Callable[[str], bool], now: datetime | None = None) -> int:
        """Release every reservation past its expiry or held by a ``dead`` owner; returns how many."""
        if self.store.missing():
            return 0
        await self.store.ready()
        now = now or utcnow()
        async with self.store.session() as session:
            rows = (await session.execute(select(KeyReservation))).scalars().all()
        stale = [r for r in rows if as_utc(r.expires_at) <= now or dead(r.owner)]
        for r in stale:
            await self.release(r.key_id, r.id)
        if stale:
            log.info("released %d reservations of requests that never ended", len(stale))
        return len(stale)

    async def _lock_key(self, session: AsyncSession, key_id: str, **values: Any) -> bool:
        """Lock the key's row for this transaction (a write, so SQLite takes its writer's lock); every change to
        a key's reservations takes it first. False when there is no such key."""
        touched = await session.execute(
            update(ApiKeyRow)
            .where(ApiKeyRow.id == key_id)
            .values(values or {"reserved": ApiKeyRow.reserved})
            .execution_options(synchronize_session=False)
        )
        return bool(_count(touched))

    async def _unreserve(self, session: AsyncSession, key_id: str, amount: int) -> None:
        await session.execute(
            update(ApiKeyRow)
            .where(ApiKeyRow.id == key_id)
            .values(reserved=ApiKeyRow.reserved - amount)
            .execution_options(synchronize_session=False)
        )


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
