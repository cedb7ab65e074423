"""Settlement at scale: 10 clients × 1,000 paid requests to 2 workers, and how few on-chain operations it takes.

Starts a devnet, a billing proxy and two workers on the ``synthetic`` engine (so the model is not the
bottleneck), gives each in-process SDK client its own wallet and channel, runs the requests, settles once,
lets each worker claim, and checks conservation on chain; the proxy's /metrics time its voucher path.
Usage: ``python bench/settlement.py [--clients 10] [--requests 1000] [--concurrency 2]``.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from pytoniq_core.boc.address import Address
from quantiles import quantile
from rich.console import Console
from rich.table import Table

from cocoon.attestation import AttestationPolicy
from cocoon.chain import (
    TON,
    ClientChannel,
    Registry,
    ToncenterClient,
    Wallet,
    WorkerChannel,
    sign_voucher,
)
from cocoon.chain.address import address_text
from cocoon.chain.devnet import DevnetClient
from cocoon.client import CocoonClient
from cocoon.client.sdk import Completion
from cocoon.client.wallet import ChannelPayer, check_same_chain, client_channel, payment_terms
from cocoon.crypto import SigningKey
from cocoon.engines import DEFAULT_MODEL
from cocoon.local import LocalNetwork, free_port
from cocoon.protocol.http_client import LeanClient
from cocoon.protocol.money import VoucherSubmission
from cocoon.protocol.payload import SealedMessage, SealedParams
from cocoon.proxy.money.billing import Billing
from cocoon.proxy.money.chain_handle import ChainHandle
from cocoon.proxy.money.ledger import Charge, ClientAccount
from cocoon.proxy.store import Store, default_url

console = Console()


async def open_client(net: LocalNetwork, chain: ToncenterClient, devnet: DevnetClient) -> CocoonClient:
    key = SigningKey.generate()
    wallet = Wallet(key.seed)
    await devnet.fund(wallet.address, 3 * TON)
    http = LeanClient(base_url=net.proxy_url, timeout=30)  # a sidecar's
    terms = await payment_terms(http)
    assert terms is not None
    await check_same_chain(chain, terms, "devnet")
    await client_channel(chain, wallet, terms).deploy(wallet, TON)
    payer = ChannelPayer(http, chain, key)
    return CocoonClient(net.proxy_url, AttestationPolicy.model_validate(net.policy), payer=payer)


async def run_client(client: CocoonClient, requests: int, concurrency: int, latencies: list[float]) -> int:
    """``requests`` paid requests, ``concurrency`` at a time; each one's time (sent -> paid) goes to ``latencies``."""
    left = list(range(requests))
    paid = 0

    async def lane() -> None:
        nonlocal paid
        while left:
            i = left.pop()
            sent = time.perf_counter()
            async for event in client.stream(
                "chat",
                DEFAULT_MODEL,
                messages=[SealedMessage(role="user", content=f"request {i}")],
                params=SealedParams(max_tokens=4 + i % 5),
            ):
                if isinstance(event, Completion):
                    assert event.cost is not None
                    paid += event.cost.total
            latencies.append(time.perf_counter() - sent)

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return paid


def settle_and_claim(net: LocalNetwork) -> tuple[dict[str, Any], dict[str, Any]]:
    settle = httpx.post(f"{net.proxy_url}/v1/settle", timeout=600).json()
    for i in range(1, net.workers + 1):
        config = str(net.home / f"worker-{i}.toml")
        subprocess.run([sys.executable, "-m", "cocoon", "worker", "claim", "-c", config], check=True)
    return settle, httpx.get(f"{net.proxy_url}/v1/books", timeout=30).json()


async def main(args: argparse.Namespace, net: LocalNetwork) -> None:
    assert net.chain is not None
    async with ToncenterClient(net.chain.url) as chain, DevnetClient(net.chain.url) as devnet:
        with console.status(f"opening {args.clients} client channels…"):
            clients = [await open_client(net, chain, devnet) for _ in range(args.clients)]
        started = time.monotonic()
        latencies: list[float] = []
        with console.status(f"{args.clients} clients × {args.requests} requests…"):
            paid = await asyncio.gather(*(run_client(c, args.requests, args.concurrency, latencies) for c in clients))
        elapsed = time.monotonic() - started
        with console.status("settling (cocoon proxy settle) and claiming (cocoon worker claim)…"):
            settle, books = await asyncio.to_thread(settle_and_claim, net)
        client_claims = sum(
            [(await ClientChannel(chain, Address(c["channel"])).get_channel()).claimed for c in books["clients"]]
        )
        worker_claimed = [
            (await WorkerChannel(chain, Address(w["channel"])).get_channel()).claimed for w in books["workers"]
        ]
        worker_claims = sum(worker_claimed)
        # Every on-chain operation is a message into a channel contract: the fees those transactions paid.
        channels = [c["channel"] for c in books["clients"]] + [w["channel"] for w in books["workers"]]
        chain_fees = 0
        for channel in channels:
            chain_fees += sum(tx.fee for tx in await chain.get_transactions(channel, limit=100))
        latency_ms = await asyncio.to_thread(voucher_latency_ms, net)
        # The group commit's batches grow with the vouchers waiting: the path alone at several concurrencies.
        path_rates = {n: await voucher_path_rate(net, 2000, n) for n in (10, 50, 200)}
        for client in clients:
            await client.aclose()
    requests = args.clients * args.requests
    deposits, settlement, claims = args.clients, settle["operations"], sum(1 for c in worker_claimed if c)
    table = Table(title=f"settlement: {args.clients} clients × {args.requests} requests, {net.workers} workers")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("paid requests", f"{requests:,}"),
        ("requests/s end to end (receipt verified, voucher stored)", f"{requests / elapsed:,.0f}"),
        (
            "time of one paid request, sent -> paid: p50 / p99",
            f"{quantile(latencies, 0.5, scale=1000):.1f} / {quantile(latencies, 0.99, scale=1000):.1f} ms",
        ),
        ("on-chain ops: client deposits (channel deploys)", str(deposits)),
        ("on-chain ops: proxy settlement (claims + worker fundings)", str(settlement)),
        ("on-chain ops: worker claims", str(claims)),
        ("on-chain ops in all", str(deposits + settlement + claims)),
        ("client debits (sum of usage.total_cost)", f"{sum(paid):,} nanoton"),
        ("claimed on chain from client channels", f"{client_claims:,} nanoton"),
        ("claimed on chain by workers", f"{worker_claims:,} nanoton"),
        ("proxy fees", f"{books['proxy_fees']:,} nanoton = {Decimal(books['proxy_fees']) / TON:f} TON"),
        ("transaction fees of the channel contracts", f"{Decimal(chain_fees) / TON:f} TON"),
        ("conservation on chain (client = workers + fees)", str(client_claims == worker_claims + books["proxy_fees"])),
        ("vouchers verified and stored per second in this run", f"{books['receipts']['paid'] / elapsed:,.0f}"),
        ("mean time of one voucher in the proxy under this load", f"{latency_ms:.1f} ms"),
    ]
    rows += [
        (f"vouchers/s, voucher path alone ({n} channels at once, SQLite, 2,000 vouchers)", f"{rate:,.0f}")
        for n, rate in path_rates.items()
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)


def voucher_latency_ms(net: LocalNetwork) -> float:
    """Mean time a voucher spent in the proxy's voucher path under this load (from its /metrics)."""
    count = total = 0.0
    for line in httpx.get(f"{net.proxy_url}/metrics", timeout=10).text.splitlines():
        if line.startswith("cocoon_proxy_voucher_seconds_count"):
            count = float(line.split()[-1])
        elif line.startswith("cocoon_proxy_voucher_seconds_sum"):
            total = float(line.split()[-1])
    return 1000 * total / count if count else 0.0


async def voucher_path_rate(net: LocalNetwork, samples: int, channels: int) -> float:
    """The proxy's voucher path alone, in process on a fresh SQLite store: verify the client's signature, mark
    the receipt paid, sign and store the worker's voucher, commit; ``channels`` clients at once."""
    assert net.chain is not None
    with tempfile.TemporaryDirectory() as folder:
        store = Store(default_url(Path(folder)))
        await store.start()
        async with ToncenterClient(net.chain.url) as chain:
            wallet = Wallet.generate()
            registry = Registry(chain, Address(net.chain.registry))
            global_id = await chain.global_id()
            link = ChainHandle(chain, wallet, registry, await registry.get_params(), store, global_id)
            billing = Billing(store, link, unpaid_grace_s=10, credit_limit=10**18)
            keys = [SigningKey.generate() for _ in range(channels)]
            names = [f"0:{i:064x}" for i in range(channels)]
            worker = link.worker_channel(address_text(Wallet.generate().address))
            async with store.session() as session:
                for key, name in zip(keys, names, strict=True):
                    session.add(
                        ClientAccount(
                            channel=name,
                            payer_key=key.public,
                            deposit=10**15,
                            charged=0,
                            vouchered=0,
                            voucher_signature=b"",
                            claimed=0,
                        )
                    )
                    for n in range(samples // channels):
                        session.add(
                            Charge(
                                receipt_id=f"{name}-{n}",
                                request_id="r",
                                client_channel=name,
                                worker_channel=worker,
                                worker_payout="0:" + "0" * 64,
                                worker_id="w",
                                model="m",
                                coefficient=1000,
                                prompt_cost=1,
                                cached_cost=0,
                                completion_cost=2,
                                cost=3,
                                worker_share=2,
                                fee=1,
                                status="owed",
                                receipt=b"",
                            )
                        )
                await session.commit()

            async def pay(key: SigningKey, name: str) -> None:
                for n in range(samples // channels):
                    cumulative = 3 * (n + 1)
                    # the client's work, not timed apart
                    signature = sign_voucher(key.seed, name, cumulative, global_id=global_id).hex()
                    await billing.accept_voucher(
                        VoucherSubmission(
                            channel=name, cumulative=cumulative, signature=signature, receipt_ids=[f"{name}-{n}"]
                        )
                    )

            started = time.monotonic()
            await asyncio.gather(*(pay(k, n) for k, n in zip(keys, names, strict=True)))
            elapsed = time.monotonic() - started
        await store.close()
    return (samples // channels) * channels / elapsed


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=2, help="requests in flight per client")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        network = LocalNetwork(
            port_base=free_port(),
            proxy_port=free_port(),
            devnet_port=free_port(),
            home=Path(home),
            workers=2,
            money=True,
            engine={"kind": "synthetic"},
            worker_options={"slots": 8},
        )
        try:
            network.start()
            network.wait_ready(timeout=120)
            asyncio.run(main(args, network))
        finally:
            network.stop()
