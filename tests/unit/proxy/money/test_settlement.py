"""Settlement funds a worker only out of client money the chain has paid the proxy: a share is backed once the
client voucher that paid it is claimed (issue 8, F1; end to end, a forged channel is refused at admission)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

from cocoon.config import ProxySettings
from cocoon.proxy.money.chain_handle import ChainHandle
from cocoon.proxy.money.ledger import PAID, Charge, ClientAccount
from cocoon.proxy.money.settlement import Settlement
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
