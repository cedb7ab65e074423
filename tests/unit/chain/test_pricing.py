"""Cost arithmetic: integer nanoton, one rounding rule shared by client and proxy, nothing lost in the split."""

from __future__ import annotations

import itertools

import pytest

from cocoon.chain.pricing import Cost, Prices, cost_of, max_cost, split

PRICES = Prices(prompt=10_000_000, cached=1_000_000, completion=20_000_000)  # per million tokens


def test_cost_is_tokens_times_price_per_million_times_coefficient() -> None:
    cost = cost_of(prompt_tokens=40, cached_tokens=0, completion_tokens=7, prices=PRICES, coefficient=1000)
    assert cost == Cost(prompt=400, cached=0, completion=140)
    assert cost.total == 540
    assert cost_of(40, 0, 7, PRICES, 1500).total == 810


def test_cached_tokens_are_part_of_the_prompt_and_billed_at_the_cached_price() -> None:
    cost = cost_of(prompt_tokens=100, cached_tokens=60, completion_tokens=0, prices=PRICES, coefficient=1000)
    assert (cost.prompt, cost.cached) == (400, 60)


def test_each_class_rounds_down_and_the_total_is_their_sum() -> None:
    cheap = Prices(prompt=1_500_000, cached=333_333, completion=999_999)
    cost = cost_of(prompt_tokens=3, cached_tokens=1, completion_tokens=1, prices=cheap, coefficient=1000)
    assert cost == Cost(prompt=3, cached=0, completion=0)  # 3.0, 0.333, 0.999 nanoton
    assert cost.total == cost.prompt + cost.cached + cost.completion
    assert cost.usage_fields() == {"prompt_cost": 3, "cached_cost": 0, "completion_cost": 0, "total_cost": 3}


@pytest.mark.parametrize("fee_bps", [0, 1, 500, 3333, 10_000])
def test_worker_share_plus_proxy_fee_is_the_cost_to_the_nanoton(fee_bps: int) -> None:
    for total in itertools.chain(range(0, 50), [10**9 + 7, 2**62]):
        share, fee = split(total, fee_bps)
        assert share + fee == total
        assert fee == total * fee_bps // 10_000  # the fee rounds down: the worker gets the remainder


def test_the_reservation_covers_any_receipt_within_its_bounds() -> None:
    for prompt, completion, coefficient in itertools.product([0, 1, 77, 4096], [0, 1, 33, 512], [1, 999, 4000]):
        bound = max_cost(prompt, completion, PRICES, coefficient)
        for cached in (0, prompt // 2, prompt):
            assert cost_of(prompt, cached, completion, PRICES, coefficient).total <= bound


def test_negative_tokens_are_refused() -> None:
    with pytest.raises(ValueError):
        cost_of(-1, 0, 0, PRICES, 1000)
