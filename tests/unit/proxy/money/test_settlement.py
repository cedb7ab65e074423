"""Settlement funds a worker only out of client money the chain has paid the proxy: a share is backed once the
client voucher that paid it is claimed (issue 8, F1; end to end, a forged channel is refused at admission)."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import cast

import pytest

from cocoon.config import ProxySettings
from cocoon.errors import ChainError
from cocoon.proxy.money.chain_handle import ChainHandle
from cocoon.proxy.money.ledger import PAID, Charge, ClientAccount
from cocoon.proxy.money.settlement import Settlement, SettleReport
from cocoon.proxy.store import Store

WORKER = "0:" + "a" * 64
CLIENTS = ("0:" + "c" * 64, "0:" + "d" * 64)


def paid(receipt_id: str, client: str, share: int, cumulative: int) -> Charge:
    return Charge(
        receipt_id=receipt_id, request_id="req-" + receipt_id, client_channel=client, worker_channel=WORKER,
        worker_payout=WORKER, worker_id="w-1", model="m", coefficient=1000, prompt_cost=share, cached_cost=0,
        completion_cost=0, cost=share, worker_share=share, fee=0, status=PAID, receipt=b"",
        voucher_cumulative=cumulative,
    )  # fmt: skip


def account(channel: str, vouchered: int, claimed: int) -> ClientAccount:
    return ClientAccount(
        channel=channel, payer_key=b"k" * 32, deposit=10**9, charged=vouchered, vouchered=vouchered,
        voucher_signature=b"", claimed=claimed, rejected=0, closing=0,
    )  # fmt: skip


async def test_a_worker_share_is_funded_only_once_its_client_voucher_is_claimed(store_url: str) -> None:
    store = Store(store_url)
    await store.start()
    settlement = Settlement(ProxySettings(), cast(ChainHandle, SimpleNamespace(store=store)))
    try:
        async with store.session() as session:
            # Client c claimed its first voucher (100) but not its second (250); client d claimed nothing.
            session.add_all([account(CLIENTS[0], 250, 100), account(CLIENTS[1], 70, 0)])
            session.add_all(
                [paid("r1", CLIENTS[0], 90, 100), paid("r2", CLIENTS[0], 140, 250), paid("r3", CLIENTS[1], 60, 70)]
            )
            await session.commit()
            assert await settlement._backed_share(session, WORKER) == 90

            claimed = await session.get(ClientAccount, CLIENTS[1])
            assert claimed is not None
            claimed.claimed = 70
            await session.commit()
            assert await settlement._backed_share(session, WORKER) == 90 + 60
    finally:
        await store.close()


async def test_the_settlement_loop_survives_a_round_that_crashes_unexpectedly(caplog: pytest.LogCaptureFixture) -> None:
    settlement = Settlement(ProxySettings(settle_interval=0.01), cast(ChainHandle, SimpleNamespace()))
    failures: list[BaseException] = [RuntimeError("a chain answer nobody foresaw"), ChainError("toncenter 542")]
    rounds: list[int] = []
    four_rounds = asyncio.Event()

    async def settle(force: bool = False) -> SettleReport:
        rounds.append(len(rounds))
        if len(rounds) >= 4:
            four_rounds.set()
        if failures:
            raise failures.pop(0)
        return SettleReport()

    settlement.settle = settle  # type: ignore[method-assign]
    caplog.set_level(logging.WARNING, logger="cocoon.proxy.settlement")
    loop = asyncio.create_task(settlement.run_forever())
    waiter = asyncio.create_task(four_rounds.wait())
    try:
        await asyncio.wait([loop, waiter], timeout=5, return_when=asyncio.FIRST_COMPLETED)
        assert not loop.done(), "the settlement loop died"
        assert four_rounds.is_set()
    finally:
        waiter.cancel()
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop
    crashed = [r for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], RuntimeError)]
    assert crashed, "the unexpected exception was not logged with its traceback"
