"""Routing: rank the live workers a request was sealed to by expected latency.

``expected_latency = rtt + queue × avg_job_time + prompt_tokens / prefill_rate`` (COCOON uses running ×
avg_time). The proxy counts its own in-flight assignments too, so a burst is spread before heartbeats
catch up.
"""

from __future__ import annotations

from dataclasses import dataclass

from cocoon.protocol import RoutingPrefs
from cocoon.proxy.directory import WorkerEntry

DEFAULT_PREFILL_TOKENS_PER_S = 2000.0


@dataclass(frozen=True, slots=True)
class ScoreParts:
    """Why a worker ranks where it does; shown in ``GET /v1/directory``."""

    rtt_s: float
    queue_s: float
    prefill_s: float
    expected_latency_s: float


def score(worker: WorkerEntry, prompt_tokens: int) -> ScoreParts:
    # Jobs beyond the worker's slots wait a whole average job each; the proxy's own in-flight count
    # covers the gap until the next heartbeat.
    busy = max(worker.inflight, worker.active_jobs + worker.queue_depth)
    waiting = max(0, busy - worker.register.slots + 1)
    queue_s = waiting * worker.avg_job_s
    prefill_s = prompt_tokens / DEFAULT_PREFILL_TOKENS_PER_S
    total = worker.rtt_s + queue_s + prefill_s + worker.avg_ttft_s
    return ScoreParts(worker.rtt_s, queue_s, prefill_s, total)


def rank(workers: list[WorkerEntry], prompt_tokens: int, prefs: RoutingPrefs) -> list[WorkerEntry]:
    """Workers allowed by ``prefs``, best first. Ties keep the order given (the client's order)."""
    allowed = [
        w
        for w in workers
        if (prefs.max_price is None or w.register.price_coefficient <= prefs.max_price)
        and (not prefs.region or w.register.region == prefs.region)
    ]
    if prefs.sort == "price":
        return sorted(
            allowed, key=lambda w: (w.register.price_coefficient, score(w, prompt_tokens).expected_latency_s)
        )
    if prefs.sort == "throughput":
        return sorted(allowed, key=lambda w: -w.tokens_per_s)
    return sorted(allowed, key=lambda w: score(w, prompt_tokens).expected_latency_s)
