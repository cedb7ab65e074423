"""The router prefers the worker that will answer first, trusts evidence, and honours the request's knobs."""

from __future__ import annotations

import pytest

from cocoon.attestation import VerifiedWorker
from cocoon.protocol import JobRequest, ModelOffer, Register, RoutingPrefs, WrappedKeyWire
from cocoon.protocol.messages import PREFIX_BLOCK_TOKENS
from cocoon.proxy.routing.affinity import PrefixAffinity
from cocoon.proxy.routing.breaker import Breakers
from cocoon.proxy.routing.directory import WorkerEntry
from cocoon.proxy.routing.rank import RoutingBook, rank, score
from cocoon.proxy.routing.reputation import ReputationBook


async def _send(data: bytes) -> None:
    """Workers in these tests are never sent anything."""


def worker(name: str, *, slots: int = 2, price: int = 1000, region: str = "", **load: float) -> WorkerEntry:
    register = Register(
        worker_id=name,
        software="test",
        models=[ModelOffer(model="m", model_hash="ab" * 32, context_length=4096)],
        slots=slots,
        price_coefficient=price,
        region=region,
        ed25519_pub=b"e" * 32,
        x25519_pub=b"x" * 32,
        attestation={},
    )
    entry = WorkerEntry(name, register, VerifiedWorker(b"x", b"e", frozenset(), "m", "simulated"), _send)
    for field, value in load.items():
        setattr(entry, field, value)
    return entry


def request(prompt_tokens: int = 0, hashes: list[str] | None = None, **prefs: object) -> JobRequest:
    return JobRequest(
        request_id="r",
        model="m",
        kind="chat",
        max_tokens=16,
        prompt_tokens=prompt_tokens,
        keys=[WrappedKeyWire(worker_id="a", enc=b"", wrapped=b"")],
        ciphertext=b"",
        routing=RoutingPrefs.model_validate(prefs),
        prefix_hashes=hashes or [],
    )


def book() -> RoutingBook:
    return RoutingBook(ReputationBook(), Breakers(threshold=1), PrefixAffinity())


def names(workers: list[WorkerEntry]) -> list[str]:
    return [w.worker_id for w in workers]


def test_a_worker_with_a_queue_ranks_behind_an_idle_one() -> None:
    busy = worker("busy", active_jobs=2, queue_depth=3, avg_job_s=2.0)
    idle = worker("idle")
    assert names(rank([busy, idle], request(), book())) == ["idle", "busy"]
    assert score(busy, 0, [], book()).queue_s == pytest.approx(4 * 2.0 / 2 + busy.avg_ttft_s)


def test_an_idle_worker_beats_one_already_running_a_job() -> None:
    half = worker("half", active_jobs=1)
    idle = worker("idle")
    assert names(rank([half, idle], request(), book())) == ["idle", "half"]


def test_round_trip_time_breaks_ties() -> None:
    near, far = worker("near", rtt_s=0.002), worker("far", rtt_s=0.080)
    assert names(rank([far, near], request(), book())) == ["near", "far"]


def test_a_worker_with_bad_evidence_loses_to_a_slightly_slower_honest_one() -> None:
    routing = book()
    for _ in range(5):
        routing.reputation.record("flaky", "dropped")
    flaky, honest = worker("flaky", rtt_s=0.001), worker("honest", rtt_s=0.004)
    assert names(rank([flaky, honest], request(), routing)) == ["honest", "flaky"]


def test_an_open_breaker_sends_a_worker_to_the_back_but_keeps_it_as_a_last_resort() -> None:
    routing = book()
    routing.breakers.failure("broken")
    broken, slow = worker("broken"), worker("slow", queue_depth=10, active_jobs=2)
    assert names(rank([broken, slow], request(), routing)) == ["slow", "broken"]


def test_a_prefix_cache_hit_saves_the_prefill_it_would_redo() -> None:
    routing = book()
    hashes = [f"{i:016x}" for i in range(8)]
    routing.affinity.remember("warm", hashes[:6])
    warm, cold = worker("warm", rtt_s=0.003), worker("cold", rtt_s=0.001)
    prompt = 8 * PREFIX_BLOCK_TOKENS
    assert names(rank([cold, warm], request(prompt, hashes), routing)) == ["warm", "cold"]
    parts = score(warm, prompt, hashes, routing)
    assert parts.cached_tokens == 6 * PREFIX_BLOCK_TOKENS
    assert parts.prefix_bonus_s > 0


def test_a_warm_worker_that_has_not_reported_its_prefill_rate_is_judged_at_its_peers_rate() -> None:
    """A measured 30k tokens/s against a 2k default would send the conversation away from its cache just
    because the warm worker's next heartbeat had not come yet."""
    routing = book()
    hashes = [f"{i:016x}" for i in range(8)]
    routing.affinity.remember("warm", hashes[:7])
    warm, cold = worker("warm", rtt_s=0.001), worker("cold", rtt_s=0.001, prefill_tokens_per_s=30_000.0)
    assert names(rank([cold, warm], request(8 * PREFIX_BLOCK_TOKENS, hashes), routing)) == ["warm", "cold"]


def test_price_cap_and_region_filter_and_price_sort_orders() -> None:
    cheap, dear, far = worker("cheap", price=800, rtt_s=0.05), worker("dear", price=3000), worker("far", region="us")
    assert names(rank([cheap, dear, far], request(max_price=2000), book())) == ["far", "cheap"]
    assert names(rank([cheap, dear, far], request(region="us"), book())) == ["far"]
    assert names(rank([dear, far, cheap], request(sort="price"), book())) == ["cheap", "far", "dear"]


def test_throughput_sort_prefers_the_fastest_decoder() -> None:
    slow, fast = worker("slow", decode_tokens_per_s=20.0), worker("fast", decode_tokens_per_s=90.0)
    assert names(rank([slow, fast], request(sort="throughput"), book())) == ["fast", "slow"]


def test_a_worker_claiming_a_huge_prefill_rate_loses_once_the_proxy_has_timed_it() -> None:
    """Its heartbeat says 10M tokens/s; the proxy's clock says its first tokens take 1.5 s."""
    boaster = worker("boaster", prefill_tokens_per_s=1e7, measured_ttft_s=1.5, ttft_samples=3)
    honest = worker("honest", prefill_tokens_per_s=3000.0, measured_ttft_s=0.01, ttft_samples=3)
    assert names(rank([boaster, honest], request(600), book())) == ["honest", "boaster"]
    assert score(boaster, 600, [], book()).expected_latency_s >= 1.5


def test_an_untimed_worker_may_claim_at_most_a_few_times_its_peers_prefill_rate() -> None:
    boaster = worker("boaster", prefill_tokens_per_s=1e7)
    parts = score(boaster, 12_000, [], book(), unknown_prefill_rate=3000.0)
    assert parts.prefill_s == pytest.approx(12_000 / (4 * 3000.0))  # not 1.2 ms


def test_throughput_sort_never_puts_a_claimed_rate_ahead_of_a_measured_one() -> None:
    claims = worker("claims", tokens_per_s=1e7, rtt_s=0.002)
    measured = worker("measured", decode_tokens_per_s=90.0, rtt_s=0.001)
    slower = worker("slower", decode_tokens_per_s=30.0)
    ranked = names(rank([claims, slower, measured], request(sort="throughput"), book()))
    assert ranked == ["measured", "claims", "slower"]  # its 10M tokens/s count as the best measured, 90


def test_provider_order_comes_first_and_only_ignore_filter() -> None:
    fast, slow, slowest = worker("fast"), worker("slow", queue_depth=1), worker("slowest", queue_depth=2)
    workers = [fast, slow, slowest]
    assert names(rank(workers, request(order=["slowest", "slow"]), book())) == ["slowest", "slow", "fast"]
    assert names(rank(workers, request(order=["slow"], allow_fallbacks=False), book())) == ["slow"]
    assert names(rank(workers, request(only=["slow", "fast"]), book())) == ["fast", "slow"]
    assert names(rank(workers, request(ignore=["fast"]), book())) == ["slow", "slowest"]
