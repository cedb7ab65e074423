"""The proxy's books as tables: client channels, worker channels, charges (one per receipt), every voucher
signed either way, and every on-chain operation. Amounts are integer nanoton (BIGINT: up to 9.2e9 TON).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from cocoon.proxy.store import Base
from cocoon.store import ROW_ID as ROW_ID  # the proxy's modules read these from here
from cocoon.store import as_utc as as_utc
from cocoon.store import utcnow as utcnow

# Charge statuses: owed until the client's voucher pays it; rejected when the client refused the receipt
# (nobody is paid); invalid when the proxy itself found the receipt's signature wrong (never charged).
OWED, PAID, REJECTED, INVALID = "owed", "paid", "rejected", "invalid"


class ClientAccount(Base):
    """A client's escrow channel with this proxy, as the proxy knows it."""

    __tablename__ = "client_accounts"
    channel: Mapped[str] = mapped_column(String(80), primary_key=True)
    payer_key: Mapped[bytes] = mapped_column(LargeBinary(32))
    deposit: Mapped[int] = mapped_column(BigInteger, default=0)
    charged: Mapped[int] = mapped_column(BigInteger, default=0)  # receipts delivered, owed or paid
    vouchered: Mapped[int] = mapped_column(BigInteger, default=0)
    voucher_signature: Mapped[bytes] = mapped_column(LargeBinary(64), default=b"")
    claimed: Mapped[int] = mapped_column(BigInteger, default=0)
    rejected: Mapped[int] = mapped_column(BigInteger, default=0)  # receipts the client refused: credit used up
    closing: Mapped[int] = mapped_column(BigInteger, default=0)  # the chain's close_at (uint32), 0 while open
    vouchered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    checked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class WorkerAccount(Base):
    """A worker's payout channel from this proxy (one per payout wallet)."""

    __tablename__ = "worker_accounts"
    channel: Mapped[str] = mapped_column(String(80), primary_key=True)
    payout: Mapped[str] = mapped_column(String(80))
    funded: Mapped[int] = mapped_column(BigInteger, default=0)
    vouchered: Mapped[int] = mapped_column(BigInteger, default=0)
    voucher_signature: Mapped[bytes] = mapped_column(LargeBinary(64), default=b"")
    claimed: Mapped[int] = mapped_column(BigInteger, default=0)
    vouchered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Charge(Base):
    """One receipt and what it costs: the client pays ``cost``, the worker earns ``worker_share``."""

    __tablename__ = "charges"
    receipt_id: Mapped[str] = mapped_column(String(80), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(80), index=True)
    client_channel: Mapped[str] = mapped_column(String(80), index=True)
    worker_channel: Mapped[str] = mapped_column(String(80))
    worker_payout: Mapped[str] = mapped_column(String(80))
    worker_id: Mapped[str] = mapped_column(String(80))
    model: Mapped[str] = mapped_column(String(200))
    coefficient: Mapped[int] = mapped_column(BigInteger)  # the worker's, at most max_price_coefficient
    prompt_cost: Mapped[int] = mapped_column(BigInteger)
    cached_cost: Mapped[int] = mapped_column(BigInteger)
    completion_cost: Mapped[int] = mapped_column(BigInteger)
    cost: Mapped[int] = mapped_column(BigInteger)
    worker_share: Mapped[int] = mapped_column(BigInteger)
    fee: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), index=True)
    # The client voucher that paid it: the worker's share is funded once the chain has paid the proxy that much.
    voucher_cumulative: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    receipt: Mapped[bytes] = mapped_column(LargeBinary)  # msgpack JobEnd: receipt + worker signature
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class WorkerHold(Base):
    """A worker caught by canaries: its share of charges made since ``since`` is never vouchered to it.

    ``withheld`` is the nanoton kept back so far (the client still pays those charges; the proxy keeps the share).
    """

    __tablename__ = "worker_holds"
    worker_id: Mapped[str] = mapped_column(String(80), primary_key=True)
    since: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    reason: Mapped[str] = mapped_column(Text, default="")
    withheld: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class VoucherRecord(Base):
    """Every voucher: ``client`` ones the proxy received, ``worker`` ones it signed."""

    __tablename__ = "vouchers"
    id: Mapped[int] = mapped_column(ROW_ID, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(8))
    channel: Mapped[str] = mapped_column(String(80), index=True)
    cumulative: Mapped[int] = mapped_column(BigInteger)
    signature: Mapped[bytes] = mapped_column(LargeBinary(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ChainOperation(Base):
    """An on-chain operation the proxy sent: ``claim`` (client channel) or ``fund`` (worker channel)."""

    __tablename__ = "chain_operations"
    id: Mapped[int] = mapped_column(ROW_ID, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    channel: Mapped[str] = mapped_column(String(80))
    amount: Mapped[int] = mapped_column(BigInteger)
    ok: Mapped[int] = mapped_column(Integer, default=1)
    detail: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class FundingInFlight(Base):
    """A top-up of a worker channel sent but not yet seen on chain: until ``until`` (its message's expiry) no
    settlement, of this replica or another, funds that channel again unless the chain shows ``target``."""

    __tablename__ = "fundings_in_flight"
    channel: Mapped[str] = mapped_column(String(80), primary_key=True)
    target: Mapped[int] = mapped_column(BigInteger)  # the channel's deposit once this top-up lands
    until: Mapped[datetime] = mapped_column(DateTime(timezone=True))
