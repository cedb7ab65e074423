"""What a real network's behaviour costs a checked send: the same contract calls on the devnet as it answers
locally (instant) and in real-toncenter mode (reads cached 1 s, messages landing 1 s after sendBoc, 10
requests/s for the key), side by side in one run.

Each send is a registry owner op through ``send_checked``: sign, send, wait for the seqno, find the wallet's
transaction and the registry's transaction for its message. Prints median and p99 latency, and how many API
requests one send took. Usage: ``python bench/chain.py [--sends 20]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from cocoon.chain import TON, ModelEntry, Registry, RegistryParams, ToncenterClient, Wallet
from cocoon.chain.devnet import DevnetClient, DevnetOptions, DevnetProcess

MODES = {"local devnet (instant)": DevnetOptions(), "real-toncenter mode": DevnetOptions(toncenter=True)}


async def run(options: DevnetOptions, sends: int, folder: Path) -> tuple[list[float], float]:
    """Latencies of ``sends`` checked sends, and API requests per send."""
    calls = 0

    async def count(_request: httpx.Request) -> None:
        nonlocal calls
        calls += 1

    process = DevnetProcess(0, state_file=folder / "devnet.json", log_file=folder / "devnet.log", options=options)
    await process.start()
    try:
        async with DevnetClient(process.base_url) as devnet, ToncenterClient(process.base_url, "bench") as chain:
            chain._http.event_hooks["request"].append(count)
            owner = Wallet.generate()
            await devnet.fund(owner.address, 50 * TON)
            registry = Registry.for_deploy(chain, owner.address, RegistryParams())
            await registry.deploy(owner)
            calls, latencies = 0, []
            for i in range(sends):
                entry = ModelEntry(f"model-{i}", bytes(32), 1000 + i, 1000, 2000)
                started = time.perf_counter()
                await registry.upsert_model(owner, entry)
                latencies.append(time.perf_counter() - started)
            return latencies, calls / sends
    finally:
        await process.stop()


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sends", type=int, default=20, help="checked sends per mode")
    args = parser.parse_args()
    table = Table(title=f"a checked send (registry upsert_model), {args.sends} per mode")
    for column in ("devnet", "median s", "p99 s", "× local median", "API requests / send"):
        table.add_column(column, justify="right")
    base = None
    for name, options in MODES.items():
        with tempfile.TemporaryDirectory() as folder:
            latencies, per_send = await run(options, args.sends, Path(folder))
        median = statistics.median(latencies)
        base = base or median
        table.add_row(name, f"{median:.3f}", f"{p99(latencies):.3f}", f"{median / base:.1f}", f"{per_send:.1f}")
    Console().print(table)


if __name__ == "__main__":
    asyncio.run(main())
