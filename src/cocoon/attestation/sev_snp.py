"""AMD SEV-SNP attestation: parse a guest's ATTESTATION_REPORT and verify it offline against AMD's key chain.

A report is signed by the chip's VCEK (or a cloud provider's VLEK), certified by AMD's ASK (or ASVK), certified by
the product's ARK, which this module pins by fingerprint. ``verify_report`` checks that chain, the report's
signature and its binding to the certificate; what the measurement must be is the network's policy, not ours.
"""

from __future__ import annotations

import hashlib
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.utils import CryptographyDeprecationWarning

from cocoon.errors import AttestationFailed

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0  # the signature covers bytes 0..0x29F
SUPPORTED_VERSIONS = (2, 3, 5)
ECDSA_P384_SHA384 = 1

POLICY_SMT = 1 << 16
POLICY_MIGRATE_MA = 1 << 18
POLICY_DEBUG = 1 << 19

# SHA-256 of the DER of AMD's root keys, as served by AMD KDS (https://kdsintf.amd.com/vcek/v1/{product}/cert_chain,
# the last certificate) and bundled by virtee/sev as src/certs/snp/builtin/*/ark.pem.
PINNED_ARKS: dict[str, str] = {
    "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd": "Milan",
    "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1": "Genoa",
    "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a": "Turin",
}
PRODUCTS = ("Milan", "Genoa", "Turin")

_AMD_OID = "1.3.6.1.4.1.3704.1"
_OID_PRODUCT = x509.ObjectIdentifier(f"{_AMD_OID}.2")
_OID_HWID = x509.ObjectIdentifier(f"{_AMD_OID}.4")
_OID_SPL = {
    "bootloader": x509.ObjectIdentifier(f"{_AMD_OID}.3.1"),
    "tee": x509.ObjectIdentifier(f"{_AMD_OID}.3.2"),
    "snp": x509.ObjectIdentifier(f"{_AMD_OID}.3.3"),
    "microcode": x509.ObjectIdentifier(f"{_AMD_OID}.3.8"),
    "fmc": x509.ObjectIdentifier(f"{_AMD_OID}.3.9"),
}


@dataclass(frozen=True, slots=True)
class TcbVersion:
    """A TCB_VERSION: the raw u64 and its security patch levels, decoded for the product's byte layout."""

    raw: int
    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None  # Turin and later only

    @classmethod
    def decode(cls, raw: int, *, turin: bool) -> TcbVersion:
        """Milan/Genoa bytes are ``[bl, tee, 0,0,0,0, snp, ucode]``; Turin's ``[fmc, bl, tee, snp, 0,0,0, ucode]``."""
        b = raw.to_bytes(8, "little")
        if turin:
            return cls(raw, bootloader=b[1], tee=b[2], snp=b[3], microcode=b[7], fmc=b[0])
        return cls(raw, bootloader=b[0], tee=b[1], snp=b[6], microcode=b[7])

    def spls(self) -> dict[str, int]:
        """The SPLs by name (``fmc`` only where the product has one), as the VCEK extensions and KDS name them."""
        out = {"bootloader": self.bootloader, "tee": self.tee, "snp": self.snp, "microcode": self.microcode}
        if self.fmc is not None:
            out["fmc"] = self.fmc
        return out


@dataclass(frozen=True, slots=True)
class SnpReport:
    """The fields of an SNP ATTESTATION_REPORT (AMD SEV-SNP ABI, versions 2, 3 and 5)."""

    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: TcbVersion
    platform_info: int
    author_key_en: bool
    signing_key: str  # "VCEK" or "VLEK" (or "none": the chip key was masked and the report is unsigned)
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: TcbVersion
    cpuid: tuple[int, int, int] | None  # (family, model, stepping), version 3 and later
    chip_id: bytes
    committed_tcb: TcbVersion
    launch_tcb: TcbVersion
    launch_mit_vector: int | None  # version 5 and later
    current_mit_vector: int | None
    signature_r: int
    signature_s: int
    signed_bytes: bytes

    @property
    def debug(self) -> bool:
        """POLICY.DEBUG: the host may read and change the guest's memory; nothing it attests can be trusted."""
        return bool(self.policy & POLICY_DEBUG)

    @property
    def smt_allowed(self) -> bool:
        return bool(self.policy & POLICY_SMT)

    @property
    def migrate_ma_allowed(self) -> bool:
        return bool(self.policy & POLICY_MIGRATE_MA)

    @property
    def product_hint(self) -> str | None:
        """The product the CPUID fields name (version 3 and later), else ``None``; a hint, not verified."""
        if self.cpuid is None:
            return None
        family, model, _ = self.cpuid
        if family == 0x19:
            return "Genoa" if 0x10 <= model <= 0x1F else "Milan" if model <= 0x0F else None
        return "Turin" if family == 0x1A else None


_SIGNING_KEYS = {0: "VCEK", 1: "VLEK", 7: "none"}


def parse_report(raw: bytes, *, product: str | None = None) -> SnpReport:
    """The report in ``raw`` (exactly 1184 bytes); TCBs decoded for ``product`` (by default the CPUID's product,
    Milan's layout when the report does not name one). ``AttestationFailed`` if it is not a report we read."""
    if len(raw) != REPORT_SIZE:
        raise AttestationFailed(f"SEV-SNP report is {len(raw)} bytes; an ATTESTATION_REPORT is {REPORT_SIZE}")
    version, guest_svn, policy = struct.unpack_from("<IIQ", raw, 0)
    if version not in SUPPORTED_VERSIONS:
        raise AttestationFailed(
            f"SEV-SNP report version {version} is not one this build reads (it reads {SUPPORTED_VERSIONS})"
        )
    vmpl, signature_algo, current_tcb, platform_info, key_info = struct.unpack_from("<IIQQI", raw, 0x30)
    signing_key = _SIGNING_KEYS.get((key_info >> 2) & 0b111)
    if signing_key is None:
        raise AttestationFailed(f"SEV-SNP report names an unknown signing key {(key_info >> 2) & 0b111}")
    cpuid = tuple(raw[0x188:0x18B]) if version >= 3 else None
    if product is None:
        family = cpuid[0] if cpuid else 0
        product = "Turin" if family == 0x1A else "Milan"
    elif product not in PRODUCTS:
        raise AttestationFailed(f"unknown AMD product {product!r}; expected one of {PRODUCTS}")
    turin = product == "Turin"
    reported_tcb, committed_tcb, launch_tcb = (struct.unpack_from("<Q", raw, at)[0] for at in (0x180, 0x1E0, 0x1F0))
    mit_vectors = struct.unpack_from("<QQ", raw, 0x1F8) if version >= 5 else (None, None)
    return SnpReport(
        version=version,
        guest_svn=guest_svn,
        policy=policy,
        family_id=raw[0x10:0x20],
        image_id=raw[0x20:0x30],
        vmpl=vmpl,
        signature_algo=signature_algo,
        current_tcb=TcbVersion.decode(current_tcb, turin=turin),
        platform_info=platform_info,
        author_key_en=bool(key_info & 1),
        signing_key=signing_key,
        report_data=raw[0x50:0x90],
        measurement=raw[0x90:0xC0],
        host_data=raw[0xC0:0xE0],
        id_key_digest=raw[0xE0:0x110],
        author_key_digest=raw[0x110:0x140],
        report_id=raw[0x140:0x160],
        report_id_ma=raw[0x160:0x180],
        reported_tcb=TcbVersion.decode(reported_tcb, turin=turin),
        cpuid=(cpuid[0], cpuid[1], cpuid[2]) if cpuid else None,
        chip_id=raw[0x1A0:0x1E0],
        committed_tcb=TcbVersion.decode(committed_tcb, turin=turin),
        launch_tcb=TcbVersion.decode(launch_tcb, turin=turin),
        launch_mit_vector=mit_vectors[0],
        current_mit_vector=mit_vectors[1],
        signature_r=int.from_bytes(raw[0x2A0:0x2E8], "little"),
        signature_s=int.from_bytes(raw[0x2E8:0x330], "little"),
        signed_bytes=raw[:SIGNED_SIZE],
    )


@dataclass(frozen=True, slots=True)
class SnpVerdict:
    """What a verified report attests: the guest's measurement and report data, on a chip of ``product``."""

    report: SnpReport
    product: str  # "Milan", "Genoa" or "Turin": the pinned ARK the chain ends in
    signing_key: str  # "VCEK" (this chip's key) or "VLEK" (a cloud provider's key)
    measurement: str  # hex, 96 characters
    report_data: bytes
    tcb: TcbVersion  # the reported TCB, equal to the one the signing certificate was issued for


def verify_report(
    raw: bytes,
    vcek_or_vlek: bytes,
    chain: bytes,
    *,
    now: datetime | None = None,
    product: str | None = None,
    allow_debug: bool = False,
) -> SnpVerdict:
    """Verify the SNP report ``raw`` signed by the VCEK/VLEK certificate ``vcek_or_vlek`` (DER or PEM), whose
    issuer chain ``chain`` (PEM: ASK or ASVK, and ARK, as KDS serves it) ends in a pinned AMD root.

    Checked: the ARK is pinned and self-signed, ASK/ASVK ← ARK, VCEK/VLEK ← ASK/ASVK (RSA-PSS SHA-384), every
    certificate is valid at ``now`` (default: the current time), the ECDSA P-384 signature over bytes 0..0x29F,
    the reported TCB equals the certificate's SPLs, and for a VCEK the chip id equals its hwID (a VLEK has no hwID,
    by design). A debug guest is refused unless ``allow_debug``. ``product``, if given, must be the chain's.
    Not checked: revocation (AMD's CRLs are not consulted offline); what the launch measurement should be (that is
    policy; it is not recomputed from the guest's images); whether the TCB is recent enough (a minimum TCB is
    policy); what report_data commits to (the caller's binding). Any failure raises ``AttestationFailed``.
    """
    report = parse_report(raw, product=product)
    when = now or datetime.now(UTC)
    if when.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    with _amd_certificates():
        leaf = _load_one(vcek_or_vlek)
        intermediate, root = _load_chain(chain)
    chain_product = PINNED_ARKS[_fingerprint(root)]
    if product is not None and product != chain_product:
        raise AttestationFailed(f"the AMD chain is {chain_product}'s, not {product}'s as the caller expects")
    report = parse_report(raw, product=chain_product)
    kind = report.signing_key
    if kind == "none":
        raise AttestationFailed("SEV-SNP report is unsigned (its chip key is masked): it attests nothing")
    if report.signature_algo != ECDSA_P384_SHA384:
        raise AttestationFailed(f"SEV-SNP report signature algorithm {report.signature_algo} is not ECDSA P-384")
    intermediate_cn = f"SEV-{chain_product}" if kind == "VCEK" else f"SEV-VLEK-{chain_product}"
    _expect_name(intermediate, intermediate_cn, "the chain's intermediate")
    _expect_name(leaf, f"SEV-{kind}", f"the report is signed by a {kind}, but its certificate")
    _issued_by(root, root, "the ARK is not self-signed")
    _issued_by(intermediate, root, f"{intermediate_cn} is not signed by ARK-{chain_product}")
    _issued_by(leaf, intermediate, f"the {kind} is not signed by {intermediate_cn}")
    for cert, name in ((root, f"ARK-{chain_product}"), (intermediate, intermediate_cn), (leaf, kind)):
        if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
            raise AttestationFailed(
                f"the {name} certificate is valid {cert.not_valid_before_utc:%Y-%m-%d} to "
                f"{cert.not_valid_after_utc:%Y-%m-%d}, not at {when:%Y-%m-%d %H:%M}Z: fetch a current one"
            )
    cert_product = _ia5(_extension(leaf, _OID_PRODUCT, kind)).split("-")[0]
    if cert_product != chain_product:
        raise AttestationFailed(f"the {kind} is for {cert_product} but its chain is {chain_product}'s")
    _check_signature(report, leaf, kind)
    for name, want in report.reported_tcb.spls().items():
        got = _der_int(_extension(leaf, _OID_SPL[name], kind))
        if got != want:
            raise AttestationFailed(
                f"the report's TCB has {name} SPL {want} but the {kind} was issued for {got}: "
                "fetch the certificate for this report's reported TCB"
            )
    if kind == "VCEK":
        hwid = _extension(leaf, _OID_HWID, kind)
        if not report.chip_id.strip(b"\0"):
            raise AttestationFailed("the report's chip id is masked (MASK_CHIP_ID): it cannot be tied to the VCEK")
        if hwid != report.chip_id[: _hwid_size(chain_product)]:
            raise AttestationFailed("the report's chip id is not the VCEK's hwID: the VCEK belongs to another chip")
    if report.debug and not allow_debug:
        raise AttestationFailed(
            f"SEV-SNP guest policy {report.policy:#x} allows debugging (bit 19): the host can read the guest's "
            "memory; launch the guest without the debug policy"
        )
    return SnpVerdict(report, chain_product, kind, report.measurement.hex(), report.report_data, report.reported_tcb)


def extract_from_hcl(blob: bytes) -> tuple[bytes, bytes]:
    """``(snp_report, runtime_data)`` from an Azure CVM's HCL report (the vTPM NV index 0x01400001 contents).

    The runtime data (JSON with the vTPM's attestation key) is checked to be what the SNP report's report_data
    commits to (its hash in the first bytes); the report itself still has to go through ``verify_report``.
    """
    if len(blob) < 0x20 + REPORT_SIZE + 20 or blob[:4] != b"HCLA":
        raise AttestationFailed("not an Azure HCL report: it must start with 'HCLA' and hold an SNP report")
    report = blob[0x20 : 0x20 + REPORT_SIZE]
    at = 0x20 + REPORT_SIZE
    _size, _version, report_type, hash_type, data_size = struct.unpack_from("<5I", blob, at)
    if report_type != 2:
        raise AttestationFailed(f"the HCL report holds a report of type {report_type}, not an SNP report (2)")
    runtime_data = blob[at + 20 : at + 20 + data_size]
    if len(runtime_data) != data_size:
        raise AttestationFailed("the HCL report's runtime data is truncated")
    algorithm = {1: hashlib.sha256, 2: hashlib.sha384, 3: hashlib.sha512}.get(hash_type)
    if algorithm is None:
        raise AttestationFailed(f"the HCL report names an unknown hash type {hash_type}")
    digest = algorithm(runtime_data).digest()
    if report[0x50 : 0x50 + len(digest)] != digest:
        raise AttestationFailed("the SNP report's report_data does not commit to the HCL runtime data")
    return report, runtime_data


@contextmanager
def _amd_certificates() -> Iterator[None]:
    # AMD's VCEK/VLEK certificates have serial number 0, which RFC 5280 forbids; cryptography warns on loading
    # them (and pyproject pins cryptography<51 until it refuses them).
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Parsed a serial number which wasn't positive", category=CryptographyDeprecationWarning
        )
        yield


def _load_one(data: bytes) -> x509.Certificate:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise AttestationFailed(f"the VCEK/VLEK certificate does not parse: {exc}") from exc


def _load_chain(data: bytes) -> tuple[x509.Certificate, x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise AttestationFailed(f"the AMD certificate chain is not PEM certificates: {exc}") from exc
    roots = [c for c in certs if _fingerprint(c) in PINNED_ARKS]
    others = [c for c in certs if _fingerprint(c) not in PINNED_ARKS]
    if len(roots) != 1 or len(others) != 1:
        raise AttestationFailed(
            f"the AMD chain must be an ASK/ASVK and one of AMD's pinned ARKs ({', '.join(PRODUCTS)}); it has "
            f"{len(certs)} certificates of which {len(roots)} pinned"
        )
    return others[0], roots[0]


def _hwid_size(product: str) -> int:
    # Turin's hwID (in the VCEK and in KDS URLs) is the first 8 bytes of the chip id; earlier products use all 64.
    return 8 if product == "Turin" else 64


def _fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def _expect_name(cert: x509.Certificate, common_name: str, what: str) -> None:
    names = [a.value for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    if names != [common_name]:
        raise AttestationFailed(f"{what} is {names}, not {common_name!r}")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate, problem: str) -> None:
    if cert.signature_algorithm_oid != x509.SignatureAlgorithmOID.RSASSA_PSS:
        raise AttestationFailed(f"{problem}: AMD certificates are signed with RSA-PSS")
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise AttestationFailed(problem) from exc


def _check_signature(report: SnpReport, leaf: x509.Certificate, kind: str) -> None:
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise AttestationFailed(f"the {kind} key is not an ECDSA P-384 key")
    signature = encode_dss_signature(report.signature_r, report.signature_s)
    try:
        key.verify(signature, report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature as exc:
        raise AttestationFailed(f"the SEV-SNP report's signature does not verify with the {kind}") from exc


def _extension(cert: x509.Certificate, oid: x509.ObjectIdentifier, kind: str) -> bytes:
    try:
        value = cert.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound as exc:
        raise AttestationFailed(f"the {kind} certificate lacks AMD extension {oid.dotted_string}") from exc
    if not isinstance(value, x509.UnrecognizedExtension):
        raise AttestationFailed(f"the {kind} certificate's extension {oid.dotted_string} is not AMD's")
    return value.value


def _der_int(der: bytes) -> int:
    # AMD's SPL extensions are a DER INTEGER: 0x02, a short length, big-endian two's complement.
    if len(der) < 3 or der[0] != 0x02 or der[1] != len(der) - 2:
        raise AttestationFailed(f"an AMD SPL extension is not a DER INTEGER: {der.hex()}")
    return int.from_bytes(der[2:], "big", signed=True)


def _ia5(der: bytes) -> str:
    if len(der) < 2 or der[0] != 0x16 or der[1] != len(der) - 2:
        raise AttestationFailed(f"the AMD product-name extension is not an IA5String: {der.hex()}")
    return der[2:].decode("ascii", errors="replace")
