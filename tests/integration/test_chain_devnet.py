"""The chain layer against a real devnet process running the real compiled contracts.

Every test starts its own devnet (Node.js, @ton/sandbox) on a free loopback port and drives it only
through the toncenter v2 API and the devnet endpoints, as ``cocoon up`` and the roles do.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from pytoniq_core.boc.builder import Builder
from pytoniq_core.boc.cell import Cell

from cocoon.chain import (
    MAINNET_GLOBAL_ID,
    TESTNET_GLOBAL_ID,
    TON,
    ChannelRole,
    ClientChannel,
    InternalTransfer,
    ModelEntry,
    ProxyEntry,
    Registry,
    RegistryParams,
    ToncenterClient,
    Wallet,
    WorkerChannel,
    measurement_key,
    sign_voucher,
    voucher_hash,
)
from cocoon.chain.address import address_text
from cocoon.chain.channel import OP_PAYOUT, OP_WITHDRAWN
from cocoon.chain.devnet import DevnetClient, DevnetProcess, bootstrap_devnet
from cocoon.chain.network import DEVNET_GLOBAL_ID
from cocoon.chain.registry import OP_UPSERT_MODEL, OP_UPSERT_PROXY, usable_proxies
from cocoon.chain.toncenter import Transaction, boc_bytes
from cocoon.client.proxies import registry_proxy_urls
from cocoon.config import ClientSettings
from cocoon.errors import ChainError, TransactionFailed
from cocoon.worker.discovery import registry_worker_urls
from tests.helpers.chain import TEST_API_KEY, TONCENTER_MODE

CLOSE_DELAY = 600
DEVNET = DEVNET_GLOBAL_ID  # the devnet's own global id, so nothing signed on it pays on mainnet


@dataclass
class Chain:
    devnet: DevnetClient
    toncenter: ToncenterClient
    process: DevnetProcess


@pytest_asyncio.fixture
async def chain(tmp_path: Path) -> AsyncIterator[Chain]:
    process = DevnetProcess(
        0, state_file=tmp_path / "devnet.json", log_file=tmp_path / "devnet.log", options=TONCENTER_MODE
    )
    await process.start()
    try:
        async with (
            DevnetClient(process.base_url) as devnet,
            ToncenterClient(process.base_url, TEST_API_KEY) as toncenter,
        ):
            yield Chain(devnet, toncenter, process)
    finally:
        await process.stop()


async def funded_wallet(chain: Chain, amount: int = 20 * TON) -> Wallet:
    wallet = Wallet.generate()
    await chain.devnet.fund(wallet.address, amount)
    return wallet


def coins_field(tx: Transaction, op: int) -> int:
    """The first Coins field after ``op query_id`` in ``tx``'s outgoing message with that op."""
    (message,) = [m for m in tx.out_msgs if m.op == op]
    body = message.body.begin_parse()
    body.skip_bits(32 + 64)
    return int(body.load_coins())


async def test_wallet_deploys_itself_with_its_first_transfer(chain: Chain) -> None:
    wallet = await funded_wallet(chain, 5 * TON)
    receiver = Wallet.generate()
    assert await chain.toncenter.get_wallet_seqno(wallet.address) == 0

    seqno = (await wallet.send(chain.toncenter, receiver.address, TON, bounce=False)).seqno

    assert seqno == 1
    assert (await chain.toncenter.get_address_information(wallet.address)).active
    assert await chain.toncenter.get_balance(receiver.address) == TON
    assert (await wallet.send(chain.toncenter, receiver.address, TON, bounce=False)).seqno == 2


async def test_a_first_transfer_past_its_expiry_is_never_applied(chain: Chain) -> None:
    """The real wallet code checks the expiry of its first message too: a stale one cannot deploy it later."""
    wallet = await funded_wallet(chain, 5 * TON)
    stale = wallet.external_message(
        0,
        [InternalTransfer(Wallet.generate().address, TON, bounce=False)],
        valid_until=int(time.time()) - 60,
        deploy=True,
    )
    with contextlib.suppress(ChainError):  # a liteserver may refuse it outright, or accept it and never apply it
        await chain.toncenter.send_boc(stale)
    assert not (await chain.toncenter.get_address_information(wallet.address)).active
    assert await chain.toncenter.get_wallet_seqno(wallet.address) == 0


async def test_registry_is_deployed_and_read_back(chain: Chain) -> None:
    owner = await funded_wallet(chain)
    params = RegistryParams(proxy_fee_bps=700, min_client_deposit=2 * TON, min_worker_deposit=3 * TON, close_delay=900)
    model = ModelEntry("gemma-3-270m", hashlib.sha256(b"weights").digest(), 100 * TON // 1000, 0, 400 * TON // 1000)
    proxy = ProxyEntry(7, owner.address, os.urandom(32), "https://proxy.example:8700")
    measurement = measurement_key(bytes(48))

    registry = await bootstrap_devnet(
        chain.devnet,
        chain.toncenter,
        owner=owner,
        params=params,
        models=[model],
        measurements=[measurement],
        proxies=[proxy],
    )

    assert await registry.get_owner() == owner.address
    assert await registry.get_params() == params
    assert await registry.get_model("gemma-3-270m") == model
    assert await registry.get_model("no-such-model") is None
    assert await registry.get_models() == [model]
    assert await registry.is_measurement_allowed(measurement)
    assert not await registry.is_measurement_allowed(bytes(32))
    assert await registry.get_measurements() == [measurement]
    assert await registry.get_proxy(7) == proxy
    assert await registry.get_proxies() == [proxy]
    status = await chain.devnet.status()
    assert status.op_count(registry.address, OP_UPSERT_MODEL) == 1

    await registry.remove_model(owner, "gemma-3-270m")
    assert await registry.get_models() == []


async def test_junk_proxy_endpoints_in_the_registry_are_skipped_by_its_readers(chain: Chain) -> None:
    """The listing is chain state: an endpoint that is no URL, or not even UTF-8, is skipped by clients and workers
    alike (before, one undecodable entry made every reader fail to read any proxy)."""
    owner = await funded_wallet(chain)
    good = ProxyEntry(1, owner.address, os.urandom(32), "https://proxy.example:8700")
    typo = ProxyEntry(2, owner.address, os.urandom(32), "https//proxy.example")
    registry = await bootstrap_devnet(chain.devnet, chain.toncenter, owner=owner, proxies=[good, typo])
    garbage = Builder().store_uint(OP_UPSERT_PROXY, 32).store_uint(0, 64).store_uint(3, 256)
    garbage = garbage.store_address(owner.address).store_bytes(bytes(32))
    await registry._send(owner, garbage.store_ref(Builder().store_bytes(b"\xff\xfehttp://x").end_cell()).end_cell())

    listed = await registry.get_proxies()
    assert [p.id for p in listed] == [1, 2, 3] and "\ufffd" in listed[2].endpoint
    assert usable_proxies(listed) == [good]
    settings = ClientSettings(
        chain_url=chain.process.base_url,
        chain_api_key=TEST_API_KEY,
        registry=address_text(registry.address),
        proxies_from_registry=True,
    )
    assert await registry_proxy_urls(settings) == ["https://proxy.example:8700"]
    assert await registry_worker_urls(settings, address_text(registry.address)) == [good.worker_url]


async def test_the_devnet_renders_stacks_and_errors_as_toncenter_does(chain: Chain) -> None:
    owner = await funded_wallet(chain)
    registry = Registry.for_deploy(chain.toncenter, owner.address, RegistryParams())
    await registry.deploy(owner)
    address = address_text(registry.address)

    async with httpx.AsyncClient(base_url=chain.process.base_url, headers={"X-API-Key": TEST_API_KEY}) as http:

        async def run(method: str, stack: list[list[str]]) -> dict[str, Any]:
            payload = {"address": address, "method": method, "stack": stack}
            answer: dict[str, Any] = (await http.post("/api/v2/runGetMethod", json=payload)).json()
            return answer

        owner_entry = (await run("get_owner", []))["result"]["stack"][0]
        empty_dict = (await run("get_models", []))["result"]["stack"][0]
        builder = await run("get_proxy", [["tvm.Builder", base64.b64encode(boc_bytes(Cell.empty())).decode()]])
        lone_lt = await http.get("/api/v2/getTransactions", params={"address": address, "lt": "1"})

    # A slice comes back as a "cell" with its BOC and JSON object; a null as an empty list.
    assert owner_entry[0] == "cell" and {"bytes", "object"} <= set(owner_entry[1])
    assert empty_dict == ["list", {"@type": "tvm.list", "elements": []}]
    assert builder["ok"] is False and builder["code"] == 542
    assert lone_lt.status_code == 422 and lone_lt.json()["ok"] is False
    assert await registry.get_owner() == owner.address
    assert await registry.get_models() == []
    assert await registry.get_proxy(99) is None


async def test_registry_refuses_a_stranger(chain: Chain) -> None:
    owner, stranger = await funded_wallet(chain), await funded_wallet(chain)
    registry = Registry.for_deploy(chain.toncenter, owner.address, RegistryParams())
    await registry.deploy(owner)

    with pytest.raises(TransactionFailed, match="not the registry owner") as failure:
        await registry.set_params(stranger, RegistryParams(proxy_fee_bps=9000))

    assert failure.value.exit_code == 100
    assert (await registry.get_params()).proxy_fee_bps == RegistryParams().proxy_fee_bps


async def open_client_channel(chain: Chain, deposit: int) -> tuple[Wallet, Wallet, ClientChannel]:
    client, proxy = await funded_wallet(chain), await funded_wallet(chain)
    channel = ClientChannel.for_deploy(
        chain.toncenter,
        payer=client.address,
        payee=proxy.address,
        payer_key=client.public_key,
        close_delay=CLOSE_DELAY,
    )
    await channel.deploy(client, deposit)
    return client, proxy, channel


async def test_proxy_claims_with_vouchers_the_client_signed_in_python(chain: Chain) -> None:
    client, proxy, channel = await open_client_channel(chain, 3 * TON)
    assert await channel.get_voucher_hash(TON) == voucher_hash(channel.address, TON, global_id=DEVNET)

    first = await channel.claim(proxy, TON, sign_voucher(client.seed, channel.address, TON, global_id=DEVNET))
    second = await channel.claim(
        proxy, 1_700_000_123, sign_voucher(client.seed, channel.address, 1_700_000_123, global_id=DEVNET)
    )

    assert coins_field(first, OP_PAYOUT) == TON
    assert coins_field(second, OP_PAYOUT) == 700_000_123
    state = await channel.get_channel()
    assert (state.payer, state.payee, state.role) == (client.address, proxy.address, ChannelRole.CLIENT)
    assert (state.deposit, state.claimed, state.unclaimed) == (3 * TON, 1_700_000_123, 1_299_999_877)


async def test_a_voucher_is_never_paid_twice_nor_beyond_the_deposit(chain: Chain) -> None:
    client, proxy, channel = await open_client_channel(chain, 2 * TON)
    signature = sign_voucher(client.seed, channel.address, TON, global_id=DEVNET)
    await channel.claim(proxy, TON, signature)

    with pytest.raises(TransactionFailed) as stale:
        await channel.claim(proxy, TON, signature)
    with pytest.raises(TransactionFailed) as too_much:
        await channel.claim(proxy, 3 * TON, sign_voucher(client.seed, channel.address, 3 * TON, global_id=DEVNET))
    with pytest.raises(TransactionFailed) as forged:
        await channel.claim(proxy, 2 * TON, sign_voucher(proxy.seed, channel.address, 2 * TON, global_id=DEVNET))

    assert (stale.value.exit_code, too_much.value.exit_code, forged.value.exit_code) == (201, 202, 203)
    assert (await channel.get_channel()).claimed == TON


async def test_the_devnet_serves_its_global_id_as_toncenter_does(chain: Chain) -> None:
    assert await chain.toncenter.global_id() == DEVNET != MAINNET_GLOBAL_ID
    param = await chain.toncenter.get_config_param(19)
    assert param.begin_parse().load_int(32) == DEVNET


async def test_a_voucher_signed_for_another_chain_is_refused_on_chain(chain: Chain) -> None:
    client, proxy, channel = await open_client_channel(chain, 2 * TON)

    with pytest.raises(TransactionFailed) as testnet:
        await channel.claim(proxy, TON, sign_voucher(client.seed, channel.address, TON, global_id=TESTNET_GLOBAL_ID))

    assert testnet.value.exit_code == 203
    assert (await channel.get_channel()).claimed == 0
    await channel.claim(proxy, TON, sign_voucher(client.seed, channel.address, TON, global_id=DEVNET))
    assert (await channel.get_channel()).claimed == TON


async def test_client_gets_the_rest_back_after_the_close_delay(chain: Chain) -> None:
    client, proxy, channel = await open_client_channel(chain, 2 * TON)
    await channel.top_up(client, TON)
    claim = await channel.claim(
        proxy, 1_250_000_000, sign_voucher(client.seed, channel.address, 1_250_000_000, global_id=DEVNET)
    )
    await channel.start_close(client)

    with pytest.raises(TransactionFailed) as early:
        await channel.withdraw(client)
    assert early.value.exit_code == 208
    # The payee may still claim a later voucher while the close delay runs.
    late = await channel.claim(
        proxy, 1_500_000_000, sign_voucher(client.seed, channel.address, 1_500_000_000, global_id=DEVNET)
    )
    await chain.devnet.advance_time(CLOSE_DELAY + 1)
    withdraw = await channel.withdraw(client)

    state = await channel.get_channel()
    paid_to_payee = coins_field(claim, OP_PAYOUT) + coins_field(late, OP_PAYOUT)
    returned = coins_field(withdraw, OP_WITHDRAWN)
    assert state.closed and state.deposit == 3 * TON and state.claimed == paid_to_payee == 1_500_000_000
    assert paid_to_payee + returned == state.deposit  # conserved to the nanoton
    assert await chain.toncenter.get_balance(channel.address) == 0
    with pytest.raises(TransactionFailed) as after_close:
        await channel.claim(proxy, 2 * TON, sign_voucher(client.seed, channel.address, 2 * TON, global_id=DEVNET))
    assert after_close.value.exit_code == 204


async def test_a_claim_costs_the_channel_exactly_the_claimed_increase(chain: Chain) -> None:
    client, proxy, channel = await open_client_channel(chain, 2 * TON)
    before = await chain.toncenter.get_balance(channel.address)

    tx = await channel.claim(
        proxy, 600_000_000, sign_voucher(client.seed, channel.address, 600_000_000, global_id=DEVNET)
    )

    after = await chain.toncenter.get_balance(channel.address)
    assert before - after == 600_000_000 + tx.storage_fee


async def test_worker_channel_pays_the_worker_with_proxy_vouchers(chain: Chain) -> None:
    proxy, worker = await funded_wallet(chain), await funded_wallet(chain)
    channel = WorkerChannel.for_deploy(
        chain.toncenter, payer=proxy.address, payee=worker.address, payer_key=proxy.public_key, close_delay=60
    )
    await channel.deploy(proxy, 5 * TON)

    tx = await channel.claim(
        worker, 950_000_000, sign_voucher(proxy.seed, channel.address, 950_000_000, global_id=DEVNET)
    )

    assert coins_field(tx, OP_PAYOUT) == 950_000_000
    state = await channel.get_channel()
    assert state.role == ChannelRole.WORKER and state.claimed == 950_000_000


async def test_devnet_keeps_accounts_across_a_restart(chain: Chain) -> None:
    wallet = await funded_wallet(chain, 7 * TON)
    await chain.process.stop()

    await chain.process.start()

    async with ToncenterClient(chain.process.base_url, TEST_API_KEY) as toncenter:
        assert await toncenter.get_balance(wallet.address) == 7 * TON
