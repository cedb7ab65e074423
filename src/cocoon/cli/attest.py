"""``cocoon attest verify FILE``: check one piece of TEE or GPU evidence offline, to the pinned vendor roots;
``cocoon attest show``: the evidence this worker would present.

The kind is read from the bytes: a TDX quote (v4/v5), an SEV-SNP report (v2/v3/v5, or Azure's HCL report
around one), an NVIDIA SPDM measurement report, or nvtrust's multi-GPU JSON evidence. FILE may be raw, hex or
base64. ``--collateral`` repeats: the TDX collateral JSON (dcap-qvl's ``QuoteCollateralV3``); the SEV-SNP
VCEK/VLEK certificate and its ASK/ARK (or ASVK/ARK) chain; the GPU's certificate chain. Without it, TDX and
SEV-SNP collateral is fetched from Intel PCS / AMD KDS and cached. Exit status: 0 verified, 1 rejected (the
reason on one line), 2 a usage error.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from cocoon.attestation import amd_kds, nvidia_gpu, sev_snp, tdx
from cocoon.cli.common import ConfigOpt, JsonOpt, clear_errors, console, load_settings, print_report, role_group
from cocoon.config import WorkerSettings
from cocoon.errors import AttestationFailed

attest_app = role_group("Verify TEE and GPU evidence offline, or show this worker's.")

TDX_TEE = 0x81
SPDM_GET_MEASUREMENTS = (0x11, 0xE0)  # SPDM 1.1 request code: the report starts with the request


def read_evidence(path: Path) -> bytes:
    """The bytes of ``path``: hex or base64 text is decoded, anything else taken as it is."""
    raw = path.read_bytes()
    text = raw.strip()
    if text and re.fullmatch(rb"(0x)?[0-9a-fA-F\s]+", text) and len(text) % 2 == 0:
        return bytes.fromhex(text.removeprefix(b"0x").decode())
    if text and re.fullmatch(rb"[A-Za-z0-9+/=\s]+", text) and not text.startswith(b"{"):
        try:
            return base64.b64decode(text, validate=False)
        except binascii.Error:
            pass
    return raw


def kind_of(data: bytes) -> str:
    """``tdx``, ``sev-snp``, ``hcl``, ``gpu`` or ``ppcie``; AttestationFailed when it is none of them."""
    if data.lstrip()[:1] in (b"{", b"["):
        return "ppcie"
    if data[:4] == b"HCLA":
        return "hcl"
    if len(data) >= 8:
        version, key_type = struct.unpack_from("<HH", data)
        tee = struct.unpack_from("<I", data, 4)[0]
        if version in (4, 5) and tee == TDX_TEE:
            return "tdx"
        if version == 3 and key_type in (2, 3) and tee == 0:  # an SNP report's version is a u32: its top half is 0
            raise AttestationFailed("this is an SGX quote (v3), not TDX evidence")
    if tuple(data[:2]) == SPDM_GET_MEASUREMENTS:
        return "gpu"
    if len(data) >= 0x4A0 and struct.unpack_from("<I", data)[0] in (2, 3, 5):
        return "sev-snp"
    raise AttestationFailed("not TDX, SEV-SNP or NVIDIA GPU evidence (unrecognised first bytes)")


@attest_app.command()
def verify(
    evidence: Annotated[Path, typer.Argument(help="the quote, report or GPU evidence (raw, hex or base64)")],
    collateral: Annotated[
        list[Path] | None, typer.Option("--collateral", help="TDX collateral JSON, SNP VCEK and chain, GPU chain")
    ] = None,
    at: Annotated[int | None, typer.Option("--at", help="verify as of this Unix time (default: now)")] = None,
    nonce: Annotated[str | None, typer.Option(help="expected GPU nonce / report data, hex")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify one piece of evidence to the pinned Intel, AMD or NVIDIA roots and print what it attests."""
    with clear_errors():
        if not evidence.is_file():
            raise typer.BadParameter(f"{evidence} is not a file", param_hint="EVIDENCE")
        files = [p.read_bytes() for p in collateral or []]
        expected = _hex(nonce) if nonce else None
    when = at if at is not None else int(datetime.now(UTC).timestamp())
    try:
        report = asyncio.run(_verify(read_evidence(evidence), files, when, expected))
    except AttestationFailed as exc:
        if as_json:
            print(json.dumps({"verified": False, "reason": exc.message}))
        console.print(f"[red]rejected:[/] {exc.message}")
        raise typer.Exit(1) from exc
    report = {"verified": True, **report}
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report, False, "evidence")


async def _verify(data: bytes, files: list[bytes], at: int, nonce: bytes | None) -> dict[str, Any]:
    kind = kind_of(data)
    moment = datetime.fromtimestamp(at, UTC)
    if kind == "tdx":
        text = files[0].decode() if files else await asyncio.to_thread(tdx.fetch_collateral, data, now=at)
        verdict = tdx.verify_quote(data, text, now=at, accepted_tcb=_ALL_TCB)
        quote = verdict.quote
        _check_report_data(verdict.report_data, nonce)
        return {
            "provider": "tdx",
            "version": quote.version,
            "tcb_status": verdict.tcb_status,
            "advisories": ", ".join(verdict.advisory_ids) or "none",
            "fmspc": verdict.fmspc or "unknown",
            "measurement": verdict.measurement,  # what `cocoon chain registry allow-measurement` takes
            "mrtd": quote.mrtd.hex(),
            **{f"rtmr{i}": r.hex() for i, r in enumerate(quote.rtmrs)},
            "report_data": verdict.report_data.hex(),
        }
    if kind in ("sev-snp", "hcl"):
        raw = sev_snp.extract_from_hcl(data)[0] if kind == "hcl" else data
        vcek, chain = _snp_certificates(files) or await amd_kds.fetch_vcek(sev_snp.parse_report(raw))
        snp = sev_snp.verify_report(raw, vcek, chain, now=moment)
        _check_report_data(snp.report_data, nonce)
        return {
            "provider": "sev-snp",
            "version": snp.report.version,
            "product": snp.product,
            "signing_key": snp.signing_key,
            "tcb": ", ".join(f"{k}={v}" for k, v in snp.tcb.spls().items()),
            "measurement": snp.measurement,
            "report_data": snp.report_data.hex(),
        }
    if kind == "ppcie":
        if nonce is None:
            raise AttestationFailed("multi-GPU evidence is verified against its nonce: pass --nonce")
        gpus = nvidia_gpu.verify_ppcie_evidence(data, nonce=nonce, now=moment)
        return {"provider": "nvidia-gpu", "gpus": [_gpu(g) for g in gpus]}
    if not files:
        raise AttestationFailed("a GPU report is verified with its certificate chain: pass --collateral CHAIN.pem")
    parsed = nvidia_gpu.parse_report(data)
    gpu = nvidia_gpu.verify_report(data, files[0], nonce=nonce or parsed.nonce, now=moment)
    checked = "checked" if nonce else "not checked (no --nonce): the report's own"
    return {"provider": "nvidia-gpu", **_gpu(gpu), "nonce": f"{parsed.nonce.hex()} ({checked})"}


_ALL_TCB = ("UpToDate", "SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded", "OutOfDate",
            "OutOfDateConfigurationNeeded")  # fmt: skip  # the command reports the status; policies judge it


def _gpu(verdict: nvidia_gpu.GpuVerdict) -> dict[str, Any]:
    return {
        "architecture": verdict.architecture,
        "driver": verdict.driver_version,
        "vbios": verdict.vbios_version,
        "fwid": verdict.fwid.hex(),
        "measurements": verdict.measurement_count,
    }


def _snp_certificates(files: list[bytes]) -> tuple[bytes, bytes] | None:
    """The signing certificate and the chain among ``files`` (a file of two certificates is the chain)."""
    if not files:
        return None
    leaf, chain = None, None
    for data in files:
        count = data.count(b"-----BEGIN CERTIFICATE-----")
        if count >= 2:
            chain = data
        else:
            leaf = data
    if leaf is None or chain is None:
        raise AttestationFailed("SEV-SNP needs the VCEK/VLEK certificate and the ASK/ARK chain: pass both")
    return leaf, chain


def _check_report_data(actual: bytes, expected: bytes | None) -> None:
    if expected is not None and actual != expected.ljust(64, b"\x00"):
        raise AttestationFailed(f"report data is {actual.hex()}, not the expected {expected.hex()}")


def _hex(text: str) -> bytes:
    try:
        return bytes.fromhex(text.removeprefix("0x"))
    except ValueError as exc:
        raise typer.BadParameter(f"not hex: {exc}", param_hint="--nonce") from exc


@attest_app.command()
def show(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """The evidence this worker presents: start its engines (their weights hashes are bound), collect, print."""
    from cocoon.worker.node import WorkerNode, attest

    settings = load_settings(WorkerSettings, config)

    async def collect() -> dict[str, Any]:
        node = WorkerNode(settings)
        await asyncio.gather(*(engine.start() for engine in node.engines.values()))
        try:
            bundle = await attest(settings, node.keys, [e.info.model_hash for e in node.engines.values()])
        finally:
            await asyncio.gather(*(engine.close() for engine in node.engines.values()))
        return {
            "provider": bundle.provider,
            "measurement": bundle.measurement,
            "models": ", ".join(bundle.model_hashes),
            "quote_bytes": len(bundle.quote),
            "collateral_bytes": len(bundle.collateral),
            "gpus": len(bundle.gpus),
            "signing_key": bundle.ed25519_pub.hex(),
            "sealing_key": bundle.x25519_pub.hex(),
        }

    with clear_errors():
        print_report(asyncio.run(collect()), as_json, "this worker's evidence")
