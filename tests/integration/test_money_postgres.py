"""The money path with the proxy's books in PostgreSQL: the same conservation to the nanoton as on SQLite,
off chain and on chain, and every charge is a row in the PostgreSQL database, not in a SQLite file.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import func, select

from cocoon.chain import ClientChannel, WorkerChannel
from cocoon.proxy.money.ledger import PAID, Charge, ClientAccount
from cocoon.proxy.store import Store
from tests.helpers.money import books, mixed_requests, on_chain, settle, start_paid_network


def rows_in(url: str) -> tuple[int, int]:
    """``(paid charges, sum of client vouchers)`` read straight from the database at ``url``."""

    async def read() -> tuple[int, int]:
        store = Store(url)
        try:
            async with store.session() as session:
                paid = await session.scalar(select(func.count()).where(Charge.status == PAID))
                vouchered = await session.scalar(select(func.coalesce(func.sum(ClientAccount.vouchered), 0)))
        finally:
            await store.close()
        return int(paid or 0), int(vouchered or 0)

    return asyncio.run(read())


def test_books_kept_in_postgresql_balance_to_the_nanoton(tmp_path: Path, postgres_url: str) -> None:
    net = start_paid_network(tmp_path, proxy_options={"store_url": postgres_url})
    try:
        costs = mixed_requests(net, 12)
        ledger = books(net)
        assert ledger["client_debits"] == sum(costs) > 0
        assert ledger["client_debits"] == ledger["worker_credits"] + ledger["proxy_fees"]
        assert list(ledger["receipts"]) == ["paid"] and ledger["receipts"]["paid"] >= len(costs)  # none owed
        assert rows_in(postgres_url) == (ledger["receipts"]["paid"], ledger["client_debits"])
        assert not (tmp_path / "proxy" / "proxy.sqlite3").exists()

        assert settle(net)["failed"] == {}
        settled = books(net)
        (client,) = settled["clients"]
        assert on_chain(net, client["channel"], ClientChannel)[1] == client["vouchered"] == client["claimed"]
        for worker in settled["workers"]:
            assert on_chain(net, worker["channel"], WorkerChannel)[0] == worker["vouchered"] == worker["funded"]
        assert sum(w["funded"] for w in settled["workers"]) + settled["proxy_fees"] == client["claimed"]
    finally:
        net.stop()
