"""The devnet's real-toncenter mode: each knob makes it answer as toncenter in front of a real network does.

Every test starts its own devnet on a free loopback port with the knobs it needs (flags or ``/devnet/faults``)
and checks the wire as a client sees it, with raw HTTP where the shape of an answer is the point.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest_asyncio
from pytoniq_core.boc.cell import Cell

from cocoon.chain import TESTNET_GLOBAL_ID, TON, ClientChannel, InternalTransfer, ToncenterClient, Wallet, voucher_hash
from cocoon.chain.address import address_text
from cocoon.chain.devnet import DevnetClient, DevnetOptions, DevnetProcess
from cocoon.chain.toncenter import boc_bytes
from cocoon.local import free_port

RATELIMIT_BODY = {"ok": False, "result": "Ratelimit exceed", "code": 429}


@dataclass
class Devnet:
    process: DevnetProcess
    devnet: DevnetClient
    toncenter: ToncenterClient
    http: httpx.AsyncClient


DevnetFactory = Callable[..., Awaitable[Devnet]]


@pytest_asyncio.fixture
async def start_devnet(tmp_path: Path) -> AsyncIterator[DevnetFactory]:
    """Start devnets with the given options; all are stopped when the test ends."""
    started: list[tuple[DevnetProcess, DevnetClient, ToncenterClient, httpx.AsyncClient]] = []

    async def start(options: DevnetOptions | None = None, state_file: Path | None = None) -> Devnet:
        port = free_port()
        process = DevnetProcess(port, state_file=state_file, log_file=tmp_path / f"devnet-{port}.log", options=options)
        await process.start()
        devnet, toncenter = DevnetClient(process.base_url), ToncenterClient(process.base_url)
        http = httpx.AsyncClient(base_url=process.base_url)
        started.append((process, devnet, toncenter, http))
        return Devnet(process, devnet, toncenter, http)

    yield start
    for process, devnet, toncenter, http in started:
        await http.aclose()
        await toncenter.aclose()
        await devnet.aclose()
        await process.stop()


async def poll(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> float:
    """Await ``check`` until it holds; returns when it did (``time.monotonic()``), fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        await asyncio.sleep(0.05)
    return time.monotonic()


def first_transfer(wallet: Wallet, to: Wallet, *, valid_for: int = 60) -> Cell:
    """The wallet's deploying first message, sending 1 TON to ``to``."""
    transfers = [InternalTransfer(to.address, TON, bounce=False)]
    return wallet.external_message(0, transfers, valid_until=int(time.time()) + valid_for, deploy=True)


def boc_payload(message: Cell) -> dict[str, str]:
    return {"boc": base64.b64encode(boc_bytes(message)).decode()}


async def balance_over_http(chain: Devnet, wallet: Wallet) -> int:
    answer = await chain.http.get("/api/v2/getAddressInformation", params={"address": address_text(wallet.address)})
    assert answer.status_code == 200, answer.text
    return int(answer.json()["result"]["balance"])


async def test_without_knobs_a_message_applies_before_sendboc_answers_and_reads_are_fresh(
    start_devnet: DevnetFactory,
) -> None:
    chain = await start_devnet()
    wallet, receiver = Wallet.generate(), Wallet.generate()
    await chain.devnet.fund(wallet.address, 5 * TON)
    assert await balance_over_http(chain, receiver) == 0

    await chain.toncenter.send_boc(first_transfer(wallet, receiver))

    assert await balance_over_http(chain, receiver) == TON
    mode = (await chain.devnet.status()).toncenter_mode
    assert (mode.read_cache_ms, mode.inclusion_delay_ms, mode.keyless_rps, mode.key_rps) == (0, 0, 0, 0)
    assert mode.counters.cache_hits == mode.counters.messages_delayed == mode.counters.rate_limited == 0


async def test_a_read_inside_the_cache_window_gets_the_old_answer_and_a_fresh_one_after(
    start_devnet: DevnetFactory,
) -> None:
    chain = await start_devnet(DevnetOptions(read_cache_ms=700))
    wallet = Wallet.generate()
    assert await balance_over_http(chain, wallet) == 0

    await chain.devnet.fund(wallet.address, TON)  # a devnet endpoint: never cached, applied at once
    stale = await balance_over_http(chain, wallet)
    funded_at = time.monotonic()

    async def fresh() -> bool:
        return await balance_over_http(chain, wallet) == TON

    fresh_at = await poll(fresh)
    assert stale == 0
    assert fresh_at - funded_at < 2.0
    assert (await chain.devnet.status()).toncenter_mode.counters.cache_hits >= 1


async def test_a_sent_message_lands_only_after_the_inclusion_delay_and_once_however_often_sent(
    start_devnet: DevnetFactory,
) -> None:
    chain = await start_devnet(DevnetOptions(inclusion_delay_ms=800))
    wallet, receiver = Wallet.generate(), Wallet.generate()
    await chain.devnet.fund(wallet.address, 5 * TON)
    message = first_transfer(wallet, receiver)

    sent_at = time.monotonic()
    first = await chain.http.post("/api/v2/sendBoc", json=boc_payload(message))
    again = await chain.http.post("/api/v2/sendBoc", json=boc_payload(message))

    assert first.status_code == again.status_code == 200
    assert await chain.toncenter.get_balance(receiver.address) == 0
    waiting = (await chain.devnet.status()).toncenter_mode
    assert (waiting.pending_messages, waiting.counters.messages_delayed, waiting.counters.duplicates) == (1, 1, 1)

    async def landed() -> bool:
        return await chain.toncenter.get_balance(receiver.address) > 0

    landed_at = await poll(landed)
    assert landed_at - sent_at >= 0.7
    assert await chain.toncenter.get_balance(receiver.address) == TON
    assert await chain.toncenter.get_wallet_seqno(wallet.address) == 1


async def test_a_delayed_message_that_no_longer_applies_when_its_turn_comes_is_lost(
    start_devnet: DevnetFactory,
) -> None:
    chain = await start_devnet(DevnetOptions(inclusion_delay_ms=500))
    wallet, receiver = Wallet.generate(), Wallet.generate()
    await chain.devnet.fund(wallet.address, 5 * TON)

    # Two different messages for seqno 0: both acceptable now, but only the first can land.
    await chain.toncenter.send_boc(first_transfer(wallet, receiver))
    await chain.toncenter.send_boc(first_transfer(wallet, receiver, valid_for=61))
    await chain.devnet.fund(receiver.address, TON)  # devnet endpoints are never delayed

    async def settled() -> bool:
        return (await chain.devnet.status()).toncenter_mode.pending_messages == 0

    await poll(settled)
    assert (await chain.devnet.status()).toncenter_mode.counters.messages_lost == 1
    assert await chain.toncenter.get_wallet_seqno(wallet.address) == 1
    # One transfer landed (beside the funding), less the receiver's storage fee: not two.
    assert 19 * TON // 10 < await chain.toncenter.get_balance(receiver.address) <= 2 * TON


async def test_a_message_the_wallet_refuses_is_answered_500_at_once_even_with_a_delay(
    start_devnet: DevnetFactory,
) -> None:
    chain = await start_devnet(DevnetOptions(inclusion_delay_ms=800))
    wallet = Wallet.generate()
    await chain.devnet.fund(wallet.address, 5 * TON)

    answer = await chain.http.post("/api/v2/sendBoc", json=boc_payload(first_transfer(wallet, wallet, valid_for=-60)))

    body = answer.json()
    assert answer.status_code == 500 and body["ok"] is False and body["code"] == 500
    assert body["error"].startswith("LITE_SERVER_UNKNOWN: cannot apply external message to current state")
    assert (await chain.devnet.status()).toncenter_mode.pending_messages == 0


async def test_drop_next_loses_one_accepted_message_and_the_seqno_never_moves(start_devnet: DevnetFactory) -> None:
    chain = await start_devnet()
    wallet, receiver = Wallet.generate(), Wallet.generate()
    await chain.devnet.fund(wallet.address, 5 * TON)
    await chain.devnet.set_faults(drop_next=1)

    await chain.toncenter.send_boc(first_transfer(wallet, receiver))  # answered ok, as a real node does

    assert not (await chain.toncenter.get_address_information(wallet.address)).active
    assert (await chain.devnet.status()).toncenter_mode.counters.messages_dropped == 1
    await chain.toncenter.send_boc(first_transfer(wallet, receiver, valid_for=61))
    assert await chain.toncenter.get_wallet_seqno(wallet.address) == 1


async def test_fail_next_answers_each_status_in_toncenters_shape_before_the_request_runs(
    start_devnet: DevnetFactory,
) -> None:
    chain = await start_devnet()
    wallet, receiver = Wallet.generate(), Wallet.generate()
    await chain.devnet.fund(wallet.address, 5 * TON)
    mode = await chain.devnet.set_faults(fail_next=[500, 542, 504, 429])
    assert mode.fail_next == (500, 542, 504, 429)
    params = {"address": address_text(wallet.address)}

    answers = [
        await chain.http.post("/api/v2/sendBoc", json=boc_payload(first_transfer(wallet, receiver))),
        await chain.http.get("/api/v2/getAddressInformation", params=params),
        await chain.http.get("/api/v2/getWalletInformation", params=params),
        await chain.http.get("/api/v2/getAddressInformation", params=params),
    ]

    assert [a.status_code for a in answers] == [500, 542, 504, 429]
    for answer in answers[:3]:
        body: dict[str, Any] = answer.json()
        assert set(body) == {"ok", "error", "code"} and body["ok"] is False and body["code"] == answer.status_code
    assert answers[0].json()["error"].startswith("LITE_SERVER_UNKNOWN")
    assert answers[2].json()["error"] == "LITE_SERVER_NETWORK: timeout"
    assert answers[3].json() == RATELIMIT_BODY
    # The failed sendBoc never ran: the wallet is still undeployed; the queue is spent, requests pass again.
    assert await chain.toncenter.get_wallet_seqno(wallet.address) == 0
    assert (await chain.devnet.status()).toncenter_mode.counters.faults_injected == 4


async def test_a_fault_rate_of_one_fails_every_api_request_but_never_the_devnet_endpoints(
    start_devnet: DevnetFactory,
) -> None:
    chain = await start_devnet(DevnetOptions(fault_rate=1.0, seed=7))
    params = {"config_id": 19}
    statuses = [(await chain.http.get("/api/v2/getConfigParam", params=params)).status_code for _ in range(8)]

    assert set(statuses) <= {500, 542, 504, 429}
    assert (await chain.devnet.status()).toncenter_mode.counters.faults_injected == 8


async def test_keyless_requests_past_their_rate_get_429_and_each_key_has_its_own_bucket(
    start_devnet: DevnetFactory,
) -> None:
    chain = await start_devnet(DevnetOptions(keyless_rps=1, key_rps=2))
    path, params = "/api/v2/getConfigParam", {"config_id": 19}

    keyless = [await chain.http.get(path, params=params) for _ in range(2)]
    first_key = [await chain.http.get(path, params=params, headers={"X-API-Key": "one"}) for _ in range(3)]
    second_key = await chain.http.get(path, params={**params, "api_key": "two"})

    assert [a.status_code for a in keyless] == [200, 429]
    assert keyless[1].json() == RATELIMIT_BODY
    assert [a.status_code for a in first_key] == [200, 200, 429]
    assert second_key.status_code == 200
    assert (await chain.devnet.status()).toncenter_mode.counters.rate_limited == 2


async def test_get_transactions_refuses_more_than_100_per_page(start_devnet: DevnetFactory) -> None:
    chain = await start_devnet()
    address = address_text(Wallet.generate().address)

    refused = await chain.http.get("/api/v2/getTransactions", params={"address": address, "limit": 101})
    allowed = await chain.http.get("/api/v2/getTransactions", params={"address": address, "limit": 100})

    assert refused.status_code == 422
    body = refused.json()
    assert body["ok"] is False and body["code"] == 422 and "100" in body["error"]
    assert allowed.status_code == 200 and allowed.json()["result"] == []


async def test_the_toncenter_profile_sets_realistic_defaults_and_a_flag_overrides_it(
    start_devnet: DevnetFactory,
) -> None:
    chain = await start_devnet(DevnetOptions(toncenter=True, read_cache_ms=0))

    mode = (await chain.devnet.status()).toncenter_mode

    assert (mode.read_cache_ms, mode.inclusion_delay_ms, mode.keyless_rps, mode.key_rps) == (0, 1000, 1, 10)
    assert (mode.fault_rate, mode.drop_rate) == (0, 0)


async def test_a_global_id_is_served_seen_by_contracts_and_kept_across_a_restart(
    start_devnet: DevnetFactory, tmp_path: Path
) -> None:
    global_id = TESTNET_GLOBAL_ID
    state = tmp_path / "devnet.json"
    chain = await start_devnet(DevnetOptions(global_id=global_id), state_file=state)
    payer, payee = Wallet.generate(), Wallet.generate()
    await chain.devnet.fund(payer.address, 5 * TON)
    channel = ClientChannel.for_deploy(
        chain.toncenter, payer=payer.address, payee=payee.address, payer_key=payer.public_key, close_delay=600
    )
    await channel.deploy(payer, 2 * TON)
    assert await chain.toncenter.global_id() == global_id
    assert await channel.get_voucher_hash(TON) == voucher_hash(channel.address, TON, global_id=global_id)
    await chain.process.stop()

    again = await start_devnet(DevnetOptions(global_id=None), state_file=state)  # no --global-id this time

    param = await again.toncenter.get_config_param(19)
    assert param.begin_parse().load_int(32) == global_id
    moved = ClientChannel(again.toncenter, channel.address)
    assert await moved.get_voucher_hash(TON) == voucher_hash(channel.address, TON, global_id=global_id)
