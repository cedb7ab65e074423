"""Payment messages between client and proxy: who pays for a job, vouchers for verified receipts, rejections.

A client names its ``ClientChannel`` in every ``JobRequest`` and proves it holds the channel's payer key by
signing the request id; after a receipt verifies it signs the next cumulative voucher (``POST /v1/vouchers``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field

_JOB_DOMAIN = b"cocoon/v1 job payer\x00"
_REJECT_DOMAIN = b"cocoon/v1 receipt rejected\x00"
_READ_DOMAIN = b"cocoon/v1 channel read\x00"
CHANNEL_AUTH_HEADER = "x-cocoon-channel-auth"
CHANNEL_AUTH_MAX_SKEW_S = 300  # a signed read is good this many seconds either side of the proxy's clock


class PayerAuth(BaseModel):
    """The channel that pays for a job, and the payer key's signature of ``payer_message``."""

    model_config = ConfigDict(frozen=True)
    channel: str = Field(description="the client's ClientChannel address (raw form 0:hex)")
    signature: bytes


def payer_message(channel: str, request_id: str) -> bytes:
    """What the payer signs to charge ``request_id`` to ``channel``: nobody else can spend its deposit."""
    return _JOB_DOMAIN + channel.encode() + b"\x00" + request_id.encode()


def rejection_message(channel: str, receipt_id: str) -> bytes:
    """What the payer signs to refuse paying ``receipt_id``."""
    return _REJECT_DOMAIN + channel.encode() + b"\x00" + receipt_id.encode()


def channel_read_message(channel: str, timestamp: int) -> bytes:
    """What a channel's own key signs to read the proxy's books of ``channel`` (its owed receipts included)."""
    return _READ_DOMAIN + channel.encode() + b"\x00" + str(timestamp).encode()


def channel_auth_header(
    public_key: bytes, sign: Callable[[bytes], bytes], channel: str, timestamp: int | None = None
) -> dict[str, str]:
    """The ``x-cocoon-channel-auth`` header proving the caller holds ``channel``'s key (the payer's, or a worker
    channel's payee wallet key): ``<public key hex>.<unix time>.<signature hex>``; ``sign`` signs with it."""
    now = int(time.time()) if timestamp is None else timestamp
    signature = sign(channel_read_message(channel, now))
    return {CHANNEL_AUTH_HEADER: f"{public_key.hex()}.{now}.{signature.hex()}"}


def parse_channel_auth(header: str) -> tuple[bytes, int, bytes]:
    """``(public key, timestamp, signature)`` of a channel-auth header; ValueError when it is malformed."""
    key_hex, stamp, signature_hex = header.split(".")
    key, signature = bytes.fromhex(key_hex), bytes.fromhex(signature_hex)
    if len(key) != 32 or len(signature) != 64 or not stamp.isdigit() or len(stamp) > 12:
        raise ValueError("a channel-auth header is <32-byte key hex>.<unix time>.<64-byte signature hex>")
    return key, int(stamp), signature


class VoucherSubmission(BaseModel):
    """``POST /v1/vouchers``: the channel's new cumulative voucher, paying exactly for ``receipt_ids``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    channel: str
    cumulative: int = Field(ge=0, description="total nanoton owed on this channel, all receipts so far")
    signature: str = Field(description="hex Ed25519 signature of the voucher cell (contracts/ABI.md §2)")
    receipt_ids: list[str] = Field(default_factory=list)


class ReceiptRejection(BaseModel):
    """``POST /v1/vouchers/reject``: the client refuses a receipt that did not verify; nobody is paid."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    channel: str
    receipt_id: str
    reason: str = Field(max_length=500)
    signature: str = Field(description="hex Ed25519 signature of rejection_message(channel, receipt_id)")
