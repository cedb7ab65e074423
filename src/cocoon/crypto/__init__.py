"""Keys, key files, signatures and receipts."""

from cocoon.crypto.keys import (
    NodeKeys,
    SealingKey,
    SigningKey,
    load_or_create_node_keys,
    load_or_create_signing_key,
    node_id_for,
    verify_signature,
)
from cocoon.crypto.receipts import (
    ResponseDigest,
    receipt_signature_valid,
    request_digest,
    sign_receipt,
)

__all__ = [
    "NodeKeys",
    "ResponseDigest",
    "SealingKey",
    "SigningKey",
    "load_or_create_node_keys",
    "load_or_create_signing_key",
    "node_id_for",
    "receipt_signature_valid",
    "request_digest",
    "sign_receipt",
    "verify_signature",
]
