"""A worker's earnings: its payout wallet, its payout channel at each proxy, and claiming the vouchers.

Each proxy signs cumulative WorkerChannel vouchers for the worker's share of every paid receipt and funds
the channel when it settles; ``cocoon worker claim`` submits the latest voucher from the worker's wallet.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from pytoniq_core.boc.address import Address

from cocoon.chain import Outbox, Wallet, WorkerChannel, verify_voucher
from cocoon.chain.address import address_text, raw_address
from cocoon.chain.channel import ChannelConfig, ChannelRole
from cocoon.chain.contracts import address_of, contract_code, state_init_for
from cocoon.chain.liteserver import chain_for
from cocoon.chain.network import check_network
from cocoon.config import WorkerSettings
from cocoon.crypto import load_or_create_signing_key
from cocoon.errors import ChainError, CocoonError, ConfigError, UpstreamFailed, map_http_errors
from cocoon.protocol.money import channel_auth_header


def payout_wallet(settings: WorkerSettings) -> Wallet:
    key = load_or_create_signing_key(settings.wallet_file)
    return Wallet(key.seed, outbox=Outbox.beside(settings.wallet_file))


def payout_address(settings: WorkerSettings) -> str:
    """The address proxies pay this worker at (its wallet, made on first use)."""
    return address_text(payout_wallet(settings).address, bounceable=False)


def proxy_http_url(ws_url: str) -> str:
    """``ws://host:port/v1/worker/connect`` → ``http://host:port``."""
    parts = urlsplit(ws_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    return f"{scheme}://{parts.netloc}"


@dataclass(frozen=True, slots=True)
class Earnings:
    """One proxy's payout channel as the proxy reports it (amounts in nanoton)."""

    proxy: str
    channel: str
    vouchered: int
    funded: int
    claimed: int
    signature: bytes
    proxy_key: bytes


@dataclass(frozen=True, slots=True)
class Survey:
    """What the worker's proxies report: a channel each (replicas of one proxy share theirs, listed once, from
    the replica reporting the latest voucher), and the proxies that could not be asked, with why."""

    channels: list[Earnings]
    unreachable: dict[str, str]  # proxy base URL -> the error


async def earnings(settings: WorkerSettings) -> Survey:
    """Ask each proxy for this worker's channel; a proxy that has paid nothing yet reports zeros. A proxy that
    cannot be asked does not hide the others' earnings: it is named in ``Survey.unreachable``."""
    wallet = payout_wallet(settings)
    found: dict[str, Earnings] = {}
    unreachable: dict[str, str] = {}
    async with httpx.AsyncClient(timeout=10) as http:
        for url in settings.proxies:
            base = proxy_http_url(url)
            try:
                entry = await _channel_at(http, base, settings, wallet)
            except CocoonError as exc:
                unreachable[base] = exc.message
                continue
            if entry is not None and (entry.channel not in found or entry.vouchered > found[entry.channel].vouchered):
                found[entry.channel] = entry
    return Survey(list(found.values()), unreachable)


async def _channel_at(http: httpx.AsyncClient, base: str, settings: WorkerSettings, wallet: Wallet) -> Earnings | None:
    """The proxy at ``base``'s report of this worker's channel; ``None`` for a free proxy."""
    with map_http_errors(f"the proxy at {base}"):
        terms = (await http.get(f"{base}/v1/payment")).json()
        if "proxy_wallet" not in terms:
            return None
        key = bytes.fromhex(terms["proxy_key"])
        config = ChannelConfig(
            Address(terms["proxy_wallet"]), wallet.address, key, ChannelRole.WORKER, 0, int(terms["close_delay"])
        )
        raw = raw_address(address_of(state_init_for(contract_code("payment_channel"), config.init_data())))
        signer = load_or_create_signing_key(settings.wallet_file)  # the payee key: only it may read
        auth = channel_auth_header(signer.public, signer.sign, raw)
        response = await http.get(f"{base}/v1/channels/{raw}", headers=auth)
    body = response.json() if response.status_code == 200 else {}
    return Earnings(
        base,
        raw,
        int(body.get("vouchered", 0)),
        int(body.get("funded", 0)),
        int(body.get("claimed", 0)),
        bytes.fromhex(body.get("signature", "")),
        key,
    )


async def claim(settings: WorkerSettings, entry: Earnings) -> int:
    """Claim ``entry``'s latest voucher on chain; returns the nanoton newly paid to the wallet."""
    if not settings.chain_url:
        raise ConfigError("set chain_url (COCOON_WORKER_CHAIN_URL) to the toncenter API to claim on chain")
    async with chain_for(settings) as chain:
        global_id = await check_network(chain, settings.network, env="COCOON_WORKER_NETWORK")
        if not verify_voucher(entry.proxy_key, entry.channel, entry.vouchered, entry.signature, global_id=global_id):
            raise UpstreamFailed(
                f"the proxy at {entry.proxy} sent a voucher its own key did not sign for this chain "
                f"(global id {global_id} at {settings.chain_url}): claiming it would fail on chain"
            )
        contract = WorkerChannel(chain, Address(entry.channel))
        try:
            state = await contract.get_channel()
        except ChainError as exc:
            raise UpstreamFailed(
                f"the proxy has not funded channel {entry.channel} yet; claim after its next settlement"
            ) from exc
        if state.deposit < entry.vouchered:
            raise UpstreamFailed(
                f"channel {entry.channel} holds {state.deposit} of the {entry.vouchered} nanoton vouchered; "
                "claim after the proxy's next settlement (`cocoon proxy settle` on a local network)"
            )
        if state.claimed >= entry.vouchered:
            return 0
        await contract.claim(payout_wallet(settings), entry.vouchered, entry.signature)
        return (await contract.get_channel()).claimed - state.claimed
