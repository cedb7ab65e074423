"""Attacks on the seal and the client's checks, mounted against a real network (proxy, worker, sidecar as processes).

The attackers: a tampering relay between the SDK and the proxy (an HTTP server on loopback that replays,
rewrites, duplicates or inflates what passes), and a rogue worker (this process, attested and registered over
the real WebSocket protocol by the real worker code, running jobs its own way). Each test says what the attack
won before the fix (issue 8) and asserts the user-visible outcome that now holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import signal
import socket
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
import tomli_w
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from websockets.asyncio.server import ServerConnection, serve

from cocoon.attestation import AttestationPolicy
from cocoon.client import CocoonClient, Completion, TextEvent
from cocoon.config import WorkerSettings
from cocoon.crypto import ResponseDigest, load_or_create_node_keys, request_digest, sign_receipt
from cocoon.engines.config import DEFAULT_MODEL
from cocoon.errors import BadRequest, ReceiptInvalid, UpstreamFailed
from cocoon.local import LocalNetwork, free_port
from cocoon.local.processes import spawn, stop_all
from cocoon.protocol import (
    Chunk,
    FrameReader,
    Job,
    JobEnd,
    JobRequest,
    Receipt,
    ResponseSealer,
    RoutingPrefs,
    WrappedKey,
    WrappedKeyWire,
    frame,
    open_request,
    pack,
    seal_request,
    unpack_as,
    unpack_raw,
    unwrap_content_key,
)
from cocoon.protocol.payload import ChunkPayload, RequestPayload, SealedMessage, SealedParams
from cocoon.protocol.replay import START_GRACE_S
from cocoon.worker.node import WorkerNode
from tests.helpers.network import directory, start_network, wait_for

ROGUE = "rogue"  # the rogue worker's region: requests routed there are sealed to it alone
Frames = list[dict[str, Any]]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, bundled_model_path: Path) -> Iterator[LocalNetwork]:
    network = start_network(
        tmp_path_factory.mktemp("seal-attacks"),
        workers=1,
        model_path=bundled_model_path,
        engine={"kind": "synthetic", "synthetic_tokens_per_s": 400},
    )
    yield network
    network.stop()


# ---- the attackers ---------------------------------------------------------------------------------

Tamper = Callable[[bytes, Callable[[bytes], Awaitable[tuple[int, bytes]]]], Awaitable[tuple[int, bytes]]]


@contextlib.asynccontextmanager
async def tampering_relay(proxy_url: str, tamper: Tamper) -> AsyncIterator[str]:
    """An HTTP relay on a free loopback port in front of the proxy; ``POST /v1/jobs`` goes through ``tamper``.

    ``tamper(body, forward)`` gets the client's sealed request and ``forward`` (post a body to the real proxy:
    its status and whole response), and returns what the client receives.
    """
    http = httpx.AsyncClient(base_url=proxy_url, timeout=60)

    async def forward(body: bytes) -> tuple[int, bytes]:
        response = await http.post("/v1/jobs", content=body, headers={"content-type": "application/msgpack"})
        return response.status_code, response.content

    async def jobs(request: Request) -> Response:
        status, content = await tamper(await request.body(), forward)
        media = "application/x-cocoon-frames" if status == 200 else "application/json"
        return Response(content, status_code=status, media_type=media)

    async def passthrough(request: Request) -> Response:
        response = await http.get(request.url.path, params=dict(request.query_params))
        return Response(response.content, response.status_code, media_type="application/json")

    app = Starlette(
        routes=[Route("/v1/jobs", jobs, methods=["POST"]), Route("/{path:path}", passthrough, methods=["GET"])]
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the tampering relay did not start"
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        await http.aclose()


RogueJob = Callable[[Job, Callable[[Any], Awaitable[None]], "Rogue"], Awaitable[None]]


class Rogue:
    """A worker run in this process by the real worker code (attestation, registration, socket), whose jobs
    run ``behaviour`` instead of the honest runner."""

    def __init__(self, net: LocalNetwork, home: Path, behaviour: RogueJob) -> None:
        settings = WorkerSettings.load(
            net.home / "worker-1.toml", keys_file=home / "rogue-keys.json", region=ROGUE, slots=4
        )
        self.net = net
        self.keys = load_or_create_node_keys(settings.keys_file)
        authority = getattr(net, "authority", None)  # the network's attestation authority, where it holds one
        if authority is not None:
            authority.enroll(self.keys)  # an attested worker gone bad: what it runs is its own business
        self.node = WorkerNode(settings)
        self.behaviour = behaviour
        self.cancels: list[str] = []

    async def __aenter__(self) -> Rogue:
        await self.node.start()
        for link in self.node.links:
            link.runner.run = self._run  # type: ignore[method-assign]
        self._task = asyncio.create_task(self.node.serve())
        await until(self.joined, 30, "the rogue worker to join the directory")
        return self

    async def joined(self) -> bool:
        return any(w["worker_id"] == self.keys.node_id for w in await asyncio.to_thread(directory, self.net))

    async def __aexit__(self, *exc: object) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self, job: Job, send: Callable[[Any], Awaitable[None]]) -> None:
        try:
            await self.behaviour(job, send, self)
        except asyncio.CancelledError:
            self.cancels.append(job.job_id)
            raise

    def open(self, job: Job) -> tuple[bytes, bytes, RequestPayload]:
        """The content key, plaintext and payload of ``job``, opened with the rogue's attested key."""
        wrapped = WrappedKey(self.keys.node_id, job.enc, job.wrapped_key)
        content_key = unwrap_content_key(job.request_id, wrapped, self.keys.sealing.private)
        plaintext = open_request(job.request_id, job.ciphertext, content_key)
        return content_key, plaintext, RequestPayload.model_validate(msgpack.unpackb(plaintext, raw=False))


async def until(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll ``condition`` without blocking the loop (the rogue worker runs on it); fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.05)


class ChunkSealer:
    """Seals one job's chunks as a worker does (with this tree's response-key nonce, when it has one)."""

    def __init__(self, content_key: bytes, request_id: str, worker_id: str, salt: bytes) -> None:
        self.digest = ResponseDigest(salt)
        self.seq = 0
        self.nonce = b""
        if len(inspect.signature(ResponseSealer).parameters) == 4:  # the tree since the per-job response key
            from cocoon.protocol import new_key_nonce

            self.nonce = new_key_nonce()
            self.sealer = ResponseSealer(content_key, request_id, worker_id, self.nonce)
        else:
            self.sealer = ResponseSealer(content_key, request_id, worker_id)  # type: ignore[call-arg]

    def chunk(self, job_id: str, payload: ChunkPayload) -> Chunk:
        data = msgpack.packb(payload.model_dump(exclude_defaults=True), use_bin_type=True)
        self.digest.update(data)
        fields: dict[str, Any] = {"job_id": job_id, "seq": self.seq, "data": self.sealer.seal(self.seq, data)}
        if self.seq == 0 and self.nonce:
            fields["key_nonce"] = self.nonce
        self.seq += 1
        return Chunk(**fields)


def signed_end(r: Rogue, job: Job, plaintext: bytes, sealer: ChunkSealer, **counts: int) -> JobEnd:
    receipt = Receipt(
        receipt_id=f"rcpt-{job.job_id}",
        request_id=job.request_id,
        job_id=job.job_id,
        worker_id=r.keys.node_id,
        model=job.model,
        model_hash=r.node.engines[job.model].info.model_hash,
        prompt_tokens=counts.get("prompt_tokens", 3),
        cached_tokens=0,
        completion_tokens=counts.get("completion_tokens", 0),
        reasoning_tokens=0,
        request_sha256=request_digest(plaintext),
        response_sha256=sealer.digest.hexdigest(),
        finish_reason="length",
        started_at=time.time(),
        ttft_ms=1.0,
        duration_ms=2.0,
    )
    return JobEnd(job_id=job.job_id, receipt=receipt, signature=sign_receipt(r.keys.signing, receipt))


class RecordingPayer:
    """Stands in for the SDK's ``ChannelPayer``: records what the client would pay and refuse."""

    max_coefficient = 4000  # as ChannelPayer's default: the SDK seals only to workers within it

    def __init__(self) -> None:
        self.paid: list[str] = []
        self.rejected: list[str] = []

    async def auth(self, request_id: str) -> None:
        return None

    async def pay(self, receipts: Any, coefficients: Any) -> None:
        self.paid += [r.receipt_id for r in receipts]

    async def reject(self, receipt_id: str, reason: str) -> None:
        self.rejected.append(receipt_id)

    def finished(self, request_id: str) -> None:
        return None


def decode(body: bytes) -> Frames:
    return [unpack_raw(raw) for raw in FrameReader().feed(body)]


def encode(frames: Frames) -> bytes:
    return b"".join(frame(msgpack.packb(f, use_bin_type=True)) for f in frames)


async def ask(
    client: CocoonClient, max_tokens: int = 12, routing: RoutingPrefs | None = None
) -> tuple[str, Completion]:
    text, final = [], None
    async for event in client.stream(
        "chat",
        DEFAULT_MODEL,
        messages=[SealedMessage(role="user", content="Tell me about lighthouses.")],
        params=SealedParams(max_tokens=max_tokens),
        routing=routing,
    ):
        if isinstance(event, TextEvent):
            text.append(event.text)
        elif isinstance(event, Completion):
            final = event
    assert final is not None
    return "".join(text), final


def client_of(net: LocalNetwork, url: str, **options: Any) -> CocoonClient:
    return CocoonClient(url, AttestationPolicy(**net.policy), **options)


# ---- F8: one keystream per job ---------------------------------------------------------------------


async def test_a_relay_replaying_a_sealed_request_gets_it_run_once(net: LocalNetwork) -> None:
    """Before: the proxy ran a replayed request again, and the worker sealed the new run under the same key and
    chunk nonces, so XOR of two runs' chunks gave away the plaintext. Now the replay is refused."""
    replays: list[tuple[int, bytes]] = []

    async def replay(body: bytes, forward: Callable[[bytes], Awaitable[tuple[int, bytes]]]) -> tuple[int, bytes]:
        answer = await forward(body)
        for _ in range(3):
            replays.append(await forward(body))
        return answer

    async with tampering_relay(net.proxy_url, replay) as url, client_of(net, url, candidates=1) as client:
        text, _ = await ask(client)
    assert text
    served = [decode(body) for status, body in replays if status == 200]
    assert [status for status, _ in replays] == [409, 409, 409], f"{len(served)} replays were served"


async def test_a_relay_replaying_a_request_after_the_proxy_restarts_gets_it_refused(
    tmp_path_factory: pytest.TempPathFactory, bundled_model_path: Path
) -> None:
    """Before: the proxy's record of relayed ids lived in its memory only (100,000 of them), so a request
    captured on the way ran again once the proxy restarted (or that many others had passed), the worker that
    ran it stripped from the replay so the other one, which had never seen it, took it. Now the id says when it
    was minted and the restarted proxy refuses any minted before it started."""
    two = start_network(
        tmp_path_factory.mktemp("replay-restart"),
        workers=2,
        model_path=bundled_model_path,
        engine={"kind": "synthetic", "synthetic_tokens_per_s": 400},
    )
    try:
        captured: list[bytes] = []

        async def capture(request: httpx.Request) -> None:
            if request.url.path == "/v1/jobs":
                captured.append(request.content)

        async with client_of(two, two.proxy_url) as client:
            client.proxies.proxies[0].http.event_hooks = {"request": [capture]}
            _, final = await ask(client, max_tokens=4)
        job = unpack_as(captured[0], JobRequest)
        others = [k for k in job.keys if k.worker_id != final.receipts[0].worker_id]
        assert others, "the request was sealed to one worker only: nothing to replay to"
        await asyncio.sleep(START_GRACE_S)  # what was minted in the last second before a restart is still taken

        proxy = two.child("proxy")
        os.kill(proxy.process.pid, signal.SIGKILL)
        proxy.process.wait(10)
        two.children.remove(proxy)
        two._spawn("proxy", "proxy.toml")
        wait_for(lambda: len(_directory_or_empty(two)) == 2, 60, "both workers to re-register")

        replay = pack(job.model_copy(update={"keys": others}))
        async with httpx.AsyncClient(base_url=two.proxy_url, timeout=30) as http:
            answer = await http.post("/v1/jobs", content=replay, headers={"content-type": "application/msgpack"})
        async with client_of(two, two.proxy_url) as client:
            fresh = await ask(client, max_tokens=4)  # a client's new request still runs
        assert answer.status_code == 400, f"the replay got {answer.status_code}: {answer.content[:200]!r}"
        assert answer.json()["error"]["code"] == "request_expired"
        assert "before this proxy started" in answer.json()["error"]["message"]
        assert fresh[0]
    finally:
        two.stop()


def _directory_or_empty(net: LocalNetwork) -> list[dict[str, object]]:
    try:
        return directory(net)
    except httpx.HTTPError:
        return []


class RogueProxy:
    """A proxy of the test's own on a free loopback port that a real worker process dials: it admits the worker
    (answering the registration protocol of this tree) and hands it whatever jobs the test sends."""

    def __init__(self) -> None:
        self.port = free_port()
        self.frames: dict[str, list[dict[str, Any]]] = {}
        self.connected = asyncio.Event()
        self._socket: ServerConnection | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/worker/connect"

    async def session(self, ws: ServerConnection) -> None:
        from cocoon.protocol import messages

        challenge = getattr(messages, "Challenge", None)  # the tree since registrations answer a challenge
        if challenge is not None:
            await ws.send(pack(challenge(proxy_id="p-rogue", nonce=b"n" * 32)))
        unpack_raw(await ws.recv(decode=False))  # the registration: whatever it says, this proxy admits it
        await ws.send(pack(messages.Registered(proxy_id="p-rogue", heartbeat_interval=0.5)))
        self._socket = ws
        self.connected.set()
        async for raw in ws:
            if isinstance(raw, str):
                continue
            fields = unpack_raw(raw)
            if fields.get("t") in ("chunk", "end", "error"):
                self.frames.setdefault(fields["job_id"], []).append(fields)

    async def run_job(self, job: Job) -> list[dict[str, Any]]:
        """Send ``job`` and wait for its last frame (a receipt or an error)."""
        assert self._socket is not None, "no worker is connected"
        await self._socket.send(pack(job))

        async def ended() -> bool:
            return any(f["t"] in ("end", "error") for f in self.frames.get(job.job_id, []))

        await until(ended, 30, f"the worker to finish {job.job_id}")
        return self.frames[job.job_id]


async def test_a_worker_seals_every_run_of_a_request_under_a_fresh_key(net: LocalNetwork, tmp_path: Path) -> None:
    """Before: a proxy (rogue, or one that forgot) sending a worker one job twice got both runs sealed under one
    key and the same chunk nonces, and so a keystream twice. Now the worker refuses what it has run, and a
    restarted worker, which has forgotten, seals under a fresh key all the same."""

    keys_file = tmp_path / "replayed-keys.json"
    keys = load_or_create_node_keys(keys_file)
    authority = getattr(net, "authority", None)
    if authority is not None:
        authority.enroll(keys)
    rogue_proxy = RogueProxy()
    config = tomllib.loads((net.home / "worker-1.toml").read_text())
    config |= {"proxies": [rogue_proxy.url], "keys_file": str(keys_file)}
    (tmp_path / "worker.toml").write_text(tomli_w.dumps(config))
    command = [sys.executable, "-m", "cocoon", "worker", "--config", str(tmp_path / "worker.toml")]

    payload = RequestPayload(
        kind="chat",
        model=DEFAULT_MODEL,
        salt=b"s" * 16,
        messages=[SealedMessage(role="user", content="a secret")],
        params=SealedParams(max_tokens=6),
    )
    plaintext = msgpack.packb(payload.model_dump(mode="python"), use_bin_type=True)
    sealed, _ = seal_request("req-replayed", plaintext, {keys.node_id: keys.sealing.public})

    def job(job_id: str) -> Job:
        key = sealed.keys[0]
        return Job(
            job_id=job_id,
            request_id="req-replayed",
            model=DEFAULT_MODEL,
            kind="chat",
            max_tokens=6,
            enc=key.enc,
            wrapped_key=key.wrapped,
            ciphertext=sealed.ciphertext,
        )

    runs: list[list[dict[str, Any]]] = []
    async with serve(rogue_proxy.session, "127.0.0.1", rogue_proxy.port, max_size=2**26):
        for life, job_ids in enumerate((["job-1", "job-2"], ["job-3"])):
            rogue_proxy.connected.clear()
            worker = spawn(f"replayed-worker-{life}", command, tmp_path / f"worker-{life}.log")
            try:
                await asyncio.wait_for(rogue_proxy.connected.wait(), 60)
                for job_id in job_ids:
                    runs.append(await rogue_proxy.run_job(job(job_id)))
            finally:
                await asyncio.to_thread(stop_all, [worker])
    chunks = [[f["data"] for f in frames if f["t"] == "chunk"] for frames in runs]
    assert chunks[0] and not chunks[1], "the worker ran a replayed job"
    assert runs[1][-1]["status"] == 409
    assert chunks[2], "the restarted worker did not run the job"
    assert not set(chunks[0]) & set(chunks[2]), "two runs of one request were sealed under one keystream"


# ---- F2: receipts bounded by what was asked and received -------------------------------------------


async def test_a_receipt_claiming_more_tokens_than_max_tokens_is_refused_and_not_paid(
    net: LocalNetwork, tmp_path: Path
) -> None:
    """Before: the client verified and paid a signed receipt claiming 5000 completion tokens for max_tokens=4."""

    async def overclaim(job: Job, send: Callable[[Any], Awaitable[None]], r: Rogue) -> None:
        content_key, plaintext, payload = r.open(job)
        sealer = ChunkSealer(content_key, job.request_id, r.keys.node_id, payload.salt)
        for word in ("one ", "two ", "three ", "four "):
            await send(sealer.chunk(job.job_id, ChunkPayload(text=word, tokens=1)))
        await send(sealer.chunk(job.job_id, ChunkPayload(finish_reason="length")))
        await send(signed_end(r, job, plaintext, sealer, completion_tokens=5000, prompt_tokens=10**6))

    payer = RecordingPayer()
    async with Rogue(net, tmp_path, overclaim), client_of(net, net.proxy_url) as client:
        client.payer = payer  # type: ignore[assignment]
        with pytest.raises(ReceiptInvalid, match="completion tokens"):
            await ask(client, max_tokens=4, routing=RoutingPrefs(region=ROGUE))
    assert payer.paid == []
    assert len(payer.rejected) == 1


# ---- F9: one answer, shown once, paid once ---------------------------------------------------------


async def test_a_duplicated_answer_is_neither_shown_twice_nor_paid_twice(net: LocalNetwork) -> None:
    """Before: a relay repeating the answer after its receipt, as a fake failover, made the client show the text
    twice and verify (and pay) the same receipt twice."""

    async def duplicate(body: bytes, forward: Callable[[bytes], Awaitable[tuple[int, bytes]]]) -> tuple[int, bytes]:
        status, answer = await forward(body)
        frames = decode(answer)
        again = [f | {"attempt": 1} if f.get("t") == "start" else f for f in frames]
        return status, encode(frames + again)

    payer = RecordingPayer()
    shown: list[str] = []
    async with tampering_relay(net.proxy_url, duplicate) as url, client_of(net, url) as client:
        client.payer = payer  # type: ignore[assignment]
        with contextlib.suppress(UpstreamFailed):
            async for event in client.stream(
                "chat",
                DEFAULT_MODEL,
                messages=[SealedMessage(role="user", content="Tell me about lighthouses.")],
                params=SealedParams(max_tokens=8),
            ):
                if isinstance(event, TextEvent):
                    shown.append(event.text)
    assert len("".join(shown).split()) == 8, f"the client showed {''.join(shown)!r}"
    assert len(payer.paid) == 1, f"the client paid {payer.paid}"


# ---- F7: the clear max_tokens is the sealed one ----------------------------------------------------


async def test_a_relay_lowering_the_clear_max_tokens_gets_the_job_refused(net: LocalNetwork) -> None:
    """Before: the proxy reserved for the clear max_tokens=1 while the worker generated the sealed 12."""

    async def lower(body: bytes, forward: Callable[[bytes], Awaitable[tuple[int, bytes]]]) -> tuple[int, bytes]:
        job = unpack_as(body, JobRequest)
        return await forward(pack(job.model_copy(update={"max_tokens": 1})))

    async with tampering_relay(net.proxy_url, lower) as url, client_of(net, url) as client:
        with pytest.raises(BadRequest, match="max_tokens"):
            await ask(client, max_tokens=12)


# ---- F11: what one job may stream ------------------------------------------------------------------


async def test_a_worker_streaming_far_past_max_tokens_is_cut_off(net: LocalNetwork, tmp_path: Path) -> None:
    """Before: the proxy relayed (and buffered) 20 MiB a rogue worker streamed for max_tokens=4."""

    async def flood(job: Job, send: Callable[[Any], Awaitable[None]], r: Rogue) -> None:
        content_key, plaintext, payload = r.open(job)
        sealer = ChunkSealer(content_key, job.request_id, r.keys.node_id, payload.salt)
        for _ in range(3000):  # 30 MiB, until the proxy says stop
            await send(sealer.chunk(job.job_id, ChunkPayload(text="x" * 10_000, tokens=1)))
            await asyncio.sleep(0.001)
        await send(signed_end(r, job, plaintext, sealer, completion_tokens=4))

    async with Rogue(net, tmp_path, flood) as r:
        workers = [w for w in await asyncio.to_thread(directory, net) if w["worker_id"] == r.keys.node_id]
        payload = RequestPayload(
            kind="chat",
            model=DEFAULT_MODEL,
            salt=b"s" * 16,
            messages=[SealedMessage(role="user", content="hi")],
            params=SealedParams(max_tokens=4),
        )
        plaintext = msgpack.packb(payload.model_dump(mode="python"), use_bin_type=True)
        sealed, _ = seal_request("req-flood", plaintext, {r.keys.node_id: r.keys.sealing.public})
        job = JobRequest(
            request_id="req-flood",
            model=DEFAULT_MODEL,
            kind="chat",
            max_tokens=4,
            keys=[WrappedKeyWire(worker_id=k.worker_id, enc=k.enc, wrapped=k.wrapped) for k in sealed.keys],
            ciphertext=sealed.ciphertext,
            routing=RoutingPrefs(region=ROGUE),
        )
        received = 0
        async with (
            httpx.AsyncClient(base_url=net.proxy_url, timeout=60) as http,
            http.stream("POST", "/v1/jobs", content=pack(job)) as response,
        ):
            async for data in response.aiter_raw():
                received += len(data)
        assert workers
        assert received < 1024 * 1024, f"the proxy relayed {received} bytes for max_tokens=4"

        async def cancelled() -> bool:
            return bool(r.cancels)

        await until(cancelled, 5, "the proxy to cancel the flooding job")
        listed = {w["worker_id"]: w for w in await asyncio.to_thread(directory, net)}
        evidence: Any = listed[r.keys.node_id]["reputation"]
        assert evidence["bad_receipt"] > 0, f"the flood left no evidence against the worker: {evidence}"


async def test_the_client_stops_reading_an_answer_past_its_caps(net: LocalNetwork) -> None:
    """Before: a relay could append a 48 MiB frame to an answer of max_tokens=4 and the client buffered it all."""

    async def inflate(body: bytes, forward: Callable[[bytes], Awaitable[tuple[int, bytes]]]) -> tuple[int, bytes]:
        status, answer = await forward(body)
        frames = decode(answer)
        start, rest = encode(frames[:1]), encode(frames[1:])
        return status, start + frame(b"\x00" * (48 * 1024 * 1024)) + rest

    async with tampering_relay(net.proxy_url, inflate) as url, client_of(net, url) as client:
        with pytest.raises(UpstreamFailed, match="cut off"):
            await ask(client, max_tokens=4)


# ---- F16: sizes say nothing of the tokens ---------------------------------------------------------


async def test_sealed_chunk_sizes_do_not_reveal_token_lengths(net: LocalNetwork) -> None:
    """Before: one chunk per token, unpadded, so a relay read each token's length off its ciphertext size (the
    published token-length side channel). Now every chunk's plaintext is padded to a bucket."""
    sizes: list[int] = []

    async def measure(body: bytes, forward: Callable[[bytes], Awaitable[tuple[int, bytes]]]) -> tuple[int, bytes]:
        status, answer = await forward(body)
        sizes.extend(len(f["data"]) for f in decode(answer) if f.get("t") == "chunk")
        return status, answer

    async with tampering_relay(net.proxy_url, measure) as url, client_of(net, url) as client:
        text, _ = await ask(client, max_tokens=24)
    assert len({len(word) for word in text.split()}) > 1, "the answer's words are too alike to tell"
    assert len(set(sizes)) == 1, f"chunk sizes {sizes} give away token lengths"


# ---- F15, F18: the sidecar's HTTP edge ------------------------------------------------------------


def test_the_sidecar_refuses_cross_site_and_non_json_requests(net: LocalNetwork) -> None:
    """Before: any web page could make the user's browser spend the deposit with a text/plain form post."""
    body = json.dumps({"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    url = f"{net.base_url}/chat/completions"
    plain = httpx.post(url, content=body, headers={"content-type": "text/plain"}, timeout=30)
    assert plain.status_code == 415, plain.text
    foreign = httpx.post(
        url, content=body, headers={"content-type": "application/json", "origin": "https://evil.example"}, timeout=30
    )
    assert foreign.status_code == 403, foreign.text
    honest = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=30)
    assert honest.status_code == 200, honest.text


def test_deeply_nested_json_is_a_400_not_a_500(net: LocalNetwork) -> None:
    nested = "[" * 100_000 + "]" * 100_000
    response = httpx.post(
        f"{net.base_url}/chat/completions", content=nested, headers={"content-type": "application/json"}, timeout=30
    )
    assert response.status_code == 400, response.text


def test_a_client_dripping_its_body_is_timed_out(net: LocalNetwork) -> None:
    """Before: a client that declared a body and never finished sending it held its connection forever."""
    for port in (net.client_port, net.proxy_port):
        path = "/v1/chat/completions" if port == net.client_port else "/v1/jobs"
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                "content-length: 100\r\n\r\n{".encode()
            )
            started = time.monotonic()
            sock.settimeout(1.0)
            answer = b""
            while time.monotonic() - started < 25 and not answer:
                try:
                    sock.sendall(b" ")  # a byte a second: never idle, never done
                    answer = sock.recv(4096)
                except TimeoutError:
                    continue
        assert answer.startswith(b"HTTP/1.1 408"), f"port {port} answered {answer[:80]!r} after 25 s"
