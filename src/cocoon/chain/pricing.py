"""Prices and costs in integer nanoton: the registry's per-class prices × a worker's price coefficient.

Rounding rule (the client and the proxy apply the same one): each class rounds down to the nanoton and the
total is the sum of the classes; the proxy's fee rounds down, so the worker gets the remainder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from cocoon.chain.address import address_text
from cocoon.chain.contracts import TON
from cocoon.chain.registry import ModelEntry, Registry
from cocoon.errors import ConfigError, ModelNotFound

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


class PriceBook:
    """The registry's prices per model, read from the chain and kept ``ttl_s`` seconds.

    The client and the proxy each hold one, so both price a receipt from the chain itself, not from each other.
    """

    def __init__(self, registry: Registry, *, ttl_s: float = 30.0) -> None:
        self.registry = registry
        self.ttl_s = ttl_s
        self._cached: dict[str, tuple[float, Prices]] = {}

    async def prices(self, model: str) -> Prices:
        """``model``'s prices; ``ModelNotFound`` when the registry has none for it."""
        cached = self._cached.get(model)
        if cached is not None and time.monotonic() - cached[0] < self.ttl_s:
            return cached[1]
        entry = await self.registry.get_model(model)
        if entry is None:
            raise ModelNotFound(
                f"the model {model!r} has no price in the registry {address_text(self.registry.address)}; "
                "the network owner must add it before requests to it can be paid",
                param="model",
            )
        prices = Prices.of(entry)
        self._cached[model] = (time.monotonic(), prices)
        return prices


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


def ton_text(nanoton: int) -> str:
    """``1500000000`` → ``1.5 TON`` (display only: amounts stay integers)."""
    return f"{Decimal(nanoton) / TON:f} TON"


def parse_ton(text: str) -> int:
    """``"0.25"`` → ``250000000`` nanoton. Raises ConfigError unless ``text`` is a positive whole number of nanoton."""
    try:
        amount = Decimal(text) * TON
    except InvalidOperation as exc:
        raise ConfigError(f"{text!r} is not an amount of TON; write e.g. 5 or 0.25") from exc
    if not amount.is_finite():  # "nan" and "inf" parse as decimals, but are no amount
        raise ConfigError(f"{text!r} is not an amount of TON; write e.g. 5 or 0.25")
    if amount <= 0 or amount != amount.to_integral_value():
        raise ConfigError(f"{text!r} TON is not a positive whole number of nanoton")
    return int(amount)


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
