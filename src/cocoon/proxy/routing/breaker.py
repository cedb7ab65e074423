"""A circuit breaker per worker: after repeated failures it stops routing there, backing off exponentially.

Closed: jobs flow. Open: the worker is skipped until its backoff ends. Half-open: one probe job is let
through; success closes the breaker, failure opens it again for twice as long (up to a cap).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

State = Literal["closed", "open", "half_open"]


@dataclass(slots=True)
class Breaker:
    failures: int = 0  # consecutive
    opened_until: float = 0.0
    backoff_s: float = 0.0
    opens: int = 0
    probing: bool = False

    def state(self, now: float) -> State:
        if self.opened_until == 0.0:
            return "closed"
        return "open" if now < self.opened_until else "half_open"


class Breakers:
    """Breakers by worker id. ``threshold`` consecutive failures open one for ``base_s``, doubling to ``max_s``."""

    def __init__(
        self,
        threshold: int = 2,
        base_s: float = 1.0,
        max_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.base_s = base_s
        self.max_s = max_s
        self.clock = clock
        self._by_worker: dict[str, Breaker] = {}

    def state(self, worker_id: str) -> State:
        breaker = self._by_worker.get(worker_id)
        return "closed" if breaker is None else breaker.state(self.clock())

    def admits(self, worker_id: str) -> bool:
        """Whether a job may go to the worker now (a half-open breaker admits one probe at a time)."""
        breaker = self._by_worker.get(worker_id)
        if breaker is None:
            return True
        state = breaker.state(self.clock())
        return state == "closed" or (state == "half_open" and not breaker.probing)

    def dispatched(self, worker_id: str) -> None:
        """A job went to the worker: if its breaker is half-open, that job is the probe."""
        breaker = self._by_worker.get(worker_id)
        if breaker is not None and breaker.state(self.clock()) == "half_open":
            breaker.probing = True

    def success(self, worker_id: str) -> None:
        breaker = self._by_worker.get(worker_id)
        if breaker is not None:
            self._by_worker[worker_id] = Breaker()

    def failure(self, worker_id: str) -> None:
        breaker = self._by_worker.setdefault(worker_id, Breaker())
        now = self.clock()
        breaker.failures += 1
        breaker.probing = False
        if breaker.state(now) == "half_open" or breaker.failures >= self.threshold:
            breaker.backoff_s = min(self.max_s, self.base_s * 2**breaker.opens)
            breaker.opens += 1
            breaker.opened_until = now + breaker.backoff_s

    def view(self, worker_id: str) -> dict[str, Any]:
        """The breaker as shown in ``GET /v1/directory``."""
        breaker = self._by_worker.get(worker_id) or Breaker()
        now = self.clock()
        return {
            "state": breaker.state(now),
            "consecutive_failures": breaker.failures,
            "retry_in_s": round(max(0.0, breaker.opened_until - now), 3),
            "backoff_s": breaker.backoff_s,
        }
