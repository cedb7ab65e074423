"""What a worker reports about its load: free slots, queue, and recent token throughput."""

from __future__ import annotations

import time
from collections import deque


class ThroughputMeter:
    """Tokens per second over a sliding window of recent events."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._events: deque[tuple[float, int]] = deque()
        self._total = 0

    def add(self, tokens: int) -> None:
        now = time.monotonic()
        self._events.append((now, tokens))
        self._total += tokens
        self._trim(now)

    def rate(self) -> float:
        now = time.monotonic()
        self._trim(now)
        if not self._events:
            return 0.0
        span = max(now - self._events[0][0], 1.0)
        return self._total / span

    def _trim(self, now: float) -> None:
        while self._events and now - self._events[0][0] > self.window_s:
            self._total -= self._events.popleft()[1]


class SlotBoard:
    """Counts jobs running and waiting; the worker's heartbeat reads it."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.running = 0
        self.waiting = 0

    @property
    def free(self) -> int:
        return max(0, self.slots - self.running)
