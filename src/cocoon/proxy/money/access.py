"""Who may read the books: operators by the proxy's ``operator_key``, each channel's own key for that channel.

A client proves it holds its channel's payer key (a worker, its payout wallet's key) by signing the channel
and a fresh timestamp (``protocol/money.py`` ``channel_auth_header``). Addresses never come from headers a
forwarder sets: ``X-Forwarded-For`` and its kin make a request non-local.
"""

from __future__ import annotations

import hmac
import time

from starlette.requests import Request

from cocoon.chain.address import raw_address
from cocoon.chain.wallet import wallet_address
from cocoon.crypto import verify_signature
from cocoon.errors import Unauthorized
from cocoon.protocol.money import (
    CHANNEL_AUTH_HEADER,
    CHANNEL_AUTH_MAX_SKEW_S,
    channel_read_message,
    parse_channel_auth,
)
from cocoon.proxy.money.ledger import ClientAccount, WorkerAccount
from cocoon.proxy.store import Store

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
FORWARDING_HEADERS = ("x-forwarded-for", "forwarded", "x-real-ip", "x-forwarded-host")


def is_local(request: Request) -> bool:
    """The socket peer is this host and no forwarder stands between (a forwarded request is never local)."""
    if any(name in request.headers for name in FORWARDING_HEADERS):
        return False
    return request.client is not None and request.client.host in LOOPBACK


def is_operator(request: Request, operator_key: str | None) -> bool:
    """The caller sent ``Authorization: Bearer <operator_key>``; without a configured key, a local caller is one."""
    if not operator_key:
        return is_local(request)
    sent = request.headers.get("authorization", "")
    scheme, _, token = sent.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), operator_key.encode())


def require_operator(request: Request, operator_key: str | None, what: str) -> None:
    if not is_operator(request, operator_key):
        how = (
            "send `Authorization: Bearer <operator_key>` (the proxy's setting)"
            if operator_key
            else "call it from the proxy's own host"
        )
        raise Unauthorized(f"{what} is for the proxy's operators: {how}")


async def require_channel_reader(request: Request, store: Store, channel: str, operator_key: str | None) -> None:
    """Let through an operator, or the holder of ``channel``'s key; Unauthorized (saying how) for anyone else."""
    if is_operator(request, operator_key):
        return
    header = request.headers.get(CHANNEL_AUTH_HEADER)
    if header is None:
        raise Unauthorized(
            f"channel {channel} is shown only to its owner: sign the request with the channel's key "
            f"({CHANNEL_AUTH_HEADER} header, as the SDK and `cocoon client balance` do)"
        )
    try:
        key, stamp, signature = parse_channel_auth(header)
    except ValueError as exc:
        raise Unauthorized(f"malformed {CHANNEL_AUTH_HEADER} header: {exc}") from exc
    if abs(time.time() - stamp) > CHANNEL_AUTH_MAX_SKEW_S:
        raise Unauthorized(
            f"the {CHANNEL_AUTH_HEADER} signature is {abs(time.time() - stamp):.0f}s off the proxy's clock "
            f"(at most {CHANNEL_AUTH_MAX_SKEW_S}s); sign with the current time"
        )
    if not verify_signature(key, channel_read_message(channel, stamp), signature):
        raise Unauthorized(f"the {CHANNEL_AUTH_HEADER} signature does not verify for channel {channel}")
    async with store.session() as session:
        client = await session.get(ClientAccount, channel)
        worker = await session.get(WorkerAccount, channel) if client is None else None
    owner = (client is not None and client.payer_key == key) or (
        worker is not None and raw_address(wallet_address(key)) == raw_address(worker.payout)
    )
    if not owner and (client is not None or worker is not None):
        raise Unauthorized(f"the key that signed is not the key of channel {channel}; sign with the channel's key")
