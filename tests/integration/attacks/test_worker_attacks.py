"""Attacks on the worker socket and on routing, mounted against a real network by the test process itself.

The attacker speaks the real wire protocol with ``websockets``: it replays what ``GET /v1/directory`` publishes,
holds a worker's stolen key, or is an attested worker that lies (a compromised guest). Each test states the
guarantee that must hold and fails if the attack works.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import openai
import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

from cocoon.attestation import DEV_MEASUREMENT, report_data
from cocoon.crypto import NodeKeys, SigningKey, load_or_create_node_keys, node_id_for, sign_receipt
from cocoon.engines.config import DEFAULT_MODEL
from cocoon.engines.synthetic import SYNTHETIC_MODEL_HASH
from cocoon.local import LocalNetwork
from cocoon.protocol import JobRequest, Receipt, WrappedKeyWire, pack
from tests.helpers.network import directory, start_network, wait_for

CHALLENGE_DOMAIN = b"cocoon/v1 register challenge\x00"  # what the wire protocol says a worker signs
QUOTE_DOMAIN = b"cocoon/v1 simulated quote\x00"
PROMPT = [{"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, bundled_model_path: Path) -> Iterator[LocalNetwork]:
    network = start_network(
        tmp_path_factory.mktemp("attacks"),
        workers=2,
        model_path=bundled_model_path,
        engine={"kind": "synthetic", "synthetic_tokens_per_s": 400},
    )
    yield network
    network.stop()


# ---- the attacker's tools -------------------------------------------------------------------------------------


def worker_url(net: LocalNetwork) -> str:
    return f"ws://127.0.0.1:{net.proxy_port}/v1/worker/connect"


def authority_key(net: LocalNetwork) -> SigningKey:
    """The network's attestation authority: the harness (this process) holds it, as ``cocoon up`` does."""
    return net.authority.key


def mint_quote(net: LocalNetwork, keys: NodeKeys, hashes: list[str], issued_at: float | None = None) -> bytes:
    """A simulated quote for ``keys``, as the authority signs it (a compromised guest gets a genuine one)."""
    authority = authority_key(net)
    data = report_data(keys.sealing.public, keys.signing.public, hashes)
    stamp = time.time() if issued_at is None else issued_at
    body = msgpack.packb([DEV_MEASUREMENT, data, stamp, authority.public.hex()], use_bin_type=True)
    return msgpack.packb([body, authority.sign(QUOTE_DOMAIN + body)], use_bin_type=True)


def registration(keys: NodeKeys, quote: bytes, model: str = DEFAULT_MODEL, **changes: Any) -> dict[str, Any]:
    """A ``register`` message as raw msgpack-ready fields (no client-side validation: the attacker sends anything)."""
    bundle = {
        "provider": "simulated",
        "quote": quote,
        "x25519_pub": keys.sealing.public,
        "ed25519_pub": keys.signing.public,
        "model_hashes": [SYNTHETIC_MODEL_HASH],
        "measurement": DEV_MEASUREMENT,
    }
    offer = {"model": model, "model_hash": SYNTHETIC_MODEL_HASH, "context_length": 4096}
    return {
        "t": "register",
        "v": 1,
        "worker_id": node_id_for(keys.signing.public),
        "software": "rogue/1",
        "models": [offer],
        "slots": 2,
        "price_coefficient": 1000,
        "region": "",
        "payout_address": "",
        "ed25519_pub": keys.signing.public,
        "x25519_pub": keys.sealing.public,
        "attestation": bundle,
    } | changes


def replayed_registration(published: dict[str, Any]) -> dict[str, Any]:
    """An honest worker's registration rebuilt from what the directory publishes about it."""
    attestation = dict(published["attestation"])
    for name in ("quote", "x25519_pub", "ed25519_pub"):
        attestation[name] = base64.b64decode(attestation[name])
    return {
        "t": "register",
        "v": 1,
        "worker_id": published["worker_id"],
        "software": published["software"],
        "models": published["models"],
        "slots": published["slots"],
        "price_coefficient": published["price_coefficient"],
        "region": published["region"],
        "payout_address": "",
        "ed25519_pub": base64.b64decode(published["ed25519_pub"]),
        "x25519_pub": base64.b64decode(published["x25519_pub"]),
        "attestation": attestation,
    }


async def recv(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    data = await asyncio.wait_for(ws.recv(decode=False), timeout)
    message: dict[str, Any] = msgpack.unpackb(data, raw=False)
    return message


async def register(ws: ClientConnection, message: dict[str, Any], key: SigningKey | None) -> dict[str, Any]:
    """Register on ``ws``; with ``key``, answer the proxy's challenge the way the protocol says. The reply."""
    try:
        first = await recv(ws, 1.0)
    except TimeoutError:  # a proxy that sends no challenge first
        first = {}
    if first.get("t") == "challenge" and key is not None:
        signed = CHALLENGE_DOMAIN + first["proxy_id"].encode() + b"\x00" + first["nonce"]
        message = message | {"challenge_signature": key.sign(signed)}
    await ws.send(msgpack.packb(message, use_bin_type=True))
    return await recv(ws)


async def replies_until_closed(ws: ClientConnection, timeout: float = 5.0) -> list[str]:
    """The kinds of every frame the proxy sends until it closes ``ws``."""
    kinds = []
    try:
        while True:
            kinds.append(str((await recv(ws, timeout)).get("t")))
    except websockets.ConnectionClosed:
        return kinds


def heartbeat(**changes: Any) -> bytes:
    beat = {"t": "heartbeat", "v": 1, "free_slots": 2, "queue_depth": 0, "active_jobs": 0, "tokens_per_s": 10.0}
    return msgpack.packb(beat | changes, use_bin_type=True)


async def keep_beating(ws: ClientConnection) -> None:
    """Heartbeat like a live worker until cancelled."""
    while True:
        await ws.send(heartbeat())
        await asyncio.sleep(0.3)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def answers(net: LocalNetwork, n: int) -> list[str]:
    oai = openai.OpenAI(base_url=net.base_url, api_key="unused", max_retries=0, timeout=30)
    out = []
    for i in range(n):
        reply = oai.chat.completions.create(model=DEFAULT_MODEL, messages=PROMPT, max_tokens=4, user=str(i))
        out.append(reply.choices[0].message.content or "")
    return out


def proxy_log(net: LocalNetwork) -> str:
    return (net.home / "logs" / "proxy.log").read_text(errors="replace")


# ---- F3: registration proves possession of the attested key, now -------------------------------------------


async def test_a_replayed_registration_does_not_take_an_honest_workers_slot(net: LocalNetwork) -> None:
    honest = directory(net)[0]
    async with connect(worker_url(net), max_size=2**26) as ws:
        reply = await register(ws, replayed_registration(honest), key=None)  # the attacker has no key to sign with
        assert reply.get("t") != "registered", "a replayed registration was admitted"
        assert reply.get("t") == "error"
    # The honest worker still holds its slot and serves.
    assert {w["worker_id"] for w in directory(net)} >= {honest["worker_id"]}
    assert all(answers(net, 6))


async def test_a_second_session_for_a_live_worker_is_refused_not_swapped_in(net: LocalNetwork) -> None:
    # The attacker stole worker-1's key file (same user): it can answer the challenge, yet a live worker keeps its
    # session. A worker whose old session died still gets back in (tests/integration/test_resilience.py).
    keys = load_or_create_node_keys(net.home / "worker-1" / "keys.json")
    published = next(w for w in directory(net) if w["worker_id"] == keys.node_id)
    async with connect(worker_url(net), max_size=2**26) as ws:
        reply = await register(ws, replayed_registration(published), key=keys.signing)
        assert reply.get("t") == "error", f"a second session for a live worker was admitted: {reply}"
        assert "live session" in reply["error"]["message"]
    assert all(answers(net, 6))
    assert keys.node_id in {w["worker_id"] for w in directory(net)}


async def test_a_stale_quote_is_refused_even_with_the_key(net: LocalNetwork) -> None:
    keys = NodeKeys.generate()
    old_quote = mint_quote(net, keys, [SYNTHETIC_MODEL_HASH], issued_at=time.time() - 86400)
    async with connect(worker_url(net), max_size=2**26) as ws:
        reply = await register(ws, registration(keys, old_quote), key=keys.signing)
    assert reply.get("t") == "error", "a day-old quote was admitted"
    assert "old" in reply["error"]["message"]
    assert keys.node_id not in {w["worker_id"] for w in directory(net)}


# ---- F10: workers never hold the authority key; quotes are signed only for the network's own workers ---------


def test_no_file_of_the_network_holds_the_attestation_authority_key(net: LocalNetwork) -> None:
    trusted = set(net.policy["simulated_authorities"])
    forgeable = []
    for path in net.home.rglob("*"):
        if not path.is_file() or path.stat().st_size > 4096:
            continue
        try:
            payload = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            continue
        values = payload.values() if isinstance(payload, dict) else []
        seeds = [bytes.fromhex(v) for v in values if isinstance(v, str) and len(v) == 64 and _hex(v)]
        if any(SigningKey(seed).public.hex() in trusted for seed in seeds):
            forgeable.append(path)
    assert forgeable == [], f"any process of this user can forge attested workers with {forgeable}"


def _hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


def test_the_authority_signs_quotes_only_for_the_networks_own_workers(net: LocalNetwork) -> None:
    outsider = NodeKeys.generate()
    body = {
        "x25519_pub": outsider.sealing.public.hex(),
        "ed25519_pub": outsider.signing.public.hex(),
        "models": [SYNTHETIC_MODEL_HASH],
    }
    response = httpx.post(net.authority_url, json=body, timeout=5)
    assert response.status_code == 403


# ---- F4: every number a worker reports is validated at the edge --------------------------------------------


@pytest.mark.parametrize(
    "lie",
    [
        {"tokens_per_s": math.nan},
        {"prefill_tokens_per_s": -1e9},
        {"ttft_ms": math.inf},
        {"free_slots": 10**6},
        {"queue_depth": -5},
    ],
)
async def test_a_lying_heartbeat_cannot_break_the_directory_or_win_the_ranking(
    net: LocalNetwork, lie: dict[str, float]
) -> None:
    keys = NodeKeys.generate()
    net.authority.enroll(keys)
    quote = mint_quote(net, keys, [SYNTHETIC_MODEL_HASH])
    async with connect(worker_url(net), max_size=2**26) as ws:
        assert (await register(ws, registration(keys, quote), key=keys.signing)).get("t") == "registered"
        await ws.send(heartbeat(**lie))
        await asyncio.sleep(0.3)
        async with httpx.AsyncClient(timeout=5) as http:
            response = await http.get(f"{net.proxy_url}/v1/directory")
        assert response.status_code == 200, response.text
        listed = {w["worker_id"]: w for w in response.json()["workers"]}
        # The liar is dropped; were it kept, nothing it claimed may show.
        assert keys.node_id not in listed, f"the liar stays with {listed[keys.node_id]['score']}"


async def test_a_registration_with_out_of_range_numbers_is_refused(net: LocalNetwork) -> None:
    keys = NodeKeys.generate()
    quote = mint_quote(net, keys, [SYNTHETIC_MODEL_HASH])
    for bad in ({"slots": 10**9}, {"price_coefficient": 10**15}, {"ed25519_pub": b"short"}):
        async with connect(worker_url(net), max_size=2**26) as ws:
            reply = await register(ws, registration(keys, quote, **bad), key=keys.signing)
            assert reply.get("t") == "error", f"{bad} was admitted"
    async with httpx.AsyncClient(timeout=5) as http:
        assert (await http.get(f"{net.proxy_url}/v1/directory")).status_code == 200


# ---- F12: a stranger gets small frames and no lasting memory ------------------------------------------------


async def test_a_stranger_cannot_send_a_large_frame_before_registering(net: LocalNetwork) -> None:
    async with connect(worker_url(net), max_size=2**26) as ws:
        await ws.send(os.urandom(1024 * 1024))
        kinds = await replies_until_closed(ws)
    assert "registered" not in kinds
    assert ws.close_code == 1009  # message too big: refused as it came, not buffered and parsed


async def test_refused_registrations_do_not_grow_the_proxys_memory(net: LocalNetwork) -> None:
    proxy = net.child("proxy").process
    keys = NodeKeys.generate()

    async def refused(i: int) -> None:
        junk = i.to_bytes(4, "big") + os.urandom(30 * 1024)  # a unique quote, refused by every policy
        async with connect(worker_url(net), max_size=2**26) as ws:
            await register(ws, registration(keys, junk), key=keys.signing)

    async def batch(start: int) -> None:
        await asyncio.gather(*(refused(start + i) for i in range(20)))

    # Warm the proxy's allocator up first: under load its heap settles over the first thousand or so (measured:
    # 1-20 MiB, then flat through 8,000), while a proxy that kept each refused quote would grow 60 MiB a 2,000.
    for start in range(0, 1000, 20):
        await batch(start)
    before = rss_bytes(proxy.pid)
    for start in range(1000, 3000, 20):
        await batch(start)
    grown = rss_bytes(proxy.pid) - before
    assert grown < 20 * 2**20, f"2000 refused registrations grew the proxy by {grown / 2**20:.1f} MiB"


# ---- F20: malformed frames are refused, never an uncaught exception -----------------------------------------


async def test_malformed_frames_on_the_worker_socket_raise_nothing_uncaught(net: LocalNetwork) -> None:
    keys = NodeKeys.generate()
    net.authority.enroll(keys)
    before = proxy_log(net).count("Traceback")
    # A text frame instead of a registration, and after it.
    async with connect(worker_url(net), max_size=2**26) as ws:
        await ws.send("hello")
        await replies_until_closed(ws)
    async with connect(worker_url(net), max_size=2**26) as ws:
        reply = await register(ws, registration(keys, mint_quote(net, keys, [SYNTHETIC_MODEL_HASH])), keys.signing)
        assert reply["t"] == "registered"
        await ws.send("hello")
        await replies_until_closed(ws)
    # A job's end whose signature is not bytes, from a worker that is the only one serving its model.
    model = "rogue-model"
    async with connect(worker_url(net), max_size=2**26) as ws:
        quote = mint_quote(net, keys, [SYNTHETIC_MODEL_HASH])
        assert (await register(ws, registration(keys, quote, model=model), keys.signing))["t"] == "registered"
        beating = asyncio.create_task(keep_beating(ws))
        body = {"model": model, "messages": PROMPT, "max_tokens": 4}
        async with httpx.AsyncClient(timeout=20) as http:
            for _ in range(50):  # the sidecar refreshes its directory in the background
                if model in {m["id"] for m in (await http.get(f"{net.base_url}/models")).json()["data"]}:
                    break
                await asyncio.sleep(0.2)
            ask = asyncio.create_task(http.post(f"{net.base_url}/chat/completions", json=body))
            while True:
                job = await recv(ws, 10)
                if job["t"] == "job":
                    break
            end = {"t": "end", "v": 1, "job_id": job["job_id"], "receipt": {"x": 1}, "signature": "not bytes"}
            await ws.send(msgpack.packb(end, use_bin_type=True))
            response = await ask
        beating.cancel()
    assert response.status_code >= 400 and "error" in response.json()  # a clean OpenAI error, not a crash
    wait_for(lambda: keys.node_id not in {w["worker_id"] for w in directory(net)}, 5, "the rogue to be dropped")
    log = proxy_log(net)
    assert log.count("Traceback") == before, log[-3000:]


# ---- F21: speed is timed on the proxy's clock, not taken from the worker ------------------------------------


async def serve_slowly_claiming_speed(ws: ClientConnection, keys: NodeKeys, model: str, delay_s: float) -> None:
    """Answer every job slowly (``delay_s`` to the first chunk, ``delay_s`` more to the end) while its receipts
    claim a 1 ms answer and its heartbeats a 1 ms time to first token."""
    while True:
        job = await recv(ws, 30)
        if job["t"] != "job":
            continue
        await asyncio.sleep(delay_s)
        for seq in range(40):
            chunk = {"t": "chunk", "v": 1, "job_id": job["job_id"], "seq": seq, "data": os.urandom(24)}
            await ws.send(msgpack.packb(chunk, use_bin_type=True))
        await asyncio.sleep(delay_s)
        receipt = Receipt(
            receipt_id=f"rc-{job['job_id']}",
            request_id=job["request_id"],
            job_id=job["job_id"],
            worker_id=keys.node_id,
            model=model,
            model_hash=SYNTHETIC_MODEL_HASH,
            prompt_tokens=10,
            cached_tokens=0,
            completion_tokens=40,
            reasoning_tokens=0,
            request_sha256="00" * 32,
            response_sha256="00" * 32,
            finish_reason="length",
            started_at=time.time(),
            ttft_ms=1.0,
            duration_ms=2.0,
        )
        end = {"t": "end", "v": 1, "job_id": job["job_id"], "receipt": receipt.model_dump(), "signature": b""}
        end["signature"] = sign_receipt(keys.signing, receipt)
        await ws.send(msgpack.packb(end, use_bin_type=True))


async def test_a_worker_cannot_claim_its_way_to_the_front_of_routing(net: LocalNetwork) -> None:
    keys, model = NodeKeys.generate(), "boaster-model"
    quote = mint_quote(net, keys, [SYNTHETIC_MODEL_HASH])
    boasts = {"tokens_per_s": 1e6, "prefill_tokens_per_s": 1e6, "ttft_ms": 1.0}
    async with connect(worker_url(net), max_size=2**26) as ws:
        assert (await register(ws, registration(keys, quote, model=model), keys.signing))["t"] == "registered"

        async def boast() -> None:
            while True:
                await ws.send(heartbeat(**boasts))
                await asyncio.sleep(0.3)

        tasks = [asyncio.create_task(boast()), asyncio.create_task(serve_slowly_claiming_speed(ws, keys, model, 0.6))]
        async with httpx.AsyncClient(timeout=30) as http:
            for i in range(3):
                job = JobRequest(
                    request_id=f"boast-{i}-{os.urandom(4).hex()}",
                    model=model,
                    kind="chat",
                    max_tokens=64,
                    prompt_tokens=10,
                    keys=[WrappedKeyWire(worker_id=keys.node_id, enc=b"e" * 32, wrapped=b"w" * 48)],
                    ciphertext=b"sealed",
                )
                response = await http.post(f"{net.proxy_url}/v1/jobs", content=pack(job))
                assert response.status_code == 200, response.text
            listed = {w["worker_id"]: w for w in (await http.get(f"{net.proxy_url}/v1/directory")).json()["workers"]}
        for task in tasks:
            task.cancel()
    score = listed[keys.node_id]["score"]
    # Its first tokens took 0.6 s by the proxy's clock, whatever it promised; 39 tokens took another 0.6 s.
    assert score["expected_latency_ms"] >= 400, score
    assert score["decode_tokens_per_s"] < 200, score
