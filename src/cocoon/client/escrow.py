"""What the client's deposits can still pay: its channel with each proxy it uses, read from the chain (deposit,
claims, a close under way) and from the proxy (the last voucher the client signed), summed.

``cocoon client keys`` keeps the live keys' unspent budgets within this sum, so every budget is backed by TON
in escrow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from cocoon.chain.address import raw_address
from cocoon.chain.liteserver import chain_for
from cocoon.chain.wallet import Wallet
from cocoon.client.wallet import check_same_chain, client_channel, payment_terms
from cocoon.config import ClientSettings
from cocoon.crypto import SigningKey, load_or_create_signing_key
from cocoon.errors import CocoonError, ConfigError, map_http_errors
from cocoon.protocol.money import channel_auth_header
from cocoon.protocol.tls import trust_context


@dataclass(frozen=True, slots=True)
class ChannelFunds:
    """One channel's escrow, in nanoton."""

    proxy_url: str
    channel: str
    deposit: int
    spent: int  # what the client vouchered to the proxy, or the proxy claimed, whichever is more
    closing: bool

    @property
    def left(self) -> int:
        """What the channel can still pay for: nothing once a close has started."""
        return 0 if self.closing else max(0, self.deposit - self.spent)


async def channel_funds(settings: ClientSettings, proxy_urls: Sequence[str]) -> list[ChannelFunds]:
    """The client's channel with each paid proxy of ``proxy_urls`` (free proxies have none). A chain or proxy
    that cannot be read raises its ``CocoonError`` naming it."""
    if not settings.wallet_file.exists():
        return []  # no wallet yet, so no deposit either
    key = load_or_create_signing_key(settings.wallet_file)
    wallet = Wallet(key.seed)
    funds: list[ChannelFunds] = []
    async with chain_for(settings) as chain:
        for url in proxy_urls:
            http = httpx.AsyncClient(base_url=url, timeout=10, verify=trust_context(settings.tls_ca_file))
            async with http:
                with map_http_errors(f"the proxy at {url}"):
                    terms = await payment_terms(http)
                    if terms is None:
                        continue
                    await check_same_chain(chain, terms, settings.network)
                    channel = client_channel(chain, wallet, terms)
                    raw = raw_address(channel.address)
                    if not (await chain.get_address_information(channel.address)).active:
                        funds.append(ChannelFunds(url, raw, 0, 0, closing=False))
                        continue
                    state = await channel.get_channel()
                    vouchered = await _vouchered(http, key, raw)
            closing = bool(state.close_at or state.closed)
            funds.append(ChannelFunds(url, raw, state.deposit, max(vouchered, state.claimed), closing))
    return funds


async def deposit_left(settings: ClientSettings) -> int | None:
    """What the client's channels can still pay, summed over the proxies it uses: the ceiling of its API keys'
    live budgets. ``None`` for a sidecar that pays nobody (no ``chain_url``). Raises ``ConfigError`` naming what
    could not be read."""
    if not settings.chain_url:
        return None
    from cocoon.client.proxies import configured_proxy_urls, registry_proxy_urls

    try:
        registry = settings.proxies_from_registry
        urls = await registry_proxy_urls(settings) if registry else configured_proxy_urls(settings)
        return sum(f.left for f in await channel_funds(settings, urls))
    except CocoonError as exc:
        raise ConfigError(f"cannot read the client's deposit, which budgets must fit in: {exc.message}") from exc


async def _vouchered(http: httpx.AsyncClient, key: SigningKey, channel: str) -> int:
    """The cumulative amount of the client's last voucher on ``channel``, as the proxy keeps it (0: none yet)."""
    response = await http.get(f"/v1/channels/{channel}", headers=channel_auth_header(key.public, key.sign, channel))
    if response.status_code == 404:
        return 0
    if response.status_code != 200:
        raise CocoonError.from_openai(response.status_code, response.json())
    return int(response.json().get("vouchered", 0))
