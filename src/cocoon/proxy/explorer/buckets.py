"""Per-minute buckets of what the proxy relayed: requests, tokens, nanoton charged and a histogram of time to
first token. Pure arithmetic: ``timeline`` keeps them in memory, writes them to the store and reads them back.

A bucket is additive (two buckets for the same minute and model sum to one), so replicas sharing one database
each add their own, and a page merges what is stored with what is still in memory.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

MINUTE_S = 60
DAY_S = 86_400
# Upper bounds of the time-to-first-token histogram's buckets, milliseconds, doubling; the last one is open.
TTFT_BOUNDS_MS: tuple[float, ...] = (25, 50, 100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, math.inf)


def minute_of(unix_s: float) -> int:
    """The start of the UTC minute ``unix_s`` falls in, whole seconds since the epoch."""
    return int(unix_s // MINUTE_S) * MINUTE_S


def day_of(unix_s: float) -> int:
    """The start of the UTC day ``unix_s`` falls in, whole seconds since the epoch."""
    return int(unix_s // DAY_S) * DAY_S


def ttft_bucket(ttft_s: float) -> int:
    """The histogram bucket of a time to first token: the first bound at or above it."""
    return bisect.bisect_left(TTFT_BOUNDS_MS, max(0.0, ttft_s) * 1000)


def percentile_ms(histogram: Sequence[int], q: float) -> float | None:
    """The ``q``-quantile (0 < q ≤ 1) of the samples counted in ``histogram`` (one count per ``TTFT_BOUNDS_MS``
    bucket), interpolated linearly inside its bucket; ``None`` without samples. A quantile in the open last
    bucket is reported as that bucket's lower bound: the histogram knows no more than "above it"."""
    total = sum(histogram)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(histogram):
        if count and seen + count >= rank:
            low = TTFT_BOUNDS_MS[i - 1] if i else 0.0
            high = TTFT_BOUNDS_MS[i]
            if math.isinf(high):
                return low
            return low + (high - low) * (rank - seen) / count
        seen += count
    return TTFT_BOUNDS_MS[-2]


@dataclass(slots=True)
class Bucket:
    """One minute of one model's traffic. ``charged`` is nanoton of valid receipts booked to clients."""

    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    charged: int = 0
    ttft: list[int] = field(default_factory=lambda: [0] * len(TTFT_BOUNDS_MS))

    def add(self, other: Bucket) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.charged += other.charged
        for i, count in enumerate(other.ttft):
            self.ttft[i] += count

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def merged(buckets: Iterable[Bucket]) -> Bucket:
    """The sum of ``buckets``."""
    total = Bucket()
    for bucket in buckets:
        total.add(bucket)
    return total


def per_slot(rows: Iterable[tuple[int, Bucket]], start: int, end: int, step: int) -> list[tuple[int, Bucket]]:
    """``rows`` (moment, bucket) summed into every ``step``-second slot from ``start`` to before ``end``, empty
    slots included: what a chart draws. Rows outside the span are left out."""
    slots = {t: Bucket() for t in range(start, end, step)}
    for moment, bucket in rows:
        slot = start + (moment - start) // step * step
        if slot in slots:
            slots[slot].add(bucket)
    return sorted(slots.items())
