"""The sidecar's API keys as tables: each key (its secret only as a SHA-256), what requests in flight hold
against it, its recent requests (the rpm window), and what it spent, one row per paid job.

Amounts are integer nanoton. ``api_keys.reserved`` is the sum of the key's ``key_reservations`` rows: every
change to either locks the key's row first, so the two never disagree.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from cocoon.store import ROW_ID, utcnow


class KeysBase(DeclarativeBase):
    """Declarative base of the sidecar's key tables."""


class ApiKeyRow(KeysBase):
    """One API key: what it may spend, how fast it may call, which models, until when."""

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # "key_…": shown, never a secret
    name: Mapped[str] = mapped_column(String(100), unique=True)
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)  # the key itself is never stored
    hint: Mapped[str] = mapped_column(String(16))  # its first characters, to tell keys apart in listings
    budget: Mapped[int] = mapped_column(BigInteger)
    spent: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved: Mapped[int] = mapped_column(BigInteger, default=0)  # held by requests in flight
    rpm: Mapped[int] = mapped_column(Integer, default=0)  # requests a minute; 0: no limit
    models: Mapped[str] = mapped_column(Text, default="")  # comma-separated; empty: every model
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class KeyReservation(KeysBase):
    """What one job in flight holds against a key, and who holds it: a sidecar's ``owner`` id (host, pid,
    start nonce) and an expiry, so a sidecar that died leaves nothing held for good."""

    __tablename__ = "key_reservations"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(40), index=True)
    request_id: Mapped[str] = mapped_column(String(80))
    model: Mapped[str] = mapped_column(String(200))
    amount: Mapped[int] = mapped_column(BigInteger)  # still held: the job's maximum cost less what it paid
    owner: Mapped[str] = mapped_column(String(200), index=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class KeyHit(KeysBase):
    """One request a key with an ``rpm`` made: the last minute's rows are its window."""

    __tablename__ = "key_hits"
    __table_args__ = (Index("ix_key_hits_key_at", "key_id", "at"),)
    id: Mapped[int] = mapped_column(ROW_ID, primary_key=True, autoincrement=True)
    key_id: Mapped[str] = mapped_column(String(40))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class KeySpend(KeysBase):
    """What one job of a key paid (a voucher's worth), for ``cocoon client keys usage``."""

    __tablename__ = "key_spends"
    id: Mapped[int] = mapped_column(ROW_ID, primary_key=True, autoincrement=True)
    key_id: Mapped[str] = mapped_column(String(40), index=True)
    request_id: Mapped[str] = mapped_column(String(80))
    model: Mapped[str] = mapped_column(String(200))
    cost: Mapped[int] = mapped_column(BigInteger)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True, default=utcnow)


class KeyLock(KeysBase):
    """A row to lock: changing the budgets takes ``budgets``, so two ``keys create`` never both promise the same
    deposit (a write to it is a lock on SQLite and PostgreSQL alike, across processes)."""

    __tablename__ = "key_locks"
    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    turns: Mapped[int] = mapped_column(BigInteger, default=0)
