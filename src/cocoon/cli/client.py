"""``cocoon client``: run the client sidecar, manage the client's payment channels, one with each proxy it
uses (``deposit``, ``balance``, ``close``, ``withdraw``; ``--proxy URL|all`` picks which), and the sidecar's
API keys (``keys``, in ``client_keys.py``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import httpx
import typer

from cocoon.chain import TESTNET_GLOBAL_ID, ClientChannel, Outbox, ToncenterClient, Wallet
from cocoon.chain.address import address_text, payable_text, raw_address
from cocoon.chain.liteserver import chain_for
from cocoon.chain.pricing import parse_ton
from cocoon.cli.client_keys import keys_app
from cocoon.cli.common import (
    ConfigOpt,
    HostOpt,
    JsonOpt,
    PortOpt,
    RunConfigOpt,
    clear_errors,
    console,
    load_settings,
    print_report,
    role_group,
    role_runner,
    run_with_spinner,
    serve,
    ton,
)
from cocoon.config import ClientSettings
from cocoon.crypto import SigningKey, load_or_create_signing_key
from cocoon.errors import ConfigError
from cocoon.logs import configure_logging
from cocoon.protocol.money import channel_auth_header
from cocoon.protocol.tls import trust_context

T = TypeVar("T")

client_app = role_group(
    "Run the client sidecar, manage the client's channel (deposit, balance, close, withdraw), or its API keys (keys)."
)
client_app.add_typer(keys_app, name="keys")


@role_runner(client_app, ClientSettings)
def client(
    ctx: typer.Context,
    config: RunConfigOpt = None,
    proxy_url: Annotated[str | None, typer.Option(help="proxy base URL")] = None,
    host: HostOpt = None,
    port: PortOpt = None,
) -> None:
    """Run the client sidecar: an OpenAI-compatible API on localhost (or: deposit, balance, close, withdraw)."""
    if ctx.invoked_subcommand is not None:
        return
    from cocoon.client import CocoonClient, create_gateway

    settings = load_settings(ClientSettings, config, proxy_url=proxy_url, host=host, port=port)
    configure_logging(settings.log_level, "client")
    with clear_errors():
        urls = _proxy_urls(settings)
        asyncio.run(_check_keys(settings))
    sdk = CocoonClient.for_settings(settings, urls)
    serve(create_gateway(settings, client=sdk), settings.host, settings.port, settings.log_level, settings)


async def _check_keys(settings: ClientSettings) -> None:
    """Refuse, in one line, to serve beyond loopback without an API key (the app's lifespan checks it again)."""
    from cocoon.client.keys import KeyStore, check_exposure

    store = KeyStore.for_settings(settings)
    try:
        await check_exposure(settings, store)
    finally:
        await store.close()


def _proxy_urls(settings: ClientSettings) -> list[str]:
    """The proxies the client uses: the registry's (``proxies_from_registry``), else the configured ones."""
    from cocoon.client.proxies import configured_proxy_urls, registry_proxy_urls

    if settings.proxies_from_registry:
        return asyncio.run(registry_proxy_urls(settings))
    return configured_proxy_urls(settings)


def _require_chain_url(settings: ClientSettings) -> None:
    if not settings.chain_url:
        raise ConfigError("set chain_url in the client's config (or COCOON_CLIENT_CHAIN_URL) to the toncenter API")


async def _client_channel(
    settings: ClientSettings, chain: ToncenterClient, proxy_url: str
) -> tuple[Wallet, ClientChannel]:
    from cocoon.client.wallet import check_same_chain, client_channel, payment_terms

    async with httpx.AsyncClient(base_url=proxy_url, timeout=10, verify=trust_context(settings.tls_ca_file)) as http:
        terms = await payment_terms(http)
    if terms is None:
        raise ConfigError(f"the proxy at {proxy_url} is free: it takes no deposit")
    await check_same_chain(
        chain, terms, settings.network
    )  # a deposit on another chain than the proxy's would never be served
    wallet = Wallet(load_or_create_signing_key(settings.wallet_file).seed, outbox=Outbox.beside(settings.wallet_file))
    return wallet, client_channel(chain, wallet, terms)


ChannelAction = Callable[[ToncenterClient, Wallet, ClientChannel], Coroutine[Any, Any, T]]


def _on_channel(what: str, settings: ClientSettings, act: ChannelAction[T], proxy_url: str | None = None) -> T:
    """Run ``act`` on the chain with the client's wallet and its channel with the proxy at ``proxy_url``
    (default: the first configured proxy), under a spinner. A client has one channel per proxy it uses."""
    url = proxy_url or _proxy_urls(settings)[0]

    async def work() -> T:
        _require_chain_url(settings)  # chain_for would say so too, less precisely
        async with chain_for(settings) as chain:
            wallet, channel = await _client_channel(settings, chain, url)
            return await act(chain, wallet, channel)

    # The chain's own errors name the chain; a raw HTTP failure can only be the proxy's.
    return run_with_spinner(what, work, peer=f"the proxy at {url}")


ProxyOpt = Annotated[
    str | None,
    typer.Option(
        "--proxy",
        help="the proxy whose channel to act on (base URL), or `all` for every proxy the client uses "
        "[default: the first configured proxy]",
    ),
]


def _targets(settings: ClientSettings, proxy: str | None) -> list[str]:
    """The proxies ``--proxy`` names: one URL, or ``all`` the client uses (configured or from the registry)."""
    if proxy is None:
        return _proxy_urls(settings)[:1]
    if proxy == "all":
        return _proxy_urls(settings)
    return [proxy.rstrip("/")]


@client_app.command()
def deposit(
    amount: Annotated[str, typer.Option(help="TON to add to the channel (to each, with --proxy all), e.g. 5")] = "1",
    proxy: ProxyOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Open the client's channel with a proxy (first time) or top it up; --proxy all funds one with each."""
    settings = load_settings(ClientSettings, config)
    with clear_errors():
        nanoton = parse_ton(amount)
        targets = _targets(settings, proxy)

    async def act(chain: ToncenterClient, wallet: Wallet, channel: ClientChannel) -> str:
        if (await chain.get_address_information(channel.address)).active:
            await channel.top_up(wallet, nanoton)
        else:
            await channel.deploy(wallet, nanoton)
        state = await channel.get_channel()
        return f"channel {address_text(channel.address)} now holds {ton(state.deposit)} ({state.deposit} nanoton)"

    for url in targets:
        console.print(f"[green]✓[/] {url}: " + _on_channel(f"depositing {ton(nanoton)} with {url}", settings, act, url))


@client_app.command()
def balance(proxy: ProxyOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """The client's channel: deposit and claims on chain, vouchered and free at the proxy, wallet balance."""
    settings = load_settings(ClientSettings, config)
    with clear_errors():
        url = _targets(settings, proxy)[0] if proxy != "all" else None
    if url is None:
        raise typer.BadParameter("balance reads one channel: give one proxy URL", param_hint="--proxy")

    async def act(chain: ToncenterClient, wallet: Wallet, channel: ClientChannel) -> dict[str, Any]:
        raw = raw_address(channel.address)
        account = await chain.get_address_information(wallet.address)
        testnet = await chain.global_id() == TESTNET_GLOBAL_ID  # read already: the proxy's chain was checked
        shown = payable_text(wallet.address, deployed=account.active, testnet=testnet)
        out: dict[str, Any] = {"channel": raw, "wallet": shown, "wallet_balance": account.balance}
        if (await chain.get_address_information(channel.address)).active:
            state = await channel.get_channel()
            out |= {"deposit": state.deposit, "claimed": state.claimed, "close_at": state.close_at}
        async with httpx.AsyncClient(base_url=url, timeout=10, verify=trust_context(settings.tls_ca_file)) as http:
            key = SigningKey(wallet.seed)  # the channel's payer key: the proxy shows a channel only to its owner
            books = await http.get(f"/v1/channels/{raw}", headers=channel_auth_header(key.public, key.sign, raw))
        if books.status_code == 200:
            body = books.json()
            out |= {k: body[k] for k in ("vouchered", "charged", "reserved", "free")}
        return out

    print_report(_on_channel("reading the channel", settings, act, url), as_json, "client channel")


@client_app.command()
def close(proxy: ProxyOpt = None, config: ConfigOpt = None) -> None:
    """Start closing the channel (each, with --proxy all); the proxy may still claim until the close delay ends,
    then `withdraw`."""
    settings = load_settings(ClientSettings, config)
    with clear_errors():
        targets = _targets(settings, proxy)

    async def act(chain: ToncenterClient, wallet: Wallet, channel: ClientChannel) -> str:
        state = await channel.get_channel()
        if state.closed:
            return "closed already: nothing is left in it"
        if not state.close_at:
            await channel.start_close(wallet)
            state = await channel.get_channel()
        return f"closing; `cocoon client withdraw` returns the rest after {_when(state.close_at)}"

    for url in targets:
        console.print(f"[green]✓[/] {url}: " + _on_channel(f"starting the close with {url}", settings, act, url))


@client_app.command()
def withdraw(proxy: ProxyOpt = None, config: ConfigOpt = None) -> None:
    """After the close delay, return what the proxy has not claimed to the client's wallet (from each channel,
    with --proxy all)."""
    settings = load_settings(ClientSettings, config)
    with clear_errors():
        targets = _targets(settings, proxy)

    async def act(chain: ToncenterClient, wallet: Wallet, channel: ClientChannel) -> str:
        # Refused here rather than by the contract: a withdrawal it rejects still costs the gas it was sent with.
        state = await channel.get_channel()
        if state.closed:
            return "closed already: nothing is left in it"
        if not state.close_at:
            raise ConfigError("the channel is open: start closing it with `cocoon client close`, then withdraw")
        if time.time() < state.close_at:
            raise ConfigError(f"the close delay ends at {_when(state.close_at)}: the proxy may claim until then")
        before = await chain.get_balance(wallet.address)
        await channel.withdraw(wallet)
        return f"wallet balance {ton(before)} → {ton(await chain.get_balance(wallet.address))}"

    for url in targets:
        console.print(f"[green]✓[/] {url}: " + _on_channel(f"withdrawing from {url}", settings, act, url))


def _when(unix: int) -> str:
    """A moment on chain, in UTC and from now: ``2026-12-01 18:40:00 UTC (in 59 min)``."""
    moment = datetime.fromtimestamp(unix, UTC)
    minutes = round((unix - time.time()) / 60)
    relative = f"in {minutes} min" if minutes > 0 else "now"
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC ({relative})"
