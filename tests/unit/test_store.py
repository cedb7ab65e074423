"""The proxy's store: SQLite by default, PostgreSQL URLs accepted, tables made on start, data kept on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from cocoon.errors import ConfigError
from cocoon.proxy.ledger import VoucherRecord
from cocoon.proxy.store import Store, default_url


def test_plain_database_urls_get_their_async_driver() -> None:
    assert Store("postgresql://u:p@db/cocoon").url == "postgresql+asyncpg://u:p@db/cocoon"
    assert Store("postgres://db/cocoon").url == "postgresql+asyncpg://db/cocoon"
    assert Store("sqlite:////tmp/x.sqlite3").url == "sqlite+aiosqlite:////tmp/x.sqlite3"


def test_an_unknown_database_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="neither SQLite nor PostgreSQL"):
        Store("mysql://db/cocoon")


async def test_what_is_committed_is_there_after_a_reopen(tmp_path: Path) -> None:
    url = default_url(tmp_path / "proxy")
    store = Store(url)
    await store.start()
    async with store.session() as session:
        session.add(VoucherRecord(kind="client", channel="0:ab", cumulative=10**18, signature=bytes(64)))
        await session.commit()
    await store.close()

    reopened = Store(url)
    await reopened.start()
    async with reopened.session() as session:
        (record,) = (await session.scalars(select(VoucherRecord))).all()
    await reopened.close()
    assert (record.channel, record.cumulative) == ("0:ab", 10**18)
    assert (tmp_path / "proxy" / "proxy.sqlite3").is_file()
