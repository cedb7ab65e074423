"""The sidecar's API keys in their store: made, listed, revoked and funded (``cocoon client keys``), and what
they spent. The request path's use of them (authenticate, rpm, budgets held per job) is ``spending.py``.

A key is ``ck-`` and 32 random bytes; the store keeps only its SHA-256. The live keys' unspent budgets together
never pass what the client's deposit has left (``ceiling``, read from the chain by ``cocoon client keys``):
changing a budget locks the budgets (a row of ``key_locks``) so two changes never both promise the same TON.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

from sqlalchemy import Row, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from cocoon.chain.pricing import ton_text
from cocoon.client.keys.tables import ApiKeyRow, KeyLock, KeysBase, KeySpend
from cocoon.config import ClientSettings
from cocoon.errors import BadRequest, NotFound, PaymentRequired
from cocoon.store import SqlStore, as_utc, sqlite_file, utcnow

SECRET_PREFIX = "ck-"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
SEND_KEY = "send 'Authorization: Bearer ck-...' with a key `cocoon client keys create` made for this sidecar"

KeyState = Literal["live", "revoked", "expired"]


def new_secret() -> str:
    """A new key: ``ck-`` and 32 random bytes, URL-safe base64."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def secret_digest(secret: str) -> str:
    """What the store keeps of a key: its SHA-256 (a key has 256 random bits, so no salt or stretching helps)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def default_url(settings: ClientSettings) -> str:
    return settings.store_url or f"sqlite+aiosqlite:///{settings.data_dir / 'keys.sqlite3'}"


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One key as the store has it (never its secret). Amounts in nanoton."""

    id: str
    name: str
    hint: str
    budget: int
    spent: int
    reserved: int
    rpm: int
    models: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    used_at: datetime | None

    @classmethod
    def of(cls, row: ApiKeyRow | Row[Any]) -> ApiKey:
        """From the ORM's row or a Core row of ``api_keys`` (the request path reads those)."""
        return cls(
            row.id, row.name, row.hint, row.budget, row.spent, row.reserved, row.rpm,
            tuple(m for m in row.models.split(",") if m), as_utc(row.created_at),
            _utc(row.expires_at), _utc(row.revoked_at), _utc(row.used_at),
        )  # fmt: skip

    @property
    def left(self) -> int:
        """What requests may still reserve."""
        return self.budget - self.spent - self.reserved

    def state(self, now: datetime) -> KeyState:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "live"

    def allows(self, model: str) -> bool:
        return not self.models or model in self.models

    def to_json(self, now: datetime) -> dict[str, Any]:
        times = {"created_at": self.created_at, "expires_at": self.expires_at, "used_at": self.used_at}
        return {
            "id": self.id, "name": self.name, "hint": self.hint, "state": self.state(now), "budget": self.budget,
            "spent": self.spent, "reserved": self.reserved, "left": self.left, "rpm": self.rpm,
            "models": list(self.models), **{k: v.isoformat() if v else None for k, v in times.items()},
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class Usage:
    """What one key spent on one model on one UTC day."""

    key: str
    model: str
    day: date
    requests: int
    cost: int


class KeyStore(SqlStore):
    """The key tables in the sidecar's store (``store_url``, else ``keys.sqlite3`` in ``data_dir``). A SQLite
    store is not made on disk until a key is: a sidecar without keys leaves nothing behind."""

    def __init__(self, url: str) -> None:
        super().__init__(url, KeysBase.metadata, lock_namespace="cocoon.client", make_folder=False)
        self._started = False

    @classmethod
    def for_settings(cls, settings: ClientSettings) -> KeyStore:
        return cls(default_url(settings))

    def missing(self) -> bool:
        file = sqlite_file(self.url)
        return file is not None and not file.exists()

    async def ready(self) -> None:
        """Create the tables once (idempotent: every replica may)."""
        if not self._started:
            await self.start()
            self._started = True

    async def any_key(self) -> bool:
        """Whether any key was ever made here, revoked and expired ones included."""
        if self.missing():
            return False
        await self.ready()
        async with self.session() as session:
            return await session.scalar(select(ApiKeyRow.id).limit(1)) is not None

    async def keys(self) -> list[ApiKey]:
        """Every key, oldest first."""
        if self.missing():
            return []
        await self.ready()
        async with self.session() as session:
            rows = (await session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at))).all()
        return [ApiKey.of(r) for r in rows]

    async def find(self, ref: str) -> ApiKey:
        """The key named ``ref``, or whose id it is; ``NotFound`` saying which keys exist."""
        keys = await self.keys()
        for key in keys:
            if ref in (key.id, key.name):
                return key
        names = ", ".join(k.name for k in keys) or "none yet"
        raise NotFound(f"no API key is named {ref!r} or has that id; the keys: {names} (`cocoon client keys list`)")

    # ---- keeping keys --------------------------------------------------------------------------------

    async def create(
        self,
        name: str,
        budget: int,
        *,
        rpm: int = 0,
        models: Sequence[str] = (),
        expires_at: datetime | None = None,
        ceiling: int | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key and its secret (shown once, never stored). ``ceiling``: what the deposit has left for
        budgets; the live keys' unspent budgets and this one together may not pass it (``PaymentRequired``)."""
        if not _NAME.fullmatch(name) or name.startswith("key_"):
            raise BadRequest(f"{name!r} is no key name: use letters, digits, '.', '_' and '-' (not 'key_…')")
        if budget <= 0 or rpm < 0:
            raise BadRequest("a key needs a budget above 0 and an rpm of 0 (no limit) or more")
        secret = new_secret()
        row = ApiKeyRow(
            id="key_" + uuid.uuid4().hex[:12], name=name, secret_sha256=secret_digest(secret),
            hint=secret[:7] + "…", budget=budget, spent=0, reserved=0, rpm=rpm,
            models=",".join(m.strip() for m in models if m.strip()), created_at=utcnow(), expires_at=expires_at,
        )  # fmt: skip
        await self.ready()
        async with self.writing(), self.session() as session:
            await self._lock_budgets(session)
            if await session.scalar(select(ApiKeyRow.id).where(ApiKeyRow.name == name)) is not None:
                raise BadRequest(f"a key named {name!r} exists already; pick another name or revoke it first")
            await self._within_ceiling(session, budget, ceiling, but=None)
            session.add(row)
            await session.commit()
        return ApiKey.of(row), secret

    async def revoke(self, ref: str) -> ApiKey:
        """Refuse the key from now on (requests in flight finish); its history stays."""
        key = await self.find(ref)
        async with self.writing(), self.session() as session:
            await session.execute(
                update(ApiKeyRow)
                .where(ApiKeyRow.id == key.id, ApiKeyRow.revoked_at.is_(None))
                .values(revoked_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            await session.commit()
        return await self.find(key.id)

    async def set_budget(self, ref: str, budget: int, *, ceiling: int | None = None) -> ApiKey:
        """Give the key a new budget: at least what it spent and holds, within ``ceiling`` with the others."""
        key = await self.find(ref)
        async with self.writing(), self.session() as session:
            await self._lock_budgets(session)
            row = await session.get(ApiKeyRow, key.id, with_for_update=True)
            assert row is not None
            if budget < row.spent + row.reserved:
                raise BadRequest(
                    f"the key {key.name!r} spent {ton_text(row.spent)} and holds {ton_text(row.reserved)} for "
                    f"requests in flight: its budget can be no less than {ton_text(row.spent + row.reserved)}"
                )
            await self._within_ceiling(session, budget - row.spent, ceiling, but=key.id)
            row.budget = budget
            await session.commit()
        return await self.find(key.id)

    async def top_up(self, ref: str, amount: int, *, ceiling: int | None = None) -> ApiKey:
        """Raise the key's budget by ``amount``."""
        key = await self.find(ref)
        if amount <= 0:
            raise BadRequest("top up by an amount above 0")
        return await self.set_budget(key.id, key.budget + amount, ceiling=ceiling)

    async def _lock_budgets(self, session: AsyncSession) -> None:
        """Lock the budgets for this transaction: its first write, so SQLite takes its writer's lock too."""
        await session.execute(self.insert_if_absent(KeyLock).values(name="budgets", turns=0))
        await session.execute(
            update(KeyLock)
            .where(KeyLock.name == "budgets")
            .values(turns=KeyLock.turns + 1)
            .execution_options(synchronize_session=False)
        )

    async def _within_ceiling(self, session: AsyncSession, unspent: int, ceiling: int | None, but: str | None) -> None:
        if ceiling is None:
            return
        now = utcnow()
        promised = 0
        for row in (await session.scalars(select(ApiKeyRow).where(ApiKeyRow.id != (but or "")))).all():
            if ApiKey.of(row).state(now) == "live":
                promised += max(0, row.budget - row.spent)
        if promised + unspent > ceiling:
            room = max(0, ceiling - promised)
            raise PaymentRequired(
                f"the deposit has {ton_text(ceiling)} left and the other live keys may still spend "
                f"{ton_text(promised)} of it: this key's budget can take {ton_text(room)} more at most; ask for "
                "less, revoke a key, or deposit more with `cocoon client deposit --amount <TON>`"
            )

    # ---- reports -------------------------------------------------------------------------------------

    async def usage(self, since: datetime, key: str | None = None) -> list[Usage]:
        """What each key (or only ``key``) spent since ``since``, per model and UTC day, by day then key."""
        keys = {k.id: k.name for k in await self.keys()}
        if not keys:
            return []
        query = select(KeySpend).where(KeySpend.at >= since)
        if key is not None:
            query = query.where(KeySpend.key_id == (await self.find(key)).id)
        async with self.session() as session:
            rows = (await session.scalars(query)).all()
        totals: dict[tuple[date, str, str], tuple[set[str], int]] = {}
        for r in rows:
            slot = (as_utc(r.at).date(), keys.get(r.key_id, r.key_id), r.model)
            requests, cost = totals.get(slot, (set(), 0))
            requests.add(r.request_id)
            totals[slot] = (requests, cost + r.cost)
        return [Usage(k, m, d, len(reqs), cost) for (d, k, m), (reqs, cost) in sorted(totals.items())]


def _utc(moment: datetime | None) -> datetime | None:
    return None if moment is None else as_utc(moment)
