"""Canaries: catching a worker that attests one model and serves another.

The problem. A worker's attestation commits to the weights hash it claims, and it signs its own receipts; nothing
in either shows that the tokens it streams came from those weights. A worker could load a cheaper model and be
paid the price of the claimed one.

The naive answer: send it a request with a known answer and compare. Fails: any fixed prompt set is learnt and
answered honestly, and a sampled answer has no single right text.

What this does. The proxy sends canaries sealed exactly as clients seal requests (same envelope, prompts drawn
from a corpus of ordinary chat turns, greedy decoding, a realistic ``max_tokens``), at a share of traffic plus a
minimum per worker. It decrypts the answer itself (it is the canary's client) and has a *different* worker of the
same weights hash re-score it: a ``score`` job, teacher forcing, gives each answer token's log-probability under
the checker's model. The gap is the answer's mean negative log-likelihood per token there: an honest greedy answer
of the same model is the checker's own greedy text (gap near 0, greedy replay near 100 %), another model's text
is markedly less likely. Each worker keeps a window of its last gaps; it is flagged when the window's mean
exceeds a threshold calibrated from everyone else's recent canaries (mean + k·sd, never below a floor), after
enough samples, and only if at least two distinct checkers found it over the threshold: a lying checker alone
cannot get an honest worker flagged. With a single peer a disagreement cannot be attributed to either side.

This module is the pure part (corpus, windows, calibration, verdicts); ``cocoon.proxy.canaries`` drives it.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

CORPUS: tuple[str, ...] = (
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Explain in two sentences why the sky is blue.",
    "Give me three ideas for a quick vegetarian dinner.",
    "How do I reverse a list in Python?",
    "Translate 'good morning, how are you?' into Spanish.",
    "What is the difference between weather and climate?",
    "Summarize the plot of Romeo and Juliet in one paragraph.",
    "List five tips for sleeping better.",
    "What does HTTP stand for, and what is it used for?",
    "Write a short thank-you note to a colleague who helped me move.",
    "Why do cats purr?",
    "Suggest a name for a bakery that sells sourdough bread.",
    "How many minutes are there in a week? Show the calculation.",
    "What are the main causes of inflation?",
    "Describe the water cycle for a ten-year-old.",
    "Write a SQL query that counts orders per customer.",
    "What is a black hole?",
    "Give me a packing list for a weekend hiking trip.",
    "Explain what a mortgage is in simple terms.",
    "Tell me a fun fact about octopuses.",
    "What should I consider when adopting a dog?",
    "Write the opening line of a mystery novel.",
    "How does a refrigerator keep food cold?",
    "What is the Pythagorean theorem?",
    "Compose a polite email declining a meeting invitation.",
    "What are some good stretches for lower back pain?",
    "Explain recursion with a simple example.",
    "Why is the ocean salty?",
    "Recommend three classic science fiction books and say why.",
    "What is photosynthesis?",
    "How do vaccines work?",
)
SYSTEM_PROMPTS: tuple[str, ...] = ("", "", "", "You are a helpful assistant.", "Answer briefly and clearly.")
MAX_TOKENS_RANGE = (24, 96)  # realistic short answers; scoring caps at SCORE_MAX_TOKENS anyway


@dataclass(frozen=True, slots=True)
class CanaryPrompt:
    """What one canary asks: chat messages as (role, content), greedy decoding, ``max_tokens``."""

    messages: tuple[tuple[str, str], ...]
    max_tokens: int
    temperature: float = 0.0


def draw_prompt(rng: random.Random) -> CanaryPrompt:
    """A canary drawn from the corpus: a question, sometimes behind a system prompt, a realistic max_tokens."""
    system = rng.choice(SYSTEM_PROMPTS)
    messages = ((("system", system),) if system else ()) + (("user", rng.choice(CORPUS)),)
    return CanaryPrompt(messages, rng.randint(*MAX_TOKENS_RANGE))


@dataclass(frozen=True, slots=True)
class CanaryPolicy:
    """How canaries are sent and judged. ``rate`` 0 and ``min_interval_s`` 0 turn them off."""

    rate: float = 0.02  # share of client requests followed by a canary to a worker of that model
    min_interval_s: float = 180.0  # and at least one per worker this often
    window: int = 8  # a worker is judged on the mean of its last this many gaps
    min_window: int = 3  # gaps a worker needs before it can be flagged
    min_calibration: int = 4  # gaps of other workers the threshold needs before anyone is flagged
    calibration: int = 64  # recent gaps (network-wide) the threshold is computed from
    k: float = 4.0  # threshold = mean + k·sd of the others' recent gaps
    floor: float = 1.0  # nats per token: the threshold is never below this

    @property
    def enabled(self) -> bool:
        return self.rate > 0 or self.min_interval_s > 0


@dataclass(frozen=True, slots=True)
class CanaryResult:
    """One checked canary: ``worker_id`` answered, ``checker_id`` scored it; ``gap`` is mean NLL per token."""

    worker_id: str
    checker_id: str
    gap: float
    greedy_rate: float
    tokens: int
    at: float  # time.monotonic()


@dataclass(frozen=True, slots=True)
class Flag:
    """Why a worker was flagged, and since when its earnings are withheld (its last passed canary)."""

    reason: str
    since: datetime
    at: datetime


@dataclass(slots=True)
class _WorkerCanaries:
    gaps: deque[CanaryResult]
    last_sent: float = -math.inf
    sent: int = 0
    passed_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    in_flight: bool = False


class CanaryBook:
    """Every worker's recent canary gaps, the calibrated threshold, and who is flagged (by worker id)."""

    def __init__(self, policy: CanaryPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self.clock = clock
        self.recent: deque[CanaryResult] = deque(maxlen=policy.calibration)
        self.flags: dict[str, Flag] = {}
        self.sent = 0
        self.failed = 0  # canaries that got no checkable answer (the worker or every checker failed)
        self._workers: dict[str, _WorkerCanaries] = {}

    def _worker(self, worker_id: str) -> _WorkerCanaries:
        found = self._workers.get(worker_id)
        if found is None:
            found = self._workers[worker_id] = _WorkerCanaries(deque(maxlen=self.policy.window))
        return found

    def due(self, worker_id: str) -> bool:
        """Whether ``worker_id`` is owed its periodic canary (and has none in flight)."""
        w = self._worker(worker_id)
        interval = self.policy.min_interval_s
        return interval > 0 and not w.in_flight and self.clock() - w.last_sent >= interval

    def sending(self, worker_id: str) -> bool:
        """Mark a canary to ``worker_id`` as in flight; ``False`` when one already is (send none then)."""
        w = self._worker(worker_id)
        if w.in_flight:
            return False
        w.in_flight, w.last_sent = True, self.clock()
        w.sent += 1
        self.sent += 1
        return True

    def done(self, worker_id: str) -> None:
        self._worker(worker_id).in_flight = False

    def threshold(self, worker_id: str) -> float | None:
        """The gap above which ``worker_id``'s canaries fail: mean + k·sd of other workers' recent gaps
        (canaries neither answered nor checked by it, nor by a flagged worker), at least ``floor``; ``None``
        while there are fewer than ``min_calibration`` such gaps."""
        others = [
            r.gap
            for r in self.recent
            if worker_id not in (r.worker_id, r.checker_id)
            and r.worker_id not in self.flags
            and r.checker_id not in self.flags
        ]
        if len(others) < self.policy.min_calibration:
            return None
        spread = statistics.pstdev(others)
        return max(self.policy.floor, statistics.fmean(others) + self.policy.k * spread)

    def record(self, result: CanaryResult) -> Flag | None:
        """Add one checked canary; returns the new ``Flag`` when it makes its worker flagged, else ``None``."""
        self.recent.append(result)
        w = self._worker(result.worker_id)
        w.gaps.append(result)
        threshold = self.threshold(result.worker_id)
        limit = self.policy.floor if threshold is None else threshold
        if result.gap <= limit:
            w.passed_at = datetime.now(UTC)
        if result.worker_id in self.flags or threshold is None or len(w.gaps) < self.policy.min_window:
            return None
        mean = statistics.fmean(r.gap for r in w.gaps)
        accusers = {r.checker_id for r in w.gaps if r.gap > threshold}
        if mean <= threshold or len(accusers) < 2:
            return None
        flag = Flag(
            reason=(
                f"canary answers are unlikely under its claimed model: mean gap {mean:.2f} nats/token over its "
                f"last {len(w.gaps)} canaries, threshold {threshold:.2f} (from other workers), confirmed by "
                f"{len(accusers)} checkers; greedy replay {statistics.fmean(r.greedy_rate for r in w.gaps):.0%}"
            ),
            since=w.passed_at,
            at=datetime.now(UTC),
        )
        self.flags[result.worker_id] = flag
        return flag

    def view(self, worker_id: str, peers: int) -> dict[str, Any]:
        """The canary part of a worker's ``GET /v1/directory`` entry; ``peers``: other workers of its model."""
        w = self._worker(worker_id)
        out: dict[str, Any] = {"sent": w.sent, "checked": len(w.gaps)}
        if w.gaps:
            out["mean_gap"] = round(statistics.fmean(r.gap for r in w.gaps), 4)
            out["greedy_replay"] = round(statistics.fmean(r.greedy_rate for r in w.gaps), 4)
        threshold = self.threshold(worker_id)
        if threshold is not None:
            out["threshold"] = round(threshold, 4)
        if peers == 0:
            out["status"] = "no peer to check against"
        elif peers == 1:
            out["status"] = "one peer: a failed check cannot be attributed to either side"
        elif worker_id in self.flags:
            out["status"] = "flagged"
        else:
            out["status"] = "ok" if len(w.gaps) >= self.policy.min_window else "calibrating"
        return out
