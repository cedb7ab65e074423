"""The explorer's per-minute buckets: minutes and days in UTC, the TTFT histogram and its percentiles, slots for
charts."""

from __future__ import annotations

import math

import pytest

from cocoon.proxy.explorer.buckets import (
    TTFT_BOUNDS_MS,
    Bucket,
    day_of,
    merged,
    minute_of,
    per_slot,
    percentile_ms,
    ttft_bucket,
)


def test_a_moment_falls_in_its_utc_minute_and_day() -> None:
    assert minute_of(1_700_000_059.9) == 1_700_000_040
    assert minute_of(1_700_000_040) == 1_700_000_040
    assert day_of(1_700_000_000) == 1_699_920_000  # 2023-11-14 00:00 UTC


@pytest.mark.parametrize(
    ("ttft_s", "bucket"), [(0.0, 0), (0.025, 0), (0.0251, 1), (0.15, 3), (25.6, 10), (90.0, 11), (-1.0, 0)]
)
def test_a_time_to_first_token_lands_in_the_first_bucket_bounding_it(ttft_s: float, bucket: int) -> None:
    assert ttft_bucket(ttft_s) == bucket
    assert math.isinf(TTFT_BOUNDS_MS[-1])


def test_percentiles_interpolate_inside_the_bucket_holding_them() -> None:
    histogram = [0] * len(TTFT_BOUNDS_MS)
    histogram[2] = 98  # 50..100 ms
    histogram[5] = 2  # 400..800 ms
    assert percentile_ms(histogram, 0.5) == pytest.approx(50 + 50 * 50 / 98)
    assert percentile_ms(histogram, 0.99) == pytest.approx(400 + 400 * 1 / 2)
    assert percentile_ms([0] * len(TTFT_BOUNDS_MS), 0.5) is None


def test_a_percentile_in_the_open_last_bucket_is_its_lower_bound() -> None:
    histogram = [0] * len(TTFT_BOUNDS_MS)
    histogram[-1] = 3
    assert percentile_ms(histogram, 0.99) == TTFT_BOUNDS_MS[-2]


def test_buckets_add_up_count_by_count() -> None:
    a = Bucket(requests=2, errors=1, prompt_tokens=10, completion_tokens=5, charged=700)
    a.ttft[3] = 2
    b = Bucket(requests=1, prompt_tokens=4, completion_tokens=1, charged=300)
    b.ttft[3] = 1
    total = merged([a, b])
    assert (total.requests, total.errors, total.tokens, total.charged) == (3, 1, 20, 1000)
    assert total.ttft[3] == 3 and sum(total.ttft) == 3


def test_slots_cover_the_span_with_empty_ones_and_sum_what_falls_in_each() -> None:
    rows = [(0, Bucket(requests=1)), (60, Bucket(requests=2)), (90, Bucket(requests=4)), (600, Bucket(requests=9))]
    slots = per_slot(rows, 0, 240, 120)
    assert [(t, b.requests) for t, b in slots] == [(0, 7), (120, 0)]  # 600 is past the span: left out
