"""Verifying a bundle's hardware evidence: a TDX quote or an SEV-SNP report, and the GPUs beside it.

Each vendor module checks its evidence to a pinned vendor root (``tdx``: Intel's, through dcap-qvl; ``sev_snp``:
AMD's; ``nvidia_gpu``: NVIDIA's device root). This module ties them to the worker: the report data must be the
bundle's binding (``report_data(keys, models)``, zero-padded), every GPU's nonce that same binding, the
measurement the bundle names the one the hardware reported. What is *allowed* (measurements, models) stays in
``policy``.

The bundle brings the collateral itself (Intel- and AMD-signed, so it needs no trust in whoever relays it); a
verifier never fetches on the request path. Hardware evidence carries no time of its own: a proxy knows the
worker is alive because it signs the session's challenge with the attested key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from pydantic import ValidationError

from cocoon.attestation import nvidia_gpu, sev_snp, tdx
from cocoon.attestation.bundle import AttestationBundle, SnpCollateral, hardware_report_data, report_data
from cocoon.errors import AttestationFailed


@dataclass(frozen=True, slots=True)
class HardwareVerdict:
    """What verified hardware evidence says about the guest."""

    provider: Literal["tdx", "sev-snp"]
    measurement: str
    tcb: str  # TDX: the TCB status (UpToDate, ...); SEV-SNP: the reported TCB's SPLs
    detail: str  # the platform: FMSPC, or the AMD product and signing key
    gpus: tuple[nvidia_gpu.GpuVerdict, ...]


def verify_hardware(
    bundle: AttestationBundle,
    *,
    now: float,
    accepted_tcb: list[str],
    require_gpu: bool = False,
) -> HardwareVerdict:
    """Verify ``bundle``'s TDX or SEV-SNP evidence and its GPUs at ``now`` (Unix seconds), bound to its keys
    and models; ``AttestationFailed`` saying which check failed."""
    binding = report_data(bundle.x25519_pub, bundle.ed25519_pub, bundle.model_hashes)
    if bundle.provider == "tdx":
        if not bundle.collateral:
            raise AttestationFailed(
                "the TDX quote comes without its Intel collateral: the worker fetches it from Intel PCS or its "
                "PCCS at start (tdx_pccs_url) and sends it with the quote"
            )
        verdict = tdx.verify_quote(
            bundle.quote, _text(bundle.collateral, "TDX collateral"), now=int(now), accepted_tcb=accepted_tcb
        )
        measurement, data = verdict.measurement, verdict.report_data
        tcb, detail = verdict.tcb_status, f"FMSPC {verdict.fmspc or 'unknown'}"
        provider: Literal["tdx", "sev-snp"] = "tdx"
    elif bundle.provider == "sev-snp":
        collateral = _snp_collateral(bundle.collateral)
        snp = sev_snp.verify_report(
            bundle.quote, collateral.vcek, collateral.chain, now=datetime.fromtimestamp(now, UTC)
        )
        measurement, data = snp.measurement, snp.report_data
        tcb = ", ".join(f"{k}={v}" for k, v in snp.tcb.spls().items())
        detail, provider = f"AMD {snp.product}, {snp.signing_key}", "sev-snp"
    else:
        raise AttestationFailed(f"{bundle.provider!r} is not a hardware attestation provider")
    if data != hardware_report_data(binding):
        raise AttestationFailed(
            f"the {provider} report data does not commit to the worker's keys and models (it holds "
            f"{data[:8].hex()}…, the binding is {binding[:8].hex()}…): this evidence was made for another worker"
        )
    if measurement != bundle.measurement.lower():
        raise AttestationFailed("the bundle's measurement differs from the one the hardware reported")
    if require_gpu and not bundle.gpus:
        raise AttestationFailed("this network requires GPU attestation and the worker presents none")
    gpus = []
    for index, gpu in enumerate(bundle.gpus):
        try:
            gpus.append(
                nvidia_gpu.verify_report(
                    gpu.report, gpu.cert_chain, nonce=binding, now=datetime.fromtimestamp(now, UTC)
                )
            )
        except AttestationFailed as exc:
            raise AttestationFailed(f"GPU {index}: {exc.message}") from exc
    serials = [g.device_serial for g in gpus]
    if len(set(serials)) != len(serials):
        raise AttestationFailed("the same GPU is presented twice")
    return HardwareVerdict(provider, measurement, tcb, detail, tuple(gpus))


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise AttestationFailed(f"{what} is not UTF-8 JSON text") from exc


def _snp_collateral(raw: bytes) -> SnpCollateral:
    if not raw:
        raise AttestationFailed(
            "the SEV-SNP report comes without its VCEK/VLEK and chain: the worker reads them from the host's "
            "certificate table or AMD KDS and sends them with the report"
        )
    try:
        return SnpCollateral.model_validate_json(raw)
    except ValidationError as exc:
        raise AttestationFailed(f"the SEV-SNP collateral is malformed: {exc}") from exc
