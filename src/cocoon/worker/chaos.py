"""TEST AND CHAOS ONLY: receipts spoiled on purpose (``chaos_bad_receipts``), to prove clients pay nothing.

``response-digest`` commits to a response the client never received (the proxy cannot tell, the client
can); ``signature`` signs with a fresh key instead of the attested one (both can tell).
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
    return receipt, signature
