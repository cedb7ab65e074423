"""The proxies a client holds connections to, and which one each request goes to first.

The problem: a client that knows one proxy fails every request while that proxy is down, and a client that
knows several but picks blindly keeps sending a share of requests to the dead one. What this does: each proxy
keeps a health record (an EWMA of its time to answer, and an error count that decays with a half-life); a
proxy that failed to answer is *down* for a backoff that doubles on each further failure (1 s to 30 s) and is
skipped while any other proxy is up. ``ProxyPool.ranked()`` orders the proxies healthiest first; the SDK sends
each request to the first one not yet tried for that request, and on a failure before the first byte moves to
the next, sealing anew to that proxy's own directory workers.
"""

from __future__ import annotations

import logging
import math
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import httpx

from cocoon.attestation import AttestationVerifier
from cocoon.chain.address import parse_address
from cocoon.chain.liteserver import chain_for
from cocoon.chain.registry import Registry, usable_proxies
from cocoon.client.directory import DirectoryCache
from cocoon.client.wallet import ChannelPayer
from cocoon.config import ClientSettings
from cocoon.errors import ChainError, ConfigError
from cocoon.protocol.http_client import CoalescingTransport, LeanClient

log = logging.getLogger(__name__)

EWMA_WEIGHT = 0.2  # the newest latency's share of the average
ERROR_HALF_LIFE_S = 30.0  # an error counts half as much this long after it happened
ERROR_PENALTY_MS = 2000.0  # what one recent error adds to a proxy's score
FIRST_BACKOFF_S, MAX_BACKOFF_S = 1.0, 30.0


@dataclass(slots=True)
class ProxyHealth:
    """What a client has seen of one proxy: how fast it answers, how often it failed lately, and whether it
    is resting after a failure. Times are ``time.monotonic()``."""

    latency_ms: float | None = None  # EWMA of the time to the response headers
    errors: float = 0.0  # decayed count of recent failures
    errors_at: float = 0.0
    down_until: float = 0.0
    backoff_s: float = FIRST_BACKOFF_S

    def recent_errors(self, now: float) -> float:
        decay: float = 0.5 ** ((now - self.errors_at) / ERROR_HALF_LIFE_S)
        return self.errors * decay

    def succeeded(self, latency_s: float) -> None:
        ms = latency_s * 1000
        self.latency_ms = ms if self.latency_ms is None else (1 - EWMA_WEIGHT) * self.latency_ms + EWMA_WEIGHT * ms
        self.down_until, self.backoff_s = 0.0, FIRST_BACKOFF_S

    def failed(self, now: float, *, unreachable: bool) -> None:
        """One failure; ``unreachable`` (no answer at all, or a broken connection) also rests the proxy."""
        self.errors, self.errors_at = self.recent_errors(now) + 1, now
        if unreachable:
            self.down_until = now + self.backoff_s
            self.backoff_s = min(self.backoff_s * 2, MAX_BACKOFF_S)

    def down(self, now: float) -> bool:
        return now < self.down_until

    def score_ms(self, now: float) -> float:
        """Lower is healthier: the latency average (unknown: 0, so a new proxy gets tried) plus error penalties."""
        return (self.latency_ms or 0.0) + ERROR_PENALTY_MS * self.recent_errors(now)


@dataclass(slots=True)
class ProxyConnection:
    """One proxy: its HTTP client, its worker directory, its health and (paid) the client's channel with it."""

    url: str
    http: httpx.AsyncClient
    directory: DirectoryCache
    payer: ChannelPayer | None = None
    health: ProxyHealth = field(default_factory=ProxyHealth)
    owns_payer: bool = False  # the payer was made for this proxy (``CocoonClient.for_settings``): closed with it

    async def aclose(self) -> None:
        await self.http.aclose()
        if self.owns_payer and self.payer is not None:
            await self.payer.aclose()


class ProxyPool:
    """The proxies of one client, sharing one attestation verifier (a worker is judged once, whichever proxy
    lists it)."""

    def __init__(
        self,
        urls: Sequence[str],
        verifier: AttestationVerifier,
        *,
        timeout: float,
        http: Mapping[str, httpx.AsyncClient] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.tls = tls  # whom https:// proxies' certificates must chain to (None: httpx's default roots)
        urls = list(dict.fromkeys(u.rstrip("/") for u in urls))  # the same proxy twice is one proxy
        if not urls:
            raise ConfigError("a client needs at least one proxy: set proxy_url or proxy_urls")
        given = {u.rstrip("/"): client for u, client in (http or {}).items()}
        self.verifier = verifier
        self.timeout = timeout
        self.proxies = [self._connect(url, given.get(url), timeout) for url in urls]
        self._retired: list[tuple[float, ProxyConnection]] = []  # gone from the list, maybe still answering

    async def retarget(self, urls: Sequence[str]) -> tuple[list[ProxyConnection], list[ProxyConnection]]:
        """Hold exactly ``urls`` from now on (the registry was read again); returns the proxies added and those
        dropped. A proxy kept keeps its health and directory. A dropped one takes no new request; its
        connections close once a request sent to it before could no longer be running (the client's timeout)."""
        wanted = list(dict.fromkeys(u.rstrip("/") for u in urls))
        if not wanted:
            raise ConfigError("a client needs at least one proxy")
        held = {p.url: p for p in self.proxies}
        added = [self._connect(url, None, self.timeout) for url in wanted if url not in held]
        dropped = [p for p in self.proxies if p.url not in wanted]
        new = {p.url: p for p in added}
        self.proxies = [held.get(url) or new[url] for url in wanted]
        now = time.monotonic()
        self._retired += [(now, p) for p in dropped]
        done = [p for at, p in self._retired if now - at > self.timeout + 10]
        self._retired = [(at, p) for at, p in self._retired if now - at <= self.timeout + 10]
        for proxy in done:
            await proxy.aclose()
        return added, dropped

    def _connect(self, url: str, http: httpx.AsyncClient | None, timeout: float) -> ProxyConnection:
        http = http or LeanClient(
            base_url=url,
            timeout=httpx.Timeout(timeout, connect=5.0),
            transport=CoalescingTransport(
                verify=self.tls if self.tls is not None else True,
                limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            ),
        )
        return ProxyConnection(url, http, DirectoryCache(http, self.verifier))

    def ranked(self, now: float | None = None) -> list[ProxyConnection]:
        """Every proxy, healthiest first: those up by score, then those resting, soonest back first."""
        now = time.monotonic() if now is None else now
        return sorted(
            self.proxies,
            key=lambda p: (
                p.health.down(now),
                p.health.down_until if p.health.down(now) else 0.0,
                p.health.score_ms(now),
            ),
        )

    def next_for(self, tried: Sequence[ProxyConnection]) -> ProxyConnection:
        """The healthiest proxy this request has not tried yet; once every one was, the healthiest of all."""
        ranked = self.ranked()
        return next((p for p in ranked if all(p is not t for t in tried)), ranked[0])

    def status(self) -> list[dict[str, object]]:
        """Each proxy's health, for logs and the sidecar's health page."""
        now = time.monotonic()
        return [
            {
                "url": p.url,
                "latency_ms": None if p.health.latency_ms is None else round(p.health.latency_ms, 1),
                "recent_errors": round(p.health.recent_errors(now), 2),
                "down_for_s": round(max(0.0, p.health.down_until - now), 1),
                "score_ms": round(p.health.score_ms(now), 1) if math.isfinite(p.health.score_ms(now)) else None,
            }
            for p in self.proxies
        ]

    async def aclose(self) -> None:
        for proxy in [*self.proxies, *(p for _, p in self._retired)]:
            await proxy.aclose()


def configured_proxy_urls(settings: ClientSettings) -> list[str]:
    """The proxies the settings name: ``proxy_urls`` when set, else ``proxy_url``."""
    return list(settings.proxy_urls or [settings.proxy_url])


async def registry_proxy_urls(settings: ClientSettings, held: Sequence[str] = ()) -> list[str]:
    """The base URLs of the proxies the settings' registry lists, at most ``max_proxies`` of them (the registry
    is chain state: a listing of thousands must not make the sidecar open thousands of connections and payers):
    those in ``held`` first, so a re-read keeps the proxies in use, then the registry's order. ``ConfigError``
    when it lists none or cannot be read (a sidecar starting without a proxy would answer nothing)."""
    if not (settings.registry and settings.chain_url):
        raise ConfigError("proxies_from_registry needs registry and chain_url set")
    try:
        async with chain_for(settings) as chain:
            listed = usable_proxies(await Registry(chain, parse_address(settings.registry)).get_proxies())
    except ChainError as exc:
        raise ConfigError(f"cannot read the proxies from the registry {settings.registry}: {exc}") from exc
    if not listed:
        raise ConfigError(
            f"the registry {settings.registry} lists no usable proxies: list one (`cocoon chain registry "
            "add-proxy`) or set proxy_url"
        )
    urls = list(dict.fromkeys(p.http_url.rstrip("/") for p in listed))
    chosen = within_cap(urls, settings.max_proxies, held)
    if len(chosen) < len(urls):
        log.warning("registry lists %d proxies, using %d (max_proxies)", len(urls), len(chosen))
    return chosen


def within_cap(listed: Sequence[str], cap: int, held: Sequence[str] = ()) -> list[str]:
    """At most ``cap`` of ``listed``: those also in ``held`` first, then the others in ``listed``'s order."""
    kept = [url for url in dict.fromkeys(h.rstrip("/") for h in held) if url in listed]
    return (kept + [url for url in listed if url not in kept])[:cap]
