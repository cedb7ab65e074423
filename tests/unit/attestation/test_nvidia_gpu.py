"""NVIDIA GPU attestation on real recorded H100 and Blackwell reports: what verifies, and every way it must not."""

from __future__ import annotations

import base64
import json
import random
import sys
import types
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from cocoon.attestation import nvidia_gpu
from cocoon.attestation.nvidia_gpu import (
    collect_report,
    parse_ppcie_evidence,
    parse_report,
    verify_ppcie_evidence,
    verify_report,
)
from cocoon.errors import AttestationFailed
from tests.helpers.samples import samples_dir

HOPPER_NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")
COCO_NONCE = bytes.fromhex("87d8e24ab336adafe228d49e83d745f6dba4ae505372b6a5704820856b343fec")
BLACKWELL_NONCE = bytes.fromhex("4cff7f5380ead8fad8ec2c531c110aca4302a88f603792801a8ca29ee151af2e")
PPCIE_NONCE = bytes.fromhex("4760e30534a0621357d458b1a7936551b5dc4cd1e69718adf7ed9fb0252a537e")
BLACKWELL_FWID = bytes.fromhex(
    "9b92cc3e53b9265259e1abde163653288c2474fcafd8e5c0fd62ce9c9036fb62723fe3715b50f4ac27c68b62e2fd9240"
)
HOPPER = ("trustee_hopperAttestationReport.txt", "trustee_hopper_cert_chain_case1.txt", HOPPER_NONCE)
COCO = ("trustee_hopper_coco_report1.txt", "trustee_hopper_coco_certs1.txt", COCO_NONCE)
BLACKWELL = ("trustee_blackwellAttestationReport.txt", "trustee_blackwell_cert_chain_case1.txt", BLACKWELL_NONCE)


def gpu_dir() -> Path:
    return samples_dir() / "nvidia-gpu"


def load(case: tuple[str, str, bytes]) -> tuple[bytes, bytes, bytes]:
    report_name, chain_name, nonce = case
    report = bytes.fromhex((gpu_dir() / report_name).read_text().strip())
    return report, (gpu_dir() / chain_name).read_bytes(), nonce


def flipped(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


def pem(certificates: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


@pytest.mark.parametrize(
    ("case", "architecture", "driver", "vbios"),
    [
        (HOPPER, "Hopper", "550.90.07", "96.00.9F.00.01"),
        (COCO, "Hopper", "580.95.05", "96.00.74.00.1A"),
        (BLACKWELL, "Blackwell", "595.58.03", "98.02.81.00.01"),
    ],
    ids=["hopper", "hopper-coco", "blackwell"],
)
def test_recorded_report_verifies_and_names_its_firmware(
    case: tuple[str, str, bytes], architecture: str, driver: str, vbios: str
) -> None:
    report, chain, nonce = load(case)
    verdict = verify_report(report, chain, nonce=nonce)
    assert (verdict.architecture, verdict.driver_version, verdict.vbios_version) == (architecture, driver, vbios)
    assert verdict.measurement_count == 64
    assert verdict.fwid == parse_report(report).fwid


def test_blackwell_fwid_and_serial_are_the_ones_nvidia_verifiers_reported() -> None:
    report, chain, nonce = load(BLACKWELL)
    verdict = verify_report(report, chain, nonce=nonce)
    assert (verdict.fwid, verdict.device_serial) == (BLACKWELL_FWID, 408762037488965241743361667085904172082023387885)


def test_coco_report_verifies_despite_its_unsigned_trailing_byte() -> None:
    report, _, _ = load(COCO)
    assert len(parse_report(report).trailing) == 1


def test_all_eight_ppcie_h100_reports_verify() -> None:
    document = (gpu_dir() / "nvtrust_ppcie_gpu_evidence_8xH100.json").read_text()
    verdicts = verify_ppcie_evidence(document, nonce=PPCIE_NONCE)
    assert len(verdicts) == 8
    assert {(v.architecture, v.driver_version, v.vbios_version) for v in verdicts} == {
        ("Hopper", "590.12", "96.00.A5.00.01")
    }
    assert len({v.fwid for v in verdicts}) == 1  # one firmware...
    assert len({v.device_serial for v in verdicts}) == 8  # ...on eight distinct GPUs


def test_ppcie_document_fails_when_one_gpu_is_tampered() -> None:
    entries = json.loads((gpu_dir() / "nvtrust_ppcie_gpu_evidence_8xH100.json").read_text())
    evidence = parse_ppcie_evidence(json.dumps(entries))[3]
    entries[3]["evidence"] = base64.b64encode(flipped(evidence.report, 100)).decode()
    with pytest.raises(AttestationFailed, match="GPU 3"):
        verify_ppcie_evidence(json.dumps(entries), nonce=PPCIE_NONCE)


def test_ppcie_document_fails_when_its_unsigned_claims_disagree_with_the_report() -> None:
    entries = json.loads((gpu_dir() / "nvtrust_ppcie_gpu_evidence_8xH100.json").read_text())
    entries[5]["driver_version"] = "999.99"
    with pytest.raises(AttestationFailed, match="claims disagree"):
        verify_ppcie_evidence(json.dumps(entries), nonce=PPCIE_NONCE)


@pytest.mark.parametrize("document", [b"", b"{}", b"[]", b'[{"arch": "HOPPER"}]', b"\xff"])
def test_malformed_ppcie_document_is_refused(document: bytes) -> None:
    with pytest.raises(AttestationFailed, match="malformed"):
        verify_ppcie_evidence(document, nonce=PPCIE_NONCE)


def test_report_for_another_nonce_is_refused_as_stale() -> None:
    report, chain, nonce = load(HOPPER)
    with pytest.raises(AttestationFailed, match="stale or replayed"):
        verify_report(report, chain, nonce=flipped(nonce, 0))


def test_one_flipped_measurement_byte_breaks_the_signature() -> None:
    report, chain, nonce = load(HOPPER)
    first_value = 37 + 8 + 7  # request, response header, block header + DMTF value header
    with pytest.raises(AttestationFailed, match="signature"):
        verify_report(flipped(report, first_value + 5), chain, nonce=nonce)


def test_one_flipped_signature_byte_is_refused() -> None:
    report, chain, nonce = load(HOPPER)
    with pytest.raises(AttestationFailed, match="signature"):
        verify_report(flipped(report, len(report) - 1), chain, nonce=nonce)


@pytest.mark.parametrize("position", range(5))
@pytest.mark.parametrize("where", ["signature", "public key"])
def test_one_flipped_byte_in_any_certificate_is_refused(position: int, where: str) -> None:
    report, chain, nonce = load(HOPPER)
    certificates = x509.load_pem_x509_certificates(chain)
    der = certificates[position].public_bytes(serialization.Encoding.DER)
    offset = (
        len(der) - 1
        if where == "signature"
        else der.index(
            certificates[position]
            .public_key()
            .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        )
        + 20
    )
    certificates[position] = x509.load_der_x509_certificate(flipped(der, offset))
    with pytest.raises(AttestationFailed, match="GPU certificate"):
        verify_report(report, pem(certificates), nonce=nonce)


def test_chain_from_another_gpu_is_refused_for_its_fwid() -> None:
    report, _, nonce = load(HOPPER)
    _, other_chain, _ = load(COCO)
    with pytest.raises(AttestationFailed, match="FWID"):
        verify_report(report, other_chain, nonce=nonce)


def test_certificates_outside_their_validity_are_refused() -> None:
    report, chain, nonce = load(HOPPER)
    with pytest.raises(AttestationFailed, match="not valid at"):
        verify_report(report, chain, nonce=nonce, now=datetime(2019, 1, 1, tzinfo=UTC))


class Forgery:
    """A complete forgery of the Hopper sample: a self-made root and leaf (real FWID extension), report re-signed."""

    def __init__(self, fwid_extension: bytes | None = None) -> None:
        report, chain, self.nonce = load(HOPPER)
        real_leaf = x509.load_pem_x509_certificates(chain)[0]
        oid = x509.ObjectIdentifier("2.23.133.5.4.1")
        extension = fwid_extension or real_leaf.extensions.get_extension_for_oid(oid).value.value
        root_key, leaf_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
        root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "NVIDIA Device Identity CA")])
        leaf_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "GH100 A01 GSP FMC LF")])
        start, end = datetime(2020, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC)

        def issue(name: x509.Name, key: ec.EllipticCurvePrivateKey, ca: bool) -> x509.Certificate:
            builder = x509.CertificateBuilder(
                issuer_name=root_name,
                subject_name=name,
                public_key=key.public_key(),
                serial_number=x509.random_serial_number(),
                not_valid_before=start,
                not_valid_after=end,
            )
            if ca:
                builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            else:
                builder = builder.add_extension(x509.UnrecognizedExtension(oid, extension), critical=False)
            return builder.sign(root_key, hashes.SHA384())

        self.root = issue(root_name, root_key, ca=True)
        self.chain = pem([issue(leaf_name, leaf_key, ca=False), self.root])
        signed = parse_report(report).signed
        r, s = decode_dss_signature(leaf_key.sign(signed, ec.ECDSA(hashes.SHA384())))
        self.report = signed + r.to_bytes(48, "big") + s.to_bytes(48, "big")

    def pin_its_root(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(nvidia_gpu, "NVIDIA_DEVICE_ROOT_SHA256", self.root.fingerprint(hashes.SHA256()))


def test_chain_to_a_self_made_root_is_refused_by_the_pin() -> None:
    forgery = Forgery()
    with pytest.raises(AttestationFailed, match="not the pinned NVIDIA Device Identity CA"):
        verify_report(forgery.report, forgery.chain, nonce=forgery.nonce)


def test_the_forgery_is_complete_so_only_the_pin_stops_it(monkeypatch: pytest.MonkeyPatch) -> None:
    forgery = Forgery()
    forgery.pin_its_root(monkeypatch)
    assert verify_report(forgery.report, forgery.chain, nonce=forgery.nonce).architecture == "Hopper"


def test_leaf_whose_fwid_differs_from_the_report_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _, chain, _ = load(HOPPER)
    real = (
        x509.load_pem_x509_certificates(chain)[0]
        .extensions.get_extension_for_oid(x509.ObjectIdentifier("2.23.133.5.4.1"))
        .value.value
    )
    forgery = Forgery(fwid_extension=real[:-1] + bytes([real[-1] ^ 0x01]))
    forgery.pin_its_root(monkeypatch)
    with pytest.raises(AttestationFailed, match="FWID"):
        verify_report(forgery.report, forgery.chain, nonce=forgery.nonce)


def test_every_truncation_of_a_report_fails_cleanly() -> None:
    report, _, _ = load(HOPPER)
    for length in range(len(report)):
        with pytest.raises(AttestationFailed):
            parse_report(report[:length])


def test_garbage_fails_cleanly() -> None:
    report, chain, nonce = load(HOPPER)
    rng = random.Random(7)
    for _ in range(300):
        garbage = report[:37] + bytes(rng.randrange(256) for _ in range(rng.randrange(4200)))
        with pytest.raises(AttestationFailed):
            verify_report(garbage, chain, nonce=nonce)
    for bad_chain in [b"", b"not a certificate", chain.split(b"-----END CERTIFICATE-----")[0]]:
        with pytest.raises(AttestationFailed, match="GPU certificate chain"):
            verify_report(report, bad_chain, nonce=nonce)


def test_any_single_changed_byte_fails_cleanly() -> None:
    report, chain, nonce = load(HOPPER)
    rng = random.Random(11)
    for _ in range(200):
        offset = rng.randrange(len(report))
        changed = report[:offset] + bytes([report[offset] ^ rng.randrange(1, 256)]) + report[offset + 1 :]
        with pytest.raises(AttestationFailed):
            verify_report(changed, chain, nonce=nonce)


def test_oversized_report_is_refused_before_parsing() -> None:
    report, chain, nonce = load(HOPPER)
    with pytest.raises(AttestationFailed, match="over"):
        verify_report(report + bytes(0x2000), chain, nonce=nonce)


def test_expected_measurements_that_match_are_counted() -> None:
    report, chain, nonce = load(BLACKWELL)
    golden = dict(parse_report(report).measurements)
    verdict = verify_report(report, chain, nonce=nonce, expected_measurements=golden)
    assert verdict.measurements_checked == 64


@pytest.mark.parametrize("index", [2, 99])
def test_expected_measurement_mismatch_or_absence_is_refused(index: int) -> None:
    report, chain, nonce = load(BLACKWELL)
    golden = {index: flipped(parse_report(report).measurements.get(index, bytes(48)), 0)}
    with pytest.raises(AttestationFailed, match=f"measurement {index}"):
        verify_report(report, chain, nonce=nonce, expected_measurements=golden)


class FakeNvml(types.ModuleType):
    """Just the pynvml calls ``collect_report`` makes, answering with a recorded report and chain."""

    NVML_CC_SYSTEM_FEATURE_ENABLED = 1

    class NVMLError(Exception):
        pass

    def __init__(self, report: bytes, chain: bytes, cc_feature: int = 1, driver_loaded: bool = True) -> None:
        super().__init__("pynvml")
        self.report, self.chain, self.cc_feature, self.driver_loaded = report, chain, cc_feature, driver_loaded
        self.nonces: list[bytes] = []

    def nvmlInit(self) -> None:
        if not self.driver_loaded:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlShutdown(self) -> None:
        pass

    def nvmlSystemGetConfComputeState(self) -> Any:
        return types.SimpleNamespace(ccFeature=self.cc_feature)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetConfComputeGpuAttestationReport(self, device: int, nonce: bytes) -> Any:
        self.nonces.append(bytes(nonce))
        padded = list(self.report) + [0] * (0x2000 - len(self.report))
        return types.SimpleNamespace(attestationReport=padded, attestationReportSize=len(self.report))

    def nvmlDeviceGetConfComputeGpuCertificate(self, device: int) -> Any:
        padded = list(self.chain) + [0] * (0x1400 - len(self.chain))
        return types.SimpleNamespace(attestationCertChain=padded, attestationCertChainSize=len(self.chain))


def test_collected_report_goes_straight_into_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    report, chain, nonce = load(HOPPER)
    nvml = FakeNvml(report, chain)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    collected, collected_chain = collect_report(nonce)
    assert nvml.nonces == [nonce]
    assert verify_report(collected, collected_chain, nonce=nonce).driver_version == "550.90.07"


def test_collection_without_nvidia_ml_py_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with pytest.raises(AttestationFailed, match=r"cocoon\[gpu\]"):
        collect_report(HOPPER_NONCE)


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"driver_loaded": False}, "driver"), ({"cc_feature": 0}, "confidential-computing mode is off")],
)
def test_collection_without_driver_or_cc_mode_says_so(
    monkeypatch: pytest.MonkeyPatch, settings: dict[str, Any], message: str
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(b"", b"", **settings))
    with pytest.raises(AttestationFailed, match=message):
        collect_report(HOPPER_NONCE)
