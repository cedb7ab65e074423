"""The SDK pays only receipts that verified, refuses the rest, and names the request when the proxy fails it.

Real: the SDK, attestation, sealing, chunks and receipts. Recorded (``fakes.py``): the proxy's directory and
its relay of a worker's answer, served through ``httpx.MockTransport``; a payer that writes down its calls.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from cocoon.chain.pricing import Cost
from cocoon.client import CocoonClient, Completion, TextEvent
from cocoon.config import ClientSettings
from cocoon.crypto import SigningKey
from cocoon.errors import NoCapacity, PaymentRequired, ReceiptInvalid, UpstreamFailed, UpstreamTimeout
from cocoon.protocol import JobRequest, Receipt
from cocoon.protocol.payload import ChunkPayload, SealedMessage, SealedParams
from tests.unit.client.fakes import MODEL, FakeWorker, dev_policy, frames_response, recorded_proxy

WORKER = FakeWorker()


class Payer:
    """A ``ChannelPayer`` that writes down what it is asked to pay and refuse."""

    max_coefficient = 4000

    def __init__(self) -> None:
        self.paid: list[list[str]] = []
        self.rejected: list[str] = []

    async def auth(self, request_id: str) -> None:
        return None

    async def pay(self, verified: Sequence[Receipt], coefficients: Mapping[str, int]) -> Cost:
        self.paid.append([r.receipt_id for r in verified])
        return Cost(prompt=1, completion=2)

    async def reject(self, receipt_id: str, reason: str) -> None:
        self.rejected.append(receipt_id)

    def finished(self, request_id: str) -> None:
        return None


def client(transport: httpx.AsyncBaseTransport, payer: Payer | None = None) -> CocoonClient:
    http = httpx.AsyncClient(transport=transport, base_url="http://proxy.test")
    return CocoonClient("http://proxy.test", dev_policy(), http=http, payer=payer)


async def ask(sdk: CocoonClient) -> list[Any]:
    messages = [SealedMessage(role="user", content="Name three colours.")]
    return [e async for e in sdk.stream("chat", MODEL, messages=messages, params=SealedParams(max_tokens=4))]


def answer(signer: SigningKey | None = None) -> Any:
    def reply(job: JobRequest, workers: Sequence[FakeWorker]) -> httpx.Response:
        turn, _ = WORKER.take(job)
        frames = [turn.start(), turn.text("Red"), turn.chunk(ChunkPayload(finish_reason="stop"))]
        return frames_response([*frames, turn.end(signer=signer)])

    return reply


async def test_the_client_pays_the_receipt_once_it_has_verified() -> None:
    payer = Payer()
    async with client(recorded_proxy([WORKER], answer()), payer) as sdk:
        events = await ask(sdk)
    assert events[0] == TextEvent("Red", 1, WORKER.worker_id)
    final = events[-1]
    assert isinstance(final, Completion)
    assert payer.paid == [[final.receipts[0].receipt_id]] and payer.rejected == []
    assert final.cost == Cost(prompt=1, completion=2)


async def test_the_client_pays_nothing_when_the_receipt_is_forged() -> None:
    payer = Payer()
    async with client(recorded_proxy([WORKER], answer(signer=SigningKey.generate())), payer) as sdk:
        with pytest.raises(ReceiptInvalid, match="signature"):
            await ask(sdk)
    assert payer.paid == [] and len(payer.rejected) == 1


async def test_a_proxy_that_times_out_is_an_upstream_timeout_naming_the_request() -> None:
    def slow(job: JobRequest, workers: Sequence[FakeWorker]) -> httpx.Response:
        raise httpx.ReadTimeout("no bytes", request=httpx.Request("POST", "http://proxy.test/v1/jobs"))

    async with client(recorded_proxy([WORKER], slow)) as sdk:
        with pytest.raises(UpstreamTimeout, match=r"request req-[0-9a-f]+-[0-9a-f]{32}, timeout 120s"):
            await ask(sdk)


async def test_a_broken_connection_is_retried_once_then_an_upstream_failure() -> None:
    calls: list[str] = []

    def broken(job: JobRequest, workers: Sequence[FakeWorker]) -> httpx.Response:
        calls.append(job.request_id)
        raise httpx.RemoteProtocolError("peer closed", request=httpx.Request("POST", "http://proxy.test/v1/jobs"))

    async with client(recorded_proxy([WORKER], broken)) as sdk:
        with pytest.raises(UpstreamFailed, match="broke off"):
            await ask(sdk)
    assert len(set(calls)) == 2  # sealed anew for the second try


async def test_the_client_seals_only_to_workers_its_payer_would_pay() -> None:
    """A worker above the payer's ``max_coefficient`` would work for nothing (its receipt is refused) and spend
    the client's credit limit on the refusal: the client does not seal to it at all."""
    dear, cheap = FakeWorker(price_coefficient=100_000), FakeWorker(price_coefficient=1500)
    sealed_to: list[set[str]] = []

    def reply(job: JobRequest, workers: Sequence[FakeWorker]) -> httpx.Response:
        sealed_to.append({k.worker_id for k in job.keys})
        return httpx.Response(503, json=NoCapacity("recorded").to_openai())

    async with client(recorded_proxy([dear, cheap], reply), Payer()) as sdk:
        with pytest.raises(NoCapacity):
            await ask(sdk)
    assert sealed_to and all(keys == {cheap.worker_id} for keys in sealed_to)

    async with client(recorded_proxy([dear], reply), Payer()) as sdk:
        with pytest.raises(NoCapacity, match="max_price=4000"):
            await ask(sdk)


async def test_a_request_moves_to_the_next_proxy_when_the_healthiest_cannot_be_reached() -> None:
    """Before the first byte, a dead proxy costs the app nothing: the request is sealed anew to the other
    proxy's directory workers, and the dead one is rested (skipped by the next request)."""
    posted: list[str] = []

    def dead(request: httpx.Request) -> httpx.Response:
        posted.append("dead")
        raise httpx.ConnectError("refused", request=request)

    alive = recorded_proxy([WORKER], answer())
    http = {
        "http://dead.test": httpx.AsyncClient(transport=httpx.MockTransport(dead), base_url="http://dead.test"),
        "http://alive.test": httpx.AsyncClient(transport=alive, base_url="http://alive.test"),
    }
    async with CocoonClient(["http://dead.test", "http://alive.test"], dev_policy(), http=http) as sdk:
        assert isinstance((await ask(sdk))[-1], Completion)
        assert sdk.proxies.ranked()[0].url == "http://alive.test"
        assert isinstance((await ask(sdk))[-1], Completion)
    assert posted == ["dead"]  # tried once (its directory), then rested


async def test_a_proxy_the_client_has_no_deposit_with_is_rested_not_asked_first_by_every_request() -> None:
    """A client of several proxies may have funded only some: an unfunded proxy answers 402, the request moves
    on, and the next requests go to the funded one first (before, a proxy that never succeeded kept the score
    of a new one, 0, and was asked first by every request)."""
    posted: list[str] = []

    def unfunded(job: JobRequest, workers: Sequence[FakeWorker]) -> httpx.Response:
        posted.append("unfunded")
        return httpx.Response(402, json=PaymentRequired("no channel with this proxy: deposit first").to_openai())

    def funded(job: JobRequest, workers: Sequence[FakeWorker]) -> httpx.Response:
        posted.append("funded")
        return answer()(job, workers)

    http = {
        "http://unfunded.test": httpx.AsyncClient(
            transport=recorded_proxy([WORKER], unfunded), base_url="http://unfunded.test"
        ),
        "http://funded.test": httpx.AsyncClient(
            transport=recorded_proxy([WORKER], funded), base_url="http://funded.test"
        ),
    }
    async with CocoonClient(["http://unfunded.test", "http://funded.test"], dev_policy(), http=http) as sdk:
        for _ in range(4):
            assert isinstance((await ask(sdk))[-1], Completion)
        assert sdk.proxies.ranked()[0].url == "http://funded.test"
    assert posted == ["unfunded", "funded", "funded", "funded", "funded"]


async def test_the_sidecars_prefix_salt_outlives_a_restart(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Its prefix hashes and prompt-cache scope stay the same after a restart (workers' cached prompts still
    serve it); another sidecar's differ; a data_dir it cannot write gives a salt of its own run, not a crash."""
    salts = []
    for data_dir in (tmp_path / "a", tmp_path / "a", tmp_path / "b"):
        client = CocoonClient.for_settings(ClientSettings(data_dir=data_dir, proxy_url="http://127.0.0.1:9"))
        salts.append(client.prefix_salt)
        await client.aclose()
    assert salts[0] == salts[1] != salts[2]
    unwritable = tmp_path / "a-file"  # a folder cannot be made under it, whoever runs this (root too)
    unwritable.write_text("")
    client = CocoonClient.for_settings(ClientSettings(data_dir=unwritable / "client", proxy_url="http://127.0.0.1:9"))
    await client.aclose()
    assert len(client.prefix_salt) == 32 and client.prefix_salt not in salts
    assert "prefix salt not saved" in caplog.text
