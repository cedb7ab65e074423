"""The attestation bundle a worker presents: which provider vouches for it, and what the quote binds.

A quote's report data commits to ``sha256(x25519_pub || ed25519_pub || model hashes)``: whoever verifies the
quote knows the sealing key, the signing key and the weights all live in the attested guest.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_QUOTE_BYTES = 32 * 1024  # a TDX quote with its certificate chain is under 16 KiB
ModelHash = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]


class AttestationBundle(BaseModel):
    model_config = ConfigDict(frozen=True)
    provider: Literal["simulated", "tdx", "sev-snp"]
    quote: bytes = Field(max_length=MAX_QUOTE_BYTES)
    x25519_pub: bytes = Field(min_length=32, max_length=32)
    ed25519_pub: bytes = Field(min_length=32, max_length=32)
    model_hashes: list[ModelHash] = Field(max_length=64)
    measurement: str = Field(max_length=256)


def report_data(x25519_pub: bytes, ed25519_pub: bytes, model_hashes: list[str]) -> bytes:
    """The 32 bytes the quote must carry for these keys and models (hashes sorted, so order is free)."""
    h = hashlib.sha256(x25519_pub + ed25519_pub)
    for model_hash in sorted(model_hashes):
        h.update(bytes.fromhex(model_hash))
    return h.digest()
