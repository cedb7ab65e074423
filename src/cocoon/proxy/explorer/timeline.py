"""The explorer's time series in the proxy's store: per-minute ``Bucket``s by model, written in batches.

The request path only adds to a bucket in memory (``Timeline.record``, no I/O); every ``FLUSH_S`` the buckets
gathered go to the store in one transaction, as additive upserts (replicas on one PostgreSQL add up), and rows
older than ``RETENTION_S`` are dropped. Reads merge the store with what is still in memory, so a page is current.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from sqlalchemy import BigInteger, Integer, String, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Mapped, mapped_column

from cocoon.proxy.explorer.buckets import DAY_S, TTFT_BOUNDS_MS, Bucket, day_of, minute_of, ttft_bucket
from cocoon.proxy.store import Base, Store
from cocoon.store import table_of

log = logging.getLogger("cocoon.proxy.explorer")

FLUSH_S = 5.0
RETENTION_S = 31 * 86_400  # a month of revenue by day, and then some
PRUNE_EVERY_S = 3600.0
# Model names come from workers: a flood of invented ones shares one row a minute instead of growing the table.
MODELS_PER_MINUTE = 64
OTHER_MODELS = "(other models)"
Key = tuple[int, str]  # (minute, model)


class StatsMinute(Base):
    """One minute of one model's relayed requests (``minute``: UTC seconds since the epoch, at :00)."""

    __tablename__ = "stats_minutes"
    minute: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    charged: Mapped[int] = mapped_column(BigInteger, default=0)  # nanoton of valid receipts booked to clients


class StatsTtft(Base):
    """How many of that minute's requests had their first token within bucket ``bucket`` of ``TTFT_BOUNDS_MS``."""

    __tablename__ = "stats_ttft"
    minute: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)


_COUNTS = ("requests", "errors", "prompt_tokens", "completion_tokens", "charged")


class Timeline:
    """The proxy's traffic by minute and model: recorded in memory, flushed to ``store`` in batches."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self._pending: dict[Key, Bucket] = {}
        self._pruned_at = 0.0

    def record(
        self,
        model: str,
        *,
        ok: bool,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        charged: int = 0,
        ttft_s: float | None = None,
    ) -> None:
        """Count one finished client request (no I/O: the next flush writes it)."""
        minute = minute_of(self.clock())
        key = (minute, model)
        if key not in self._pending and sum(1 for m, _ in self._pending if m == minute) >= MODELS_PER_MINUTE:
            key = (minute, OTHER_MODELS)
        bucket = self._pending.setdefault(key, Bucket())
        bucket.requests += 1
        bucket.errors += 0 if ok else 1
        bucket.prompt_tokens += prompt_tokens
        bucket.completion_tokens += completion_tokens
        bucket.charged += charged
        if ttft_s is not None:
            bucket.ttft[ttft_bucket(ttft_s)] += 1

    async def flush(self) -> int:
        """Add the buckets gathered since the last flush to the store in one transaction; returns how many.
        When the store fails they are kept for the next flush, and the error is raised."""
        pending, self._pending = self._pending, {}
        if not pending:
            return 0
        minutes = [
            {"minute": m, "model": model} | {c: getattr(b, c) for c in _COUNTS} for (m, model), b in pending.items()
        ]
        ttfts = [
            {"minute": m, "model": model, "bucket": i, "count": n}
            for (m, model), b in pending.items()
            for i, n in enumerate(b.ttft)
            if n
        ]
        try:
            async with self.store.writing(), self.store.session() as session:
                await session.execute(_adding(self.store, StatsMinute, ("minute", "model"), _COUNTS), minutes)
                if ttfts:
                    await session.execute(
                        _adding(self.store, StatsTtft, ("minute", "model", "bucket"), ("count",)), ttfts
                    )
                await session.commit()
        except SQLAlchemyError:
            for key, bucket in pending.items():  # not lost: the next flush tries them again
                self._pending.setdefault(key, Bucket()).add(bucket)
            raise
        return len(pending)

    async def prune(self) -> None:
        """Drop rows older than ``RETENTION_S``."""
        cutoff = minute_of(self.clock() - RETENTION_S)
        async with self.store.writing(), self.store.session() as session:
            await session.execute(delete(StatsMinute).where(StatsMinute.minute < cutoff))
            await session.execute(delete(StatsTtft).where(StatsTtft.minute < cutoff))
            await session.commit()
        self._pruned_at = self.clock()

    async def run_forever(self, every_s: float = FLUSH_S) -> None:
        """Flush every ``every_s`` seconds and prune hourly, until cancelled; a failing store is logged and
        retried at the next turn."""
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.flush()
                if self.clock() - self._pruned_at > PRUNE_EVERY_S:
                    await self.prune()
            except SQLAlchemyError as exc:
                log.warning("stats not written yet error=%s", type(exc).__name__)

    async def since(self, start: int) -> list[tuple[int, str, Bucket]]:
        """Every bucket from minute ``start`` on, stored or still in memory: ``(minute, model, bucket)``."""
        async with self.store.session() as session:
            rows = (await session.scalars(select(StatsMinute).where(StatsMinute.minute >= start))).all()
            ttfts = (await session.scalars(select(StatsTtft).where(StatsTtft.minute >= start))).all()
        found: dict[Key, Bucket] = {}
        for row in rows:
            found[(row.minute, row.model)] = _bucket([getattr(row, c) for c in _COUNTS])
        for t in ttfts:
            if 0 <= t.bucket < len(TTFT_BOUNDS_MS):
                found.setdefault((t.minute, t.model), Bucket()).ttft[t.bucket] += t.count
        for key, bucket in self._pending.items():
            if key[0] >= start:
                found.setdefault(key, Bucket()).add(bucket)
        return [(minute, model, bucket) for (minute, model), bucket in sorted(found.items())]

    async def by_day(self, start: int) -> dict[int, Bucket]:
        """Requests, tokens and nanoton charged per UTC day from ``start`` on (TTFT left out), summed in SQL."""
        day = (StatsMinute.minute // DAY_S).label("day")
        sums = [func.sum(getattr(StatsMinute, c)) for c in _COUNTS]
        async with self.store.session() as session:
            rows = (await session.execute(select(day, *sums).where(StatsMinute.minute >= start).group_by(day))).all()
        days: dict[int, Bucket] = {}
        for index, *values in rows:
            days[int(index) * DAY_S] = _bucket([int(v or 0) for v in values])
        for (minute, _), bucket in self._pending.items():
            if minute >= start:
                days.setdefault(day_of(minute), Bucket()).add(bucket)
        return days


def _bucket(counts: list[int]) -> Bucket:
    """A bucket from its counts in ``_COUNTS`` order."""
    requests, errors, prompt_tokens, completion_tokens, charged = counts
    return Bucket(requests, errors, prompt_tokens, completion_tokens, charged)


def _adding(
    store: Store, table: type[Base], keys: tuple[str, ...], counts: tuple[str, ...]
) -> sqlite.Insert | postgresql.Insert:
    """``INSERT ... ON CONFLICT (keys) DO UPDATE SET count = count + excluded.count`` in the store's dialect."""
    statement = store.insert(table)
    columns = table_of(table).c
    return statement.on_conflict_do_update(
        index_elements=list(keys), set_={c: columns[c] + statement.excluded[c] for c in counts}
    )
