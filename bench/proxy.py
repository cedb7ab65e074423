"""What the proxy costs: requests per second and added latency at 1, 16 and 64 concurrent streams, vs direct.

A zero-cost synthetic worker serves both paths. "direct": this script speaks the worker protocol to its own
worker over a WebSocket (no proxy). "proxy": sealed ``POST /v1/jobs`` through a real proxy process to an
identical worker. Both see the same sealed request; latency is request sent -> receipt received. The proxy's
CPU time per request (from /proc) gives requests per second per proxy core.
Usage: ``python bench/proxy.py [--seconds 4] [--tokens 16] [--levels 1,16,64]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgpack
import websockets
from quantiles import quantile
from rich.console import Console
from rich.table import Table
from websockets.asyncio.server import ServerConnection, serve

from cocoon.attestation import NONCE_BYTES
from cocoon.engines import DEFAULT_MODEL
from cocoon.local import LocalNetwork, free_port
from cocoon.protocol import FrameReader, Job, JobRequest, Registered, WrappedKeyWire, pack, random_salt, seal_request
from cocoon.protocol.envelope import SealedRequest
from cocoon.protocol.messages import Challenge
from cocoon.protocol.payload import RequestPayload, SealedMessage, SealedParams

WORKER = {"slots": 128, "max_queue": 4096}
ENGINE = {"kind": "synthetic", "synthetic_tokens_per_s": 0}


@dataclass
class Level:
    path: str
    concurrency: int
    done: int
    seconds: float
    latencies: list[float]
    cpu_s: float = 0.0
    pieces: int = 0

    @property
    def rps(self) -> float:
        return self.done / self.seconds

    def pct(self, q: float) -> float:
        return quantile(self.latencies, q, scale=1000)


def payload_bytes(tokens: int) -> bytes:
    payload = RequestPayload(
        kind="chat",
        model=DEFAULT_MODEL,
        salt=random_salt(),
        messages=[SealedMessage(role="user", content="benchmark the relay")],
        params=SealedParams(max_tokens=tokens),
    )
    return bytes(msgpack.packb(payload.model_dump(mode="python"), use_bin_type=True))


class DirectWorker:
    """This script as the worker's only 'proxy': registers it and sends it jobs straight over its socket."""

    def __init__(self) -> None:
        self.port = free_port()
        self.ready = asyncio.Event()
        self.x25519_pub = b""
        self.worker_id = ""
        self._ws: ServerConnection | None = None
        self._waiting: dict[str, asyncio.Future[None]] = {}

    async def handler(self, ws: ServerConnection) -> None:
        await ws.send(pack(Challenge(proxy_id="p-bench", nonce=os.urandom(NONCE_BYTES))))
        register = msgpack.unpackb(await ws.recv(decode=False), raw=False)
        self.worker_id, self.x25519_pub = register["worker_id"], register["x25519_pub"]
        await ws.send(pack(Registered(proxy_id="p-bench", heartbeat_interval=0.5)))
        self._ws = ws
        self.ready.set()
        try:
            async for raw in ws:
                frame = msgpack.unpackb(raw, raw=False)
                if frame.get("t") == "error":
                    raise RuntimeError(f"the worker refused a job: {frame['error']['message']}")
                if frame.get("t") == "end":
                    waiter = self._waiting.pop(frame["job_id"], None)
                    if waiter is not None:
                        waiter.set_result(None)
        except websockets.ConnectionClosed:
            return  # the worker stopped with the benchmark

    async def run(self, job: Job) -> None:
        assert self._ws is not None
        job_id = os.urandom(8).hex()
        waiter = asyncio.get_running_loop().create_future()
        self._waiting[job_id] = waiter
        await self._ws.send(pack(job.model_copy(update={"job_id": job_id})))
        await waiter


class FrameClient:
    """A bare HTTP/1.1 keep-alive client for ``POST /v1/jobs``, so the client's own cost stays out of the way."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.pieces = 0  # HTTP body chunks read: each is one socket write by the proxy

    async def post(self, body: bytes) -> None:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        head = (
            f"POST /v1/jobs HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/msgpack\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        status = await self.reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(f"proxy answered {status!r}")
        while (await self.reader.readline()) not in (b"\r\n", b""):
            pass
        frames = FrameReader()
        last: dict[str, Any] = {}
        while True:  # chunked transfer encoding
            size = int((await self.reader.readline()).strip(), 16)
            data = await self.reader.readexactly(size + 2)
            if size == 0:
                break
            self.pieces += 1
            for raw in frames.feed(data[:-2]):
                last = msgpack.unpackb(raw, raw=False)
        if last.get("t") != "end":
            raise RuntimeError(f"stream ended without a receipt: {last.get('t')}")


async def load(run: Callable[[int], Awaitable[bool]], concurrency: int, seconds: float) -> tuple[int, list[float]]:
    """Run ``run`` in ``concurrency`` loops for ``seconds`` (or until it says its pool of sealed requests is empty)."""
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    async def loop(i: int) -> None:
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            if not await run(i):
                return
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(loop(i) for i in range(concurrency)))
    return len(latencies), latencies


def _seal_batch(prefix: str, count: int, body: bytes, recipients: dict[str, bytes]) -> list[SealedRequest]:
    return [seal_request(f"{prefix}-{n}", body, recipients)[0] for n in range(count)]


def sealed_pool(count: int, body: bytes, recipients: dict[str, bytes]) -> list[SealedRequest]:
    """``count`` requests sealed ahead, each under a fresh request id (proxy and worker refuse a replayed one).

    Sealing costs about a millisecond, as much as relaying: done before the clock starts, on every core.
    """
    procs = os.cpu_count() or 1
    prefix = os.urandom(6).hex()
    with ProcessPoolExecutor(procs) as pool:
        batches = pool.map(_seal_batch, [f"{prefix}-{i}" for i in range(procs)], [count // procs + 1] * procs,
                           [body] * procs, [recipients] * procs)  # fmt: skip
        return [sealed for batch in batches for sealed in batch]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def main(args: argparse.Namespace) -> None:
    console = Console(width=150)
    home = Path(tempfile.mkdtemp(prefix="cocoon-bench-proxy-"))
    net = LocalNetwork(
        port_base=free_port(), proxy_port=free_port(), home=home, workers=1, engine=ENGINE, worker_options=WORKER
    )
    direct = DirectWorker()
    async with serve(direct.handler, "127.0.0.1", direct.port, max_size=2**26, compression=None):
        try:
            net.start()
            net.wait_ready(timeout=120)
            net.worker_options = WORKER | {"proxies": [f"ws://127.0.0.1:{direct.port}/v1/worker/connect"]}
            net.add_worker(2)
            await asyncio.wait_for(direct.ready.wait(), 60)
            levels = await measure(net, direct, args)
        finally:
            net.stop()
    print_table(console, levels, args)


async def measure(net: LocalNetwork, direct: DirectWorker, args: argparse.Namespace) -> list[Level]:
    body = payload_bytes(args.tokens)
    async with httpx.AsyncClient() as http:
        entry = (await http.get(f"{net.proxy_url}/v1/directory")).json()["workers"][0]
    via_proxy = {entry["worker_id"]: base64.b64decode(entry["x25519_pub"])}
    proxy_pid = net.child("proxy").process.pid
    port = int(net.proxy_url.rsplit(":", 1)[1])
    per_row = int((args.seconds + 0.5) * args.max_rps)
    out: list[Level] = []
    for concurrency in args.levels:
        clients = [FrameClient(port) for _ in range(concurrency)]
        to_proxy = [_job_request(s, args.tokens) for s in sealed_pool(per_row, body, via_proxy)]
        to_direct = [_job(s, args.tokens) for s in sealed_pool(per_row, body, {direct.worker_id: direct.x25519_pub})]

        async def via(i: int, clients: list[FrameClient] = clients, pool: list[bytes] = to_proxy) -> bool:
            if not pool:
                return False
            await clients[i].post(pool.pop())
            return True

        async def straight(i: int, pool: list[Job] = to_direct) -> bool:
            if not pool:
                return False
            await direct.run(pool.pop())
            return True

        for path, run in (("direct", straight), ("proxy", via)):
            await load(run, concurrency, 0.5)  # warm up connections and caches
            profiler = None
            if args.profile and path == "proxy":
                profiler = await asyncio.create_subprocess_exec(
                    "py-spy", "record", "-p", str(proxy_pid), "-d", str(int(args.seconds)), "-r", "250",
                    "-f", "raw", "-o", f"{args.profile}-{concurrency}.txt", "--nonblocking",
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
                )  # fmt: skip
            cpu0, t0 = cpu_seconds(proxy_pid), time.monotonic()
            pieces0 = sum(c.pieces for c in clients)
            done, latencies = await load(run, concurrency, args.seconds)
            if profiler is not None:
                await profiler.wait()
            level = Level(path, concurrency, done, time.monotonic() - t0, latencies, cpu_seconds(proxy_pid) - cpu0)
            level.pieces = sum(c.pieces for c in clients) - pieces0
            out.append(level)
        for client in clients:
            if client.writer is not None:
                client.writer.close()
    return out


def _job_request(sealed: SealedRequest, tokens: int) -> bytes:
    key = sealed.keys[0]
    wire = WrappedKeyWire(worker_id=key.worker_id, enc=key.enc, wrapped=key.wrapped)
    return pack(
        JobRequest(
            request_id=sealed.request_id,
            model=DEFAULT_MODEL,
            kind="chat",
            max_tokens=tokens,
            keys=[wire],
            ciphertext=sealed.ciphertext,
        )
    )


def _job(sealed: SealedRequest, tokens: int) -> Job:
    key = sealed.keys[0]
    return Job(
        job_id="",
        request_id=sealed.request_id,
        model=DEFAULT_MODEL,
        kind="chat",
        max_tokens=tokens,
        enc=key.enc,
        wrapped_key=key.wrapped,
        ciphertext=sealed.ciphertext,
    )


def print_table(console: Console, levels: list[Level], args: argparse.Namespace) -> None:
    title = f"proxy vs direct: synthetic worker, {args.tokens} chunks per stream, {args.seconds:g}s per row"
    table = Table(title=title)
    for col in ("streams", "path", "req/s", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms", "p50 ratio",
                "proxy CPU µs/req", "req/s per proxy core", "writes/req"):  # fmt: skip
        table.add_column(col, justify="right")
    by = {(lv.path, lv.concurrency): lv for lv in levels}
    for concurrency in args.levels:
        d, p = by[("direct", concurrency)], by[("proxy", concurrency)]
        table.add_row(str(concurrency), "direct", f"{d.rps:,.0f}", f"{d.pct(0.5):.2f}", f"{d.pct(0.99):.2f}")
        cpu_us = p.cpu_s / p.done * 1e6
        table.add_row(
            "",
            "proxy",
            f"{p.rps:,.0f}",
            f"{p.pct(0.5):.2f}",
            f"{p.pct(0.99):.2f}",
            f"{p.pct(0.5) - d.pct(0.5):+.2f}",
            f"{p.pct(0.99) - d.pct(0.99):+.2f}",
            f"{p.pct(0.5) / d.pct(0.5):.2f}×",
            f"{cpu_us:,.0f}",
            f"{1e6 / cpu_us:,.0f}",
            f"{p.pieces / p.done:.1f}",
        )
    console.print(table)
    console.print(
        f"{os.cpu_count()} cores shared by client, proxy and workers; 'req/s per proxy core' = requests / proxy CPU "
        "seconds. Added latency = proxy minus direct at the same concurrency. 'writes/req': body pieces per "
        "response (a socket write each)."
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring time per row")
    parser.add_argument("--tokens", type=int, default=16, help="chunks per stream (synthetic tokens)")
    parser.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64])
    parser.add_argument("--max-rps", type=int, default=3000, help="requests sealed ahead per row and second")
    parser.add_argument("--profile", help="record the proxy with py-spy into PREFIX-<streams>.txt (collapsed stacks)")
    try:
        asyncio.run(main(parser.parse_args()))
    except websockets.ConnectionClosed as exc:
        raise SystemExit(f"a worker connection closed during the benchmark: {exc}") from exc
