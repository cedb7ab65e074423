"""The books as the proxy shows them: ``GET /v1/books`` and ``GET /v1/channels/{address}``, integer nanoton.

Client debits are the vouchers clients signed, worker credits the vouchers the proxy signed, and the proxy's
fees the rest; ``claimed`` is what the chain has paid out on each channel at the last settlement.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import func, select

from cocoon.chain.address import address_text
from cocoon.errors import NotFound
from cocoon.proxy.money.chain_handle import ChainHandle
from cocoon.proxy.money.ledger import PAID, Charge, ClientAccount, WorkerAccount, WorkerHold, as_utc


def account_json(account: ClientAccount, reserved: int) -> dict[str, object]:
    return {
        "channel": account.channel,
        "deposit": account.deposit,
        "charged": account.charged,
        "vouchered": account.vouchered,
        "signature": account.voucher_signature.hex(),
        "claimed": account.claimed,
        "reserved": reserved,
        "free": account.deposit - max(account.charged, account.vouchered) - reserved,
    }


def worker_json(worker: WorkerAccount) -> dict[str, object]:
    return {
        "channel": worker.channel,
        "payout": worker.payout,
        "funded": worker.funded,
        "vouchered": worker.vouchered,
        "signature": worker.voucher_signature.hex(),
        "claimed": worker.claimed,
    }


async def channel_json(chain: ChainHandle, channel: str, reserved: Callable[[str], int]) -> dict[str, object]:
    """One client or worker channel (``channel`` in raw form); NotFound when the proxy never used it."""
    async with chain.store.session() as session:
        account = await session.get(ClientAccount, channel)
        if account is not None:
            return account_json(account, reserved(channel))
        worker = await session.get(WorkerAccount, channel)
    if worker is None:
        raise NotFound(f"channel {channel} is unknown to this proxy")
    return worker_json(worker)


async def books_json(chain: ChainHandle, reserved: Callable[[str], int]) -> dict[str, object]:
    async with chain.store.session() as session:
        clients = (await session.scalars(select(ClientAccount).order_by(ClientAccount.channel))).all()
        workers = (await session.scalars(select(WorkerAccount).order_by(WorkerAccount.channel))).all()
        fees = await session.scalar(select(func.coalesce(func.sum(Charge.fee), 0)).where(Charge.status == PAID))
        counts = dict((await session.execute(select(Charge.status, func.count()).group_by(Charge.status))).all())
        holds = (await session.scalars(select(WorkerHold).order_by(WorkerHold.worker_id))).all()
    return {
        "proxy_wallet": address_text(chain.wallet.address),
        "proxy_fee_bps": chain.params.proxy_fee_bps,
        "clients": [account_json(c, reserved(c.channel)) for c in clients],
        "workers": [worker_json(w) for w in workers],
        "proxy_fees": int(fees or 0),
        "client_debits": sum(c.vouchered for c in clients),
        "worker_credits": sum(w.vouchered for w in workers),
        "receipts": {status: int(n) for status, n in counts.items()},
        # Workers caught by canaries: client debits = worker credits + proxy fees + these withheld shares.
        "worker_holds": [
            {"worker_id": h.worker_id, "since": as_utc(h.since).isoformat(), "reason": h.reason, "withheld": h.withheld}
            for h in holds
        ],
        "worker_shares_withheld": sum(h.withheld for h in holds),
        "onchain_operations": await chain.operations(),
    }
