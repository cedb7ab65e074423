"""Collecting a worker's hardware evidence inside its guest: the TDX quote or SEV-SNP report through configfs-tsm
(report data = the binding of its keys and models), what verifying it needs (Intel collateral; the VCEK/VLEK and
its chain from the host's certificate table or AMD KDS), and each GPU's report with the binding as its nonce.

``resolve_provider`` picks the provider for ``attestation = "auto"``: the TEE configfs-tsm names, else the
simulated dev authority when one is configured; it never falls back to simulated on a machine that is a guest.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cocoon.attestation import amd_kds, nvidia_gpu, sev_snp, tdx, tsm
from cocoon.attestation.bundle import GpuAttestation, SnpCollateral, hardware_report_data
from cocoon.errors import AttestationFailed

log = logging.getLogger("cocoon.worker")

Provider = Literal["simulated", "tdx", "sev-snp"]
TSM_PROVIDER = {"tdx": "tdx_guest", "sev-snp": "sev_guest"}

# The GUIDs of the SEV-SNP certificate table (AMD GHCB specification, "SNP Extended Guest Request").
VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
VLEK_GUID = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
ASK_GUID = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
ARK_GUID = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")


@dataclass(frozen=True, slots=True)
class Evidence:
    """A guest's evidence, ready for an ``AttestationBundle``."""

    provider: Literal["tdx", "sev-snp"]
    quote: bytes
    collateral: bytes
    measurement: str
    gpus: tuple[GpuAttestation, ...]


def resolve_provider(wanted: str, *, tsm_root: Path, dev_authority: bool) -> Provider:
    """The provider ``wanted`` names, or for ``"auto"`` the one this machine has."""
    if wanted in ("simulated", "tdx", "sev-snp"):
        return wanted  # type: ignore[return-value]
    if wanted != "auto":
        raise AttestationFailed(f"unknown attestation provider {wanted!r}: use auto, tdx, sev-snp or simulated")
    found = tsm.detect_provider(tsm_root)
    if found is not None:
        return found
    if dev_authority:
        return "simulated"
    raise AttestationFailed(
        f"no TEE here (no configfs-tsm at {tsm_root}) and no dev attestation authority configured: run the worker "
        "in a TDX or SEV-SNP guest, or on a dev network set dev_attestation_url (`cocoon up` does)"
    )


async def collect(
    provider: Literal["tdx", "sev-snp"],
    binding: bytes,
    *,
    tsm_root: Path,
    pccs_url: str = tdx.DEFAULT_PCS_URL,
    gpu_count: int = 0,
) -> Evidence:
    """The guest's evidence bound to ``binding``, with what verifying it needs and ``gpu_count`` GPUs' reports."""
    report = await asyncio.to_thread(
        tsm.collect_report, hardware_report_data(binding), root=tsm_root, expected_provider=TSM_PROVIDER[provider]
    )
    if provider == "tdx":
        collateral = await asyncio.to_thread(tdx.fetch_collateral, report.outblob, pccs_url=pccs_url)
        measurement = tdx.parse_quote(report.outblob).measurement
        packed = collateral.encode()
    else:
        parsed = sev_snp.parse_report(report.outblob)
        certificates = snp_certificates(report.auxblob) if report.auxblob else None
        vcek, chain = certificates or await amd_kds.fetch_vcek(parsed)
        packed = SnpCollateral(vcek=vcek, chain=chain).model_dump_json().encode()
        measurement = parsed.measurement.hex()
    gpus = []
    for index in range(gpu_count):
        gpu_report, cert_chain = await asyncio.to_thread(nvidia_gpu.collect_report, binding, index)
        gpus.append(GpuAttestation(report=gpu_report, cert_chain=cert_chain))
    return Evidence(provider, report.outblob, packed, measurement, tuple(gpus))


def snp_certificates(table: bytes) -> tuple[bytes, bytes] | None:
    """``(vcek_or_vlek_der, chain_pem)`` from the SEV-SNP certificate table the host supplies with a report
    (entries of GUID, offset, length; an all-zero entry ends it), or None when it holds no signing certificate."""
    entries: dict[uuid.UUID, bytes] = {}
    for start in range(0, len(table) - 23, 24):
        raw_guid, offset, length = table[start : start + 16], *struct.unpack_from("<II", table, start + 16)
        if not any(table[start : start + 24]):
            break
        if offset + length > len(table):
            raise AttestationFailed("the host's SEV-SNP certificate table points past its end")
        entries[uuid.UUID(bytes_le=raw_guid)] = table[offset : offset + length]
    leaf = entries.get(VCEK_GUID) or entries.get(VLEK_GUID)
    if leaf is None or ASK_GUID not in entries or ARK_GUID not in entries:
        return None
    chain = b"".join(_pem(entries[guid]) for guid in (ASK_GUID, ARK_GUID))
    return leaf, chain


def _pem(der: bytes) -> bytes:
    try:
        return x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM)
    except ValueError as exc:
        raise AttestationFailed(f"the host's SEV-SNP certificate table holds an unreadable certificate: {exc}") from exc
