"""Payment messages between client and proxy: who pays for a job, vouchers for verified receipts, rejections.

A client names its ``ClientChannel`` in every ``JobRequest`` and proves it holds the channel's payer key by
signing the request id; after a receipt verifies it signs the next cumulative voucher (``POST /v1/vouchers``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

_JOB_DOMAIN = b"cocoon/v1 job payer\x00"
_REJECT_DOMAIN = b"cocoon/v1 receipt rejected\x00"


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
