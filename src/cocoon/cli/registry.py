"""``cocoon chain wallet`` and ``cocoon chain registry ...``: what a network's owner does on a real chain.

Bringing up a network on testnet or mainnet takes a funded owner wallet, a registry with its parameters, the
models it prices and the image measurements it allows. Every command names its chain with ``--chain-url``,
``--network`` and ``--api-key`` (or ``COCOON_CHAIN_URL``, ``COCOON_NETWORK``, ``COCOON_CHAIN_API_KEY``), checks
the chain is that network before signing anything, and sends through the owner wallet's outbox: a command run
again after a crash or a timeout resumes the message it sent instead of sending a second one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pytoniq_core.boc.address import Address

from cocoon.chain import (
    TESTNET_GLOBAL_ID,
    ModelEntry,
    Outbox,
    ProxyEntry,
    Registry,
    RegistryParams,
    ToncenterClient,
    Wallet,
)
from cocoon.chain.address import address_text, parse_address, payable_text
from cocoon.chain.liteserver import open_chain
from cocoon.chain.network import Network, check_network
from cocoon.chain.pricing import parse_ton
from cocoon.chain.registry import endpoint_problem, measurement_key
from cocoon.cli.common import JsonOpt, clear_errors, console, print_report, role_group, run_with_spinner, ton
from cocoon.config import cocoon_home
from cocoon.crypto import load_or_create_signing_key
from cocoon.errors import ConfigError

T = TypeVar("T")

ChainUrlOpt = Annotated[
    str,
    typer.Option(
        "--chain-url", envvar="COCOON_CHAIN_URL", help="toncenter v2 API (testnet: https://testnet.toncenter.com)"
    ),
]
NetworkOpt = Annotated[
    Network, typer.Option("--network", envvar="COCOON_NETWORK", help="the network --chain-url must serve")
]
ApiKeyOpt = Annotated[
    str | None, typer.Option("--api-key", envvar="COCOON_CHAIN_API_KEY", help="toncenter API key (@tonapibot)")
]
LiteserverOpt = Annotated[
    Path | None,
    typer.Option(
        "--liteserver-config",
        envvar="COCOON_LITESERVER_CONFIG",
        help="TON global config JSON: read through a liteserver with proofs (the default on mainnet needs it)",
    ),
]
OwnerKeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--owner-key",
        envvar="COCOON_OWNER_KEY",
        help="the owner wallet's key file, made on first use [default: ~/.cocoon/chain/owner-key.json]",
    ),
]
RegistryOpt = Annotated[str, typer.Option("--registry", envvar="COCOON_REGISTRY", help="the registry's address")]

DEFAULT_CHAIN_URL = "http://127.0.0.1:8790"


def default_owner_key() -> Path:
    return cocoon_home() / "chain" / "owner-key.json"


registry_app = role_group("The network registry: deploy it, set its parameters, models, measurements and proxies.")


class ChainTarget:
    """The chain a command acts on, as its options name it."""

    def __init__(self, url: str, network: Network, api_key: str | None, liteserver: Path | None) -> None:
        self.url, self.network, self.api_key, self.liteserver = url, network, api_key, liteserver

    def run(self, what: str, act: Callable[[ToncenterClient], Coroutine[Any, Any, T]]) -> T:
        """Run ``act`` on the chain, once it is sure to be ``network``, under a spinner."""

        async def work() -> T:
            async with open_chain(
                self.url, self.api_key, network=self.network, liteserver_config=self.liteserver
            ) as chain:
                await check_network(chain, self.network, env="COCOON_NETWORK", option="--network")
                return await act(chain)

        return run_with_spinner(what, work, peer=f"the chain API at {self.url}")


def owner_wallet(key_file: Path | None) -> Wallet:
    """The owner's wallet (key in ``key_file``, default ``~/.cocoon/chain/owner-key.json``), sending through
    the outbox beside its key."""
    key_file = key_file or default_owner_key()
    return Wallet(load_or_create_signing_key(key_file).seed, outbox=Outbox.beside(key_file))


async def shown(chain: ToncenterClient, address: Address) -> str:
    """``address`` in the form to pay it: non-bounceable while undeployed, the testnet flag on testnet."""
    deployed = (await chain.get_address_information(address)).active
    return payable_text(address, deployed=deployed, testnet=await chain.global_id() == TESTNET_GLOBAL_ID)


def wallet(
    owner_key: OwnerKeyOpt = None,
    chain_url: ChainUrlOpt = DEFAULT_CHAIN_URL,
    network: NetworkOpt = "devnet",
    api_key: ApiKeyOpt = None,
    liteserver_config: LiteserverOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The owner wallet: the address to fund it at and its balance (its key is made on first use)."""
    key_file = owner_key or default_owner_key()
    owner = owner_wallet(key_file)

    async def act(chain: ToncenterClient) -> dict[str, Any]:
        balance = await chain.get_balance(owner.address)
        return {"address": await shown(chain, owner.address), "balance": balance, "key_file": str(key_file)}

    report = ChainTarget(chain_url, network, api_key, liteserver_config).run("reading the wallet", act)
    print_report(report, as_json, "owner wallet")
    if not as_json and report["balance"] == 0:
        faucet = " (testnet TON: @testgiver_ton_bot on Telegram)" if network == "testnet" else ""
        console.print(f"fund it by sending TON to {report['address']}{faucet}")


@registry_app.command()
def deploy(
    proxy_fee: Annotated[int, typer.Option(help="the proxy's share of each charge, basis points (500 = 5%)")] = 500,
    min_client_deposit: Annotated[str, typer.Option(help="smallest client deposit, TON")] = "1",
    min_worker_deposit: Annotated[str, typer.Option(help="smallest worker channel funding, TON")] = "1",
    close_delay: Annotated[
        int, typer.Option(help="seconds a payee has to claim after a channel starts closing")
    ] = 3600,
    owner_key: OwnerKeyOpt = None,
    chain_url: ChainUrlOpt = DEFAULT_CHAIN_URL,
    network: NetworkOpt = "devnet",
    api_key: ApiKeyOpt = None,
    liteserver_config: LiteserverOpt = None,
) -> None:
    """Deploy a registry owned by the owner wallet (its address follows from the owner and the parameters,
    so running it again finds the one deployed)."""
    if not 0 <= proxy_fee <= 10_000:
        raise typer.BadParameter("the proxy fee is 0..10000 basis points", param_hint="--proxy-fee")
    params = RegistryParams(proxy_fee, parse_ton(min_client_deposit), parse_ton(min_worker_deposit), close_delay)
    owner = owner_wallet(owner_key)

    async def act(chain: ToncenterClient) -> str:
        registry = Registry.for_deploy(chain, owner.address, params)
        if await registry.is_deployed():
            return f"registry {address_text(registry.address)} is deployed already"
        await registry.deploy(owner)
        return f"registry deployed at {address_text(registry.address)}"

    message = ChainTarget(chain_url, network, api_key, liteserver_config).run("deploying the registry", act)
    console.print(f"[green]✓[/] {message}; set registry = that address in the proxy's config")


@registry_app.command("show")
def show(
    registry: RegistryOpt,
    chain_url: ChainUrlOpt = DEFAULT_CHAIN_URL,
    network: NetworkOpt = "devnet",
    api_key: ApiKeyOpt = None,
    liteserver_config: LiteserverOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The registry's owner, parameters, models with prices and allowed measurements."""

    async def act(chain: ToncenterClient) -> dict[str, Any]:
        contract = Registry(chain, parse_registry(registry))
        params = await contract.get_params()
        return {
            "owner": address_text(await contract.get_owner()),
            "proxy_fee_bps": params.proxy_fee_bps,
            "min_client_deposit": ton(params.min_client_deposit),
            "min_worker_deposit": ton(params.min_worker_deposit),
            "close_delay": params.close_delay,
            "models": [
                {"model": m.name, "prompt": m.price_prompt, "cached": m.price_cached, "completion": m.price_completion}
                for m in await contract.get_models()
            ],
            "measurements": [key.hex() for key in await contract.get_measurements()],
            "proxies": [{"id": f"{p.id:064x}", "endpoint": p.endpoint} for p in await contract.get_proxies()],
        }

    report = ChainTarget(chain_url, network, api_key, liteserver_config).run("reading the registry", act)
    print_report(report, as_json, "registry")


@registry_app.command("set-model")
def set_model(
    name: Annotated[str, typer.Argument(help="the model name clients ask for")],
    weights_hash: Annotated[str, typer.Option(help="sha256 of the weights file, hex (64 digits)")],
    prompt: Annotated[int, typer.Option(help="nanoton per million prompt tokens")],
    completion: Annotated[int, typer.Option(help="nanoton per million completion tokens")],
    cached: Annotated[
        int | None, typer.Option(help="nanoton per million cached prompt tokens (default: prompt)")
    ] = None,
    registry: RegistryOpt = "",
    owner_key: OwnerKeyOpt = None,
    chain_url: ChainUrlOpt = DEFAULT_CHAIN_URL,
    network: NetworkOpt = "devnet",
    api_key: ApiKeyOpt = None,
    liteserver_config: LiteserverOpt = None,
) -> None:
    """Add a model or change its weights hash and prices."""
    entry = ModelEntry(
        name, parse_hash(weights_hash, "--weights-hash"), prompt, prompt if cached is None else cached, completion
    )
    if min(entry.price_prompt, entry.price_cached, entry.price_completion) < 0:
        raise typer.BadParameter("prices are non-negative nanoton amounts")
    owner = owner_wallet(owner_key)

    async def act(chain: ToncenterClient) -> str:
        contract = Registry(chain, parse_registry(registry))
        if await contract.get_model(name) == entry:
            return f"{name} is listed with these prices already"
        await contract.upsert_model(owner, entry)
        return f"{name} listed"

    message = ChainTarget(chain_url, network, api_key, liteserver_config).run(f"listing {name}", act)
    console.print(f"[green]✓[/] {message}")


MeasurementArg = Annotated[
    str,
    typer.Argument(
        help="the image measurement, hex, as `cocoon attest verify` prints it (TDX: MRTD and RTMR0..3, "
        "SEV-SNP: the launch measurement)"
    ),
]


@registry_app.command("allow-measurement")
def allow_measurement(
    measurement: MeasurementArg,
    registry: RegistryOpt = "",
    owner_key: OwnerKeyOpt = None,
    chain_url: ChainUrlOpt = DEFAULT_CHAIN_URL,
    network: NetworkOpt = "devnet",
    api_key: ApiKeyOpt = None,
    liteserver_config: LiteserverOpt = None,
) -> None:
    """Allow workers whose attested image has this measurement."""
    target = ChainTarget(chain_url, network, api_key, liteserver_config)
    _set_measurement(target, registry, owner_key, measurement, allowed=True)


@registry_app.command("remove-measurement")
def remove_measurement(
    measurement: MeasurementArg,
    registry: RegistryOpt = "",
    owner_key: OwnerKeyOpt = None,
    chain_url: ChainUrlOpt = DEFAULT_CHAIN_URL,
    network: NetworkOpt = "devnet",
    api_key: ApiKeyOpt = None,
    liteserver_config: LiteserverOpt = None,
) -> None:
    """Stop allowing an image: proxies and clients reading the registry evict its workers at their next read."""
    target = ChainTarget(chain_url, network, api_key, liteserver_config)
    _set_measurement(target, registry, owner_key, measurement, allowed=False)


def _set_measurement(
    target: ChainTarget, registry: str, owner_key: Path | None, measurement: str, *, allowed: bool
) -> None:
    try:
        key = measurement_key(bytes.fromhex(measurement))
    except ValueError as exc:
        raise typer.BadParameter(f"a measurement is hex: {exc}") from exc
    owner = owner_wallet(owner_key)

    async def act(chain: ToncenterClient) -> str:
        contract = Registry(chain, parse_registry(registry))
        if await contract.is_measurement_allowed(key) == allowed:
            return f"that measurement is {'allowed' if allowed else 'not allowed'} already"
        await (contract.add_measurement if allowed else contract.remove_measurement)(owner, key)
        return "measurement allowed" if allowed else "measurement removed"

    message = target.run("allowing the measurement" if allowed else "removing the measurement", act)
    console.print(f"[green]✓[/] {message}")


@registry_app.command("remove-model")
def remove_model(
    name: Annotated[str, typer.Argument(help="the model to delist")],
    registry: RegistryOpt = "",
    owner_key: OwnerKeyOpt = None,
    chain_url: ChainUrlOpt = DEFAULT_CHAIN_URL,
    network: NetworkOpt = "devnet",
    api_key: ApiKeyOpt = None,
    liteserver_config: LiteserverOpt = None,
) -> None:
    """Delist a model: its price goes, and workers attesting only its weights are no longer admitted."""
    owner = owner_wallet(owner_key)

    async def act(chain: ToncenterClient) -> str:
        contract = Registry(chain, parse_registry(registry))
        if await contract.get_model(name) is None:
            return f"{name} is not listed"
        await contract.remove_model(owner, name)
        return f"{name} delisted"

    message = ChainTarget(chain_url, network, api_key, liteserver_config).run(f"delisting {name}", act)
    console.print(f"[green]✓[/] {message}")


@registry_app.command("add-proxy")
def add_proxy(
    endpoint: Annotated[str, typer.Argument(help="the proxy's public base URL, e.g. https://proxy.example:8700")],
    address: Annotated[str, typer.Option(help="the proxy's wallet address (where client channels pay)")],
    public_key: Annotated[str, typer.Option(help="the proxy's Ed25519 public key, hex (64 digits)")] = "00" * 32,
    registry: RegistryOpt = "",
    owner_key: OwnerKeyOpt = None,
    chain_url: ChainUrlOpt = DEFAULT_CHAIN_URL,
    network: NetworkOpt = "devnet",
    api_key: ApiKeyOpt = None,
    liteserver_config: LiteserverOpt = None,
) -> None:
    """List a proxy (or change its address and key): workers and clients reading the registry find it there.
    Its id is the sha256 of the endpoint, so listing the same endpoint again updates it."""
    with clear_errors():
        problem = endpoint_problem(endpoint.rstrip("/"))
        if problem is not None:  # refused before any gas is spent: clients and workers would skip it
            raise ConfigError(f"{endpoint!r} cannot be a proxy's endpoint: {problem} (e.g. https://proxy.example:8700)")
        entry = ProxyEntry(
            proxy_id(endpoint), parse_address(address), parse_hash(public_key, "--public-key"), endpoint.rstrip("/")
        )
    owner = owner_wallet(owner_key)

    async def act(chain: ToncenterClient) -> str:
        contract = Registry(chain, parse_registry(registry))
        if await contract.get_proxy(entry.id) == entry:
            return f"{entry.endpoint} is listed already"
        await contract.upsert_proxy(owner, entry)
        return f"{entry.endpoint} listed (id {entry.id:064x})"

    message = ChainTarget(chain_url, network, api_key, liteserver_config).run(f"listing {endpoint}", act)
    console.print(f"[green]✓[/] {message}")


@registry_app.command("remove-proxy")
def remove_proxy(
    endpoint: Annotated[str, typer.Argument(help="the endpoint the proxy is listed with")],
    registry: RegistryOpt = "",
    owner_key: OwnerKeyOpt = None,
    chain_url: ChainUrlOpt = DEFAULT_CHAIN_URL,
    network: NetworkOpt = "devnet",
    api_key: ApiKeyOpt = None,
    liteserver_config: LiteserverOpt = None,
) -> None:
    """Delist a proxy: workers reading the registry leave it at their next read."""
    owner = owner_wallet(owner_key)

    async def act(chain: ToncenterClient) -> str:
        contract = Registry(chain, parse_registry(registry))
        listed = [p for p in await contract.get_proxies() if p.endpoint.rstrip("/") == endpoint.rstrip("/")]
        if not listed:
            return f"{endpoint} is not listed"
        for entry in listed:
            await contract.remove_proxy(owner, entry.id)
        return f"{endpoint} delisted"

    message = ChainTarget(chain_url, network, api_key, liteserver_config).run(f"delisting {endpoint}", act)
    console.print(f"[green]✓[/] {message}")


def proxy_id(endpoint: str) -> int:
    """A proxy's registry id: the sha256 of its endpoint (without a trailing slash), as a 256-bit number."""
    return int.from_bytes(hashlib.sha256(endpoint.rstrip("/").encode()).digest(), "big")


def policy(
    registry: RegistryOpt = "",
    history: Annotated[bool, typer.Option("--history", help="every allow-list change, with its transaction")] = False,
    chain_url: ChainUrlOpt = DEFAULT_CHAIN_URL,
    network: NetworkOpt = "devnet",
    api_key: ApiKeyOpt = None,
    liteserver_config: LiteserverOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The network's attestation policy as the registry holds it: allowed image measurements (their sha256)
    and model weights; with --history, every change to them, oldest first (the chain is the public record)."""

    async def act(chain: ToncenterClient) -> dict[str, Any]:
        contract = Registry(chain, parse_registry(registry))
        out: dict[str, Any] = {
            "measurement_digests": [key.hex() for key in await contract.get_measurements()],
            "models": {m.name: m.weights_hash.hex() for m in await contract.get_models()},
        }
        if history:
            out["history"] = [
                {
                    "time": datetime.fromtimestamp(c.utime, UTC).isoformat(),
                    "op": c.op,
                    "subject": c.subject,
                    "detail": c.detail,
                    "transaction": f"{c.lt}:{c.tx_hash.hex()}",
                }
                for c in await contract.policy_history()
            ]
        return out

    report = ChainTarget(chain_url, network, api_key, liteserver_config).run("reading the policy", act)
    if as_json:
        print_report(report, True, "policy")
        return
    print_report({k: v for k, v in report.items() if k != "history"}, False, "policy")
    for change in report.get("history", []):
        detail = f" ({change['detail']})" if change["detail"] else ""
        console.print(f"{change['time']}  {change['op']:<18} {change['subject']}{detail}  tx {change['transaction']}")


def parse_registry(text: str) -> Address:
    if not text:
        raise ConfigError("give the registry's address: --registry or COCOON_REGISTRY")
    return parse_address(text)


def parse_hash(text: str, option: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError as exc:
        raise typer.BadParameter(f"not hex: {exc}", param_hint=option) from exc
    if len(raw) != 32:
        raise typer.BadParameter(f"a sha256 is 32 bytes (64 hex digits), got {len(raw)}", param_hint=option)
    return raw
