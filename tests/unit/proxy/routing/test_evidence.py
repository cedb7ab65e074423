"""Evidence is timed on the proxy's clock: what a worker reports about its speed is never taken as measured."""

from __future__ import annotations

import pytest

from cocoon.protocol import Receipt
from cocoon.proxy.routing.affinity import PrefixAffinity
from cocoon.proxy.routing.breaker import Breakers
from cocoon.proxy.routing.evidence import EvidenceLog
from cocoon.proxy.routing.rank import RoutingBook
from cocoon.proxy.routing.reputation import ReputationBook
from tests.unit.proxy.routing.test_rank import worker


def receipt(completion_tokens: int, ttft_ms: float, duration_ms: float) -> Receipt:
    return Receipt(
        receipt_id="r",
        request_id="q",
        job_id="j",
        worker_id="w",
        model="m",
        model_hash="ab" * 32,
        prompt_tokens=10,
        cached_tokens=0,
        completion_tokens=completion_tokens,
        reasoning_tokens=0,
        request_sha256="",
        response_sha256="",
        finish_reason="length",
        started_at=0.0,
        ttft_ms=ttft_ms,
        duration_ms=duration_ms,
    )


def log() -> EvidenceLog:
    return EvidenceLog(RoutingBook(ReputationBook(), Breakers(), PrefixAffinity()))


def test_the_decode_rate_comes_from_the_proxys_clock_not_the_receipts_timings() -> None:
    evidence, w = log(), worker("w")
    # The receipt claims 101 tokens decoded in 1 ms; the proxy saw 2 s between first frame and end.
    evidence.finished(w, "ok", 2.5, receipt(101, ttft_ms=0.0, duration_ms=1.0), first_token_s=0.5)
    assert w.decode_tokens_per_s == pytest.approx(100 / 2.0)
    # Without the proxy's own first-frame time nothing is learnt.
    other = worker("other")
    evidence.finished(other, "ok", 2.5, receipt(101, ttft_ms=0.0, duration_ms=1.0))
    assert other.decode_tokens_per_s == 0


def test_a_worker_that_promises_nothing_is_still_held_to_what_the_proxy_measured() -> None:
    evidence, w = log(), worker("w", promised_ttft_s=0.0)
    for _ in range(3):
        evidence.first_token(w, 0.05, 0.0)
    assert w.measured_ttft_s == pytest.approx(0.05)
    evidence.first_token(w, 5.0, 0.0)  # far beyond 2 × 50 ms + slack
    assert evidence.book.reputation.view("w")["late"] == 1


def test_a_generous_promise_does_not_loosen_what_the_proxy_measured() -> None:
    evidence, w = log(), worker("w", promised_ttft_s=60.0)
    for _ in range(3):
        evidence.first_token(w, 0.05, 0.0)
    evidence.first_token(w, 5.0, 0.0)
    assert evidence.book.reputation.view("w")["late"] == 1
