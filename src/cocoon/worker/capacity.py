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


class FirstTokenMeter:
    """The worker's promise: median time to first token over recent jobs, and its prefill rate.

    Both go into heartbeats; the proxy holds the worker to the promise when it scores reputation.
    """

    def __init__(self, window: int = 32) -> None:
        self._ttft: deque[float] = deque(maxlen=window)
        self.prefill_tokens_per_s = 0.0

    def add(self, ttft_s: float, prompt_tokens: int) -> None:
        self._ttft.append(ttft_s)
        if prompt_tokens > 0 and ttft_s > 0:
            rate = prompt_tokens / ttft_s
            self.prefill_tokens_per_s = (
                rate if not self.prefill_tokens_per_s else (0.8 * self.prefill_tokens_per_s + 0.2 * rate)
            )

    def median_ms(self) -> float:
        if not self._ttft:
            return 0.0
        ordered = sorted(self._ttft)
        return ordered[len(ordered) // 2] * 1000


class SlotBoard:
    """Counts jobs running and waiting; the worker's heartbeat reads it."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.running = 0
        self.waiting = 0

    @property
    def free(self) -> int:
        return max(0, self.slots - self.running)
