"""One dispatch of a job to one worker, as the relay tracks it: the frames its worker sends, counted against
the job's caps on the way in, and the sealed chunks it streamed (what a resuming worker continues after).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from cocoon.proxy.routing.directory import WorkerEntry, WorkerLost

Frame = dict[str, Any]


class CappedQueue(asyncio.Queue[Frame | WorkerLost]):
    """An attempt's queue that stops taking chunks once its worker streamed past the job's caps.

    The worker socket's reader puts every frame here; counting on the way in keeps a flooding worker from
    filling the proxy's memory while the client reads slowly. The first frame past a cap is replaced by a
    ``WorkerLost`` (with ``overflowed`` set), and nothing after it is queued.
    """

    def __init__(self, max_chunks: int, max_bytes: int) -> None:
        super().__init__()
        self.max_chunks, self.max_bytes = max_chunks, max_bytes
        self.chunks = self.bytes = 0
        self.overflowed = False

    def put_nowait(self, item: Frame | WorkerLost) -> None:
        if self.overflowed:
            return
        if isinstance(item, dict) and item.get("t") == "chunk":
            self.chunks += 1
            data = item.get("data")
            self.bytes += len(data) if isinstance(data, bytes) else 0
            if self.chunks > self.max_chunks or self.bytes > self.max_bytes:
                self.overflowed = True
                item = WorkerLost("streamed past the job's caps")
        super().put_nowait(item)


@dataclass(slots=True)
class Attempt:
    """One dispatch of the job to one worker: its queue of frames and the sealed chunks it streamed."""

    worker: WorkerEntry
    job_id: str
    queue: CappedQueue
    started: float = field(default_factory=time.monotonic)
    chunks: list[bytes] = field(default_factory=list)
    key_nonce: bytes = b""  # from its chunk 0: a resuming worker needs it to open ``chunks``
    first_at: float = 0.0
    queue_s: float = 0.0  # the wait the router expected at dispatch
    sent: bool = False  # the job reached the worker's socket (else its failure is no evidence)
