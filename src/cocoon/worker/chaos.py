"""TEST AND CHAOS ONLY: receipts spoiled on purpose (``chaos_bad_receipts``), to prove clients pay nothing.

``response-digest`` commits to a response the client never received (the proxy cannot tell, the client
can); ``signature`` signs with a fresh key instead of the attested one (both can tell); ``inflated-tokens``
signs, with the attested key, a million completion tokens more than it generated (the proxy's reservation caps it).
"""

from __future__ import annotations

import hashlib

from cocoon.crypto import SigningKey, sign_receipt
from cocoon.protocol import Receipt


def spoil(mode: str, receipt: Receipt, signature: bytes, key: SigningKey) -> tuple[Receipt, bytes]:
    """The receipt and signature a faulty worker would send instead of ``(receipt, signature)``."""
    if mode == "response-digest":
        forged = receipt.model_copy(update={"response_sha256": hashlib.sha256(b"not what was sent").hexdigest()})
        return forged, sign_receipt(key, forged)
    if mode == "signature":
        return receipt, sign_receipt(SigningKey.generate(), receipt)
    if mode == "inflated-tokens":  # a greedy worker: correctly signed, a million tokens more than it made
        inflated = receipt.model_copy(update={"completion_tokens": receipt.completion_tokens + 1_000_000})
        return inflated, sign_receipt(key, inflated)
    return receipt, signature
