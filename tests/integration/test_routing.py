"""Routing on real networks of synthetic workers: hedging, affinity, reputation, and a self-explaining directory."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cocoon.attestation import AttestationPolicy
from cocoon.client import CocoonClient, Completion, TextEvent
from cocoon.crypto import load_or_create_node_keys
from cocoon.engines.config import DEFAULT_MODEL
from cocoon.errors import ReceiptInvalid
from cocoon.local import LocalNetwork
from cocoon.protocol import RoutingPrefs
from cocoon.protocol.payload import SealedMessage, SealedParams
from tests.helpers.network import start_network

STORY = "Once upon a time a lighthouse keeper counted the ships that passed his rock every night. " * 12


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory, bundled_model_path: Path) -> Iterator[LocalNetwork]:
    net = start_network(
        tmp_path_factory.mktemp("routing"),
        workers=2,
        model_path=bundled_model_path,
        engine={"kind": "synthetic", "synthetic_tokens_per_s": 200},
    )
    yield net
    net.stop()


async def ask(client: CocoonClient, text: str, routing: RoutingPrefs | None = None) -> tuple[str, Completion]:
    out, final = [], None
    async for event in client.stream(
        "chat",
        DEFAULT_MODEL,
        messages=[SealedMessage(role="user", content=text)],
        params=SealedParams(max_tokens=12),
        routing=routing,
    ):
        if isinstance(event, TextEvent):
            out.append(event.text)
        elif isinstance(event, Completion):
            final = event
    assert final is not None
    return "".join(out), final


async def test_a_hedged_request_pays_the_slower_worker_only_its_prefill(synthetic: LocalNetwork) -> None:
    async with CocoonClient(synthetic.proxy_url, AttestationPolicy(**synthetic.policy)) as client:
        text, final = await ask(client, STORY, RoutingPrefs(hedge=True))
    assert len(text.split()) == 12
    winner, loser = final.receipts
    assert winner.worker_id != loser.worker_id
    assert winner.completion_tokens == 12
    assert loser.completion_tokens == 0 and loser.prompt_tokens > 0
    assert loser.finish_reason == "cancelled"
    assert final.usage.completion_tokens == 12


async def test_a_conversation_returns_to_the_worker_that_has_its_prefix_cached(synthetic: LocalNetwork) -> None:
    async with CocoonClient(synthetic.proxy_url, AttestationPolicy(**synthetic.policy)) as client:
        served = []
        conversation = STORY
        for turn in range(5):
            reply, final = await ask(client, conversation)
            served.append(final.receipts[0].worker_id)
            conversation += reply + f" Tell me more, part {turn}. " * 8
        # The proxy learnt the conversation's salted block hashes for that worker (ranking by them: unit tests).
        async with httpx.AsyncClient() as http:
            workers = (await http.get(f"{synthetic.proxy_url}/v1/directory")).json()["workers"]
    assert len(set(served)) == 1, (
        f"turns went to {served}; directory: {[(w['worker_id'], w['score']) for w in workers]}"
    )
    warm = next(w for w in workers if w["worker_id"] == served[0])
    assert warm["score"]["cached_prefixes"] >= len(STORY) // 256


def test_the_directory_shows_why_each_worker_ranks_where_it_does(synthetic: LocalNetwork) -> None:
    workers = httpx.get(f"{synthetic.proxy_url}/v1/directory", timeout=5).json()["workers"]
    assert len(workers) == 2
    for w in workers:
        assert {"rtt_ms", "queue_ms", "free_slots", "prefill_ms", "reputation", "breaker", "price_coefficient"} <= set(
            w["score"]
        )
        assert {"expected_latency_ms", "score_ms", "promised_ttft_ms", "prefill_tokens_per_s"} <= set(w["score"])
        assert {"ok", "timeout", "dropped", "bad_receipt", "late", "factor"} <= set(w["reputation"])
        assert w["breaker"]["state"] == "closed"
    assert sum(w["reputation"]["ok"] for w in workers) >= 1


async def test_a_worker_whose_receipts_do_not_verify_loses_its_traffic(
    tmp_path: Path, bundled_model_path: Path
) -> None:
    net = start_network(
        tmp_path, workers=2, model_path=bundled_model_path, engine={"kind": "synthetic", "synthetic_tokens_per_s": 400}
    )
    try:
        # The forger is the cheapest, so price-sorted requests go to it first.
        net.worker_options = {"chaos_bad_receipts": "signature", "price_coefficient": 500}
        forger = load_or_create_node_keys(net.home / "worker-3" / "keys.json").node_id
        net.add_worker(3)
        async with CocoonClient(net.proxy_url, AttestationPolicy(**net.policy)) as client:
            for _ in range(600):  # poll up to 30 s for the third worker to be attested and listed
                if len(await client.directory.workers(refresh=True)) == 3:
                    break
                await asyncio.sleep(0.05)
            outcomes = []
            for _ in range(12):
                try:
                    _, final = await ask(client, STORY, RoutingPrefs(sort="price"))
                    outcomes.append(final.receipts[0].worker_id)
                except ReceiptInvalid:
                    outcomes.append("forged")
            async with httpx.AsyncClient() as http:
                workers = (await http.get(f"{net.proxy_url}/v1/directory")).json()["workers"]
    finally:
        net.stop()
    assert outcomes[0] == "forged"  # the client paid nothing for it (test_money)
    assert outcomes.count("forged") <= 3 and forger not in outcomes
    assert all(o != "forged" for o in outcomes[-6:])
    seen = next(w for w in workers if w["worker_id"] == forger)
    assert seen["reputation"]["bad_receipt"] > 1.9 and seen["reputation"]["factor"] < 0.5  # decaying counts
    assert seen["breaker"]["state"] in ("open", "half_open")
