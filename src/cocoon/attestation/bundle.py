"""The attestation bundle a worker presents: which provider vouches for it, and what the quote binds.

A quote's report data commits to ``sha256(x25519_pub || ed25519_pub || model hashes)``: whoever verifies the
quote knows the sealing key, the signing key and the weights all live in the attested guest.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import BaseModel, ConfigDict


class AttestationBundle(BaseModel):
    model_config = ConfigDict(frozen=True)
    provider: Literal["simulated", "tdx", "sev-snp"]
    quote: bytes
    x25519_pub: bytes
    ed25519_pub: bytes
    model_hashes: list[str]
    measurement: str


def report_data(x25519_pub: bytes, ed25519_pub: bytes, model_hashes: list[str]) -> bytes:
    """The 32 bytes the quote must carry for these keys and models (hashes sorted, so order is free)."""
    h = hashlib.sha256(x25519_pub + ed25519_pub)
    for model_hash in sorted(model_hashes):
        h.update(bytes.fromhex(model_hash))
    return h.digest()
