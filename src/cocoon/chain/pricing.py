"""Prices and costs in integer nanoton: the registry's per-class prices × a worker's price coefficient.

Rounding rule (the client and the proxy apply the same one): each class rounds down to the nanoton and the
total is the sum of the classes; the proxy's fee rounds down, so the worker gets the remainder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cocoon.chain.registry import ModelEntry

COEFFICIENT_ONE = 1000  # a worker's price coefficient: 1000 = 1x the registry price
PER_MILLION = 1_000_000
BPS = 10_000
_DIVISOR = PER_MILLION * COEFFICIENT_ONE


@dataclass(frozen=True, slots=True)
class Prices:
    """Registry prices of a model in nanoton per million tokens, at coefficient 1000."""

    prompt: int
    cached: int
    completion: int

    @classmethod
    def of(cls, model: ModelEntry) -> Prices:
        return cls(model.price_prompt, model.price_cached, model.price_completion)

    def to_json(self) -> dict[str, int]:
        return {"prompt": self.prompt, "cached": self.cached, "completion": self.completion}


@dataclass(frozen=True, slots=True)
class Cost:
    """What one receipt (or a whole request) costs the client, per class, in nanoton."""

    prompt: int = 0
    cached: int = 0
    completion: int = 0

    @property
    def total(self) -> int:
        return self.prompt + self.cached + self.completion

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.prompt + other.prompt, self.cached + other.cached, self.completion + other.completion)

    def usage_fields(self) -> dict[str, Any]:
        """COCOON's ``usage`` cost fields."""
        return {
            "prompt_cost": self.prompt,
            "cached_cost": self.cached,
            "completion_cost": self.completion,
            "total_cost": self.total,
        }


def _class_cost(tokens: int, price: int, coefficient: int) -> int:
    return tokens * price * coefficient // _DIVISOR


def cost_of(prompt_tokens: int, cached_tokens: int, completion_tokens: int, prices: Prices, coefficient: int) -> Cost:
    """The cost of one receipt. Cached tokens are part of ``prompt_tokens`` (OpenAI's convention) and are
    billed at the cached price; reasoning tokens are part of ``completion_tokens``."""
    if min(prompt_tokens, cached_tokens, completion_tokens) < 0 or coefficient < 1:
        raise ValueError("token counts must be >= 0 and the coefficient >= 1")
    cached = min(cached_tokens, prompt_tokens)
    return Cost(
        prompt=_class_cost(prompt_tokens - cached, prices.prompt, coefficient),
        cached=_class_cost(cached, prices.cached, coefficient),
        completion=_class_cost(completion_tokens, prices.completion, coefficient),
    )


def max_cost(prompt_tokens_bound: int, max_tokens: int, prices: Prices, coefficient: int) -> int:
    """The most a request can cost: every prompt token uncached, every completion token used (rounded up)."""
    raw = (prompt_tokens_bound * prices.prompt + max_tokens * prices.completion) * coefficient
    return -(-raw // _DIVISOR)


def split(total: int, fee_bps: int) -> tuple[int, int]:
    """``(worker_share, proxy_fee)`` of ``total``: the fee rounds down, the two always sum to ``total``."""
    fee = total * fee_bps // BPS
    return total - fee, fee
