"""The attestation bundle a worker presents: which provider vouches for it, and what the quote binds.

A quote's report data commits to ``sha256(x25519_pub || ed25519_pub || model hashes)`` (a TDX or SEV-SNP
report's 64 bytes: that digest, then zeros); each GPU's attestation nonce is the same digest. Whoever verifies
the evidence knows the sealing key, the signing key and the weights all live in the attested guest, on the
attested GPUs: even the proxy that relays the sealed bytes cannot read them.

The bundle carries what verifying it needs beyond the pinned vendor roots, so that any client can check it
offline: a TDX quote's Intel collateral (dcap-qvl's ``QuoteCollateralV3`` JSON, signed by Intel), an SNP
report's VCEK/VLEK and its ASK/ARK chain (signed by AMD), each GPU's report and certificate chain.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_QUOTE_BYTES = 32 * 1024  # a TDX quote with its certificate chain is under 16 KiB
MAX_COLLATERAL_BYTES = 64 * 1024  # Intel's TCB info, QE identity, CRLs and chains: about 15 KiB
MAX_GPU_REPORT_BYTES = 8 * 1024  # NVML's attestation report buffer
MAX_GPU_CHAIN_BYTES = 16 * 1024
MAX_GPUS = 8
ModelHash = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]
Provider = Literal["simulated", "tdx", "sev-snp"]


class GpuAttestation(BaseModel):
    """One GPU's SPDM measurement report (its nonce: the bundle's binding) and the device certificate chain."""

    model_config = ConfigDict(frozen=True)
    report: bytes = Field(max_length=MAX_GPU_REPORT_BYTES)
    cert_chain: bytes = Field(max_length=MAX_GPU_CHAIN_BYTES)


class AttestationBundle(BaseModel):
    model_config = ConfigDict(frozen=True)
    provider: Provider
    quote: bytes = Field(max_length=MAX_QUOTE_BYTES)
    # tdx: the collateral JSON; sev-snp: ``SnpCollateral`` JSON (VCEK/VLEK and chain); simulated: empty
    collateral: bytes = Field(b"", max_length=MAX_COLLATERAL_BYTES)
    gpus: list[GpuAttestation] = Field(default_factory=list, max_length=MAX_GPUS)
    x25519_pub: bytes = Field(min_length=32, max_length=32)
    ed25519_pub: bytes = Field(min_length=32, max_length=32)
    model_hashes: list[ModelHash] = Field(max_length=64)
    measurement: str = Field(max_length=1024)  # hex; TDX: MRTD and RTMR0..3, SEV-SNP: the launch measurement


class SnpCollateral(BaseModel):
    """What an SNP report is verified with: the signing certificate and its chain to the AMD root (PEM/DER);
    base64 in its JSON form (the bundle's ``collateral``)."""

    model_config = ConfigDict(frozen=True, ser_json_bytes="base64", val_json_bytes="base64")
    vcek: bytes = Field(max_length=8 * 1024)
    chain: bytes = Field(max_length=16 * 1024)


def hardware_report_data(binding: bytes) -> bytes:
    """The 64 report-data bytes of a TDX or SEV-SNP report for ``binding`` (``report_data(...)``): it, then zeros."""
    return binding.ljust(64, b"\x00")


def report_data(x25519_pub: bytes, ed25519_pub: bytes, model_hashes: list[str]) -> bytes:
    """The 32 bytes the quote must carry for these keys and models (hashes sorted, so order is free)."""
    h = hashlib.sha256(x25519_pub + ed25519_pub)
    for model_hash in sorted(model_hashes):
        h.update(bytes.fromhex(model_hash))
    return h.digest()
