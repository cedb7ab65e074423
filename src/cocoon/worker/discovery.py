"""Which proxies a worker serves when the registry lists them: ``proxy_count`` of them, re-picked as they fail.

The registry contract lists the network's proxies (``cocoon chain registry add-proxy``). A worker told the
registry's address reads that list, dials ``proxy_count`` proxies chosen at random (so workers spread over the
proxies), and re-reads the list every ``refresh_s``. A proxy the registry no longer lists is dropped at once; a
proxy this worker could not reach for ``repick_s`` is swapped for a listed one it does not serve yet (when
there is one: with no spare, the worker keeps trying the proxies it has). A failed read of the registry keeps
the proxies the worker has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from cocoon.chain.address import parse_address
from cocoon.chain.liteserver import ChainSettings, chain_for
from cocoon.chain.registry import Registry, usable_proxies
from cocoon.worker.link import ProxyLink

log = logging.getLogger("cocoon.worker")

Listing = Callable[[], Awaitable[Sequence[str]]]
"""Reads the worker socket URLs the registry lists now; raises when it cannot."""


async def registry_worker_urls(settings: ChainSettings, registry: str) -> list[str]:
    """The worker sockets of the proxies ``registry`` lists, read now on the chain ``settings`` name."""
    async with chain_for(settings) as chain:
        return [p.worker_url for p in usable_proxies(await Registry(chain, parse_address(registry)).get_proxies())]


@dataclass(slots=True)
class _Served:
    link: ProxyLink
    task: asyncio.Task[None]


class ProxySet:
    """Keeps this worker linked to ``count`` of the proxies ``listing`` names (see the module docstring)."""

    def __init__(
        self,
        listing: Listing,
        make_link: Callable[[str], ProxyLink],
        *,
        count: int,
        repick_s: float,
        refresh_s: float,
        rng: random.Random | None = None,
    ) -> None:
        self.listing = listing
        self.make_link = make_link
        self.count = count
        self.repick_s = repick_s
        self.refresh_s = refresh_s
        self.listed: list[str] = []
        self.served: dict[str, _Served] = {}
        self.given_up: dict[str, float] = {}  # url -> time.monotonic() it was dropped for being unreachable
        self._rng = rng or random.Random()

    @property
    def links(self) -> list[ProxyLink]:
        return [s.link for s in self.served.values()]

    async def run_forever(self) -> None:
        """Read the registry, link, and keep the links right until cancelled (then every link is closed)."""
        read_at = float("-inf")
        try:
            while True:
                if time.monotonic() - read_at >= self.refresh_s:
                    read_at = time.monotonic()
                    await self.refresh()
                self.rebalance()
                await asyncio.sleep(min(self.refresh_s, max(self.repick_s / 4, 0.05)))
        finally:
            await self._drop(list(self.served))

    async def refresh(self) -> None:
        """Read the listing now; a failed read is logged and keeps the last one."""
        try:
            self.listed = list(dict.fromkeys(await self.listing()))
        except Exception as exc:  # the chain being down must not take the worker off the proxies it serves
            log.warning("reading the proxies from the registry failed; keeping %d: %r", len(self.served), exc)
            return
        if not self.listed:
            log.warning("the registry lists no usable proxies; this worker serves none until it does")

    def rebalance(self, now: float | None = None) -> None:
        """Drop unlisted proxies and those unreachable for ``repick_s`` (when a spare is listed), then fill up to
        ``count`` from listed proxies not served, the ones given up on longest ago last."""
        now = time.monotonic() if now is None else now
        for url in [u for u in self.served if u not in self.listed]:
            log.info("proxy no longer listed in the registry; leaving it url=%s", url)
            self._stop(url)
        spare = [u for u in self.listed if u not in self.served]
        for url, served in list(self.served.items()):
            down = served.link.down_for(now)
            if down is not None and down > self.repick_s and spare:
                log.warning("proxy unreachable for %.0fs; picking another url=%s", down, url)
                self._stop(url)
                self.given_up[url] = now
        spare = [u for u in self.listed if u not in self.served]
        self._rng.shuffle(spare)
        spare.sort(key=lambda u: self.given_up.get(u, float("-inf")))  # fresh ones first, then oldest given up
        for url in spare[: max(0, self.count - len(self.served))]:
            log.info("serving proxy from the registry url=%s", url)
            link = self.make_link(url)
            self.served[url] = _Served(link, asyncio.create_task(link.run_forever(), name=f"link-{url}"))

    def _stop(self, url: str) -> None:
        self.served.pop(url).task.cancel()

    async def _drop(self, urls: list[str]) -> None:
        tasks = [self.served.pop(u).task for u in urls]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
