"""The chain half of ``cocoon up``: a devnet process, the registry with model prices, funded wallets and the
client's channel with its deposit, all set up before the proxy starts (its books then match the chain).
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from pytoniq_core.boc.address import Address
from rich.console import Console

from cocoon.chain import (
    TON,
    ClientChannel,
    ModelEntry,
    RegistryParams,
    ToncenterClient,
    Wallet,
)
from cocoon.chain.address import address_text, raw_address
from cocoon.chain.devnet import DevnetClient, bootstrap_devnet, devnet_command, ensure_devnet_installed
from cocoon.crypto import load_or_create_signing_key
from cocoon.engines.config import DEFAULT_MODEL
from cocoon.engines.synthetic import SYNTHETIC_MODEL_HASH
from cocoon.errors import ChainSetupFailed, CocoonError

if TYPE_CHECKING:
    from cocoon.up import LocalNetwork

console = Console(stderr=True)
out = Console()

# Mainnet-like prices (COCOON charges 20 nanoton a token): nanoton per million tokens, at coefficient 1000.
PRICE_PROMPT = 10_000_000
PRICE_CACHED = 1_000_000
PRICE_COMPLETION = 20_000_000
PROXY_FEE_BPS = 500
CLOSE_DELAY_S = 600
CLIENT_DEPOSIT = 10 * TON
WALLET_FUNDS = 20 * TON


@dataclass(frozen=True, slots=True)
class LocalChain:
    """Where the local chain is and which keys the roles use on it."""

    url: str
    registry: str
    client_channel: str


def wallet_of(key_file: Path) -> Wallet:
    return Wallet(load_or_create_signing_key(key_file).seed)


def spawn_devnet(home: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """Start the devnet (installing it on first use, with progress) keeping its state in ``home``."""
    folder = ensure_devnet_installed()
    handle = log.open("ab")
    process = subprocess.Popen(
        devnet_command(folder, port, state_file=home / "devnet-state.json"),
        stdout=handle,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    handle.close()
    return process


def devnet_answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/devnet/status", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def bootstrap(url: str, home: Path, models: dict[str, str], workers: int) -> LocalChain:
    """Deploy the registry with ``models`` (name → weights hash), fund every role, open the client channel."""
    try:
        return asyncio.run(_bootstrap(url, home, models, workers))
    except CocoonError as exc:
        raise ChainSetupFailed(f"setting up the devnet at {url} failed: {exc.message}") from exc


async def _bootstrap(url: str, home: Path, models: dict[str, str], workers: int) -> LocalChain:
    owner = wallet_of(home / "chain-owner.json")
    proxy = wallet_of(home / "proxy" / "proxy-key.json")
    client = wallet_of(home / "client-wallet.json")
    payouts = [wallet_of(home / f"worker-{i}" / "wallet.json") for i in range(1, workers + 1)]
    params = RegistryParams(proxy_fee_bps=PROXY_FEE_BPS, min_client_deposit=TON, close_delay=CLOSE_DELAY_S)
    entries = [
        ModelEntry(
            name,
            bytes.fromhex(h) if len(h) == 64 else hashlib.sha256(h.encode()).digest(),
            PRICE_PROMPT,
            PRICE_CACHED,
            PRICE_COMPLETION,
        )
        for name, h in models.items()
    ]
    async with DevnetClient(url) as devnet, ToncenterClient(url) as chain:
        # Top up only wallets running low, so a restarted network keeps its history.
        needy = {}
        for wallet in [proxy, client, *payouts]:
            if await chain.get_balance(wallet.address) < WALLET_FUNDS // 2:
                needy[wallet.address] = WALLET_FUNDS
        registry = await bootstrap_devnet(devnet, chain, owner=owner, params=params, fund=needy)
        known = {m.name: m for m in await registry.get_models()}
        for entry in entries:
            if known.get(entry.name) != entry:
                await registry.upsert_model(owner, entry)
        channel = ClientChannel.for_deploy(
            chain, payer=client.address, payee=proxy.address, payer_key=client.public_key, close_delay=CLOSE_DELAY_S
        )
        if not (await chain.get_address_information(channel.address)).active:
            await channel.deploy(client, CLIENT_DEPOSIT)
    return LocalChain(url, address_text(registry.address), raw_address(channel.address))


def wait_devnet(url: str, process: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not devnet_answers(url):
        if process.poll() is not None:
            tail = " | ".join(log.read_text(errors="replace").splitlines()[-5:])
            raise ChainSetupFailed(f"the devnet exited with code {process.returncode}: {tail}")
        if time.monotonic() > deadline:
            raise ChainSetupFailed(f"the devnet did not answer within {timeout:g}s; see {log}")
        time.sleep(0.1)


def start_local_chain(network: LocalNetwork) -> LocalChain:
    """Start the devnet as the network's first child and set up everything the roles need on it."""
    from cocoon.up import Child

    log = network.home / "logs" / "devnet.log"
    url = f"http://127.0.0.1:{network.devnet_port}"
    if devnet_answers(url):
        raise ChainSetupFailed(f"port {network.devnet_port} is taken by another devnet; stop it or pick --port-base")
    process = spawn_devnet(network.home, network.devnet_port, log)
    network.children.append(Child("devnet", process, log))
    wait_devnet(url, process, 60, log)
    models = {DEFAULT_MODEL: network.model_hash}
    name = str(network.engine.get("model", DEFAULT_MODEL))
    if name not in models:
        models[name] = SYNTHETIC_MODEL_HASH if network.engine.get("kind") == "synthetic" else network.model_hash
    chain = bootstrap(url, network.home, models, network.workers)
    console.print(f"[green]✓[/] devnet chain at {url}: registry, prices, funded wallets, client channel")
    return chain


def money_options(network: LocalNetwork, role: str) -> dict[str, Any]:
    """The settings ``role`` needs to pay or be paid on the local chain (empty without money)."""
    chain = network.chain
    if chain is None:
        return {}
    if role == "proxy":
        return {"chain_url": chain.url, "registry": chain.registry}
    if role == "client":
        return {"chain_url": chain.url, "wallet_file": str(network.home / "client-wallet.json")}
    return {"chain_url": chain.url, "wallet_file": str(network.home / role / "wallet.json")}


def print_money_demo(network: LocalNetwork, usage: dict[str, Any]) -> None:
    """Show what the demo cost and where the nanotons went."""
    books = httpx.get(f"{network.proxy_url}/v1/books", timeout=10).json()
    client: dict[str, Any] = books["clients"][0] if books["clients"] else {}
    out.print(
        f"  cost: {usage.get('total_cost', 0)} nanoton (prompt {usage.get('prompt_cost', 0)}, "
        f"completion {usage.get('completion_cost', 0)}); voucher signed after the receipt verified"
    )
    out.print(
        f"  books: client channel vouchered {client.get('vouchered', 0)} of {client.get('deposit', 0)} nanoton; "
        f"workers credited {books['worker_credits']}, proxy fees {books['proxy_fees']} "
        f"(GET {network.proxy_url}/v1/books)"
    )
    out.print(
        f"  on chain: `cocoon proxy settle --proxy-url {network.proxy_url}` claims it; "
        f"`cocoon chain status --chain-url {network.chain.url if network.chain else ''}` shows the chain"
    )


def print_money_intro(network: LocalNetwork) -> None:
    assert network.chain is not None
    client = network.home / "client.toml"
    out.print(
        f"  chain {network.chain.url} (devnet): client channel {network.chain.client_channel} holds "
        f"{CLIENT_DEPOSIT // TON} TON; books at {network.proxy_url}/v1/books"
    )
    out.print(f"  money: cocoon client balance --config {client}; cocoon client deposit --amount 5 --config {client}")
