"""Attacks on the money path, mounted against real processes: a devnet with the shipped contracts, a billing
proxy and paid workers. The attacker is this test process, holding its own wallet on the devnet and speaking
the real protocol through the SDK (a ``ChannelPayer`` that names the channel it likes and pays as it likes), or
a worker configured to overstate its receipts.

Each test states the guarantee it attacks; each failed on the code before the fix (issue 8, F1-F22).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from pytoniq_core.boc.address import Address
from pytoniq_core.boc.builder import Builder
from pytoniq_core.boc.cell import Cell

from cocoon.attestation import AttestationPolicy
from cocoon.chain import TESTNET_GLOBAL_ID, TON, ClientChannel, ToncenterClient, Wallet, sign_voucher
from cocoon.chain.address import raw_address
from cocoon.chain.channel import ChannelConfig, ChannelRole
from cocoon.chain.contracts import address_of, contract_code, state_init_for
from cocoon.chain.devnet import DevnetClient
from cocoon.chain.network import DEVNET_GLOBAL_ID
from cocoon.chain.pricing import Cost
from cocoon.client import CocoonClient, Completion
from cocoon.client.wallet import ChannelPayer
from cocoon.crypto import SigningKey, load_or_create_signing_key
from cocoon.engines.config import DEFAULT_MODEL
from cocoon.errors import CocoonError, ConfigError, PaymentRequired, TransactionFailed
from cocoon.local import LocalNetwork
from cocoon.protocol import Receipt
from cocoon.protocol.money import channel_auth_header
from cocoon.protocol.payload import SealedMessage, SealedParams
from tests.helpers.chain import TEST_API_KEY
from tests.helpers.money import OPERATOR, books, oai, start_paid_network
from tests.helpers.network import directory, wait_for

# Nanoton. Here a "Hi" with max_tokens=200 reserves about 10,500 and its receipt costs 6,015: a channel may have
# two such requests at risk at once, and a client rejecting every receipt gets about four for free.
CREDIT_LIMIT = 30_000
EXPENSIVE = 200
PROXY = {"credit_limit": CREDIT_LIMIT, "channel_recheck_s": 1.0, "unpaid_grace_s": 1.0}


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    network = start_paid_network(tmp_path_factory.mktemp("attacks"), workers=1, proxy_options=PROXY)
    yield network
    network.stop()


class Rogue(ChannelPayer):
    """A client that names ``channel`` (any contract) and, per ``behaviour``, pays, rejects every receipt
    (``reject``), leaves them owed (``ignore``), or loses its first receipt as a crashed proxy would (``lose``)."""

    def __init__(self, net: LocalNetwork, key: SigningKey, channel: str | None = None, behaviour: str = "pay") -> None:
        assert net.chain is not None
        http = httpx.AsyncClient(base_url=net.proxy_url, timeout=30)
        super().__init__(http, ToncenterClient(net.chain.url, TEST_API_KEY), key)
        self.forced, self.behaviour = channel, behaviour
        self.resync_min_age_s = 1.0

    async def _start(self) -> None:
        await super()._start()
        if self.forced:
            self.channel = self.forced

    async def pay(self, verified: Sequence[Receipt], coefficients: Mapping[str, int]) -> Cost | None:
        if self.behaviour == "reject":
            for r in verified:
                await self.reject(r.receipt_id, "rejected for free service")
            return Cost()
        if self.behaviour == "ignore":
            return Cost()
        if self.behaviour == "lose":  # the receipt never arrived: the request ended without it
            self.behaviour = "pay"
            for r in verified:
                self.finished(r.request_id)
            raise CocoonError("the proxy went away before the receipt arrived")
        return await super().pay(verified, coefficients)


async def funded_key(net: LocalNetwork, amount: int = 5 * TON) -> SigningKey:
    """A fresh wallet key with ``amount`` nanoton on the devnet."""
    assert net.chain is not None
    key = SigningKey.generate()
    async with DevnetClient(net.chain.url) as devnet:
        await devnet.fund(Wallet(key.seed).address, amount)
    return key


async def proxy_wallet(net: LocalNetwork) -> Address:
    async with httpx.AsyncClient() as http:
        return Address((await http.get(f"{net.proxy_url}/v1/payment")).json()["proxy_wallet"])


async def deploy_channel(
    net: LocalNetwork, key: SigningKey, *, deposit: int, claims_deposit: int = 0, close_delay: int = 600
) -> ClientChannel:
    """Deploy the shipped channel code paying the proxy, with init data that claims ``claims_deposit``
    nanoton already deposited (0: the canonical init data) and ``close_delay``; then deposit ``deposit``."""
    assert net.chain is not None
    wallet = Wallet(key.seed)
    config = ChannelConfig(
        wallet.address, await proxy_wallet(net), wallet.public_key, ChannelRole.CLIENT, 0, close_delay
    )
    canonical = config.init_data()
    config_cell: Cell = canonical.refs[0]
    data = Builder().store_coins(claims_deposit).store_coins(0).store_uint(0, 32).store_bit(0)
    data_cell: Cell = data.store_ref(config_cell).end_cell()
    state_init = state_init_for(contract_code("payment_channel"), data_cell)
    toncenter = ToncenterClient(net.chain.url, TEST_API_KEY)
    channel = ClientChannel(toncenter, address_of(state_init))
    channel.state_init = state_init
    await channel.deploy(wallet, deposit)
    return channel


async def ask(net: LocalNetwork, payer: ChannelPayer, max_tokens: int = 5) -> Completion:
    """One chat request through the SDK, paid (or not) by ``payer``."""
    async with CocoonClient(net.proxy_url, AttestationPolicy(**net.policy), payer=payer) as client:
        events = client.stream(
            "chat",
            DEFAULT_MODEL,
            messages=[SealedMessage(role="user", content="Hi")],
            params=SealedParams(max_tokens=max_tokens),
        )
        return await last(events)


async def last(events: AsyncIterator[Any]) -> Completion:
    final = None
    async for event in events:
        final = event
    assert isinstance(final, Completion)
    return final


def client_row(net: LocalNetwork, channel: str) -> dict[str, Any] | None:
    return next((c for c in books(net)["clients"] if c["channel"] == raw_address(channel)), None)


# ---- F1: a forged channel -------------------------------------------------------------------------------


async def test_a_channel_whose_init_data_claims_a_deposit_it_never_got_is_refused(net: LocalNetwork) -> None:
    key = await funded_key(net)
    forged = await deploy_channel(net, key, deposit=TON // 5, claims_deposit=1_000_000 * TON)
    assert (await forged.get_channel()).deposit > 1_000_000 * TON  # what the contract reports

    with pytest.raises(PaymentRequired, match="not a genuine cocoon payment channel"):
        await ask(net, Rogue(net, key, raw_address(forged.address)))
    assert client_row(net, raw_address(forged.address)) is None  # never booked, never served


# ---- F5: close delay, and a channel closed and withdrawn ------------------------------------------------


async def test_a_channel_with_no_close_delay_is_refused(net: LocalNetwork) -> None:
    key = await funded_key(net)
    instant = await deploy_channel(net, key, deposit=TON, close_delay=0)

    with pytest.raises(PaymentRequired, match="close delay of 0s"):
        await ask(net, Rogue(net, key, raw_address(instant.address)))


async def test_a_channel_closed_and_withdrawn_on_chain_is_no_longer_served(net: LocalNetwork) -> None:
    assert net.chain is not None
    key = await funded_key(net)
    channel = await deploy_channel(net, key, deposit=TON)
    payer = Rogue(net, key, raw_address(channel.address))
    await ask(net, payer)  # an honest start: served and paid

    await channel.start_close(Wallet(key.seed))
    async with DevnetClient(net.chain.url) as devnet:
        await devnet.advance_time(601)
    await channel.withdraw(Wallet(key.seed))
    assert (await channel.get_channel()).closed

    refused = False
    for _ in range(50):  # the proxy reads a channel in use back every channel_recheck_s (1 s here)
        try:
            await ask(net, payer)
        except PaymentRequired as exc:
            assert "closing" in exc.message
            refused = True
            break
        await asyncio.sleep(0.2)
    assert refused, "a withdrawn channel was still served after 10 s"


# ---- F6: one credit limit per channel ------------------------------------------------------------------


async def test_a_client_rejecting_every_receipt_is_cut_off_at_its_credit_limit(net: LocalNetwork) -> None:
    key = await funded_key(net)
    channel = await deploy_channel(net, key, deposit=TON)
    payer = Rogue(net, key, raw_address(channel.address), behaviour="reject")

    served = 0
    with pytest.raises(PaymentRequired, match="credit limit"):
        for _ in range(20):
            await ask(net, payer, EXPENSIVE)
            served += 1
    row = client_row(net, raw_address(channel.address))
    assert row is not None and row["vouchered"] == 0
    assert 0 < served * 6015 <= CREDIT_LIMIT  # what the proxy gave away is bounded by the limit


async def test_concurrent_requests_left_unpaid_stay_within_the_credit_limit(net: LocalNetwork) -> None:
    key = await funded_key(net)
    channel = await deploy_channel(net, key, deposit=TON)
    payer = Rogue(net, key, raw_address(channel.address), behaviour="ignore")

    results = await asyncio.gather(*(ask(net, payer, EXPENSIVE) for _ in range(20)), return_exceptions=True)

    served = [r for r in results if isinstance(r, Completion)]
    refused = [r for r in results if isinstance(r, PaymentRequired)]
    assert served and len(served) + len(refused) == 20, results
    assert any("credit limit" in r.message for r in refused)
    url = f"{net.proxy_url}/v1/channels/{raw_address(channel.address)}/owed"
    async with httpx.AsyncClient() as http:
        owed = (await http.get(url, headers=OPERATOR)).json()["owed"]
    assert len(owed) == len(served)
    assert sum(o["cost"] for o in owed) <= CREDIT_LIMIT  # all this client left unpaid: what the proxy risked


# ---- F14: a receipt committed but never delivered ------------------------------------------------------


async def test_a_receipt_the_client_never_got_does_not_hold_its_channel_at_402(net: LocalNetwork) -> None:
    key = await funded_key(net)
    channel = await deploy_channel(net, key, deposit=TON)
    address = raw_address(channel.address)
    payer = Rogue(net, key, address, behaviour="lose")
    with pytest.raises(CocoonError, match="went away"):
        await ask(net, payer)  # the proxy booked the receipt; the client never had it
    await asyncio.sleep(1.5)  # past unpaid_grace_s: from now on the proxy refuses the channel for that receipt

    served = None
    for _ in range(60):  # the SDK settles what the proxy holds for it, then its requests go through again
        try:
            served = await ask(net, payer)
            break
        except PaymentRequired:
            await asyncio.sleep(0.25)
    assert served is not None, "the channel stayed at 402 for a receipt its client never received"
    row = client_row(net, address)
    assert row is not None and row["charged"] == row["vouchered"] == served.cost.total  # type: ignore[union-attr]


async def test_owed_receipts_are_shown_only_to_the_channel_key(net: LocalNetwork) -> None:
    key = await funded_key(net)
    channel = await deploy_channel(net, key, deposit=TON)
    address = raw_address(channel.address)
    await ask(net, Rogue(net, key, address, behaviour="ignore"))
    other = SigningKey.generate()
    url = f"{net.proxy_url}/v1/channels/{address}/owed"
    async with httpx.AsyncClient() as http:
        assert (await http.get(url)).status_code == 401
        assert (await http.get(url, headers=channel_auth_header(other.public, other.sign, address))).status_code == 401
        mine = await http.get(url, headers=channel_auth_header(key.public, key.sign, address))
    assert mine.status_code == 200 and len(mine.json()["owed"]) == 1


# ---- F17 / F19: who may read the books and start settlement --------------------------------------------


async def test_the_books_and_a_channel_are_shown_only_to_operators_and_the_channel_key(net: LocalNetwork) -> None:
    oai(net).chat.completions.create(model=DEFAULT_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
    assert net.chain is not None
    honest = load_or_create_signing_key(net.home / "client-wallet.json")
    channel = net.chain.client_channel
    stranger = SigningKey.generate()
    async with httpx.AsyncClient(base_url=net.proxy_url) as http:
        assert (await http.get("/v1/books")).status_code == 401
        assert (await http.get("/v1/books", headers={"authorization": "Bearer guess"})).status_code == 401
        assert (await http.get(f"/v1/channels/{channel}")).status_code == 401
        signed_by_stranger = channel_auth_header(stranger.public, stranger.sign, channel)
        assert (await http.get(f"/v1/channels/{channel}", headers=signed_by_stranger)).status_code == 401
        stale = channel_auth_header(honest.public, honest.sign, channel, timestamp=1_000_000)
        assert (await http.get(f"/v1/channels/{channel}", headers=stale)).status_code == 401

        own = await http.get(
            f"/v1/channels/{channel}", headers=channel_auth_header(honest.public, honest.sign, channel)
        )
        operator = await http.get(f"/v1/channels/{channel}", headers=OPERATOR)
        assert own.status_code == operator.status_code == 200
        assert own.json()["vouchered"] > 0
        assert (await http.get("/v1/books", headers=OPERATOR)).status_code == 200


@pytest.mark.parametrize("forwarded", ["127.0.0.1", "203.0.113.9", "127.0.0.1, 203.0.113.9"])
async def test_settle_through_a_forwarder_is_refused_whatever_x_forwarded_for_says(
    net: LocalNetwork, forwarded: str
) -> None:
    async with httpx.AsyncClient(base_url=net.proxy_url, timeout=120) as http:
        relayed = await http.post("/v1/settle", headers={"x-forwarded-for": forwarded})
        assert relayed.status_code == 401
        assert (await http.post("/v1/settle", headers={"x-forwarded-for": forwarded} | OPERATOR)).status_code == 200


# ---- F13: a worker pricing itself above the network maximum --------------------------------------------


def test_a_worker_asking_100x_the_registry_price_never_joins(net: LocalNetwork) -> None:
    options = net.worker_options
    net.worker_options = options | {"price_coefficient": 100_000}
    try:
        greedy = net.add_worker(9)
    finally:
        net.worker_options = options
    proxy_log = net.child("proxy").log

    def decided() -> bool:
        joined = any(w.get("price_coefficient") == 100_000 for w in directory(net))
        return joined or "price_coefficient 100000 is outside" in proxy_log.read_text(errors="replace")

    try:
        wait_for(decided, 60, "the proxy to admit or refuse the greedy worker")
        assert not any(w.get("price_coefficient") == 100_000 for w in directory(net))
    finally:
        greedy.process.terminate()
        greedy.process.wait(10)
        net.children.remove(greedy)


# ---- F2: a receipt that charges more than the request could cost ---------------------------------------


def test_a_receipt_overstating_its_tokens_is_never_charged(tmp_path: Path) -> None:
    greedy = start_paid_network(tmp_path, workers=1, chaos_bad_receipts="inflated-tokens")
    try:
        with pytest.raises(Exception):  # noqa: B017 - whatever the client says, it must not have paid
            oai(greedy).chat.completions.create(
                model=DEFAULT_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=8
            )
        wait_for(lambda: sum(books(greedy)["receipts"].values()) == 1, 10, "the receipt to be booked")
        ledger = books(greedy)
        assert ledger["receipts"] in ({"invalid": 1}, {"rejected": 1})
        assert ledger["client_debits"] == ledger["worker_credits"] == ledger["proxy_fees"] == 0
        assert ledger["clients"][0]["charged"] == 0
    finally:
        greedy.stop()


# ---- F22: a voucher signed for the same channel address on another chain -------------------------------


async def test_a_voucher_signed_for_another_chain_is_refused(net: LocalNetwork) -> None:
    """A channel has the same address on testnet and mainnet (same code, init data and keys): a voucher its payer
    signed on one chain must pay nothing on the other, neither at the proxy nor on chain."""
    assert net.chain is not None
    key = await funded_key(net)
    channel = await deploy_channel(net, key, deposit=TON)
    address = raw_address(channel.address)
    await ask(net, Rogue(net, key, address, behaviour="ignore"))  # served; its receipt is left owed
    async with httpx.AsyncClient(base_url=net.proxy_url) as http:
        owed = (await http.get(f"/v1/channels/{address}/owed", headers=OPERATOR)).json()["owed"]
        (receipt,) = owed
        here = (await http.get("/v1/payment")).json()["global_id"]
        assert here == await channel.client.global_id() != TESTNET_GLOBAL_ID  # the devnet has its own id

        def voucher(global_id: int) -> dict[str, Any]:
            signature = sign_voucher(key.seed, address, receipt["cost"], global_id=global_id)
            return {
                "channel": address,
                "cumulative": receipt["cost"],
                "signature": signature.hex(),
                "receipt_ids": [receipt["receipt_id"]],
            }

        # the right channel, the right amount, the payer's own key: only the chain is another one
        refused = await http.post("/v1/vouchers", json=voucher(TESTNET_GLOBAL_ID))
        assert refused.status_code == 401, refused.text
        assert "global id" in refused.json()["error"]["message"]
        row = client_row(net, address)
        assert row is not None and row["vouchered"] == 0
        with pytest.raises(TransactionFailed) as on_chain:
            await channel.claim(
                Wallet(key.seed), receipt["cost"], bytes.fromhex(voucher(TESTNET_GLOBAL_ID)["signature"])
            )
        assert on_chain.value.exit_code == 203  # the contract reads the global id from the chain's config
        assert (await channel.get_channel()).claimed == 0

        # the same voucher for this chain is taken: nothing else about the refused one was wrong
        assert (await http.post("/v1/vouchers", json=voucher(here))).status_code == 200
    row = client_row(net, address)
    assert row is not None and row["vouchered"] == receipt["cost"]


class ChainEndpointOnTestnet(ToncenterClient):
    """The client's chain endpoint, answering as testnet does."""

    async def global_id(self) -> int:
        return TESTNET_GLOBAL_ID


async def test_a_client_refuses_a_proxy_billing_on_another_chain(net: LocalNetwork) -> None:
    assert net.chain is not None
    key = await funded_key(net)
    http = httpx.AsyncClient(base_url=net.proxy_url, timeout=30)
    payer = ChannelPayer(http, ChainEndpointOnTestnet(net.chain.url, TEST_API_KEY), key, network="testnet")

    with pytest.raises(ConfigError, match=f"global id {DEVNET_GLOBAL_ID} but this client's chain_url"):
        await ask(net, payer)
    assert payer.vouchered == 0
