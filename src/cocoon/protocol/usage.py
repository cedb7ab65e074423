"""Token counts of one generation: what an engine reports, a receipt signs and a client adds up.

A shared value rather than an engine type, so the client (which sums usage over a stream's workers) never
imports an engine.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Tokens of one generation by class; ``cached_tokens`` and ``reasoning_tokens`` are parts of the others."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0
