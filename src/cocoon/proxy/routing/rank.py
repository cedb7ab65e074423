"""Routing: rank the live workers a request was sealed to by expected latency, reputation and affinity.

``expected_latency = rtt + queue × avg_job_time / slots + load × ttft + (prompt − cached) / prefill_rate``, divided
by the worker's reputation; an open circuit breaker sends a worker to the back. The proxy counts its own
in-flight assignments too, so a burst is spread before heartbeats catch up.

Speeds a worker reports about itself inform this, within bounds: a prefill rate at most ``CLAIM_CAP`` times its
peers', a first token never sooner than the proxy has measured it (``measured_ttft_s``), and for
``sort=throughput`` the decode rate timed by the proxy (a claim may tie the best measured rate, not beat it).
A worker cannot talk its way to the front.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from cocoon.protocol import JobRequest
from cocoon.proxy.routing.affinity import PrefixAffinity
from cocoon.proxy.routing.breaker import Breakers
from cocoon.proxy.routing.canary import CanaryBook, CanaryPolicy
from cocoon.proxy.routing.directory import WorkerEntry
from cocoon.proxy.routing.reputation import ReputationBook

DEFAULT_PREFILL_TOKENS_PER_S = 2000.0
# A worker on probation must look four times better to win; one whose breaker is open is a last resort
# (``rank`` puts it last anyway; the penalty tells clients reading the directory to seal elsewhere).
BREAKER_PENALTY = {"closed": 1.0, "half_open": 4.0, "open": 100.0}
CLAIM_CAP = 4.0  # a self-reported speed counts for at most this many times what peers report or show


@dataclass(frozen=True, slots=True)
class ScoreParts:
    """Why a worker ranks where it does; shown in ``GET /v1/directory``."""

    rtt_s: float
    queue_s: float
    free_slots: int
    prefill_s: float
    cached_tokens: int
    prefix_bonus_s: float
    reputation: float
    breaker: str
    price: int
    expected_latency_s: float
    score_s: float

    def as_json(self) -> dict[str, Any]:
        return {
            "rtt_ms": round(self.rtt_s * 1000, 3),
            "queue_ms": round(self.queue_s * 1000, 3),
            "free_slots": self.free_slots,
            "prefill_ms": round(self.prefill_s * 1000, 3),
            "cached_tokens": self.cached_tokens,
            "prefix_bonus_ms": round(self.prefix_bonus_s * 1000, 3),
            "reputation": round(self.reputation, 4),
            "breaker": self.breaker,
            "price_coefficient": self.price,
            "expected_latency_ms": round(self.expected_latency_s * 1000, 3),
            "score_ms": round(self.score_s * 1000, 3) if math.isfinite(self.score_s) else None,  # None: never routed
        }


@dataclass(frozen=True, slots=True)
class RoutingBook:
    """What the proxy has learnt about workers beyond their heartbeats."""

    reputation: ReputationBook
    breakers: Breakers
    affinity: PrefixAffinity
    canaries: CanaryBook = field(default_factory=lambda: CanaryBook(CanaryPolicy()))


def score(
    worker: WorkerEntry,
    prompt_tokens: int,
    prefix_hashes: list[str],
    book: RoutingBook,
    unknown_prefill_rate: float = DEFAULT_PREFILL_TOKENS_PER_S,
) -> ScoreParts:
    """``worker``'s expected latency for this prompt, and its score (lower is better); see the module docstring.

    A worker that has not reported its prefill rate yet is assumed to prefill at ``unknown_prefill_rate``.
    """
    # Jobs beyond the worker's slots wait for one to free up; the proxy's own in-flight count covers the
    # gap until the next heartbeat.
    slots = worker.register.slots
    busy = max(worker.inflight, worker.active_jobs + worker.queue_depth)
    waiting = max(0, busy - slots + 1)
    # Jobs beyond the slots wait for one to free up; jobs within them share the worker's compute, so a half-busy
    # worker answers later than an idle one.
    queue_s = waiting * worker.avg_job_s / slots + min(busy, slots) / slots * worker.avg_ttft_s
    rate = min(worker.prefill_tokens_per_s or unknown_prefill_rate, CLAIM_CAP * unknown_prefill_rate)
    cached = min(prompt_tokens, book.affinity.cached_tokens(worker.worker_id, prefix_hashes))
    prefill_s = prompt_tokens / rate
    bonus_s = cached / rate
    # However fast it claims to prefill, its first token has come no sooner than this (the proxy's clock).
    floor_s = worker.measured_ttft_s if worker.ttft_samples else 0.0
    expected = worker.rtt_s + queue_s + max(prefill_s - bonus_s, floor_s)
    reputation = book.reputation.factor(worker.worker_id)
    breaker = book.breakers.state(worker.worker_id)
    # A small floor keeps reputation meaningful between idle workers with zero expected latency.
    final = (expected + 0.001) / reputation * BREAKER_PENALTY[breaker] if reputation > 0 else math.inf
    return ScoreParts(
        rtt_s=worker.rtt_s,
        queue_s=queue_s,
        free_slots=max(0, slots - busy),
        prefill_s=prefill_s,
        cached_tokens=cached,
        prefix_bonus_s=bonus_s,
        reputation=reputation,
        breaker=breaker,
        price=worker.register.price_coefficient,
        expected_latency_s=expected,
        score_s=final,
    )


def rank(workers: list[WorkerEntry], request: JobRequest, book: RoutingBook) -> list[WorkerEntry]:
    """Workers allowed by the request's price cap and region, best first.

    ``provider.sort`` picks the key (latency by default, throughput, price), after ``provider.order``: the
    workers it names come first, in its order. Workers whose breaker is open come last, reached only when every
    other candidate failed. Ties keep the client's order.
    """
    prefs = request.routing
    # A worker caught by canaries serving another model (reputation zero) gets no job at all.
    allowed = [
        w
        for w in workers
        if prefs.admits(w.register.price_coefficient, w.register.region)
        and prefs.allows(w.worker_id)
        and book.reputation.factor(w.worker_id) > 0
    ]
    # A worker whose first heartbeat with a prefill rate has not come yet is compared at its peers' rate: a
    # fixed default far from the measured rates would decide the ranking by who reported first, not by speed.
    known = sorted(w.prefill_tokens_per_s for w in allowed if w.prefill_tokens_per_s > 0)
    # The lower median: with two workers, one boasting cannot set the bar it is capped against.
    unknown_rate = known[(len(known) - 1) // 2] if known else DEFAULT_PREFILL_TOKENS_PER_S
    measured_decode = [w.decode_tokens_per_s for w in allowed if w.decode_tokens_per_s > 0]
    keyed = []
    for w in allowed:
        parts = score(w, request.prompt_tokens, request.prefix_hashes, book, unknown_rate)
        held_back = not book.breakers.admits(w.worker_id)
        first = (held_back, prefs.order_index(w.worker_id))  # OpenRouter's provider.order, then the sort key
        if prefs.sort == "price":
            key: tuple[float, ...] = (*first, parts.price, parts.score_s)
        elif prefs.sort == "throughput":
            key = (*first, -_decode_rate(w, measured_decode), parts.score_s)
        else:
            key = (*first, parts.score_s)
        keyed.append((key, w))
    keyed.sort(key=lambda pair: pair[0])
    return [w for _, w in keyed]


def _decode_rate(worker: WorkerEntry, measured: list[float]) -> float:
    """The decode rate the proxy measured; until it has, the worker's claim, which may tie the best rate measured
    among its peers but not beat it."""
    if worker.decode_tokens_per_s > 0:
        return worker.decode_tokens_per_s
    return min(worker.tokens_per_s, max(measured)) if measured else worker.tokens_per_s
