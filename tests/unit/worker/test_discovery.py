"""A worker told the registry serves ``proxy_count`` of its proxies, leaves one the registry delists, and swaps one
it could not reach for ``repick_s`` for a spare listed one (never for nothing)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

from cocoon.worker.discovery import ProxySet
from cocoon.worker.link import ProxyLink


class Link:
    """A ``ProxyLink`` that stays up (``down``: None) or has been down for ``down`` seconds, and never dials."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.down: float | None = None

    def down_for(self, now: float | None = None) -> float | None:
        return self.down

    async def run_forever(self) -> None:
        await asyncio.Event().wait()


def proxy_set(listed: list[str], count: int = 2) -> tuple[ProxySet, dict[str, Link]]:
    made: dict[str, Link] = {}

    async def listing() -> Sequence[str]:
        return listed

    def make(url: str) -> ProxyLink:
        made[url] = Link(url)
        return made[url]  # type: ignore[return-value]

    return ProxySet(listing, make, count=count, repick_s=10, refresh_s=30, rng=random.Random(1)), made


async def test_the_worker_serves_proxy_count_of_the_listed_proxies() -> None:
    proxies, _ = proxy_set(["ws://a", "ws://b", "ws://c"], count=2)
    await proxies.refresh()
    proxies.rebalance()
    assert len(proxies.served) == 2 and set(proxies.served) <= {"ws://a", "ws://b", "ws://c"}
    await proxies._drop(list(proxies.served))


async def test_a_proxy_the_registry_delists_is_left_and_replaced() -> None:
    listed = ["ws://a", "ws://b", "ws://c"]
    proxies, _ = proxy_set(listed)
    await proxies.refresh()
    proxies.rebalance()
    gone = next(iter(proxies.served))
    listed.remove(gone)
    await proxies.refresh()
    proxies.rebalance()
    assert set(proxies.served) == set(listed)
    await proxies._drop(list(proxies.served))


async def test_a_proxy_unreachable_past_repick_s_is_swapped_for_a_spare_only_when_there_is_one() -> None:
    proxies, made = proxy_set(["ws://a", "ws://b"])
    await proxies.refresh()
    proxies.rebalance()
    made["ws://a"].down = 60.0
    proxies.rebalance()
    assert set(proxies.served) == {"ws://a", "ws://b"}  # no spare: keep trying the one it has

    proxies.listed.append("ws://c")
    proxies.rebalance()
    assert set(proxies.served) == {"ws://b", "ws://c"}
    made["ws://c"].down = 5.0  # down, but not for long yet
    proxies.rebalance()
    assert set(proxies.served) == {"ws://b", "ws://c"}
    await proxies._drop(list(proxies.served))


async def test_a_failed_registry_read_keeps_the_proxies_served() -> None:
    proxies, _ = proxy_set(["ws://a", "ws://b"])
    await proxies.refresh()
    proxies.rebalance()

    async def down() -> Sequence[str]:
        raise ConnectionError("chain down")

    proxies.listing = down
    await proxies.refresh()
    proxies.rebalance()
    assert set(proxies.served) == {"ws://a", "ws://b"}
    await proxies._drop(list(proxies.served))
