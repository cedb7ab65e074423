"""A bounded, expiring record of request ids already seen: the proxy and each worker refuse a replayed one.

A relay that replays one sealed request would otherwise make the network run (and bill) it again; the record
remembers each id for ``ttl_s`` (longer than any request may run) and at most ``capacity`` ids, oldest first out.
"""

from __future__ import annotations

import time
from collections import OrderedDict


class ReplayRecord:
    """``first_time(id)`` is True once per id within ``ttl_s`` seconds (while at most ``capacity`` ids are held)."""

    __slots__ = ("_seen", "capacity", "ttl_s")

    def __init__(self, capacity: int = 100_000, ttl_s: float = 2 * 3600.0) -> None:
        self.capacity = capacity
        self.ttl_s = ttl_s
        self._seen: OrderedDict[str, float] = OrderedDict()  # id -> when it expires, oldest first

    def first_time(self, request_id: str, now: float | None = None) -> bool:
        """Record ``request_id``; False when it was already recorded and has not expired."""
        now = time.monotonic() if now is None else now
        while self._seen:
            oldest, expires = next(iter(self._seen.items()))
            if expires > now and len(self._seen) < self.capacity:
                break
            del self._seen[oldest]
        if request_id in self._seen:
            return False
        self._seen[request_id] = now + self.ttl_s
        return True

    def __len__(self) -> int:
        return len(self._seen)
