"""Every number and id a worker puts in a receipt is bounded where the receipt arrives, before anyone prices it."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from cocoon.protocol import Receipt

HONEST: dict[str, Any] = {
    "receipt_id": "rcpt-" + "0" * 32,
    "request_id": "req-" + "1" * 32,
    "job_id": "job-" + "2" * 16,
    "worker_id": "w-" + "3" * 16,
    "model": "gemma-3-270m",
    "model_hash": "ab" * 32,
    "prompt_tokens": 40,
    "cached_tokens": 0,
    "completion_tokens": 7,
    "reasoning_tokens": 0,
    "request_sha256": "cd" * 32,
    "response_sha256": "ef" * 32,
    "finish_reason": "stop",
    "started_at": 1_764_000_000.0,
    "ttft_ms": 30.0,
    "duration_ms": 120.0,
}


def test_an_honest_receipt_validates() -> None:
    assert Receipt.model_validate(HONEST).completion_tokens == 7


@pytest.mark.parametrize(
    "lie",
    [
        {"prompt_tokens": -1},  # a negative count would refund the client and charge the proxy
        {"completion_tokens": 10**12},
        {"cached_tokens": -5},
        {"receipt_id": "r" * 81},  # the stores key charges on it in VARCHAR(80)
        {"model": "m" * 201},
        {"ttft_ms": math.nan},
        {"duration_ms": math.inf},
        {"started_at": -1.0},
    ],
)
def test_a_receipt_with_a_number_or_id_out_of_bounds_does_not_validate(lie: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Receipt.model_validate(HONEST | lie)
