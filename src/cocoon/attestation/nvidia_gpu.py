"""NVIDIA GPU attestation: parse and verify a Hopper/Blackwell SPDM report, and collect one through NVML.

A GPU in confidential-computing mode answers an SPDM 1.1 GET_MEASUREMENTS request with its measurements, signed
by a per-device key whose certificate chain ends at NVIDIA's Device Identity CA. ``verify_report`` checks that
chain against a root pinned here, the signature, the caller's nonce and the firmware ID; it checks what can be
checked offline, and the docstrings say what is left out.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import importlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID

from cocoon.errors import AttestationFailed

# SHA-256 of the DER of NVIDIA's "NVIDIA Device Identity CA" (O=NVIDIA), the root every Hopper and Blackwell
# device chain ends at. Source: NVIDIA/nvtrust guest_tools/gpu_verifiers/local_gpu_verifier/src/verifier/certs/
# verifier_device_root.pem (byte-identical to confidential-containers/trustee's nvidia_device_root.pem).
NVIDIA_DEVICE_ROOT_SHA256 = bytes.fromhex("102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48")

NONCE_BYTES = 32
MAX_REPORT_BYTES = 0x2000  # NVML_CC_GPU_ATTESTATION_REPORT_SIZE: the most NVML ever hands back
MAX_CHAIN_CERTIFICATES = 8
_REQUEST_BYTES = 37  # SPDM version, code, param1, param2, 32-byte nonce, slot id
_SIGNATURE_BYTES = 96  # raw r || s, ECDSA P-384
_SPDM_VERSION = 0x11
_GET_MEASUREMENTS = 0xE0
_MEASUREMENTS = 0x60
_DMTF_MEASUREMENT_SPEC = 0x01
_OPAQUE_DRIVER_VERSION = 3
_OPAQUE_VBIOS_VERSION = 6
_OPAQUE_PROJECT = 17
_OPAQUE_FWID = 20
_FWID_OID_HOPPER = x509.ObjectIdentifier("2.23.133.5.4.1")  # TCG DICE: ..., FWID last
_FWID_OID_BLACKWELL = x509.ObjectIdentifier("2.23.133.5.4.1.1")  # TCG DiceTcbInfo, fwids [6]
_DER_SHA384_OID = bytes.fromhex("608648016503040202")  # 2.16.840.1.101.3.4.2.2

Architecture = Literal["Hopper", "Blackwell"]


@dataclass(frozen=True, slots=True)
class GpuReport:
    """One parsed attestation report. Nothing here is trusted until ``verify_report`` says so."""

    nonce: bytes  # the requester's nonce, as echoed in the signed request
    responder_nonce: bytes
    measurements: Mapping[int, bytes]  # block index -> DMTF measurement value (a SHA-384 digest)
    driver_version: str
    vbios_version: str  # as NVIDIA prints it: "96.00.9F.00.01"
    project: str | None
    fwid: bytes
    opaque: Mapping[int, bytes]  # every opaque TLV by type, the decoded ones included
    signature: bytes  # 96 bytes, r || s
    signed: bytes  # request || response up to the signature: what the signature covers
    trailing: bytes  # bytes after the signature (NVML can pad); unsigned, so ignored


@dataclass(frozen=True, slots=True)
class GpuVerdict:
    """What a verified report proves: this NVIDIA GPU ran this firmware and answered this nonce."""

    architecture: Architecture
    driver_version: str
    vbios_version: str
    fwid: bytes  # the firmware's ID: the same on every GPU running that firmware
    device_serial: int  # the leaf certificate's serial number (the device's UEID): tells GPUs apart
    measurement_count: int
    measurements_checked: int  # how many blocks were compared with ``expected_measurements``


@dataclass(frozen=True, slots=True)
class GpuEvidence:
    """One GPU's evidence as a multi-GPU document carries it: report, PEM chain, and the unsigned claims."""

    report: bytes
    cert_chain: bytes
    claimed_architecture: str
    claimed_nonce: bytes
    claimed_driver_version: str
    claimed_vbios_version: str


class _Reader:
    """Bounds-checked little-endian reads: running off the end is an ``AttestationFailed``, never IndexError."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def take(self, n: int, field: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise AttestationFailed(f"{self.what} is truncated: {field} needs {n} bytes at offset {self.pos}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def uint(self, n: int, field: str) -> int:
        return int.from_bytes(self.take(n, field), "little")


def parse_report(report: bytes) -> GpuReport:
    """Split an SPDM 1.1 GET_MEASUREMENTS request+response into its fields; ``AttestationFailed`` if malformed.

    Checks the structure only (versions, codes, lengths, the three opaque fields verification needs); the
    signature is not checked here.
    """
    if len(report) > MAX_REPORT_BYTES:
        raise AttestationFailed(f"GPU attestation report is {len(report)} bytes, over {MAX_REPORT_BYTES}")
    r = _Reader(report, "GPU attestation report")
    version, code, param1, _param2 = r.take(4, "request header")
    if (version, code) != (_SPDM_VERSION, _GET_MEASUREMENTS) or not param1 & 0x01:
        raise AttestationFailed("GPU attestation report does not start with a signed SPDM 1.1 GET_MEASUREMENTS")
    nonce = r.take(NONCE_BYTES, "request nonce")
    r.take(1, "request slot id")
    version, code = r.take(2, "response header")
    if (version, code) != (_SPDM_VERSION, _MEASUREMENTS):
        raise AttestationFailed("GPU attestation report has no SPDM 1.1 MEASUREMENTS response after the request")
    r.take(2, "response params")
    block_count = r.uint(1, "number of blocks")
    record = _Reader(r.take(r.uint(3, "record length"), "measurement record"), "GPU measurement record")
    measurements: dict[int, bytes] = {}
    while record.pos < len(record.data):
        index, spec = record.take(2, "block header")
        block = _Reader(record.take(record.uint(2, "block size"), f"block {index}"), f"measurement block {index}")
        block.take(1, "value type")
        value = block.take(block.uint(2, "value size"), "value")
        if spec != _DMTF_MEASUREMENT_SPEC or block.pos != len(block.data) or index in measurements:
            raise AttestationFailed(f"GPU measurement block {index} is malformed or repeated")
        measurements[index] = value
    if len(measurements) != block_count:
        raise AttestationFailed(f"GPU report announces {block_count} measurement blocks but holds {len(measurements)}")
    responder_nonce = r.take(NONCE_BYTES, "responder nonce")
    opaque_data = _Reader(r.take(r.uint(2, "opaque length"), "opaque data"), "GPU opaque data")
    opaque: dict[int, bytes] = {}
    while opaque_data.pos < len(opaque_data.data):
        kind = opaque_data.uint(2, "opaque type")
        if kind in opaque:
            raise AttestationFailed(f"GPU opaque data repeats field {kind}")
        opaque[kind] = opaque_data.take(opaque_data.uint(2, "opaque field length"), f"opaque field {kind}")
    signed_length = r.pos
    signature = r.take(_SIGNATURE_BYTES, "signature")
    for kind, name in [(_OPAQUE_DRIVER_VERSION, "driver version"), (_OPAQUE_VBIOS_VERSION, "VBIOS version")]:
        if kind not in opaque:
            raise AttestationFailed(f"GPU opaque data has no {name} (field {kind})")
    fwid = opaque.get(_OPAQUE_FWID, b"")
    if len(fwid) != 48:
        raise AttestationFailed(f"GPU opaque data has no 48-byte FWID (field {_OPAQUE_FWID})")
    return GpuReport(
        nonce=nonce,
        responder_nonce=responder_nonce,
        measurements=MappingProxyType(measurements),
        driver_version=_c_string(opaque[_OPAQUE_DRIVER_VERSION], "driver version"),
        vbios_version=_vbios_version(opaque[_OPAQUE_VBIOS_VERSION]),
        project=_c_string(opaque[_OPAQUE_PROJECT], "project") if _OPAQUE_PROJECT in opaque else None,
        fwid=fwid,
        opaque=MappingProxyType(opaque),
        signature=signature,
        signed=report[:signed_length],
        trailing=report[r.pos :],
    )


def verify_report(
    report: bytes,
    cert_chain: bytes,
    *,
    nonce: bytes,
    now: datetime | None = None,
    expected_measurements: Mapping[int, bytes] | None = None,
) -> GpuVerdict:
    """Verify one GPU's report against its PEM chain (leaf first, root last, as NVML returns it).

    Verified: every certificate is signed by the next and valid at ``now`` (timezone-aware; default: the current
    time), every issuer is a CA, the last one is NVIDIA's Device Identity CA by pinned SHA-256 fingerprint; the
    report's FWID equals the leaf certificate's; the ECDSA-P384 signature over SHA-384 of the report before it,
    by the leaf key; the signed request nonce equals ``nonce``; and, when given, each ``expected_measurements``
    block (index -> the 48-byte digest a RIM lists).

    Not verified: revocation (no OCSP or CRL fetch: this works offline), and the RIMs (NVIDIA's signed golden
    measurements): the caller takes expected values from RIMs it trusts, their XML signatures unchecked here.
    Bytes after the signature are ignored, as NVIDIA's and trustee's verifiers do: the signature covers the
    exact prefix. ``AttestationFailed`` names the first check that fails.
    """
    when = now or datetime.now(UTC)
    if when.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    parsed = parse_report(report)
    chain = _verified_chain(cert_chain, when)
    leaf = chain[0]
    architecture = _architecture(leaf)
    leaf_fwid = _leaf_fwid(leaf, architecture)
    if not hmac.compare_digest(leaf_fwid, parsed.fwid):
        raise AttestationFailed(
            f"GPU report FWID {parsed.fwid.hex()[:16]}… is not its certificate's {leaf_fwid.hex()[:16]}…: "
            "the chain belongs to another GPU or firmware"
        )
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise AttestationFailed("GPU leaf certificate key is not ECDSA P-384")
    r, s = int.from_bytes(parsed.signature[:48], "big"), int.from_bytes(parsed.signature[48:], "big")
    try:
        key.verify(encode_dss_signature(r, s), parsed.signed, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature as exc:
        raise AttestationFailed("GPU attestation report signature does not verify with its leaf certificate") from exc
    if not hmac.compare_digest(parsed.nonce, nonce):
        raise AttestationFailed(
            f"GPU report answers nonce {parsed.nonce.hex()[:16]}…, not ours {nonce.hex()[:16]}…: stale or replayed"
        )
    checked = 0
    for index, expected in sorted((expected_measurements or {}).items()):
        actual = parsed.measurements.get(index)
        if actual is None or not hmac.compare_digest(actual, expected):
            shown = "absent" if actual is None else actual.hex()[:16] + "…"
            raise AttestationFailed(f"GPU measurement {index} is {shown}, not the expected {expected.hex()[:16]}…")
        checked += 1
    return GpuVerdict(
        architecture=architecture,
        driver_version=parsed.driver_version,
        vbios_version=parsed.vbios_version,
        fwid=parsed.fwid,
        device_serial=leaf.serial_number,
        measurement_count=len(parsed.measurements),
        measurements_checked=checked,
    )


def parse_ppcie_evidence(document: bytes | str) -> list[GpuEvidence]:
    """The GPUs of an nvtrust PPCIe evidence document: a JSON list of ``{arch, certificate, evidence, nonce,
    driver_version, vbios_version}``, report and PEM chain base64-encoded. ``AttestationFailed`` if malformed."""
    try:
        entries = json.loads(document)
        if not isinstance(entries, list) or not entries:
            raise TypeError("not a non-empty list")
        return [
            GpuEvidence(
                report=base64.b64decode(entry["evidence"], validate=True),
                cert_chain=base64.b64decode(entry["certificate"], validate=True),
                claimed_architecture=str(entry["arch"]),
                claimed_nonce=bytes.fromhex(entry["nonce"]),
                claimed_driver_version=str(entry["driver_version"]),
                claimed_vbios_version=str(entry["vbios_version"]),
            )
            for entry in entries
        ]
    except (ValueError, TypeError, KeyError, binascii.Error) as exc:
        raise AttestationFailed(f"GPU evidence document is malformed: {exc!r}") from exc


def verify_ppcie_evidence(
    document: bytes | str,
    *,
    nonce: bytes,
    now: datetime | None = None,
    expected_measurements: Mapping[int, bytes] | None = None,
) -> list[GpuVerdict]:
    """``verify_report`` on every GPU of a PPCIe evidence document; each unsigned claim beside a report must
    agree with what the verified report says. One failing GPU fails the whole document."""
    verdicts = []
    for position, gpu in enumerate(parse_ppcie_evidence(document)):
        try:
            verdict = verify_report(
                gpu.report, gpu.cert_chain, nonce=nonce, now=now, expected_measurements=expected_measurements
            )
        except AttestationFailed as exc:
            raise AttestationFailed(f"GPU {position}: {exc.message}") from exc
        claims = (gpu.claimed_architecture.lower(), gpu.claimed_nonce, gpu.claimed_driver_version)
        if claims != (verdict.architecture.lower(), nonce, verdict.driver_version) or (
            gpu.claimed_vbios_version.upper() != verdict.vbios_version
        ):
            raise AttestationFailed(f"GPU {position}: the document's claims disagree with its signed report")
        verdicts.append(verdict)
    return verdicts


def collect_report(nonce: bytes, gpu_index: int = 0) -> tuple[bytes, bytes]:
    """Ask GPU ``gpu_index`` for a report answering ``nonce``: ``(report, PEM cert chain)`` for ``verify_report``.

    Runs on a worker, through NVML (``pip install 'cocoon[gpu]'``); it blocks, so async code calls it in a thread.
    ``AttestationFailed`` when nvidia-ml-py, the driver, the GPU or confidential-computing mode is missing.
    """
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"an SPDM nonce is {NONCE_BYTES} bytes, not {len(nonce)}")
    try:
        nvml: Any = importlib.import_module("pynvml")
    except ImportError as exc:
        raise AttestationFailed("GPU attestation needs nvidia-ml-py: pip install 'cocoon[gpu]'") from exc
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        raise AttestationFailed(f"NVML did not start ({exc}): is the NVIDIA driver installed and loaded?") from exc
    try:
        state = nvml.nvmlSystemGetConfComputeState()
        if state.ccFeature != nvml.NVML_CC_SYSTEM_FEATURE_ENABLED:
            raise AttestationFailed(
                "confidential-computing mode is off on this machine's GPUs: the GPU cannot attest; enable CC mode "
                "(nvidia gpu-admin-tools: --set-cc-mode on) and boot the worker in a CVM"
            )
        device = nvml.nvmlDeviceGetHandleByIndex(gpu_index)
        answer = nvml.nvmlDeviceGetConfComputeGpuAttestationReport(device, nonce)
        certificates = nvml.nvmlDeviceGetConfComputeGpuCertificate(device)
    except nvml.NVMLError as exc:
        raise AttestationFailed(f"GPU {gpu_index} gave no attestation report through NVML: {exc}") from exc
    finally:
        nvml.nvmlShutdown()
    report = bytes(answer.attestationReport[: answer.attestationReportSize])
    chain = bytes(certificates.attestationCertChain[: certificates.attestationCertChainSize])
    return report, chain


def _verified_chain(pem: bytes, now: datetime) -> list[x509.Certificate]:
    try:
        chain = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise AttestationFailed(f"GPU certificate chain is not PEM certificates: {exc}") from exc
    if not 2 <= len(chain) <= MAX_CHAIN_CERTIFICATES:
        raise AttestationFailed(f"GPU certificate chain has {len(chain)} certificates, not 2..{MAX_CHAIN_CERTIFICATES}")
    root = chain[-1]
    if not hmac.compare_digest(root.fingerprint(hashes.SHA256()), NVIDIA_DEVICE_ROOT_SHA256):
        raise AttestationFailed(
            f"GPU certificate chain ends at {root.subject.rfc4514_string()!r}, not the pinned NVIDIA Device Identity CA"
        )
    for depth, (cert, issuer) in enumerate(zip(chain, [*chain[1:], root], strict=True)):
        name = cert.subject.rfc4514_string()
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise AttestationFailed(f"GPU certificate {name!r} is not valid at {now.isoformat()}")
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise AttestationFailed(f"GPU certificate {name!r} is not signed by the next one in the chain") from exc
        if depth > 0:
            try:
                constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
            except x509.ExtensionNotFound:
                constraints = None
            # path_length counts the CA certificates that may sit below this one (depth - 1 of them here).
            too_deep = (
                constraints is not None and constraints.path_length is not None and constraints.path_length < depth - 1
            )
            if constraints is None or not constraints.ca or too_deep:
                raise AttestationFailed(f"GPU certificate {name!r} issues others but is not a CA allowed to")
    return chain


def _architecture(leaf: x509.Certificate) -> Architecture:
    names = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = str(names[0].value) if names else ""
    if common_name.startswith("GH1"):
        return "Hopper"
    if common_name.startswith("GB"):
        return "Blackwell"
    raise AttestationFailed(f"GPU leaf certificate {common_name!r} is neither a Hopper (GH1xx) nor a Blackwell (GBxxx)")


def _leaf_fwid(leaf: x509.Certificate, architecture: Architecture) -> bytes:
    """The firmware ID the device's DICE layer wrote into its leaf certificate."""
    oid = _FWID_OID_HOPPER if architecture == "Hopper" else _FWID_OID_BLACKWELL
    try:
        extension = leaf.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound as exc:
        raise AttestationFailed(f"GPU leaf certificate has no FWID extension {oid.dotted_string}") from exc
    if not isinstance(extension, x509.UnrecognizedExtension):
        raise AttestationFailed(f"GPU leaf certificate extension {oid.dotted_string} is not the expected one")
    fields = _der_sequence(_der_single(extension.value, 0x30))
    if architecture == "Hopper":  # SEQUENCE { version, key, FWID }: the FWID is the last element
        fwid = fields[-1] if fields else (0, b"")
    else:  # DiceTcbInfo: fwids [6] IMPLICIT SEQUENCE OF FWID, and fwids[0] is the firmware's
        fwids = [content for tag, content in fields if tag == 0xA6]
        listed = _der_sequence(fwids[0]) if fwids else []
        fwid = listed[0] if listed else (0, b"")
    parts = _der_sequence(fwid[1]) if fwid[0] == 0x30 else []
    if len(parts) != 2 or parts[0] != (0x06, _DER_SHA384_OID) or parts[1][0] != 0x04 or len(parts[1][1]) != 48:
        raise AttestationFailed(f"GPU leaf certificate extension {oid.dotted_string} holds no SHA-384 FWID")
    return parts[1][1]


def _der_sequence(data: bytes) -> list[tuple[int, bytes]]:
    """The (tag, content) elements of DER ``data``; single-byte tags and definite lengths, as certificates use."""
    items, pos = [], 0
    while pos < len(data):
        if pos + 2 > len(data):
            raise AttestationFailed("GPU certificate extension is truncated DER")
        tag, length, pos = data[pos], data[pos + 1], pos + 2
        if length & 0x80:
            count = length & 0x7F
            if not 1 <= count <= 3 or pos + count > len(data):
                raise AttestationFailed("GPU certificate extension has an unsupported DER length")
            length, pos = int.from_bytes(data[pos : pos + count], "big"), pos + count
        if pos + length > len(data):
            raise AttestationFailed("GPU certificate extension is truncated DER")
        items.append((tag, data[pos : pos + length]))
        pos += length
    return items


def _der_single(data: bytes, tag: int) -> bytes:
    items = _der_sequence(data)
    if len(items) != 1 or items[0][0] != tag:
        raise AttestationFailed("GPU certificate extension is not a single DER SEQUENCE")
    return items[0][1]


def _c_string(value: bytes, what: str) -> str:
    try:
        return value.split(b"\x00", 1)[0].decode("ascii")
    except UnicodeDecodeError as exc:
        raise AttestationFailed(f"GPU opaque {what} is not ASCII") from exc


def _vbios_version(value: bytes) -> str:
    """NVIDIA's rendering: the low u32 little-endian as 8 hex digits, then the next byte: 96.00.9F.00.01."""
    if len(value) < 5:
        raise AttestationFailed("GPU opaque VBIOS version is shorter than 5 bytes")
    digits = f"{int.from_bytes(value[:4], 'little'):08X}{value[4]:02X}"
    return ".".join(digits[i : i + 2] for i in range(0, 10, 2))
