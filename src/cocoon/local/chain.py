"""The chain of a local network: a devnet process, the registry with model prices, funded wallets and the
client's channel with its deposit, all set up before the proxy starts (its books then match the chain).

``LocalNetwork`` hands ``start_local_chain`` its ports, home and a way to start a child; nothing here knows it.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from cocoon.attestation.simulated import DEV_MEASUREMENT
from cocoon.chain import TON, ClientChannel, ModelEntry, RegistryParams, ToncenterClient, Wallet, measurement_key
from cocoon.chain.address import address_text, raw_address
from cocoon.chain.devnet import DevnetClient, DevnetOptions, bootstrap_devnet, devnet_command, ensure_devnet_installed
from cocoon.crypto import load_or_create_signing_key
from cocoon.errors import ChainSetupFailed, CocoonError, UpstreamFailed, map_http_errors
from cocoon.local.processes import Child

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

SpawnChild = Callable[[str, list[str]], Child]
"""Start a named child process of the network from a command line (its log goes to ``logs/<name>.log``)."""


@dataclass(frozen=True, slots=True)
class LocalChain:
    """Where the local chain is and which keys the roles use on it."""

    url: str
    registry: str
    client_channel: str
    keyed: bool = False  # the devnet limits keyless callers as toncenter does: every role gets its own API key

    def api_key(self, role: str) -> str | None:
        """The API key ``role`` calls the devnet with (any key is one to the devnet), or None when keyless."""
        return f"local-{role}" if self.keyed else None


def wallet_of(key_file: Path) -> Wallet:
    return Wallet(load_or_create_signing_key(key_file).seed)


def devnet_answers(url: str) -> bool:
    """Whether a devnet answers ``GET /devnet/status`` at ``url`` right now."""
    try:
        with map_http_errors(f"the devnet at {url}"):
            return httpx.get(f"{url}/devnet/status", timeout=2).status_code == 200
    except UpstreamFailed:
        return False


def bootstrap(url: str, home: Path, models: dict[str, str], workers: int, *, keyed: bool = False) -> LocalChain:
    """Deploy the registry with ``models`` (name → weights hash), fund every role, open the client channel."""
    try:
        return asyncio.run(_bootstrap(url, home, models, workers, keyed))
    except CocoonError as exc:
        raise ChainSetupFailed(f"setting up the devnet at {url} failed: {exc.message}") from exc


async def _bootstrap(url: str, home: Path, models: dict[str, str], workers: int, keyed: bool) -> LocalChain:
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
    key = "local-bootstrap" if keyed else None
    async with DevnetClient(url) as devnet, ToncenterClient(url, key) as chain:
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
        # The devnet's policy lives on chain like a real network's: the simulated image is the one allowed.
        dev_image = measurement_key(bytes.fromhex(DEV_MEASUREMENT))
        if not await registry.is_measurement_allowed(dev_image):
            await registry.add_measurement(owner, dev_image)
        channel = ClientChannel.for_deploy(
            chain, payer=client.address, payee=proxy.address, payer_key=client.public_key, close_delay=CLOSE_DELAY_S
        )
        if not (await chain.get_address_information(channel.address)).active:
            await channel.deploy(client, CLIENT_DEPOSIT)
    return LocalChain(url, address_text(registry.address), raw_address(channel.address), keyed)


def wait_devnet(url: str, devnet: Child, timeout: float) -> None:
    """Poll until the devnet answers; ChainSetupFailed (with its last log lines) if it exits or stays silent."""
    deadline = time.monotonic() + timeout
    while not devnet_answers(url):
        if devnet.process.poll() is not None:
            tail = " | ".join(devnet.log_tail(5))
            raise ChainSetupFailed(f"the devnet exited with code {devnet.process.returncode}: {tail}")
        if time.monotonic() > deadline:
            raise ChainSetupFailed(f"the devnet did not answer within {timeout:g}s; see {devnet.log}")
        time.sleep(0.1)


def start_local_chain(
    home: Path,
    port: int,
    *,
    models: dict[str, str],
    workers: int,
    spawn: SpawnChild,
    options: DevnetOptions | None = None,
) -> LocalChain:
    """Start the devnet on ``port`` through ``spawn`` (so the network owns and stops it) keeping its state in
    ``home``, then set up the registry with ``models``, funded wallets for ``workers`` workers and the client
    channel. ``options`` make the devnet answer as toncenter on a real network does (``DevnetOptions``); when
    they rate-limit keyless callers, every role gets an API key. Raises ChainSetupFailed when the port already
    has a devnet or the chain cannot be set up."""
    url = f"http://127.0.0.1:{port}"
    if devnet_answers(url):
        raise ChainSetupFailed(f"port {port} is taken by another devnet; stop it or pick --port-base")
    folder = ensure_devnet_installed()  # with progress, on first use only
    devnet = spawn("devnet", devnet_command(folder, port, state_file=home / "devnet-state.json", options=options))
    wait_devnet(url, devnet, 60)
    keyed = options is not None and (options.toncenter or options.keyless_rps is not None)
    chain = bootstrap(url, home, models, workers, keyed=keyed)
    console.print(f"[green]✓[/] devnet chain at {url}: registry, prices, funded wallets, client channel")
    return chain


def money_options(chain: LocalChain | None, home: Path, role: str) -> dict[str, Any]:
    """The settings ``role`` needs to pay or be paid on the local chain (empty without one)."""
    if chain is None:
        return {}
    common: dict[str, Any] = {"chain_url": chain.url, "network": "devnet"}
    if (key := chain.api_key(role)) is not None:
        common["chain_api_key"] = key
    if role == "proxy":
        return common | {"registry": chain.registry}
    if role == "client":
        return common | {"wallet_file": str(home / "client-wallet.json"), "registry": chain.registry}
    return common | {"wallet_file": str(home / role / "wallet.json")}


def print_money_demo(chain: LocalChain, proxy_url: str, usage: dict[str, Any]) -> None:
    """Show what the demo cost and where the nanotons went."""
    books = httpx.get(f"{proxy_url}/v1/books", timeout=10).json()
    client: dict[str, Any] = books["clients"][0] if books["clients"] else {}
    out.print(
        f"  cost: {usage.get('total_cost', 0)} nanoton (prompt {usage.get('prompt_cost', 0)}, "
        f"completion {usage.get('completion_cost', 0)}); voucher signed after the receipt verified"
    )
    out.print(
        f"  books: client channel vouchered {client.get('vouchered', 0)} of {client.get('deposit', 0)} nanoton; "
        f"workers credited {books['worker_credits']}, proxy fees {books['proxy_fees']} "
        f"(GET {proxy_url}/v1/books)"
    )
    out.print(
        f"  on chain: `cocoon proxy settle --proxy-url {proxy_url}` claims it; "
        f"`cocoon chain status --chain-url {chain.url}` shows the chain"
    )


def print_money_intro(chain: LocalChain, home: Path, proxy_url: str) -> None:
    """Where the chain and the client's channel are, and the commands that move money."""
    client = home / "client.toml"
    out.print(
        f"  chain {chain.url} (devnet): client channel {chain.client_channel} holds "
        f"{CLIENT_DEPOSIT // TON} TON; books at {proxy_url}/v1/books"
    )
    out.print(f"  money: cocoon client balance --config {client}; cocoon client deposit --amount 5 --config {client}")
