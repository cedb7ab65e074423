"""Intel TDX quotes: parse them (v4 and v5) and verify them with Intel's DCAP collateral through ``dcap-qvl``.

A worker in a TDX guest hands its quote to the proxy; ``verify_quote`` checks the quote against Intel's signed
collateral (PCK chain to the pinned Intel SGX root, CRLs, TCB info, QE identity, quote signature, TCB level)
and refuses debug TDs and TCB levels the caller does not accept. It does not judge *what* runs in the TD: the
MRTD/RTMR allow-list and the report_data binding (freshness, keys) are the policy's job, on the verdict.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import dcap_qvl
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from cocoon.errors import AttestationFailed

log = logging.getLogger(__name__)

TEE_TYPE_TDX = 0x81
TEE_TYPE_SGX = 0x00
DEFAULT_PCS_URL = "https://api.trustedservices.intel.com"  # Intel PCS; a PCCS URL serves the same API
# SHA-256 of the Intel SGX Root CA certificate (DER), the root dcap-qvl pins (its src/TrustedRootCA.der, as
# Intel publishes it at certificates.trustedservices.intel.com). dcap-qvl verifies the PCK chain to its own copy
# and ignores the root the quote carries; the carried one must be that root too, so no byte of a quote is
# left unchecked.
INTEL_SGX_ROOT_CA_SHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "cocoon" / "tdx-collateral"
FETCH_TIMEOUT_S = 60.0

_HEADER = struct.Struct("<HHIHH16s20s")  # version, attestation key type, TEE type, QE SVN, PCE SVN, vendor, user data
_TD_REPORT10 = struct.Struct("<16s48s48s8s8s8s48s48s48s48s48s48s48s48s64s")  # 584 bytes
_TD_REPORT15_EXTRA = struct.Struct("<16s48s")  # tee_tcb_svn2, mr_servicetd: TdReport15 is 648 bytes
_V5_BODY_PREFIX = struct.Struct("<HI")  # body type, body size
# Quote v5 body types: 2 = TDX 1.0 report, 3 = TDX 1.5 report, 4 = TDX 1.5 "ex" report (a TdReport15 prefix).
_V5_BODY_TYPES = {2: _TD_REPORT10.size, 3: _TD_REPORT10.size + _TD_REPORT15_EXTRA.size, 4: None}

_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class TdxQuote:
    """The fields of a TDX quote, as the quote states them (parsing verifies nothing)."""

    version: int  # 4 or 5
    tee_type: int  # 0x81 for TDX
    attestation_key_type: int  # 2 = ECDSA-256-with-P-256
    body_type: int  # 2 (TDX 1.0, every v4 quote), 3 (TDX 1.5) or 4 (TDX 1.5 ex)
    tee_tcb_svn: bytes  # 16 bytes: the TDX module's SVNs
    mr_seam: bytes  # 48 bytes: measurement of the TDX module
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes  # 8 bytes; bit 0 = DEBUG
    xfam: bytes
    mrtd: bytes  # 48 bytes: the TD's initial contents (firmware)
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]  # 48 bytes each, extended at run time
    report_data: bytes  # 64 bytes the TD chose
    signature_data: bytes  # ECDSA signature, attestation key, QE report and PCK chain, unparsed here

    @property
    def debug(self) -> bool:
        """Whether the TD runs in debug mode: the host can read and change its memory."""
        return bool(self.td_attributes[0] & 0x01)

    @property
    def measurement(self) -> str:
        """Hex of MRTD‖RTMR0‖RTMR1‖RTMR2‖RTMR3 (240 bytes): what the TD booted and measured."""
        return (self.mrtd + b"".join(self.rtmrs)).hex()


@dataclass(frozen=True, slots=True)
class TdxVerdict:
    """A quote that verified against Intel's collateral, with the TCB status the caller accepted."""

    quote: TdxQuote
    tcb_status: str  # "UpToDate", "SWHardeningNeeded", "OutOfDate", ...
    advisory_ids: tuple[str, ...]
    fmspc: str | None  # the platform's FMSPC (hex), from the PCK certificate in the quote
    measurement: str  # see TdxQuote.measurement
    report_data: bytes


def parse_quote(raw: bytes) -> TdxQuote:
    """The fields of TDX quote ``raw`` (v4 or v5); ``AttestationFailed`` saying what is wrong if it is none.

    Only the layout is checked: the header, a TD report body, and a signature-data length that fits. Nothing is
    verified cryptographically; use ``verify_quote`` for that.
    """
    if len(raw) < _HEADER.size:
        raise AttestationFailed(f"TDX quote is truncated: {len(raw)} bytes, shorter than its 48-byte header")
    version, key_type, tee_type, _qe_svn, _pce_svn, _vendor, _user = _HEADER.unpack_from(raw)
    if tee_type == TEE_TYPE_SGX:
        raise AttestationFailed(f"this is an SGX quote (version {version}, TEE type 0x00), not a TDX quote")
    if tee_type != TEE_TYPE_TDX:
        raise AttestationFailed(f"not a TDX quote: TEE type is {tee_type:#x}, TDX is {TEE_TYPE_TDX:#x}")
    offset = _HEADER.size
    if version == 4:
        body_type, body_size = 2, _TD_REPORT10.size
    elif version == 5:
        if len(raw) < offset + _V5_BODY_PREFIX.size:
            raise AttestationFailed(f"TDX quote v5 is truncated: {len(raw)} bytes, no body type and size")
        body_type, body_size = _V5_BODY_PREFIX.unpack_from(raw, offset)
        offset += _V5_BODY_PREFIX.size
        if body_type not in _V5_BODY_TYPES:
            raise AttestationFailed(f"TDX quote v5 has body type {body_type}; known are 2, 3 and 4")
        expected = _V5_BODY_TYPES[body_type]
        least = _TD_REPORT10.size if body_type == 2 else _TD_REPORT10.size + _TD_REPORT15_EXTRA.size
        if (expected is not None and body_size != expected) or body_size < least:
            want = f"{least}" if expected is not None else f"at least {least}"
            raise AttestationFailed(f"TDX quote v5 body type {body_type} has size {body_size}, expected {want}")
    else:
        raise AttestationFailed(f"TDX quote version {version} is not supported (versions 4 and 5 are)")
    body_end = offset + body_size
    if len(raw) < body_end + 4:
        raise AttestationFailed(f"TDX quote is truncated: {len(raw)} bytes, its TD report ends at {body_end}")
    fields = _TD_REPORT10.unpack_from(raw, offset)
    (sig_len,) = struct.unpack_from("<I", raw, body_end)
    sig_start = body_end + 4
    if len(raw) < sig_start + sig_len:
        raise AttestationFailed(
            f"TDX quote is truncated: {len(raw)} bytes, its {sig_len}-byte signature data ends at {sig_start + sig_len}"
        )
    tcb_svn, mr_seam, mr_signer_seam, seam_attr, td_attr, xfam, mrtd, config_id, owner, owner_config = fields[:10]
    rtmr0, rtmr1, rtmr2, rtmr3, report_data = fields[10:]
    return TdxQuote(
        version=version,
        tee_type=tee_type,
        attestation_key_type=key_type,
        body_type=body_type,
        tee_tcb_svn=tcb_svn,
        mr_seam=mr_seam,
        mr_signer_seam=mr_signer_seam,
        seam_attributes=seam_attr,
        td_attributes=td_attr,
        xfam=xfam,
        mrtd=mrtd,
        mr_config_id=config_id,
        mr_owner=owner,
        mr_owner_config=owner_config,
        rtmrs=(rtmr0, rtmr1, rtmr2, rtmr3),
        report_data=report_data,
        signature_data=raw[sig_start : sig_start + sig_len],
    )


def verify_quote(
    raw: bytes,
    collateral: str | None,
    *,
    now: int | None = None,
    accepted_tcb: Sequence[str] = ("UpToDate",),
) -> TdxVerdict:
    """Verify TDX quote ``raw`` against Intel collateral at time ``now`` (Unix seconds; default: the clock).

    ``collateral`` is dcap-qvl's ``QuoteCollateralV3`` JSON; ``None`` fetches it (``fetch_collateral``, which
    blocks on the network: call this from a thread on the request path). dcap-qvl checks the PCK chain up to
    the Intel SGX root it pins, the CRLs, the TCB info and QE identity signatures and validity at ``now``, the QE
    report, the quote signature and the platform's TCB level. Raises ``AttestationFailed`` when any of that
    fails, when the TD is a debug TD, or when the TCB status is not in ``accepted_tcb``. Not checked: what the
    TD measured (MRTD/RTMRs) and what its report_data binds; the caller's policy decides those.
    """
    quote = parse_quote(raw)
    if quote.debug:
        raise AttestationFailed(
            "TDX quote is from a debug TD (TD attribute DEBUG is set): the host can read and change its memory, "
            "so nothing it attests can be trusted; launch the TD without debug"
        )
    at = int(time.time()) if now is None else now
    text = fetch_collateral(raw, now=at) if collateral is None else collateral
    _check_carried_root(quote)
    report = _dcap_verify(raw, text, at)
    status = str(report.get("status", ""))
    advisories = tuple(str(a) for a in report.get("advisory_ids", []))
    if status not in accepted_tcb:
        listed = ", ".join(advisories) if advisories else "none listed"
        raise AttestationFailed(
            f"TDX platform TCB status is {status} (advisories: {listed}); accepted are {', '.join(accepted_tcb)}. "
            f"The host should update its BIOS, microcode and TDX module; to accept it anyway, add {status!r} to the "
            "accepted TCB statuses"
        )
    return TdxVerdict(quote, status, advisories, _fmspc(raw), quote.measurement, quote.report_data)


def fetch_collateral(
    raw: bytes, *, pccs_url: str = DEFAULT_PCS_URL, cache_dir: Path = DEFAULT_CACHE_DIR, now: int | None = None
) -> str:
    """Collateral JSON for quote ``raw``: from the disk cache while it is valid, else from ``pccs_url``.

    The cache file is ``<cache_dir>/<FMSPC>-<CA>.json`` and is used until the earliest ``nextUpdate`` of the TCB
    info, the QE identity and both CRLs. Blocking (network and disk). ``AttestationFailed`` names the URL when the
    fetch fails. Not tested against Intel PCS or a PCCS here (no internet); the cache logic is.
    """
    at = int(time.time()) if now is None else now
    try:
        parsed = dcap_qvl.parse_quote(raw)
        key = f"{parsed.fmspc()}-{parsed.ca()}"
    except ValueError as exc:
        raise AttestationFailed(f"cannot tell which collateral TDX quote needs (FMSPC, CA): {_reason(exc)}") from exc
    cached = cache_dir / f"{key}.json"
    if cached.is_file():
        text = cached.read_text()
        try:
            if at < collateral_expiry(text):
                return text
        except AttestationFailed as exc:
            log.warning("ignoring unreadable cached TDX collateral path=%s error=%s", cached, exc)
    if _in_event_loop():
        raise RuntimeError("fetch_collateral blocks on the network; from a coroutine, call it via asyncio.to_thread")
    pending = asyncio.run_coroutine_threadsafe(_dcap_fetch(pccs_url, raw), _fetch_loop())
    try:
        text = pending.result(timeout=FETCH_TIMEOUT_S)
    except TimeoutError as exc:
        pending.cancel()
        raise AttestationFailed(
            f"cannot fetch TDX collateral from {pccs_url}: no answer in {FETCH_TIMEOUT_S} s"
        ) from exc
    except (ValueError, RuntimeError) as exc:
        raise AttestationFailed(f"cannot fetch TDX collateral from {pccs_url}: {_reason(exc)}") from exc
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(f".{os.getpid()}-{threading.get_ident()}.tmp")
    partial.write_text(text)
    partial.replace(cached)  # atomic: a concurrent reader sees the old file or the new one, never half
    return text


def collateral_expiry(collateral: str) -> int:
    """The earliest ``nextUpdate`` (Unix seconds) of the TCB info, QE identity and both CRLs in ``collateral``."""
    try:
        doc: dict[str, Any] = json.loads(collateral)
        stamps = [
            datetime.fromisoformat(json.loads(doc["tcb_info"])["nextUpdate"]).timestamp(),
            datetime.fromisoformat(json.loads(doc["qe_identity"])["nextUpdate"]).timestamp(),
        ]
        for field in ("root_ca_crl", "pck_crl"):
            crl = x509.load_der_x509_crl(bytes.fromhex(doc[field]))
            if crl.next_update_utc is not None:
                stamps.append(crl.next_update_utc.timestamp())
    except (ValueError, KeyError, TypeError) as exc:
        raise AttestationFailed(f"TDX collateral is not dcap-qvl QuoteCollateralV3 JSON: {exc!r}") from exc
    return int(min(stamps))


def _dcap_verify(raw: bytes, collateral: str, now: int) -> dict[str, Any]:
    """dcap-qvl's verified report as JSON (status, advisory_ids, report, ...): the typed edge of an untyped library."""
    try:
        parsed = dcap_qvl.QuoteCollateralV3.from_json(collateral)
    except ValueError as exc:
        raise AttestationFailed(f"TDX collateral is not dcap-qvl QuoteCollateralV3 JSON: {_reason(exc)}") from exc
    try:
        report = dcap_qvl.verify(raw, parsed, now)
    except ValueError as exc:
        raise AttestationFailed(f"TDX quote does not verify (dcap-qvl): {_reason(exc)}") from exc
    result: dict[str, Any] = json.loads(report.to_json())
    return result


def _fetch_loop() -> asyncio.AbstractEventLoop:
    """One event loop, in a daemon thread, for every fetch, never closed.

    dcap-qvl's fetch runs on a Rust (tokio) runtime that calls back into the loop that started it; with
    ``asyncio.run`` the loop is closed under it, and the interpreter then crashed at exit (SIGSEGV) about every
    other run here. A loop that lives as long as the process does not.
    """
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="tdx-collateral-fetch", daemon=True).start()
        return _loop


async def _dcap_fetch(pccs_url: str, raw: bytes) -> str:
    # dcap-qvl's get_collateral needs a running loop when it is called, not only when it is awaited.
    fetched = await dcap_qvl.get_collateral(pccs_url, raw)
    return str(fetched.to_json())


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _fmspc(raw: bytes) -> str | None:
    try:
        return str(dcap_qvl.parse_quote(raw).fmspc())
    except ValueError:
        return None  # the quote carries no PCK certificate to read it from


def _reason(exc: Exception) -> str:
    """dcap-qvl's message on one line (it spreads its cause chain over several)."""
    return " ".join(str(exc).removeprefix("Verification failed: ").split())


def _check_carried_root(quote: TdxQuote) -> None:
    """The PCK chain in the quote's certification data ends in Intel's SGX root CA; AttestationFailed if not."""
    start = quote.signature_data.rfind(b"-----BEGIN CERTIFICATE-----")
    end = quote.signature_data.rfind(b"-----END CERTIFICATE-----")
    if start < 0 or end < start:
        return  # no PEM chain carried (another certification data type): dcap-qvl judges it
    try:
        root = x509.load_pem_x509_certificate(quote.signature_data[start : end + 25])
    except ValueError as exc:
        raise AttestationFailed(f"the root certificate the TDX quote carries is unreadable: {exc}") from exc
    if root.fingerprint(hashes.SHA256()).hex() != INTEL_SGX_ROOT_CA_SHA256:
        raise AttestationFailed("the certificate chain in the TDX quote does not end in Intel's SGX root CA")
