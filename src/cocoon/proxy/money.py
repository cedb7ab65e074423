"""The proxy's money layer wired together: store, chain link, billing, settlement, and their HTTP routes.

Routes: ``GET /v1/payment`` (where to open a channel), ``POST /v1/vouchers``, ``POST /v1/vouchers/reject``,
``GET /v1/channels/{address}``, ``GET /v1/books``, ``POST /v1/settle`` (loopback only).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cocoon.chain.address import address_text, raw_address
from cocoon.config import ProxySettings
from cocoon.crypto import SigningKey
from cocoon.errors import BadRequest, ModelNotFound, NotFound, Unauthorized
from cocoon.protocol import Register
from cocoon.protocol.http import parse_json, read_body
from cocoon.protocol.money import ReceiptRejection, VoucherSubmission
from cocoon.proxy.billing import Billing
from cocoon.proxy.books import books_json, channel_json
from cocoon.proxy.chainlink import ChainLink
from cocoon.proxy.directory import WorkerEntry
from cocoon.proxy.settlement import Settlement
from cocoon.proxy.store import Store

M = TypeVar("M", bound=BaseModel)
MAX_CONTROL_BODY = 1024 * 1024  # vouchers and rejections are small
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


class Money:
    """Present when the proxy bills (``chain_url`` set); ``None`` on a free proxy."""

    def __init__(self, settings: ProxySettings, link: ChainLink) -> None:
        self.settings = settings
        self.link = link
        self.billing = Billing(link.store, link, unpaid_grace_s=settings.unpaid_grace_s)
        self.settlement = Settlement(settings, link)
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, settings: ProxySettings, key: SigningKey, store: Store) -> Money:
        money = cls(settings, await ChainLink.connect(settings, key, store))
        money._task = asyncio.create_task(money.settlement.run_forever())
        return money

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.link.close()

    def check_worker(self, register: Register) -> None:
        """A paid proxy admits only workers it can pay: BadRequest without a payout wallet."""
        if not register.payout_address:
            raise BadRequest("this proxy pays workers in TON: give the worker a wallet_file (its payout address)")
        raw_address(register.payout_address)

    async def annotate_models(self, data: list[dict[str, Any]], serving: dict[str, list[WorkerEntry]]) -> None:
        """Add each model's registry prices and the coefficients of the workers serving it."""
        for entry in data:
            try:
                prices = await self.billing.prices(entry["id"])
            except ModelNotFound:
                continue
            entry["pricing"] = prices.to_json() | {"unit": "nanoton per million tokens at coefficient 1000"}
            entry["price_coefficients"] = sorted({w.register.price_coefficient for w in serving[entry["id"]]})
            entry["proxy_fee_bps"] = self.link.params.proxy_fee_bps


def money_routes(get: Callable[[], Money | None]) -> list[Route]:
    """The money routes; on a free proxy (no ``chain_url``) they answer 404 saying so."""

    def money() -> Money:
        current = get()
        if current is None:
            raise NotFound("this proxy is free: it bills nobody (start it with chain_url and registry set)")
        return current

    async def payment(request: Request) -> JSONResponse:
        m = money()
        params = m.link.params
        return JSONResponse(
            {
                "proxy_wallet": address_text(m.link.wallet.address),
                "proxy_key": m.link.wallet.public_key.hex(),
                "registry": address_text(m.link.registry.address),
                "proxy_fee_bps": params.proxy_fee_bps,
                "close_delay": params.close_delay,
                "min_client_deposit": params.min_client_deposit,
            }
        )

    async def vouchers(request: Request) -> JSONResponse:
        return JSONResponse(await money().billing.accept_voucher(await _parse(request, VoucherSubmission)))

    async def reject(request: Request) -> JSONResponse:
        return JSONResponse(await money().billing.reject(await _parse(request, ReceiptRejection)))

    async def channel(request: Request) -> JSONResponse:
        m = money()
        return JSONResponse(await channel_json(m.link, raw_address(request.path_params["address"]), m.billing.reserved))

    async def books(request: Request) -> JSONResponse:
        m = money()
        return JSONResponse(await books_json(m.link, m.billing.reserved))

    async def settle(request: Request) -> JSONResponse:
        m = money()
        if request.client is None or request.client.host not in LOOPBACK:
            raise Unauthorized("settlement is started from the proxy's own host: run `cocoon proxy settle` there")
        report = await m.settlement.settle(force=True)
        return JSONResponse(report.to_json() | {"onchain_operations": await m.link.operations()})

    return [
        Route("/v1/payment", payment),
        Route("/v1/vouchers", vouchers, methods=["POST"]),
        Route("/v1/vouchers/reject", reject, methods=["POST"]),
        Route("/v1/channels/{address}", channel),
        Route("/v1/books", books),
        Route("/v1/settle", settle, methods=["POST"]),
    ]


async def _parse(request: Request, model: type[M]) -> M:
    return parse_json(await read_body(request, MAX_CONTROL_BODY), model)
