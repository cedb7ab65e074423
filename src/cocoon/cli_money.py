"""The money subcommands: ``cocoon client deposit|balance|close|withdraw``, ``cocoon worker earnings|claim``,
``cocoon proxy settle`` and ``cocoon chain status``. Plain ``cocoon client|worker|proxy`` run the roles (cli.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, TypeVar

import httpx
import typer
from pytoniq_core.boc.address import Address
from rich.console import Console
from rich.table import Table

from cocoon.chain import TON, ClientChannel, Registry, ToncenterClient, Wallet, WorkerChannel
from cocoon.chain.address import address_text, raw_address
from cocoon.chain.devnet import DevnetClient
from cocoon.config import ClientSettings, RoleSettings, WorkerSettings
from cocoon.crypto import load_or_create_signing_key
from cocoon.errors import CocoonError, ConfigError

console = Console(stderr=True)
T = TypeVar("T")
S = TypeVar("S", bound=RoleSettings)


def _group(help_text: str) -> typer.Typer:
    return typer.Typer(help=help_text, pretty_exceptions_enable=False, rich_markup_mode=None)


client_app = _group("Run the client sidecar, or manage the client's channel (deposit, balance, close, withdraw).")
worker_app = _group("Run a worker, or see and claim its earnings.")
proxy_app = _group("Run a proxy, or settle its vouchers on chain.")
chain_app = _group("Look at the chain: registry prices, channels, on-chain operations.")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML settings file of the role")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]
ProxyUrlOpt = Annotated[str, typer.Option(help="proxy base URL")]


def ton(nanoton: int) -> str:
    """``1500000000`` → ``1.5 TON`` (display only: amounts stay integers)."""
    return f"{Decimal(nanoton) / TON:f} TON"


def parse_ton(text: str) -> int:
    try:
        amount = Decimal(text) * TON
    except InvalidOperation as exc:
        raise ConfigError(f"{text!r} is not an amount of TON; write e.g. 5 or 0.25") from exc
    if amount <= 0 or amount != amount.to_integral_value():
        raise ConfigError(f"{text!r} TON is not a positive whole number of nanoton")
    return int(amount)


def _run(what: str, work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work`` with a spinner; a CocoonError becomes a clear message and exit code 2."""
    try:
        with console.status(what + "…"):
            return asyncio.run(work())  # type: ignore[arg-type]
    except CocoonError as exc:
        console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from exc
    except httpx.HTTPError as exc:
        console.print(f"[red]error:[/red] {exc!r}; is the proxy (or chain) running at that URL?")
        raise typer.Exit(2) from exc


def _settings(cls: type[S], config: Path | None) -> S:
    try:
        return cls.load(config)
    except CocoonError as exc:
        console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from exc


def _client_chain(settings: ClientSettings) -> str:
    if not settings.chain_url:
        raise ConfigError("set chain_url in the client's config (or COCOON_CLIENT_CHAIN_URL) to the toncenter API")
    return settings.chain_url


async def _client_channel(settings: ClientSettings, chain: ToncenterClient) -> tuple[Wallet, ClientChannel]:
    from cocoon.client.wallet import client_channel, payment_terms

    async with httpx.AsyncClient(base_url=settings.proxy_url, timeout=10) as http:
        terms = await payment_terms(http)
    if terms is None:
        raise ConfigError(f"the proxy at {settings.proxy_url} is free: it takes no deposit")
    wallet = Wallet(load_or_create_signing_key(settings.wallet_file).seed)
    return wallet, client_channel(chain, wallet, terms)


@client_app.command()
def deposit(
    amount: Annotated[str, typer.Option(help="TON to add to the channel, e.g. 5 or 0.25")] = "1",
    config: ConfigOpt = None,
) -> None:
    """Open the client's channel with the proxy (first time) or top it up."""
    settings = _settings(ClientSettings, config)
    nanoton = parse_ton(amount)

    async def work() -> str:
        async with ToncenterClient(_client_chain(settings), settings.chain_api_key) as chain:
            wallet, channel = await _client_channel(settings, chain)
            if (await chain.get_address_information(channel.address)).active:
                await channel.top_up(wallet, nanoton)
            else:
                await channel.deploy(wallet, nanoton)
            state = await channel.get_channel()
            return f"channel {address_text(channel.address)} now holds {ton(state.deposit)} ({state.deposit} nanoton)"

    console.print("[green]✓[/] " + _run(f"depositing {ton(nanoton)}", work))


@client_app.command()
def balance(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """The client's channel: deposit and claims on chain, vouchered and free at the proxy, wallet balance."""
    settings = _settings(ClientSettings, config)

    async def work() -> dict[str, Any]:
        async with ToncenterClient(_client_chain(settings), settings.chain_api_key) as chain:
            wallet, channel = await _client_channel(settings, chain)
            raw = raw_address(channel.address)
            out: dict[str, Any] = {"channel": raw, "wallet": address_text(wallet.address, bounceable=False)}
            out["wallet_balance"] = await chain.get_balance(wallet.address)
            if (await chain.get_address_information(channel.address)).active:
                state = await channel.get_channel()
                out |= {"deposit": state.deposit, "claimed": state.claimed, "close_at": state.close_at}
            async with httpx.AsyncClient(base_url=settings.proxy_url, timeout=10) as http:
                books = await http.get(f"/v1/channels/{raw}")
            if books.status_code == 200:
                body = books.json()
                out |= {k: body[k] for k in ("vouchered", "charged", "reserved", "free")}
            return out

    _print(_run("reading the channel", work), as_json, "client channel")


@client_app.command()
def close(config: ConfigOpt = None) -> None:
    """Start closing the channel; the proxy may still claim until the close delay ends, then `withdraw`."""
    settings = _settings(ClientSettings, config)

    async def work() -> str:
        async with ToncenterClient(_client_chain(settings), settings.chain_api_key) as chain:
            wallet, channel = await _client_channel(settings, chain)
            await channel.start_close(wallet)
            state = await channel.get_channel()
            return f"closing; `cocoon client withdraw` returns the rest after unix time {state.close_at}"

    console.print("[green]✓[/] " + _run("starting the close", work))


@client_app.command()
def withdraw(config: ConfigOpt = None) -> None:
    """After the close delay, return what the proxy has not claimed to the client's wallet."""
    settings = _settings(ClientSettings, config)

    async def work() -> str:
        async with ToncenterClient(_client_chain(settings), settings.chain_api_key) as chain:
            wallet, channel = await _client_channel(settings, chain)
            before = await chain.get_balance(wallet.address)
            await channel.withdraw(wallet)
            return f"wallet balance {ton(before)} → {ton(await chain.get_balance(wallet.address))}"

    console.print("[green]✓[/] " + _run("withdrawing", work))


@worker_app.command()
def earnings(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """What each proxy owes this worker: vouchered, funded on chain, claimed."""
    from cocoon.worker.earnings import earnings as fetch

    settings = _settings(WorkerSettings, config)
    rows = _run("asking the proxies", lambda: fetch(settings))
    data = [
        {"proxy": e.proxy, "channel": e.channel, "vouchered": e.vouchered, "funded": e.funded, "claimed": e.claimed}
        for e in rows
    ]
    _print({"earnings": data}, as_json, "worker earnings")


@worker_app.command()
def claim(config: ConfigOpt = None) -> None:
    """Claim the latest voucher of every proxy on chain, into the worker's payout wallet."""
    from cocoon.worker.earnings import claim as claim_one
    from cocoon.worker.earnings import earnings as fetch

    settings = _settings(WorkerSettings, config)

    async def work() -> int:
        return sum([await claim_one(settings, e) for e in await fetch(settings) if e.vouchered > e.claimed])

    paid = _run("claiming on chain", work)
    console.print(f"[green]✓[/] claimed {paid} nanoton ({ton(paid)})")


@proxy_app.command()
def settle(proxy_url: ProxyUrlOpt = "http://127.0.0.1:8700", as_json: JsonOpt = False) -> None:
    """Settle now: claim every client voucher and fund every worker channel up to its voucher."""

    async def work() -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=300) as http:
            response = await http.post(f"{proxy_url}/v1/settle")
        if response.status_code != 200:
            raise CocoonError.from_openai(response.status_code, response.json())
        result: dict[str, Any] = response.json()
        return result

    report = _run("settling on chain", work)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    console.print(
        f"[green]✓[/] claimed {report['claimed_total']} nanoton from {len(report['claimed'])} client channels, "
        f"funded {report['funded_total']} nanoton to {len(report['funded'])} worker channels "
        f"({report['operations']} on-chain operations now, {report['onchain_operations']} in all)"
    )
    for channel, why in report["failed"].items():
        console.print(f"[red]failed[/red] {channel}: {why}")


@chain_app.command("status")
def chain_status(
    chain_url: Annotated[str, typer.Option(help="toncenter v2 API")] = "http://127.0.0.1:8790",
    proxy_url: ProxyUrlOpt = "http://127.0.0.1:8700",
    as_json: JsonOpt = False,
) -> None:
    """The registry's prices and every channel the proxy keeps, as the chain sees them."""

    async def work() -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=10) as http:
            terms = (await http.get(f"{proxy_url}/v1/payment")).json()
            books = (await http.get(f"{proxy_url}/v1/books")).json()
        out: dict[str, Any] = {"registry": terms["registry"], "proxy_wallet": terms["proxy_wallet"]}
        async with ToncenterClient(chain_url) as chain:
            registry = Registry(chain, Address(terms["registry"]))
            out["models"] = [
                {"model": m.name, "prompt": m.price_prompt, "cached": m.price_cached, "completion": m.price_completion}
                for m in await registry.get_models()
            ]
            out["proxy_wallet_balance"] = await chain.get_balance(Address(terms["proxy_wallet"]))
            channels = []
            for kind, rows, cls in (
                ("client", books["clients"], ClientChannel),
                ("worker", books["workers"], WorkerChannel),
            ):
                for row in rows:
                    address = Address(row["channel"])
                    if (await chain.get_address_information(address)).active:
                        state = await cls(chain, address).get_channel()
                        channels.append(
                            {
                                "kind": kind,
                                "channel": row["channel"],
                                "deposit": state.deposit,
                                "claimed": state.claimed,
                            }
                        )
            out["channels"] = channels
            try:
                async with DevnetClient(chain_url) as devnet:
                    out["transactions"] = (await devnet.status()).transactions
            except CocoonError:
                pass  # not a devnet: toncenter has no such counter
        out["onchain_operations"] = books["onchain_operations"]
        return out

    _print(_run("reading the chain", work), as_json, "chain")


AMOUNTS = {"deposit", "claimed", "vouchered", "charged", "reserved", "free", "wallet_balance", "proxy_wallet_balance"}


def _print(data: dict[str, Any], as_json: bool, title: str) -> None:
    if as_json:
        print(json.dumps(data, indent=2))
        return
    table = Table(title=title, show_header=False)
    for key, value in data.items():
        if isinstance(value, list):
            for i, item in enumerate(value):
                table.add_row(f"{key}[{i}]", "  ".join(f"{k}={v}" for k, v in item.items()))
        else:
            table.add_row(key, f"{value} ({ton(value)})" if key in AMOUNTS else str(value))
    Console().print(table)
