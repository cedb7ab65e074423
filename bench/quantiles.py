"""The one quantile every bench script reports its latencies with, so a p99 means the same in every table.

``quantile(values, 0.99)`` is the value below which 99% of ``values`` lie, read off the sorted list (the
nearest-rank rule, no interpolation: every figure printed is one that was measured). An empty list has no
quantile: it gives NaN, which the tables print as ``nan``, rather than an error that would lose the rest of
a long run's table.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def quantile(values: Iterable[float], q: float, *, scale: float = 1.0) -> float:
    """The ``q`` quantile (0 ≤ q ≤ 1) of ``values``, times ``scale`` (1000 turns seconds into milliseconds)."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"a quantile is between 0 and 1, not {q}")
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * scale
