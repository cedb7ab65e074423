"""Reputation from evidence only: what each worker's jobs actually did, decayed over time.

Successes, timeouts, dropped streams, bad receipts, errors and first tokens later than the worker's own
promise become a factor in (0, 1] that the router divides expected latency by. Persisted by ``reputation_store``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Literal

Outcome = Literal["ok", "timeout", "dropped", "bad_receipt", "error"]

# How much one event of each kind weighs against one success. A forged receipt is the worst: the worker
# claimed work the client could not verify.
WEIGHTS: dict[str, float] = {"timeout": 1.0, "dropped": 1.0, "bad_receipt": 4.0, "error": 0.5, "late": 0.5}
PRIOR_SUCCESSES = 2.0  # a new worker starts as if it had done two good jobs, so one failure is not fatal
FLOOR = 0.05


@dataclass(slots=True)
class Evidence:
    """Decayed event counts of one worker; ``updated_at`` is wall-clock UTC seconds (it is persisted)."""

    ok: float = 0.0
    timeout: float = 0.0
    dropped: float = 0.0
    bad_receipt: float = 0.0
    error: float = 0.0
    late: float = 0.0
    jobs: int = 0
    updated_at: float = 0.0

    def decayed(self, now: float, half_life_s: float) -> float:
        """The multiplier that ages every count from ``updated_at`` to ``now``."""
        if self.updated_at <= 0 or now <= self.updated_at:
            return 1.0
        return math.exp2(-(now - self.updated_at) / half_life_s)

    def age_to(self, now: float, half_life_s: float) -> None:
        m = self.decayed(now, half_life_s)
        for name in _COUNTS:
            setattr(self, name, getattr(self, name) * m)
        self.updated_at = now

    def factor(self, now: float, half_life_s: float) -> float:
        """Reputation in [FLOOR, 1]: decayed successes against weighted failures, with a prior."""
        m = self.decayed(now, half_life_s)
        bad: float = sum(WEIGHTS[name] * float(getattr(self, name)) for name in WEIGHTS) * m
        good = self.ok * m + PRIOR_SUCCESSES
        return max(FLOOR, good / (good + bad))


_COUNTS = ("ok", "timeout", "dropped", "bad_receipt", "error", "late")
EVIDENCE_FIELDS = tuple(f.name for f in fields(Evidence))


class ReputationBook:
    """Every worker's evidence, by worker id (it outlives connections: a reconnect does not wash it)."""

    def __init__(self, half_life_s: float = 900.0, clock: Callable[[], float] = time.time) -> None:
        self.half_life_s = half_life_s
        self.clock = clock
        self._evidence: dict[str, Evidence] = {}
        self._dirty: set[str] = set()
        self.condemned: dict[str, str] = {}  # worker id -> why its reputation is zero (a failed canary check)

    def record(self, worker_id: str, outcome: Outcome) -> None:
        """Count one finished job attempt."""
        self._add(worker_id, outcome)

    def record_first_token(self, worker_id: str, observed_s: float, allowed_s: float) -> bool:
        """Hold a first token to the time the worker promised (plus slack); ``True`` when it was late."""
        late = observed_s > allowed_s
        if late:
            self._add(worker_id, "late")
        return late

    def condemn(self, worker_id: str, reason: str) -> None:
        """Set ``worker_id``'s reputation to zero for good: it was caught serving another model than it attests."""
        self.condemned[worker_id] = reason

    def factor(self, worker_id: str) -> float:
        if worker_id in self.condemned:
            return 0.0
        evidence = self._evidence.get(worker_id)
        return 1.0 if evidence is None else evidence.factor(self.clock(), self.half_life_s)

    def view(self, worker_id: str) -> dict[str, Any]:
        """The evidence as shown in ``GET /v1/directory`` (counts aged to now)."""
        evidence = self._evidence.get(worker_id) or Evidence()
        m = evidence.decayed(self.clock(), self.half_life_s)
        out: dict[str, Any] = {name: round(getattr(evidence, name) * m, 3) for name in _COUNTS}
        out["jobs"] = evidence.jobs
        out["factor"] = round(self.factor(worker_id), 4)
        out["half_life_s"] = self.half_life_s
        if worker_id in self.condemned:
            out["condemned"] = self.condemned[worker_id]
        return out

    def load(self, worker_id: str, evidence: Evidence) -> None:
        """Restore a worker's evidence from the store (at start-up)."""
        self._evidence[worker_id] = evidence

    def drain_dirty(self) -> list[tuple[str, Evidence]]:
        """Evidence changed since the last call, for the store to write."""
        out = [(w, self._evidence[w]) for w in sorted(self._dirty)]
        self._dirty.clear()
        return out

    def _add(self, worker_id: str, kind: str) -> None:
        evidence = self._evidence.setdefault(worker_id, Evidence())
        evidence.age_to(self.clock(), self.half_life_s)
        setattr(evidence, kind, getattr(evidence, kind) + 1.0)
        if kind != "late":
            evidence.jobs += 1
        self._dirty.add(worker_id)
