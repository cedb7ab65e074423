"""Chaos at length: kill a worker every few seconds under steady streaming load, and count what apps would see.

A loopback network (proxy, workers; nothing leaves 127.0.0.1) serves ``--streams`` concurrent SDK streams while
a busy worker is SIGKILLed every ``--interval`` seconds and restarted (same keys) a moment later. Prints failed
requests, the extra latency of requests that moved to another worker (median, p99), and the proxy's memory over
time. Bounded: load stops after ``--duration`` seconds, stragglers get 60 s more.
Usage: ``python bench/chaos.py [--duration 300] [--interval 10] [--streams 20] [--engine synthetic|llamacpp]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from quantiles import quantile
from rich.console import Console
from rich.table import Table

from cocoon.attestation import AttestationPolicy
from cocoon.client import CocoonClient, Completion, TextEvent
from cocoon.crypto import load_or_create_node_keys
from cocoon.engines import DEFAULT_MODEL
from cocoon.errors import CocoonError
from cocoon.local import LocalNetwork, free_port
from cocoon.protocol.payload import SealedMessage, SealedParams

GRACE_S = 60.0


@dataclass
class Tally:
    clean: list[float] = field(default_factory=list)  # latencies of requests served by one worker
    moved: list[float] = field(default_factory=list)  # latencies of requests resumed on another worker
    failed: list[str] = field(default_factory=list)
    stalls: list[float] = field(default_factory=list)  # silence in a stream while it moved to another worker
    kills: int = 0
    memory: list[tuple[float, float, int, int]] = field(default_factory=list)  # t, RSS MiB, done, failed


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def stream_forever(client: CocoonClient, i: int, stop: float, tally: Tally, max_tokens: int) -> None:
    n = 0
    while time.monotonic() < stop:
        n += 1
        t0 = time.monotonic()
        workers: set[str] = set()
        last_worker, last_at = "", t0
        try:
            async for event in client.stream(
                "chat",
                DEFAULT_MODEL,
                messages=[SealedMessage(role="user", content=f"Stream {i}, request {n}: tell a long story.")],
                params=SealedParams(max_tokens=max_tokens, temperature=0),
            ):
                if isinstance(event, TextEvent):
                    workers.add(event.worker_id)
                    now = time.monotonic()
                    if last_worker and event.worker_id != last_worker:
                        tally.stalls.append(now - last_at)
                    last_worker, last_at = event.worker_id, now
                elif isinstance(event, Completion):
                    workers.update(r.worker_id for r in event.receipts)
        except CocoonError as exc:
            tally.failed.append(f"{exc.code}: {exc.message}")
            continue
        (tally.moved if len(workers) > 1 else tally.clean).append(time.monotonic() - t0)


async def killer(net: LocalNetwork, stop: float, interval: float, tally: Tally) -> None:
    keys = {i: load_or_create_node_keys(net.home / f"worker-{i}" / "keys.json") for i in range(1, net.workers + 1)}
    ids = {key.node_id: i for i, key in keys.items()}
    async with httpx.AsyncClient(base_url=net.proxy_url) as http:
        while time.monotonic() + interval < stop:
            await asyncio.sleep(interval)
            workers = (await http.get("/v1/directory")).json()["workers"]
            busy = [w for w in workers if w["inflight"]] or workers
            if not busy:
                continue
            i = ids[random.choice(busy)["worker_id"]]
            child = net.child(f"worker-{i}")
            os.kill(child.process.pid, signal.SIGKILL)
            child.process.wait()
            tally.kills += 1
            net.children.remove(child)
            await asyncio.sleep(1.0)  # the operator comes back a moment later
            net.add_worker(i)


async def sample_memory(pid: int, stop: float, tally: Tally) -> None:
    start = time.monotonic()
    while time.monotonic() < stop + GRACE_S:
        done = len(tally.clean) + len(tally.moved)
        tally.memory.append((time.monotonic() - start, rss_mib(pid), done, len(tally.failed)))
        await asyncio.sleep(10)


async def main(args: argparse.Namespace) -> None:
    home = Path(tempfile.mkdtemp(prefix="cocoon-chaos-"))
    engine = {"kind": "synthetic", "synthetic_tokens_per_s": args.tokens_per_s} if args.engine == "synthetic" else {}
    net = LocalNetwork(
        port_base=free_port(), proxy_port=free_port(), home=home, workers=args.workers, engine=engine,
        worker_options={"slots": args.slots},
    )  # fmt: skip
    tally = Tally()
    try:
        net.start()
        net.wait_ready(timeout=180)
        policy = AttestationPolicy(**net.policy)
        stop = time.monotonic() + args.duration
        async with CocoonClient(net.proxy_url, policy, timeout=GRACE_S) as client:
            load = [stream_forever(client, i, stop, tally, args.max_tokens) for i in range(args.streams)]
            memory = asyncio.create_task(sample_memory(net.child("proxy").process.pid, stop, tally))
            try:
                await asyncio.wait_for(
                    asyncio.gather(*load, killer(net, stop, args.interval, tally)), args.duration + GRACE_S
                )
            finally:
                memory.cancel()
                tally.memory.append(
                    (args.duration, rss_mib(net.child("proxy").process.pid), len(tally.clean) + len(tally.moved), 0)
                )
    finally:
        net.stop()
    report(Console(width=140), tally, args)


def report(console: Console, tally: Tally, args: argparse.Namespace) -> None:
    done = len(tally.clean) + len(tally.moved)
    baseline = statistics.median(tally.clean) if tally.clean else float("nan")
    extra = [t - baseline for t in tally.moved]
    summary = Table(
        title=f"chaos: {args.streams} streams, {args.workers} workers ({args.engine}), a worker killed every "
        f"{args.interval:g}s for {args.duration:g}s"
    )
    for col in ("requests", "completed", "failed", "kills", "resumed on another worker", "clean p50 s",
                "extra per failover p50 s", "extra per failover p99 s", "stall at switch p50 s",
                "stall p99 s"):  # fmt: skip
        summary.add_column(col, justify="right")
    summary.add_row(
        str(done + len(tally.failed)),
        str(done),
        str(len(tally.failed)),
        str(tally.kills),
        str(len(tally.moved)),
        f"{baseline:.3f}",
        f"{quantile(extra, 0.5):.3f}",
        f"{quantile(extra, 0.99):.3f}",
        f"{quantile(tally.stalls, 0.5):.3f}",
        f"{quantile(tally.stalls, 0.99):.3f}",
    )
    console.print(summary)
    memory = Table(title="proxy memory over time")
    for col in ("t s", "RSS MiB", "completed so far"):
        memory.add_column(col, justify="right")
    for t, mib, completed, _ in tally.memory:
        memory.add_row(f"{t:.0f}", f"{mib:.1f}", str(completed))
    console.print(memory)
    for reason in sorted(set(tally.failed))[:10]:
        console.print(f"[red]failed[/]: {reason} (×{tally.failed.count(reason)})")
    console.print(
        "Failovers before the first byte are invisible to the app and counted as clean; 'extra' compares "
        "resumed requests with the median clean one; 'stall' is the silence in a stream while it moved."
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of load (then up to 60 s to drain)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between kills")
    parser.add_argument("--streams", type=int, default=20, help="concurrent streaming clients")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--slots", type=int, default=16, help="jobs per worker at once (spare capacity)")
    parser.add_argument("--engine", choices=["synthetic", "llamacpp"], default="synthetic")
    parser.add_argument("--tokens-per-s", type=float, default=40.0, help="synthetic engine pace per stream")
    parser.add_argument("--max-tokens", type=int, default=64)
    asyncio.run(main(parser.parse_args()))
