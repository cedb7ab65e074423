"""``cocoon attest verify`` on every recorded real vector: each positive one verifies (exit 0), each negative
one is rejected with its reason on one line (exit 1). The vectors and their fixed times are the samples
README's (``../shared/attestation-samples``, read in place, never copied)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cocoon.cli import app
from tests.helpers.samples import samples_dir

runner = CliRunner()

HOPPER = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb"
COCO = "87d8e24ab336adafe228d49e83d745f6dba4ae505372b6a5704820856b343fec"
BLACKWELL = "4cff7f5380ead8fad8ec2c531c110aca4302a88f603792801a8ca29ee151af2e"
PPCIE = "4760e30534a0621357d458b1a7936551b5dc4cd1e69718adf7ed9fb0252a537e"
OUTDATED = "tdx-dcap-qvl/tdx_quote_outdated_collateral.json"
SPR = "tdx-go-tdx-guest/collateral_v4_50806f.dcap-qvl.json"

# (evidence, collateral files, --at, --nonce, what the report must say)
POSITIVE = [
    ("tdx-dcap-qvl/tdx_quote", ["tdx-dcap-qvl/tdx_quote_collateral.json"], 1752919234, None, "UpToDate"),
    ("tdx-dcap-qvl/near_quote_hex.txt", ["tdx-dcap-qvl/near_quote_collateral.json"], 1759388630, None, "UpToDate"),
    ("tdx-go-tdx-guest/quote_v5_sample.dat", [OUTDATED], 1774003274, None, "UpToDate"),
    ("tdx-trustee/tdx_quote_6.dat", ["tdx-trustee/tdx_quote_6.COMPOSED_collateral.dcap-qvl.json"], 1761955200, None,
     "OutOfDate"),
    ("sev-snp-virtee/report_milan.hex", ["sev-snp-virtee/vcek_milan.der", "sev-snp-virtee/cert_chain_milan"], None,
     None, "Milan"),
    ("sev-snp-trustee/snp_test-report.bin",
     ["sev-snp-trustee/snp_test-vcek.der", "sev-snp-go-sev-guest/ask_ark_milan.pem"], None, None, "VCEK"),
    ("sev-snp-trustee/snp_test-vlek-report.bin",
     ["sev-snp-trustee/snp_test-vlek.der", "sev-snp-trustee/go-sev-guest_ask_ark_milan_vlek.pem"], 1750000000, None,
     "VLEK"),
    ("sev-snp-trustee/az-snp-vtpm_evidence-genoa.snp_report.bin",
     ["sev-snp-trustee/az-snp-vtpm_vcek-genoa.pem", "sev-snp-go-sev-guest/ask_ark_genoa.pem"], None, None, "Genoa"),
    ("nvidia-gpu/trustee_hopperAttestationReport.txt", ["nvidia-gpu/trustee_hopper_cert_chain_case1.txt"], None,
     HOPPER, "Hopper"),
    ("nvidia-gpu/trustee_hopper_coco_report1.txt", ["nvidia-gpu/trustee_hopper_coco_certs1.txt"], None, COCO,
     "Hopper"),
    ("nvidia-gpu/trustee_blackwellAttestationReport.txt", ["nvidia-gpu/trustee_blackwell_cert_chain_case1.txt"],
     None, BLACKWELL, "Blackwell"),
    ("nvidia-gpu/nvtrust_ppcie_gpu_evidence_8xH100.json", [], None, PPCIE, "Hopper"),
]  # fmt: skip

NEGATIVE = [
    ("tdx-dcap-qvl/tdx_quote_outdated", [OUTDATED], 1774003274, None, "No matching TCB level"),
    ("tdx-trustee/tdx_quote_5.dat", [OUTDATED], 1774003274, None, "No matching TCB level"),
    ("tdx-go-tdx-guest/tdx_prod_quote_SPR_E4.dat", [SPR], 1688801098, None, "No matching TCB level"),
    ("tdx-trustee/tdx_quote_4.dat", [SPR], 1688801098, None, "debug TD"),
    ("tdx-dcap-qvl/sgx_quote", ["tdx-dcap-qvl/sgx_quote_collateral.json"], 1752919277, None, "SGX"),
    ("tdx-dcap-qvl/tdx_quote", ["tdx-dcap-qvl/tdx_quote_collateral.json"], 1900000000, None, "verify"),
    ("sev-snp-go-sev-guest/attestation.bin",
     ["sev-snp-go-sev-guest/vcek.testcer", "sev-snp-go-sev-guest/ask_ark_milan.pem"], None, None, "debug"),
    ("sev-snp-trustee/snp_test-vlek-report.bin",
     ["sev-snp-trustee/snp_test-vlek.der", "sev-snp-trustee/go-sev-guest_ask_ark_milan_vlek.pem"], 1770000000, None,
     "valid"),
    ("sev-snp-virtee/report_milan.hex", ["sev-snp-trustee/snp_test-vcek.der", "sev-snp-virtee/cert_chain_milan"],
     None, None, "does not verify"),  # another chip's VCEK
    ("nvidia-gpu/trustee_hopperAttestationReport.txt", ["nvidia-gpu/trustee_hopper_cert_chain_case1.txt"], None,
     COCO, "nonce"),
    ("nvidia-gpu/trustee_hopperAttestationReport.txt", ["nvidia-gpu/trustee_hopper_coco_certs1.txt"], None, HOPPER,
     "another GPU"),
]  # fmt: skip


def attest(evidence: str, collateral: list[str], at: int | None, nonce: str | None) -> tuple[int, str]:
    folder = samples_dir()
    args = ["attest", "verify", str(folder / evidence), "--json"]
    for path in collateral:
        args += ["--collateral", str(folder / path)]
    if at is not None:
        args += ["--at", str(at)]
    if nonce is not None:
        args += ["--nonce", nonce]
    result = runner.invoke(app, args)
    return result.exit_code, result.stdout


@pytest.mark.parametrize(("evidence", "collateral", "at", "nonce", "says"), POSITIVE, ids=[v[0] for v in POSITIVE])
def test_every_positive_vector_verifies(
    evidence: str, collateral: list[str], at: int | None, nonce: str | None, says: str
) -> None:
    code, out = attest(evidence, collateral, at, nonce)
    assert code == 0, out
    report = json.loads(out)
    assert report["verified"] is True and says in out


@pytest.mark.parametrize(("evidence", "collateral", "at", "nonce", "says"), NEGATIVE, ids=[v[0] for v in NEGATIVE])
def test_every_negative_vector_is_rejected_with_its_reason(
    evidence: str, collateral: list[str], at: int | None, nonce: str | None, says: str
) -> None:
    code, out = attest(evidence, collateral, at, nonce)
    assert code == 1, out
    first = out.splitlines()[0]
    assert json.loads(first)["verified"] is False
    assert says.lower() in json.loads(first)["reason"].lower()


def test_one_flipped_byte_anywhere_in_a_quote_is_rejected(tmp_path: Path) -> None:
    folder = samples_dir()
    quote = bytearray((folder / "tdx-dcap-qvl/tdx_quote").read_bytes())
    for offset in (100, 600, len(quote) - 200):  # the body, the signature, the root certificate it carries
        tampered = bytearray(quote)
        tampered[offset] ^= 0x01
        target = tmp_path / f"quote-{offset}"
        target.write_bytes(bytes(tampered))
        code, _ = attest(str(target), ["tdx-dcap-qvl/tdx_quote_collateral.json"], 1752919234, None)
        assert code == 1, offset


def test_something_that_is_no_evidence_is_rejected_and_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello, this is not a quote")
    assert runner.invoke(app, ["attest", "verify", str(path)]).exit_code == 1
    assert runner.invoke(app, ["attest", "verify", str(path) + ".missing"]).exit_code == 2
