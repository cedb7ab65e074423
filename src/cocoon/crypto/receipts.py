"""Signing and checking receipts: the worker's word, under its attested key, for what one job did.

The signed bytes are a domain tag plus the msgpack of the receipt's fields in declaration order, so any
field changed after signing breaks the signature.
"""

from __future__ import annotations

import hashlib

import msgpack

from cocoon.crypto.keys import SigningKey, verify_signature
from cocoon.protocol.messages import Receipt

_DOMAIN = b"cocoon/v1 receipt\x00"


def receipt_signing_bytes(receipt: Receipt) -> bytes:
    return _DOMAIN + msgpack.packb(list(receipt.model_dump(mode="python").values()), use_bin_type=True)


def sign_receipt(key: SigningKey, receipt: Receipt) -> bytes:
    return key.sign(receipt_signing_bytes(receipt))


def receipt_signature_valid(ed25519_public: bytes, receipt: Receipt, signature: bytes) -> bool:
    return verify_signature(ed25519_public, receipt_signing_bytes(receipt), signature)


def request_digest(plaintext: bytes) -> str:
    """sha256 of the sealed request's plaintext (which holds a random salt, so the proxy cannot guess it)."""
    return hashlib.sha256(plaintext).hexdigest()


class ResponseDigest:
    """Running sha256 over ``salt || chunk plaintexts``: the response digest a receipt commits to."""

    __slots__ = ("_h",)

    def __init__(self, salt: bytes) -> None:
        self._h = hashlib.sha256(salt)

    def update(self, chunk_plaintext: bytes) -> None:
        self._h.update(chunk_plaintext)

    def hexdigest(self) -> str:
        return self._h.hexdigest()
