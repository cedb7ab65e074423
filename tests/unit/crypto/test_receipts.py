"""Receipts: signed by the worker's key; changing any field breaks the signature."""

from __future__ import annotations

import pytest

from cocoon.crypto import SigningKey, receipt_signature_valid, sign_receipt
from cocoon.protocol import Receipt

RECEIPT = Receipt(
    receipt_id="rcpt-1",
    request_id="req-1",
    job_id="job-1",
    worker_id="w-1",
    model="m",
    model_hash="ab" * 32,
    prompt_tokens=10,
    cached_tokens=0,
    completion_tokens=20,
    reasoning_tokens=0,
    request_sha256="00" * 32,
    response_sha256="11" * 32,
    finish_reason="stop",
    started_at=1.0,
    ttft_ms=5.0,
    duration_ms=50.0,
)


def test_a_signed_receipt_verifies_under_the_signers_key_only() -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    signature = sign_receipt(key, RECEIPT)
    assert receipt_signature_valid(key.public, RECEIPT, signature)
    assert not receipt_signature_valid(other.public, RECEIPT, signature)


@pytest.mark.parametrize(
    "change",
    [
        {"completion_tokens": 21},
        {"prompt_tokens": 9},
        {"response_sha256": "22" * 32},
        {"request_id": "req-2"},
    ],
)
def test_any_changed_field_breaks_the_signature(change: dict[str, object]) -> None:
    key = SigningKey.generate()
    signature = sign_receipt(key, RECEIPT)
    assert not receipt_signature_valid(key.public, RECEIPT.model_copy(update=change), signature)
