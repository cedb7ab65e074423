"""The client's checks on a worker's receipt: its attested word on exactly this exchange, or nothing is paid.

``stream.py`` runs them on every ``end`` frame; only receipts that pass reach ``ChannelPayer.pay``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cocoon.client.directory import AttestedWorker
from cocoon.crypto import ResponseDigest, receipt_signature_valid, request_digest
from cocoon.errors import ReceiptInvalid
from cocoon.protocol import JobEnd

log = logging.getLogger("cocoon.client")

# Tokens a chat template may add to a prompt beyond its text (turn markers, BOS); each text token covers a byte
# or more, so a prompt's tokens are at most its plaintext's bytes plus these.
TEMPLATE_TOKENS = 64


@dataclass(frozen=True, slots=True)
class ReceiptBounds:
    """The most a receipt may claim, from what the client itself sent and received.

    ``completion``: tokens left of ``max_tokens`` after the receipts already verified for this request;
    ``received``: tokens the chunks of this worker carried; ``prompt``: tokens the sealed request (plus any text
    earlier workers streamed, which a resuming worker prefills) can hold.
    """

    completion: int
    received: int
    prompt: int

    @staticmethod
    def prompt_bound(plaintext: bytes, continuation_bytes: int) -> int:
        return len(plaintext) + continuation_bytes + TEMPLATE_TOKENS


def check_receipt(
    end: JobEnd,
    worker: AttestedWorker,
    model: str,
    request_id: str,
    plaintext: bytes,
    digest: ResponseDigest,
    bounds: ReceiptBounds,
) -> None:
    """Raise ``ReceiptInvalid`` unless the receipt is the attested worker's word on exactly this exchange.

    ``plaintext`` is the sealed request's plaintext as the client wrote it, ``digest`` the running digest of
    the chunk plaintexts received from ``worker``, ``bounds`` the most its counts may claim; the message lists
    every problem found.
    """
    r = end.receipt
    problems = []
    if r.completion_tokens > min(bounds.completion, bounds.received):
        problems.append(
            f"it claims {r.completion_tokens} completion tokens, more than the {bounds.received} its chunks carried "
            f"or the {bounds.completion} left of max_tokens"
        )
    if r.prompt_tokens > bounds.prompt:
        problems.append(f"it claims {r.prompt_tokens} prompt tokens, more than the request can hold ({bounds.prompt})")
    counts = (r.prompt_tokens, r.cached_tokens, r.completion_tokens, r.reasoning_tokens)
    if min(counts) < 0 or r.cached_tokens > r.prompt_tokens or r.reasoning_tokens > r.completion_tokens:
        problems.append("its token counts contradict each other")
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
    end: JobEnd,
    worker: AttestedWorker,
    model: str,
    request_id: str,
    plaintext: bytes,
    digest: ResponseDigest,
    bounds: ReceiptBounds,
) -> bool:
    """Whether a hedge loser's receipt may be paid: it verifies and claims its prefill only (no completion).

    The client received none of a loser's chunks, so ``digest`` is the empty one; a receipt that fails is
    logged and dropped, never paid.
    """
    try:
        check_receipt(end, worker, model, request_id, plaintext, digest, bounds)
    except ReceiptInvalid as exc:
        log.warning("hedge receipt dropped worker=%s reason=%s", worker.worker_id, exc.message)
        return False
    return end.receipt.completion_tokens == 0
