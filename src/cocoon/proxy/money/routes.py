"""Money over HTTP: ``GET /v1/payment`` (where to open a channel), ``POST /v1/vouchers``, ``POST /v1/vouchers/reject``,
``GET /v1/channels/{address}`` and ``.../owed`` (the channel's own key, or an operator), ``GET /v1/books``
(operators), ``POST /v1/settle`` (operators, or this host's own socket).

Handlers read the proxy's cashier from ``request.app.state.proxy``; on a free proxy every one answers 404.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cocoon.chain.address import address_text, raw_address
from cocoon.errors import NotFound, Unauthorized
from cocoon.protocol.http import parse_json, read_body
from cocoon.protocol.money import ReceiptRejection, VoucherSubmission
from cocoon.proxy.money.access import is_local, is_operator, require_channel_reader, require_operator
from cocoon.proxy.money.cashier import FREE_PROXY
from cocoon.proxy.money.paid import PaidCashier
from cocoon.proxy.money.statements import books_json, channel_json

M = TypeVar("M", bound=BaseModel)
MAX_CONTROL_BODY = 1024 * 1024  # vouchers and rejections are small


async def payment(request: Request) -> JSONResponse:
    chain = _paid(request).chain
    params = chain.params
    return JSONResponse(
        {
            "proxy_wallet": address_text(chain.wallet.address),
            "proxy_key": chain.wallet.public_key.hex(),
            "registry": address_text(chain.registry.address),
            "global_id": chain.global_id,
            "proxy_fee_bps": params.proxy_fee_bps,
            "close_delay": params.close_delay,
            "min_client_deposit": params.min_client_deposit,
        }
    )


async def vouchers(request: Request) -> JSONResponse:
    billing = _paid(request).billing
    return JSONResponse(await billing.accept_voucher(await _parse(request, VoucherSubmission)))


async def reject(request: Request) -> JSONResponse:
    billing = _paid(request).billing
    return JSONResponse(await billing.reject(await _parse(request, ReceiptRejection)))


async def channel(request: Request) -> JSONResponse:
    cashier = _paid(request)
    address = raw_address(request.path_params["address"])
    await require_channel_reader(request, cashier.chain.store, address, cashier.settings.operator_key)
    return JSONResponse(await channel_json(cashier.chain, address, cashier.billing.reserved))


async def owed(request: Request) -> JSONResponse:
    """The receipts a client channel owes (a receipt the client never got, after a proxy crash, is among them)."""
    cashier = _paid(request)
    address = raw_address(request.path_params["address"])
    await require_channel_reader(request, cashier.chain.store, address, cashier.settings.operator_key)
    return JSONResponse({"channel": address, "owed": await cashier.billing.owed(address)})


async def books(request: Request) -> JSONResponse:
    cashier = _paid(request)
    require_operator(request, cashier.settings.operator_key, "GET /v1/books")
    return JSONResponse(await books_json(cashier.chain, cashier.billing.reserved))


async def settle(request: Request) -> JSONResponse:
    cashier = _paid(request)
    if not (is_local(request) or is_operator(request, cashier.settings.operator_key)):
        raise Unauthorized(
            "settlement is started from the proxy's own host (run `cocoon proxy settle` there, not through a "
            "forwarder) or with `Authorization: Bearer <operator_key>`"
        )
    report = await cashier.settlement.settle(force=True)
    return JSONResponse(report.to_json() | {"onchain_operations": await cashier.chain.operations()})


ROUTES = [
    Route("/v1/payment", payment),
    Route("/v1/vouchers", vouchers, methods=["POST"]),
    Route("/v1/vouchers/reject", reject, methods=["POST"]),
    Route("/v1/channels/{address}", channel),
    Route("/v1/channels/{address}/owed", owed),
    Route("/v1/books", books),
    Route("/v1/settle", settle, methods=["POST"]),
]


def _paid(request: Request) -> PaidCashier:
    """The proxy's cashier when it bills; NotFound on a free proxy, whose cashier keeps no books."""
    cashier = request.app.state.proxy.cashier
    if not isinstance(cashier, PaidCashier):
        raise NotFound(FREE_PROXY)
    return cashier


async def _parse(request: Request, model: type[M]) -> M:
    return parse_json(await read_body(request, MAX_CONTROL_BODY), model)
