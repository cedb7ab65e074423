"""Reputation survives proxy restarts: one row of decayed evidence per worker in the proxy's store.

``ReputationBook`` stays in memory on the request path; this module loads it at start-up and writes the
workers whose evidence changed every few seconds (and once more at shutdown).
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import Float, Integer, String, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Mapped, mapped_column

from cocoon.proxy.routing.reputation import Evidence, ReputationBook
from cocoon.proxy.store import Base, Store

log = logging.getLogger("cocoon.proxy")


class ReputationRow(Base):
    __tablename__ = "worker_reputation"

    worker_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    ok: Mapped[float] = mapped_column(Float, default=0.0)
    timeout: Mapped[float] = mapped_column(Float, default=0.0)
    dropped: Mapped[float] = mapped_column(Float, default=0.0)
    bad_receipt: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[float] = mapped_column(Float, default=0.0)
    late: Mapped[float] = mapped_column(Float, default=0.0)
    jobs: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[float] = mapped_column(Float, default=0.0, doc="UTC seconds since the epoch")


_FIELDS = ("ok", "timeout", "dropped", "bad_receipt", "error", "late", "jobs", "updated_at")


async def load(store: Store, book: ReputationBook) -> int:
    """Fill ``book`` from the store; returns how many workers it knew."""
    async with store.session() as session:
        rows = (await session.scalars(select(ReputationRow))).all()
    for row in rows:
        book.load(row.worker_id, Evidence(**{name: getattr(row, name) for name in _FIELDS}))
    return len(rows)


async def save(store: Store, book: ReputationBook) -> int:
    """Write the evidence that changed since the last save; returns how many rows were written."""
    changed = book.drain_dirty()
    if not changed:
        return 0
    async with store.session() as session:
        for worker_id, evidence in changed:
            values = {name: getattr(evidence, name) for name in _FIELDS}
            await session.merge(ReputationRow(worker_id=worker_id, **values))
        await session.commit()
    return len(changed)


async def save_forever(store: Store, book: ReputationBook, interval_s: float = 5.0) -> None:
    """Save every ``interval_s`` until cancelled; a failing database is logged and retried, never fatal."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await save(store, book)
        except SQLAlchemyError as exc:
            log.warning("reputation not saved error=%s; retrying in %gs", type(exc).__name__, interval_s)
        except Exception:
            log.exception("saving reputation crashed; retrying in %gs", interval_s)
