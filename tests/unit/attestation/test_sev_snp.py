"""SEV-SNP verification on real recorded reports (``tests/helpers/samples.py``), and on a self-made AMD look-alike."""

from __future__ import annotations

import json
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.utils import CryptographyDeprecationWarning

from cocoon.attestation import sev_snp
from cocoon.attestation.sev_snp import TcbVersion, extract_from_hcl, parse_report, verify_report
from cocoon.errors import AttestationFailed
from tests.helpers.samples import samples_dir

VLEK_TIME = datetime.fromtimestamp(1750000000, UTC)  # the VLEK is valid 2024-12-10..2025-12-10


@dataclass(frozen=True)
class Evidence:
    report: bytes
    cert: bytes
    chain: bytes
    now: datetime | None = None


def _read(relative: str) -> bytes:
    return (samples_dir() / relative).read_bytes()


def virtee_milan() -> Evidence:
    report = bytes.fromhex((samples_dir() / "sev-snp-virtee/report_milan.hex").read_text().strip())
    return Evidence(report, _read("sev-snp-virtee/vcek_milan.der"), _read("sev-snp-virtee/cert_chain_milan"))


def trustee_milan() -> Evidence:
    return Evidence(
        _read("sev-snp-trustee/snp_test-report.bin"),
        _read("sev-snp-trustee/snp_test-vcek.der"),
        _read("sev-snp-go-sev-guest/ask_ark_milan.pem"),
    )


def trustee_vlek() -> Evidence:
    return Evidence(
        _read("sev-snp-trustee/snp_test-vlek-report.bin"),
        _read("sev-snp-trustee/snp_test-vlek.der"),
        _read("sev-snp-trustee/go-sev-guest_ask_ark_milan_vlek.pem"),
        VLEK_TIME,
    )


def azure_genoa_hcl() -> bytes:
    evidence = json.loads((samples_dir() / "sev-snp-trustee/az-snp-vtpm_evidence-genoa.json").read_text())
    return bytes(evidence["report"])


def azure_genoa() -> Evidence:
    evidence = json.loads((samples_dir() / "sev-snp-trustee/az-snp-vtpm_evidence-genoa.json").read_text())
    report, _ = extract_from_hcl(bytes(evidence["report"]))
    return Evidence(report, evidence["vcek"].encode(), _read("sev-snp-go-sev-guest/ask_ark_genoa.pem"))


def go_sev_guest_debug() -> Evidence:
    return Evidence(
        _read("sev-snp-go-sev-guest/attestation.bin"),
        _read("sev-snp-go-sev-guest/vcek.testcer"),
        _read("sev-snp-go-sev-guest/ask_ark_milan.pem"),
    )


def _verify(e: Evidence, *, allow_debug: bool = False) -> sev_snp.SnpVerdict:
    return verify_report(e.report, e.cert, e.chain, now=e.now, allow_debug=allow_debug)


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


POSITIVE = [
    # (evidence, product, key, measurement prefix, report_data prefix, (bl, tee, snp, ucode), vmpl)
    (virtee_milan, "Milan", "VCEK", "7a1e5c266c0108db", "d447b55d197491bf", (3, 0, 8, 115), None),
    (trustee_milan, "Milan", "VCEK", "a1f3930413247bb3", "ec6c52d7533cc2c4", (3, 0, 8, 115), None),
    (trustee_vlek, "Milan", "VLEK", "8922ebbdd00ec2c5", "819770b7e6ea6df8", (4, 0, 24, 217), 1),
    (azure_genoa, "Genoa", "VCEK", "f57dc09a507c6ecd", "b581f12e29a2d7d6", (10, 0, 23, 84), None),
]


@pytest.mark.parametrize(("evidence", "product", "key", "measurement", "data", "tcb", "vmpl"), POSITIVE)
def test_real_reports_verify_with_their_measurement_report_data_and_tcb(
    evidence: Callable[[], Evidence],
    product: str,
    key: str,
    measurement: str,
    data: str,
    tcb: tuple[int, int, int, int],
    vmpl: int | None,
) -> None:
    verdict = _verify(evidence())
    assert (verdict.product, verdict.signing_key) == (product, key)
    assert verdict.measurement.startswith(measurement) and len(verdict.measurement) == 96
    assert verdict.report_data.hex().startswith(data) and len(verdict.report_data) == 64
    assert (verdict.tcb.bootloader, verdict.tcb.tee, verdict.tcb.snp, verdict.tcb.microcode) == tcb
    assert not verdict.report.debug
    if vmpl is not None:
        assert verdict.report.vmpl == vmpl


def test_no_serial_number_warning_escapes_verification() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _verify(trustee_milan())
    assert not [w for w in caught if issubclass(w.category, CryptographyDeprecationWarning)]


def test_debug_guest_is_refused_unless_debug_is_allowed() -> None:
    with pytest.raises(AttestationFailed, match="allows debugging"):
        _verify(go_sev_guest_debug())
    verdict = _verify(go_sev_guest_debug(), allow_debug=True)
    assert verdict.report.debug and verdict.report.policy == 0xB0000
    assert verdict.report_data.hex().startswith("0102030405")


def test_report_fields_are_read_at_their_offsets() -> None:
    report = parse_report(trustee_vlek().report)
    assert (report.version, report.signing_key, report.vmpl, report.signature_algo) == (3, "VLEK", 1, 1)
    assert report.cpuid == (0x19, 0x01, 0x01) and report.product_hint == "Milan"
    assert report.smt_allowed and not report.migrate_ma_allowed
    genoa = parse_report(azure_genoa().report)
    assert genoa.product_hint == "Genoa" and genoa.launch_mit_vector is None
    assert parse_report(virtee_milan().report).cpuid is None


def test_a_version_5_report_carries_its_mitigation_vectors() -> None:
    raw = bytearray(trustee_vlek().report)
    struct.pack_into("<I", raw, 0, 5)
    struct.pack_into("<QQ", raw, 0x1F8, 0x11, 0x22)
    report = parse_report(bytes(raw))
    assert (report.version, report.launch_mit_vector, report.current_mit_vector) == (5, 0x11, 0x22)


def test_turin_tcb_bytes_are_decoded_with_the_fmc_first() -> None:
    raw = int.from_bytes(bytes([1, 2, 3, 4, 0, 0, 0, 9]), "little")
    assert TcbVersion.decode(raw, turin=True).spls() == {
        "bootloader": 2, "tee": 3, "snp": 4, "microcode": 9, "fmc": 1
    }  # fmt: skip
    assert TcbVersion.decode(raw, turin=False).spls() == {"bootloader": 1, "tee": 2, "snp": 0, "microcode": 9}


@pytest.mark.parametrize(("at", "reason"), [(0x90, "signature does not verify"), (0x2A0, "signature does not verify")])
def test_one_flipped_byte_in_the_body_or_the_signature_fails(at: int, reason: str) -> None:
    e = trustee_milan()
    with pytest.raises(AttestationFailed, match=reason):
        verify_report(_flip(e.report, at), e.cert, e.chain)


def test_one_flipped_byte_in_the_vcek_fails() -> None:
    e = trustee_milan()
    with pytest.raises(AttestationFailed, match="not signed by SEV-Milan"):
        verify_report(e.report, _flip(e.cert, len(e.cert) - 1), e.chain)


def test_a_vcek_from_another_chip_fails() -> None:
    with pytest.raises(AttestationFailed, match="signature does not verify with the VCEK"):
        verify_report(trustee_milan().report, go_sev_guest_debug().cert, trustee_milan().chain)


def test_a_chain_for_another_product_fails() -> None:
    e = trustee_milan()
    with pytest.raises(AttestationFailed, match="the VCEK is not signed by SEV-Genoa"):
        verify_report(e.report, e.cert, azure_genoa().chain)
    with pytest.raises(AttestationFailed, match="not Genoa's"):
        verify_report(e.report, e.cert, e.chain, product="Genoa")


def test_the_vlek_fails_once_expired() -> None:
    e = trustee_vlek()
    with pytest.raises(AttestationFailed, match="VLEK certificate is valid 2024-12-10 to 2025-12-10"):
        verify_report(e.report, e.cert, e.chain, now=datetime(2025, 12, 11, tzinfo=UTC))


@pytest.mark.parametrize(
    ("raw", "reason"),
    [(b"", "is 0 bytes"), (b"\x02" * 1000, "is 1000 bytes"), (b"\xff" * 1184, "version 4294967295")],
)
def test_truncated_or_garbage_reports_fail_cleanly(raw: bytes, reason: str) -> None:
    e = trustee_milan()
    with pytest.raises(AttestationFailed, match=reason):
        verify_report(raw, e.cert, e.chain)


def test_an_unknown_report_version_fails() -> None:
    raw = bytearray(trustee_milan().report)
    struct.pack_into("<I", raw, 0, 4)
    with pytest.raises(AttestationFailed, match="version 4 is not one this build reads"):
        parse_report(bytes(raw))


def test_garbage_certificates_fail_cleanly() -> None:
    e = trustee_milan()
    with pytest.raises(AttestationFailed, match="does not parse"):
        verify_report(e.report, b"garbage", e.chain)
    with pytest.raises(AttestationFailed, match="not PEM"):
        verify_report(e.report, e.cert, b"garbage")


def test_azure_hcl_report_holds_the_snp_report_bound_to_its_runtime_data() -> None:
    report, runtime_data = extract_from_hcl(azure_genoa_hcl())
    assert report == _read("sev-snp-trustee/az-snp-vtpm_evidence-genoa.snp_report.bin")
    assert json.loads(runtime_data)["keys"][0]["kid"] == "HCLAkPub"
    with pytest.raises(AttestationFailed, match="does not commit"):
        extract_from_hcl(_flip(azure_genoa_hcl(), 0x4C0 + 30))
    with pytest.raises(AttestationFailed, match="HCLA"):
        extract_from_hcl(trustee_milan().report)


# A self-made look-alike of AMD's hierarchy: it is refused because its ARK is not pinned, and once pinned (only in
# this test) it lets each binding check be tried on its own.

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
YEAR = timedelta(days=365)


def _cert(subject: str, issuer: str, key: object, signer: rsa.RSAPrivateKey, extensions: dict[str, bytes]) -> bytes:
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, issuer)]))
        .public_key(key)  # type: ignore[arg-type]
        .serial_number(1)
        .not_valid_before(now - YEAR)
        .not_valid_after(now + YEAR)
    )
    for oid, value in extensions.items():
        builder = builder.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), critical=False)
    return builder.sign(signer, hashes.SHA384(), rsa_padding=PSS).public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class LookAlike:
    evidence: Evidence
    ark_fingerprint: str
    vcek_key: ec.EllipticCurvePrivateKey


@pytest.fixture(scope="module")
def look_alike() -> LookAlike:
    ark_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ask_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    vcek_key = ec.generate_private_key(ec.SECP384R1())
    report = bytearray(trustee_milan().report)
    spl = {"1": 3, "2": 0, "3": 8, "8": 115}
    extensions = {f"1.3.6.1.4.1.3704.1.3.{k}": bytes([2, 1, v]) for k, v in spl.items()}
    extensions["1.3.6.1.4.1.3704.1.2"] = b"\x16\x08Milan-B0"
    extensions["1.3.6.1.4.1.3704.1.4"] = bytes(report[0x1A0:0x1E0])
    ark = _cert("ARK-Milan", "ARK-Milan", ark_key.public_key(), ark_key, {})
    ask = _cert("SEV-Milan", "ARK-Milan", ask_key.public_key(), ark_key, {})
    vcek = _cert("SEV-VCEK", "SEV-Milan", vcek_key.public_key(), ask_key, extensions)
    fingerprint = x509.load_pem_x509_certificate(ark).fingerprint(hashes.SHA256()).hex()
    return LookAlike(Evidence(_signed(bytes(report), vcek_key), vcek, ask + ark), fingerprint, vcek_key)


def _signed(report: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    r, s = decode_dss_signature(key.sign(report[:0x2A0], ec.ECDSA(hashes.SHA384())))
    return report[:0x2A0] + r.to_bytes(72, "little") + s.to_bytes(72, "little") + report[0x330:]


@pytest.fixture
def pinned(look_alike: LookAlike, monkeypatch: pytest.MonkeyPatch) -> LookAlike:
    monkeypatch.setitem(sev_snp.PINNED_ARKS, look_alike.ark_fingerprint, "Milan")
    return look_alike


def test_a_chain_whose_ark_is_not_pinned_fails(look_alike: LookAlike) -> None:
    with pytest.raises(AttestationFailed, match="0 pinned"):
        _verify(look_alike.evidence)


def test_the_look_alike_passes_only_once_its_ark_is_pinned(pinned: LookAlike) -> None:
    assert _verify(pinned.evidence).product == "Milan"


def test_a_report_of_another_tcb_than_the_vcek_fails(pinned: LookAlike) -> None:
    raw = bytearray(pinned.evidence.report)
    raw[0x180] = 2  # bootloader SPL 2 where the VCEK says 3
    evidence = Evidence(_signed(bytes(raw), pinned.vcek_key), pinned.evidence.cert, pinned.evidence.chain)
    with pytest.raises(AttestationFailed, match="bootloader SPL 2 but the VCEK was issued for 3"):
        _verify(evidence)


def test_a_report_of_another_chip_id_than_the_vcek_fails(pinned: LookAlike) -> None:
    raw = bytearray(pinned.evidence.report)
    raw[0x1A0] ^= 0xFF
    evidence = Evidence(_signed(bytes(raw), pinned.vcek_key), pinned.evidence.cert, pinned.evidence.chain)
    with pytest.raises(AttestationFailed, match="another chip"):
        _verify(evidence)
