"""A proxy restart keeps what it learnt about workers: reputation is saved in the proxy's store."""

from __future__ import annotations

import pytest

from cocoon.proxy.routing import reputation_store
from cocoon.proxy.routing.reputation import ReputationBook
from cocoon.proxy.store import Store


async def test_reputation_survives_a_restart_of_the_proxy(store_url: str) -> None:
    store = Store(store_url)
    await store.start()
    book = ReputationBook()
    for _ in range(3):
        book.record("w-flaky", "dropped")
    book.record("w-good", "ok")
    assert await reputation_store.save(store, book) == 2
    assert await reputation_store.save(store, book) == 0  # nothing changed since
    await store.close()

    store = Store(store_url)
    await store.start()
    restored = ReputationBook()
    assert await reputation_store.load(store, restored) == 2
    await store.close()
    assert restored.factor("w-flaky") == pytest.approx(book.factor("w-flaky"), rel=1e-4)
    assert restored.factor("w-flaky") < 0.5
    assert restored.view("w-good")["ok"] == 1.0
