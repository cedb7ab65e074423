"""The proxy's live directory: attested workers, what they serve, and their load as last reported.

A worker enters after its attestation verifies and leaves when its WebSocket closes or it misses
heartbeats for ``heartbeat_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from cocoon.attestation import VerifiedWorker
from cocoon.protocol import Heartbeat, JobRequest, Register

Sender = Callable[[bytes], Awaitable[None]]
"""Writes one frame to the worker's socket; raises ``SendFailed`` (and only that) when the socket is gone."""


class SendFailed(Exception):
    """A frame could not be written to a worker: its socket is closed or broken."""


class WorkerLost:
    """Put on a job's queue when the worker serving it goes away."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


@dataclass(slots=True)
class WorkerEntry:
    """One connected worker: its registration, attested keys, the load it last reported, the proxy's own counts."""

    worker_id: str
    register: Register
    verified: VerifiedWorker
    send: Sender
    connected_at: float = field(default_factory=time.monotonic)
    last_seen: float = field(default_factory=time.monotonic)
    free_slots: int = 0
    queue_depth: int = 0
    active_jobs: int = 0
    tokens_per_s: float = 0.0
    # What the worker says about itself (bounded at the wire): it may inform routing, never outweigh what the
    # proxy measured itself.
    prefill_tokens_per_s: float = 0.0
    promised_ttft_s: float = 0.0  # the worker's own median time to first token
    # Measured by the proxy's clock: dispatch to first frame (less the round trip), and first frame to end.
    measured_ttft_s: float = 0.0
    ttft_samples: int = 0
    decode_tokens_per_s: float = 0.0
    inflight: int = 0
    avg_job_s: float = 1.0
    avg_ttft_s: float = 0.2
    rtt_s: float = 0.0
    completed: int = 0
    failed: int = 0
    gone: bool = False  # left the directory; jobs must not be sent here any more
    evicted: str = ""  # why the proxy removed it (the policy changed), told to the worker as it is closed
    jobs: dict[str, asyncio.Queue[dict[str, Any] | WorkerLost]] = field(default_factory=dict)

    def serves(self, model: str) -> bool:
        return any(offer.model == model for offer in self.register.models)

    def release(self) -> None:
        """A job this proxy sent here has ended: count it out now, not at the next heartbeat, so a worker
        that just finished does not look busy to the router for up to a heartbeat interval."""
        self.inflight -= 1
        self.active_jobs = max(0, self.active_jobs - 1)

    def apply(self, beat: Heartbeat) -> None:
        """Take a heartbeat's load report (its numbers are bounded at the wire; free slots at the registered slots)."""
        self.last_seen = time.monotonic()
        self.free_slots = min(beat.free_slots, self.register.slots)
        self.queue_depth = beat.queue_depth
        self.active_jobs = beat.active_jobs
        self.tokens_per_s = beat.tokens_per_s
        self.prefill_tokens_per_s = beat.prefill_tokens_per_s
        self.promised_ttft_s = beat.ttft_ms / 1000


class Directory:
    """The connected, attested workers by id."""

    def __init__(self) -> None:
        self.workers: dict[str, WorkerEntry] = {}

    def add(self, entry: WorkerEntry) -> WorkerEntry | None:
        """Add ``entry``; returns the entry it replaced (same worker reconnected), if any."""
        old = self.workers.get(entry.worker_id)
        self.workers[entry.worker_id] = entry
        return old

    def live_session(self, worker_id: str, within_s: float) -> WorkerEntry | None:
        """The session ``worker_id`` already has here if it was heard from in the last ``within_s`` seconds.

        A second registration for a live worker is refused, not swapped in: the one that is talking keeps its
        jobs. A session silent that long (its socket died without a close) may be replaced by a new one.
        """
        old = self.workers.get(worker_id)
        if old is None or old.gone or time.monotonic() - old.last_seen > within_s:
            return None
        return old

    def remove(self, entry: WorkerEntry, reason: str) -> None:
        if self.workers.get(entry.worker_id) is entry:
            del self.workers[entry.worker_id]
        entry.gone = True
        for queue in entry.jobs.values():
            queue.put_nowait(WorkerLost(reason))

    def sealed_to(self, request: JobRequest) -> list[WorkerEntry]:
        """The connected workers among those ``request`` was sealed to that serve its model, in the client's order."""
        found = (self.workers.get(k.worker_id) for k in request.keys)
        return [w for w in found if w is not None and w.serves(request.model)]

    def serving(self, model: str) -> list[WorkerEntry]:
        return [w for w in self.workers.values() if w.serves(model)]

    def models(self) -> dict[str, list[WorkerEntry]]:
        out: dict[str, list[WorkerEntry]] = {}
        for worker in self.workers.values():
            for offer in worker.register.models:
                out.setdefault(offer.model, []).append(worker)
        return out

    def stale(self, timeout_s: float) -> list[WorkerEntry]:
        now = time.monotonic()
        return [w for w in self.workers.values() if now - w.last_seen > timeout_s]
