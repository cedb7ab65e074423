"""What an API key with a budget costs the sidecar: paid streamed completions without a key, then with one.

Starts a paid local network (devnet, billing proxy, one ``synthetic`` worker at zero cost per token, the
sidecar with its funded channel) and drives the sidecar's ``/v1/chat/completions`` at each concurrency, first
with no key (a loopback sidecar needs none until one exists), then with a key made in the sidecar's store: each
request then authenticates it, counts it against the key's rpm and models, holds the job's maximum cost against
its budget, books what the job paid and gives back the rest (``cocoon.client.keys.spending``). The two paths run
one after the other, not interleaved (a key, once made, is needed by every later request): compare them within
one run, and runs of two versions of the code side by side.
Usage: ``python bench/keys.py [--seconds 5] [--levels 1,16] [--chunks 16]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
import gateways  # its load generator and /proc CPU reader
from quantiles import quantile

from cocoon.client.keys import KeyStore
from cocoon.local import LocalNetwork, free_port

console = Console()


Row = tuple[str, int, float, float, float, float]  # path, streams, req/s, p50 ms, p99 ms, sidecar CPU ms/req


async def measure(net: LocalNetwork, home: Path, args: argparse.Namespace) -> list[Row]:
    url = f"{net.base_url}/chat/completions"
    sidecar = net.child("client").process.pid
    rows: list[Row] = []
    secret = ""
    for path in ("no key", "API key"):
        if path == "API key":
            store = KeyStore(f"sqlite:///{home / 'client' / 'keys.sqlite3'}")
            await store.ready()
            _key, secret = await store.create("bench", 10**15)
            await store.close()
        for streams in args.levels:
            before = gateways.cpu_seconds(sidecar)
            latencies, seconds = await gateways.load(url, streams, args.seconds, args.chunks, secret)
            cpu_ms = 1000 * (gateways.cpu_seconds(sidecar) - before) / len(latencies)
            p50, p99 = (quantile(latencies, q, scale=1000) for q in (0.5, 0.99))
            rows.append((path, streams, len(latencies) / seconds, p50, p99, cpu_ms))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per row")
    parser.add_argument("--chunks", type=int, default=16, help="content chunks per streamed completion")
    parser.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cocoon-bench-keys-") as folder:
        home = Path(folder)
        net = LocalNetwork(
            port_base=free_port(), proxy_port=free_port(), devnet_port=free_port(), home=home, workers=1,
            money=True, engine={"kind": "synthetic", "synthetic_tokens_per_s": 0},
            worker_options={"slots": 64, "max_queue": 4096},
        )  # fmt: skip
        net.start()
        try:
            net.wait_ready(timeout=180)
            rows = asyncio.run(measure(net, home, args))
        finally:
            net.stop()
    table = Table(title=f"sidecar, paid streams of {args.chunks} chunks: without and with an API key")
    for name in ("path", "streams", "req/s", "p50 ms", "p99 ms", "sidecar CPU ms/req", "req/s vs no key"):
        table.add_column(name, justify="right")
    plain = {streams: rps for path, streams, rps, *_ in rows if path == "no key"}
    for path, streams, rps, p50, p99, cpu_ms in rows:
        ratio = "" if path == "no key" else f"{rps / plain[streams]:.2f}×"
        table.add_row(path, str(streams), f"{rps:.0f}", f"{p50:.1f}", f"{p99:.1f}", f"{cpu_ms:.1f}", ratio)
    console.print(table)


if __name__ == "__main__":
    main()
