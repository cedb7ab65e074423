"""Replayed request ids across the replicas of one proxy: on a PostgreSQL store (shared by replicas) each id is
relayed by exactly one of them, however many ask at once; on SQLite (one process) each process's own record."""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import func, select

from cocoon.proxy.replays import Replays, SeenRequest
from cocoon.proxy.store import Store


async def test_an_id_is_relayed_once_by_replicas_sharing_a_postgresql_store(postgres_cluster: object) -> None:
    url = postgres_cluster.create_database("replays")  # type: ignore[attr-defined]
    stores = [Store(url), Store(url)]
    for store in stores:
        await store.start()
    try:
        one, two = (Replays(store) for store in stores)
        assert await one.first_time("req-a") and not await one.first_time("req-a")  # its own memory
        assert not await two.first_time("req-a")  # the other replica: from the shared table
        together = await asyncio.gather(*(r.first_time(f"req-{n}") for n in range(20) for r in (one, two)))
        assert sum(together) == 20  # of each pair racing for one id, exactly one relays it
    finally:
        for store in stores:
            await store.close()


async def test_expired_ids_are_pruned_from_the_shared_table(postgres_cluster: object) -> None:
    url = postgres_cluster.create_database("replays_pruned")  # type: ignore[attr-defined]
    store = Store(url)
    await store.start()
    try:
        old = Replays(store, ttl_s=-1)  # every id it records is expired at once
        assert await old.first_time("req-old")
        fresh = Replays(store)
        fresh._pruned_at = time.time()  # not due yet: the expired row stays
        assert await fresh.first_time("req-kept")
        fresh._pruned_at = time.time() - 3600  # due: the next id recorded sweeps the expired ones first
        assert await fresh.first_time("req-new")
        async with store.session() as session:
            ids = set(await session.scalars(select(SeenRequest.request_id)))
            count = await session.scalar(select(func.count()).select_from(SeenRequest))
        assert ids == {"req-kept", "req-new"} and count == 2
    finally:
        await store.close()


async def test_on_sqlite_the_process_record_is_the_check(store_url: str) -> None:
    store = Store(store_url)
    await store.start()
    try:
        replays = Replays(store)
        assert await replays.first_time("req-1") and not await replays.first_time("req-1")
    finally:
        await store.close()
