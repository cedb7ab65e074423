"""The proxy's store: SQLite by default, PostgreSQL too (each test runs on both), tables made on start, data kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cocoon.errors import ConfigError
from cocoon.proxy.money.ledger import PAID, ChainOperation, Charge, ClientAccount, VoucherRecord, WorkerAccount, as_utc
from cocoon.proxy.store import Store, default_url


def test_plain_database_urls_get_their_async_driver() -> None:
    assert Store("postgresql://u:p@db/cocoon").url == "postgresql+asyncpg://u:p@db/cocoon"
    assert Store("postgres://db/cocoon").url == "postgresql+asyncpg://db/cocoon"
    assert Store("sqlite:////tmp/x.sqlite3").url == "sqlite+aiosqlite:////tmp/x.sqlite3"


def test_an_unknown_database_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="neither SQLite nor PostgreSQL"):
        Store("mysql://db/cocoon")


async def test_what_is_committed_is_there_after_a_reopen(store_url: str, tmp_path: Path) -> None:
    store = Store(store_url)
    await store.start()
    async with store.session() as session:
        session.add(VoucherRecord(kind="client", channel="0:ab", cumulative=10**18, signature=bytes(64)))
        await session.commit()
    await store.close()

    reopened = Store(store_url)
    await reopened.start()
    async with reopened.session() as session:
        (record,) = (await session.scalars(select(VoucherRecord))).all()
    await reopened.close()
    assert (record.channel, record.cumulative) == ("0:ab", 10**18)
    if store_url == default_url(tmp_path / "proxy"):
        assert (tmp_path / "proxy" / "proxy.sqlite3").is_file()


async def test_the_books_keep_amounts_past_32_bits_and_utc_times_on_every_database(store_url: str) -> None:
    ton = 10**9  # nanoton
    big = 5_000_000 * ton  # 5M TON: far past 2^31 nanoton
    store = Store(store_url)
    await store.start()
    async with store.session() as session:
        session.add(ClientAccount(channel="0:c1", payer_key=bytes(32), deposit=big, charged=big - 1, claimed=big // 2))
        session.add(WorkerAccount(channel="0:w1", payout="0:p1", funded=big, vouchered=big, claimed=big))
        session.add(
            Charge(
                receipt_id="rcpt-1", request_id="req-1", client_channel="0:c1", worker_channel="0:w1",
                worker_payout="0:p1", worker_id="w-1", model="m", coefficient=1500, prompt_cost=big,
                cached_cost=0, completion_cost=big, cost=2 * big, worker_share=2 * big - big // 20,
                fee=big // 20, status=PAID, receipt=b"\x00",
            )
        )  # fmt: skip
        session.add(ChainOperation(kind="fund", channel="0:w1", amount=big))
        await session.commit()
    async with store.session() as session:
        account = await session.get(ClientAccount, "0:c1")
        fees = await session.scalar(select(func.coalesce(func.sum(Charge.fee), 0)))
        (charge,) = (await session.scalars(select(Charge))).all()
        (operation,) = (await session.scalars(select(ChainOperation))).all()
    await store.close()
    assert account is not None
    assert (account.deposit, account.charged, account.claimed) == (big, big - 1, big // 2)
    assert (charge.cost, charge.worker_share + charge.fee, int(fees)) == (2 * big, 2 * big, big // 20)
    assert operation.amount == big
    assert abs(as_utc(account.checked_at) - datetime.now(UTC)) < timedelta(minutes=1)
    assert as_utc(charge.created_at) <= datetime.now(UTC)
