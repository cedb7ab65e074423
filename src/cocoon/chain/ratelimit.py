"""How fast one process may call a chain API: one token bucket per API key, shared by every client in it.

toncenter answers 429 past 1 request/s without an API key and past the key's plan with one (10/s on the free
plan); the proxy's billing, settlement and books each open their own ``ToncenterClient`` on the same key, so
the bucket belongs to the key (and endpoint), not to a client. A local devnet on loopback has no limit.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

KEYLESS_RPS = 1.0  # toncenter without an API key
DEFAULT_KEY_RPS = 10.0  # toncenter's free API key plan
API_KEY_HINT = "set chain_api_key (a free key comes from @tonapibot on Telegram) for anything but a local devnet"


class RateLimiter:
    """A token bucket: ``rate`` calls a second on average, bursts of up to ``max(rate, 1)``."""

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError(f"a rate limit must be positive, got {rate}")
        self.rate = rate
        self.capacity = max(rate, 1.0)
        self._tokens = self.capacity
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait until one more call fits in the rate."""
        async with self._lock:
            while True:
                now = time.monotonic()
                self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self.rate)

    def penalize(self, seconds: float) -> None:
        """The server said 429: spend the next ``seconds`` of allowance so every caller backs off together."""
        self._tokens -= seconds * self.rate


_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str, float], RateLimiter]] = (
    weakref.WeakKeyDictionary()
)
_warned: set[str] = set()


def limiter_for(api_root: str, api_key: str | None, rps: float | None = None) -> RateLimiter | None:
    """The limiter shared by this event loop's clients of ``api_key`` at ``api_root``; None for a keyless
    local devnet. Call it from a running loop (an asyncio lock cannot move between loops).

    ``rps`` is the key's plan (default ``DEFAULT_KEY_RPS``); without a key it is always ``KEYLESS_RPS``, and the
    first keyless client of a public endpoint logs how to get a key.
    """
    host = urlsplit(api_root).hostname or ""
    if not api_key:
        if _is_loopback(host):
            return None
        if api_root not in _warned:
            _warned.add(api_root)
            log.warning("%s allows 1 request/s without an API key; %s", api_root, API_KEY_HINT)
        rate = KEYLESS_RPS
    else:
        rate = rps or DEFAULT_KEY_RPS
    per_loop = _limiters.setdefault(asyncio.get_running_loop(), {})
    key = (api_root, api_key or "", rate)
    if key not in per_loop:
        per_loop[key] = RateLimiter(rate)
    return per_loop[key]


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")
