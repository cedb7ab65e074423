"""The client's checks on a worker's receipt: its attested word on exactly this exchange, or nothing is paid.

``stream.py`` runs them on every ``end`` frame; only receipts that pass reach ``ChannelPayer.pay``.
"""

from __future__ import annotations

import logging

from cocoon.client.directory import AttestedWorker
from cocoon.crypto import ResponseDigest, receipt_signature_valid, request_digest
from cocoon.errors import ReceiptInvalid
from cocoon.protocol import JobEnd

log = logging.getLogger("cocoon.client")


def check_receipt(
    end: JobEnd, worker: AttestedWorker, model: str, request_id: str, plaintext: bytes, digest: ResponseDigest
) -> None:
    """Raise ``ReceiptInvalid`` unless the receipt is the attested worker's word on exactly this exchange.

    ``plaintext`` is the sealed request's plaintext as the client wrote it, ``digest`` the running digest of
    the chunk plaintexts received from ``worker``; the message lists every problem found.
    """
    r = end.receipt
    problems = []
    if r.worker_id != worker.worker_id:
        problems.append("it names another worker")
    if not receipt_signature_valid(worker.verified.ed25519_pub, r, end.signature):
        problems.append("its signature is not the attested worker key's")
    if r.request_id != request_id:
        problems.append("it is for another request")
    if r.model != model or r.model_hash != worker.models.get(model):
        problems.append("it names other weights than the attested ones")
    if r.request_sha256 != request_digest(plaintext):
        problems.append("its request digest differs from what was sent")
    if r.response_sha256 != digest.hexdigest():
        problems.append("its response digest differs from what was received")
    if problems:
        raise ReceiptInvalid(f"receipt {r.receipt_id} rejected: " + "; ".join(problems) + ". Nothing is paid.")


def hedge_receipt_ok(
    end: JobEnd, worker: AttestedWorker, model: str, request_id: str, plaintext: bytes, digest: ResponseDigest
) -> bool:
    """Whether a hedge loser's receipt may be paid: it verifies and claims its prefill only (no completion).

    The client received none of a loser's chunks, so ``digest`` is the empty one; a receipt that fails is
    logged and dropped, never paid.
    """
    try:
        check_receipt(end, worker, model, request_id, plaintext, digest)
    except ReceiptInvalid as exc:
        log.warning("hedge receipt dropped worker=%s reason=%s", worker.worker_id, exc.message)
        return False
    return end.receipt.completion_tokens == 0
