"""The cashier of a paid proxy (``chain_url`` set): billing on the request path, settlement in the background.

``open_cashier`` picks the proxy's cashier at start-up: this one when the settings name a chain, else
``FreeCashier``. The HTTP face of money is ``cocoon.proxy.money.routes``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from cocoon.chain.address import raw_address
from cocoon.config import ProxySettings
from cocoon.crypto import SigningKey
from cocoon.errors import BadRequest, ModelNotFound
from cocoon.protocol import JobEnd, JobRequest, Register
from cocoon.proxy.money.billing import Billing
from cocoon.proxy.money.cashier import Cashier, FreeCashier, Reservation
from cocoon.proxy.money.chain_handle import ChainHandle
from cocoon.proxy.money.settlement import Settlement
from cocoon.proxy.store import Store


async def open_cashier(settings: ProxySettings, key: SigningKey, store: Store) -> Cashier:
    """A started ``PaidCashier`` when ``settings.chain_url`` is set, else a ``FreeCashier``.

    Raises ``ConfigError`` when the chain is named but its registry cannot be read.
    """
    if not settings.chain_url:
        return FreeCashier()
    return await PaidCashier.start(settings, key, store)


class PaidCashier:
    """Reserves, charges and takes vouchers through ``Billing``; settles on chain through ``Settlement``."""

    def __init__(self, settings: ProxySettings, chain: ChainHandle) -> None:
        self.settings = settings
        self.chain = chain
        self.billing = Billing(
            chain.store,
            chain,
            unpaid_grace_s=settings.unpaid_grace_s,
            credit_limit=settings.credit_limit,
            channel_recheck_s=settings.channel_recheck_s,
        )
        self.settlement = Settlement(settings, chain)
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, settings: ProxySettings, key: SigningKey, store: Store) -> PaidCashier:
        """Connect to the chain and start settling in the background."""
        cashier = cls(settings, await ChainHandle.connect(settings, key, store))
        cashier._task = asyncio.create_task(cashier.settlement.run_forever())
        return cashier

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):  # the cancellation asked for just above
                await self._task
        await self.chain.close()

    async def admit(self, job: JobRequest, candidates: Sequence[Register]) -> Reservation:
        return await self.billing.admit(job, candidates)

    async def on_receipt(self, reservation: Reservation, worker: Register, end: JobEnd, valid: bool) -> None:
        await self.billing.on_receipt(reservation, worker, end, valid)

    def release(self, reservation: Reservation) -> None:
        self.billing.release(reservation)

    async def withhold(self, worker: Register, since: datetime, reason: str) -> None:
        await self.billing.withhold(worker.worker_id, since, reason)

    def check_worker(self, register: Register) -> None:
        """A paid proxy admits only workers it can pay at a bounded price: BadRequest without a payout wallet
        or with a price coefficient above ``max_price_coefficient``."""
        if not register.payout_address:
            raise BadRequest("this proxy pays workers in TON: give the worker a wallet_file (its payout address)")
        raw_address(register.payout_address)
        ceiling = self.settings.max_price_coefficient  # the registry has no network maximum: the proxy's own
        if not 1 <= register.price_coefficient <= ceiling:
            raise BadRequest(
                f"price_coefficient {register.price_coefficient} is outside 1..{ceiling} (1000 = 1x the registry "
                "price) on this proxy; lower the worker's price_coefficient",
                param="price_coefficient",
            )

    async def annotate_models(self, data: list[dict[str, Any]], serving: Mapping[str, Sequence[Register]]) -> None:
        """Add each model's registry prices and the coefficients of the workers serving it."""
        for entry in data:
            try:
                prices = await self.billing.prices(entry["id"])
            except ModelNotFound:  # a model the registry does not price is listed without prices
                continue
            entry["pricing"] = prices.to_json() | {"unit": "nanoton per million tokens at coefficient 1000"}
            entry["price_coefficients"] = sorted({w.price_coefficient for w in serving[entry["id"]]})
            entry["proxy_fee_bps"] = self.chain.params.proxy_fee_bps
