"""Request ids relayed lately, shared by the replicas of one proxy: a replayed sealed request is refused by all.

The problem: each proxy process remembers the request ids it relayed (``ReplayRecord``), and a worker the ids it
ran. A relay that captured a sealed request could replay it to another replica of the same proxy, with the
wrapped keys of the worker that ran it stripped from the clear ``JobRequest``: that replica has not seen the id,
the next candidate worker has not either, and the request is run (and billed) again. What this does: on a
PostgreSQL store (the one replicas share) an id is also recorded in ``seen_requests`` with
``INSERT ... ON CONFLICT DO NOTHING``; the replica that inserts it relays the request, any other refuses it. The
process's own record answers first, so a replay to the same replica costs no round trip. On SQLite (one proxy
process) the memory record is the whole check, and ids minted before the process started are refused
(``ReplayRecord.expired``): a restart does not open what it saw before to a replay.
"""

from __future__ import annotations

import time

from sqlalchemy import Float, String, delete
from sqlalchemy.orm import Mapped, mapped_column

from cocoon.protocol.replay import ReplayRecord
from cocoon.proxy.store import Base, Store

TTL_S = 2 * 3600.0  # longer than any request may run, as the memory record's
PRUNE_EVERY_S = 600.0


class SeenRequest(Base):
    __tablename__ = "seen_requests"

    request_id: Mapped[str] = mapped_column(String(80), primary_key=True)  # JobRequest.request_id's bound
    expires_at: Mapped[float] = mapped_column(Float, index=True)  # unix time: every replica's clock reads it


class Replays:
    """``first_time(request_id)``: True for exactly one relay of each id among the replicas of one store."""

    def __init__(self, store: Store, ttl_s: float = TTL_S) -> None:
        self.store = store
        # The shared table outlives a replica's restart; a process's own memory does not.
        started_at = None if store.on_postgresql else time.time()
        self.local = ReplayRecord(ttl_s=ttl_s, started_at=started_at, who="proxy")
        self._pruned_at = 0.0

    def expired(self, request_id: str) -> str | None:
        """Why the id is outside the window this proxy accepts (``ReplayRecord.expired``), or None."""
        return self.local.expired(request_id)

    async def first_time(self, request_id: str) -> bool:
        if not self.local.first_time(request_id):
            return False
        if not self.store.on_postgresql:
            return True
        now = time.time()
        expires_at = now + self.local.ttl_for(request_id)
        insert = self.store.insert_if_absent(SeenRequest).values(request_id=request_id, expires_at=expires_at)
        async with self.store.session() as session:
            if now - self._pruned_at > PRUNE_EVERY_S:  # ids are random: one past its time is only kept space
                self._pruned_at = now
                await session.execute(delete(SeenRequest).where(SeenRequest.expires_at < now))
            inserted: bool = (await session.execute(insert)).rowcount == 1  # type: ignore[attr-defined]
            await session.commit()
        return inserted
