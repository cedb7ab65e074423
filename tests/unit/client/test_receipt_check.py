"""The client accepts a receipt only when it is the attested worker's word on exactly this exchange."""

from __future__ import annotations

import pytest

from cocoon.attestation import VerifiedWorker
from cocoon.client.directory import AttestedWorker
from cocoon.client.receipts import ReceiptBounds, check_receipt
from cocoon.crypto import NodeKeys, ResponseDigest, request_digest, sign_receipt
from cocoon.errors import ReceiptInvalid
from cocoon.protocol import JobEnd, Receipt

MODEL_HASH = "ab" * 32
PLAINTEXT = b"sealed request plaintext"
SALT = b"s" * 16
BOUNDS = ReceiptBounds(completion=8, received=2, prompt=ReceiptBounds.prompt_bound(PLAINTEXT, 0))


def setup() -> tuple[NodeKeys, AttestedWorker, Receipt, ResponseDigest]:
    keys = NodeKeys.generate()
    worker = AttestedWorker(
        worker_id=keys.node_id,
        verified=VerifiedWorker(keys.sealing.public, keys.signing.public, frozenset([MODEL_HASH]), "m", "simulated"),
        models={"gemma": MODEL_HASH},
        embeddings=frozenset(),
        context_length={"gemma": 4096},
        price_coefficient=1000,
        region="",
        expected_latency_ms=0.0,
    )
    digest = ResponseDigest(SALT)
    digest.update(b"chunk one")
    receipt = Receipt(
        receipt_id="rcpt-1",
        request_id="req-1",
        job_id="job-1",
        worker_id=keys.node_id,
        model="gemma",
        model_hash=MODEL_HASH,
        prompt_tokens=3,
        cached_tokens=0,
        completion_tokens=2,
        reasoning_tokens=0,
        request_sha256=request_digest(PLAINTEXT),
        response_sha256=digest.hexdigest(),
        finish_reason="stop",
        started_at=0.0,
        ttft_ms=1.0,
        duration_ms=2.0,
    )
    return keys, worker, receipt, digest


def test_a_true_receipt_is_accepted() -> None:
    keys, worker, receipt, digest = setup()
    end = JobEnd(receipt=receipt, signature=sign_receipt(keys.signing, receipt))
    check_receipt(end, worker, "gemma", "req-1", PLAINTEXT, digest, BOUNDS)


def test_a_receipt_signed_by_another_key_is_rejected() -> None:
    _, worker, receipt, digest = setup()
    forger = NodeKeys.generate()
    end = JobEnd(receipt=receipt, signature=sign_receipt(forger.signing, receipt))
    with pytest.raises(ReceiptInvalid, match="signature"):
        check_receipt(end, worker, "gemma", "req-1", PLAINTEXT, digest, BOUNDS)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"response_sha256": "00" * 32}, "response digest"),
        ({"request_sha256": "00" * 32}, "request digest"),
        ({"model_hash": "cd" * 32}, "other weights"),
        ({"request_id": "req-2"}, "another request"),
    ],
)
def test_a_signed_receipt_for_something_else_is_rejected(change: dict[str, str], reason: str) -> None:
    keys, worker, receipt, digest = setup()
    lie = receipt.model_copy(update=change)
    end = JobEnd(receipt=lie, signature=sign_receipt(keys.signing, lie))
    with pytest.raises(ReceiptInvalid, match=reason):
        check_receipt(end, worker, "gemma", "req-1", PLAINTEXT, digest, BOUNDS)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"completion_tokens": 3}, "more than the 2 its chunks carried"),
        ({"prompt_tokens": 10_000}, "more than the request can hold"),
        ({"cached_tokens": 4}, "contradict"),
        ({"reasoning_tokens": 3}, "contradict"),
    ],
)
def test_a_signed_receipt_claiming_more_than_was_sent_or_received_is_rejected(
    change: dict[str, int], reason: str
) -> None:
    keys, worker, receipt, digest = setup()
    lie = receipt.model_copy(update=change)
    end = JobEnd(receipt=lie, signature=sign_receipt(keys.signing, lie))
    with pytest.raises(ReceiptInvalid, match=reason):
        check_receipt(end, worker, "gemma", "req-1", PLAINTEXT, digest, BOUNDS)


def test_a_receipt_past_what_is_left_of_max_tokens_is_rejected() -> None:
    keys, worker, receipt, digest = setup()
    end = JobEnd(receipt=receipt, signature=sign_receipt(keys.signing, receipt))
    with pytest.raises(ReceiptInvalid, match="left of max_tokens"):
        check_receipt(end, worker, "gemma", "req-1", PLAINTEXT, digest, ReceiptBounds(1, 2, 1000))
