"""The explorer's time series in the store: recorded in memory with no I/O, written in batches that add up,
read back merged with what is still in memory, and pruned past the retention; on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from cocoon.proxy.explorer.timeline import MODELS_PER_MINUTE, OTHER_MODELS, RETENTION_S, Timeline
from cocoon.proxy.store import Store


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    store = Store(store_url)
    await store.start()
    yield store
    await store.close()


async def test_requests_are_counted_in_memory_and_written_in_one_batch(store: Store) -> None:
    clock = Clock(1_700_000_010.0)
    timeline = Timeline(store, clock)
    timeline.record("m", ok=True, prompt_tokens=5, completion_tokens=3, charged=120, ttft_s=0.07)
    timeline.record("m", ok=False)
    assert await Timeline(store, clock).since(0) == []
    assert await timeline.flush() == 1  # one (minute, model) row for both requests
    [(minute, model, bucket)] = await Timeline(store, clock).since(0)
    assert (minute, model) == (1_699_999_980, "m")
    assert (bucket.requests, bucket.errors, bucket.tokens, bucket.charged) == (2, 1, 8, 120)
    assert bucket.ttft[2] == 1 and sum(bucket.ttft) == 1


async def test_flushes_of_the_same_minute_add_up_as_replicas_on_one_store_do(store: Store) -> None:
    clock = Clock(1_700_000_010.0)
    one, other = Timeline(store, clock), Timeline(store, clock)
    one.record("m", ok=True, completion_tokens=3, charged=10, ttft_s=0.07)
    other.record("m", ok=True, completion_tokens=4, charged=20, ttft_s=0.08)
    await one.flush()
    await other.flush()
    one.record("m", ok=True, completion_tokens=1, charged=5)  # not flushed: still read
    [(_, _, bucket)] = await one.since(0)
    assert (bucket.requests, bucket.completion_tokens, bucket.charged, bucket.ttft[2]) == (3, 8, 35, 2)


async def test_revenue_by_day_sums_every_minute_of_the_utc_day(store: Store) -> None:
    clock = Clock(86_400 * 20_000 + 10)
    timeline = Timeline(store, clock)
    timeline.record("m", ok=True, charged=100)
    clock.now += 3600
    timeline.record("n", ok=True, charged=50)
    await timeline.flush()
    clock.now += 86_400
    timeline.record("m", ok=True, charged=7)  # the next day, in memory
    days = await timeline.by_day(0)
    assert {day: b.charged for day, b in days.items()} == {86_400 * 20_000: 150, 86_400 * 20_001: 7}


async def test_rows_older_than_the_retention_are_dropped(store: Store) -> None:
    clock = Clock(1_700_000_000.0)
    timeline = Timeline(store, clock)
    timeline.record("m", ok=True)
    await timeline.flush()
    clock.now += RETENTION_S - 120
    await timeline.prune()
    assert len(await timeline.since(0)) == 1
    clock.now += 240
    await timeline.prune()
    assert await timeline.since(0) == []


async def test_a_flood_of_model_names_shares_one_row_a_minute(store: Store) -> None:
    timeline = Timeline(store, Clock(1_700_000_000.0))
    for i in range(MODELS_PER_MINUTE + 10):
        timeline.record(f"model-{i}", ok=True)
    await timeline.flush()
    rows = await timeline.since(0)
    assert len(rows) == MODELS_PER_MINUTE + 1
    assert {model: b.requests for _, model, b in rows}[OTHER_MODELS] == 10
