"""TDX quotes on recorded real evidence (shared/attestation-samples, README §1): what verifies, what is refused."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from cocoon.attestation.tdx import collateral_expiry, fetch_collateral, parse_quote, verify_quote
from cocoon.errors import AttestationFailed
from tests.helpers.samples import samples_dir


@dataclass(frozen=True)
class Vector:
    quote: str
    collateral: str
    now: int  # the fixed time the README verified it at

    def raw(self) -> bytes:
        data = (samples_dir() / self.quote).read_bytes()
        return bytes.fromhex(data.decode().strip()) if self.quote.endswith(".txt") else data

    def text(self) -> str:
        return (samples_dir() / self.collateral).read_text()


V4 = Vector("tdx-dcap-qvl/tdx_quote", "tdx-dcap-qvl/tdx_quote_collateral.json", 1752919234)
NEAR = Vector("tdx-dcap-qvl/near_quote_hex.txt", "tdx-dcap-qvl/near_quote_collateral.json", 1759388630)
V5 = Vector("tdx-go-tdx-guest/quote_v5_sample.dat", "tdx-dcap-qvl/tdx_quote_outdated_collateral.json", 1774003274)
OUT_OF_DATE = Vector(
    "tdx-trustee/tdx_quote_6.dat", "tdx-trustee/tdx_quote_6.COMPOSED_collateral.dcap-qvl.json", 1761955200
)
DEBUG_TD = Vector("tdx-trustee/tdx_quote_4.dat", "tdx-go-tdx-guest/collateral_v4_50806f.dcap-qvl.json", 1688801098)
NO_TCB_LEVEL = [
    Vector("tdx-dcap-qvl/tdx_quote_outdated", "tdx-dcap-qvl/tdx_quote_outdated_collateral.json", 1774003274),
    Vector("tdx-trustee/tdx_quote_5.dat", "tdx-dcap-qvl/tdx_quote_outdated_collateral.json", 1774003274),
    Vector("tdx-go-tdx-guest/tdx_prod_quote_SPR_E4.dat", DEBUG_TD.collateral, 1688801098),
]
SGX = Vector("tdx-dcap-qvl/sgx_quote", "tdx-dcap-qvl/sgx_quote_collateral.json", 1752919277)


@pytest.mark.parametrize("vector", [V4, NEAR, V5], ids=["v4", "near-v4-hex", "v5"])
def test_recorded_quote_verifies_up_to_date(vector: Vector) -> None:
    verdict = verify_quote(vector.raw(), vector.text(), now=vector.now)
    assert verdict.tcb_status == "UpToDate"
    assert verdict.advisory_ids == ()
    assert verdict.quote.version == (5 if vector is V5 else 4)
    assert not verdict.quote.debug
    assert verdict.measurement == verdict.quote.measurement and len(verdict.measurement) == 480


def test_fmspc_is_read_from_the_quotes_pck_certificate() -> None:
    assert verify_quote(V4.raw(), V4.text(), now=V4.now).fmspc == "B0C06F000000"
    assert verify_quote(V5.raw(), V5.text(), now=V5.now).fmspc == "90C06F000000"


@pytest.mark.parametrize(("vector", "shift"), [(V4, 0), (NEAR, 0), (V5, 6)], ids=["v4", "near-v4-hex", "v5"])
def test_parsed_fields_are_the_bytes_at_the_documented_offsets(vector: Vector, shift: int) -> None:
    raw = vector.raw()
    quote = parse_quote(raw)
    assert quote.mrtd == raw[184 + shift : 232 + shift]
    for i, rtmr in enumerate(quote.rtmrs):
        start = 376 + 48 * i + shift
        assert rtmr == raw[start : start + 48]
    assert quote.report_data == raw[568 + shift : 632 + shift]
    assert quote.measurement == (raw[184 + shift : 232 + shift] + raw[376 + shift : 568 + shift]).hex()


def test_near_quote_report_data_and_rtmr3_are_what_its_producer_set() -> None:
    quote = parse_quote(NEAR.raw())
    assert quote.report_data.startswith(bytes.fromhex("0001"))
    assert quote.rtmrs[3] != bytes(48)


def test_out_of_date_platform_is_refused_by_default_naming_status_and_how_to_accept() -> None:
    with pytest.raises(AttestationFailed, match=r"OutOfDate.*advisories.*add 'OutOfDate'"):
        verify_quote(OUT_OF_DATE.raw(), OUT_OF_DATE.text(), now=OUT_OF_DATE.now)


def test_out_of_date_platform_is_accepted_when_the_caller_accepts_out_of_date() -> None:
    verdict = verify_quote(
        OUT_OF_DATE.raw(), OUT_OF_DATE.text(), now=OUT_OF_DATE.now, accepted_tcb=("UpToDate", "OutOfDate")
    )
    assert verdict.tcb_status == "OutOfDate"
    assert verdict.fmspc == "00A06D080000"


def test_debug_td_is_refused() -> None:
    assert parse_quote(DEBUG_TD.raw()).debug
    with pytest.raises(AttestationFailed, match="debug TD"):
        verify_quote(DEBUG_TD.raw(), DEBUG_TD.text(), now=DEBUG_TD.now)


@pytest.mark.parametrize("vector", NO_TCB_LEVEL, ids=lambda v: v.quote.rsplit("/", 1)[-1])
def test_platform_below_every_tcb_level_is_refused(vector: Vector) -> None:
    with pytest.raises(AttestationFailed, match=r"dcap-qvl.*No matching TCB level found"):
        verify_quote(vector.raw(), vector.text(), now=vector.now)


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


@pytest.mark.parametrize("at", [568, 200, 48 + 584 + 4 + 10], ids=["report_data", "mrtd", "signature"])
def test_one_flipped_byte_in_the_quote_fails(at: int) -> None:
    with pytest.raises(AttestationFailed, match="does not verify"):
        verify_quote(_flip(V4.raw(), at), V4.text(), now=V4.now)


def test_one_changed_byte_in_the_collaterals_tcb_info_fails() -> None:
    doc = json.loads(V4.text())
    tampered = doc["tcb_info"].replace('"tcbEvaluationDataNumber":', '"tcbEvaluationDataNumber": ', 1)
    assert tampered != doc["tcb_info"]
    doc["tcb_info"] = tampered
    with pytest.raises(AttestationFailed, match="does not verify"):
        verify_quote(V4.raw(), json.dumps(doc), now=V4.now)


def test_quote_fails_once_the_collateral_is_past_its_next_update() -> None:
    expiry = collateral_expiry(V4.text())
    assert V4.now < expiry
    with pytest.raises(AttestationFailed, match=r"(?i)expired"):
        verify_quote(V4.raw(), V4.text(), now=expiry + 1)


def test_sgx_quote_is_refused_as_not_tdx() -> None:
    with pytest.raises(AttestationFailed, match=r"SGX quote.*not a TDX quote"):
        verify_quote(SGX.raw(), SGX.text(), now=SGX.now)


# V4's signature data ends at byte 4936; zeros pad the file to 5006.
@pytest.mark.parametrize(
    ("cut", "reason"),
    [(0, "header"), (47, "header"), (600, "TD report"), (48 + 584 + 2, "TD report"), (4900, "signature data")],
)
def test_truncated_quote_fails_cleanly(cut: int, reason: str) -> None:
    raw = V4.raw()
    with pytest.raises(AttestationFailed, match=f"truncated.*{reason}"):
        parse_quote(raw[:cut])
    with pytest.raises(AttestationFailed, match="truncated"):
        verify_quote(raw[:cut], V4.text(), now=V4.now)


def test_truncated_v5_body_fails_cleanly() -> None:
    with pytest.raises(AttestationFailed, match="truncated"):
        parse_quote(V5.raw()[:52])


@pytest.mark.parametrize(
    "garbage", [b"\xff" * 5000, bytes(range(256)) * 20, b"\x04\x00\x02\x00\x81\x00\x00\x00" + b"\x00" * 40]
)
def test_garbage_fails_cleanly(garbage: bytes) -> None:
    with pytest.raises(AttestationFailed):
        verify_quote(garbage, V4.text(), now=V4.now)


def test_collateral_that_is_not_json_fails() -> None:
    with pytest.raises(AttestationFailed, match="QuoteCollateralV3"):
        verify_quote(V4.raw(), "not json", now=V4.now)


def test_cached_collateral_is_used_until_its_earliest_next_update(tmp_path: Path) -> None:
    (tmp_path / "B0C06F000000-platform.json").write_text(V4.text())
    expiry = collateral_expiry(V4.text())
    unreachable = "http://127.0.0.1:9"
    assert fetch_collateral(V4.raw(), pccs_url=unreachable, cache_dir=tmp_path, now=expiry - 1) == V4.text()
    with pytest.raises(AttestationFailed, match=re.escape(f"cannot fetch TDX collateral from {unreachable}")) as err:
        fetch_collateral(V4.raw(), pccs_url=unreachable, cache_dir=tmp_path, now=expiry)
    assert "error sending request" in str(err.value)  # it did try the URL: dcap-qvl's HTTP client failed


def test_a_corrupt_cache_file_is_fetched_again(tmp_path: Path) -> None:
    (tmp_path / "B0C06F000000-platform.json").write_text("{half a file")
    with pytest.raises(AttestationFailed, match=re.escape("cannot fetch TDX collateral from http://127.0.0.1:9")):
        fetch_collateral(V4.raw(), pccs_url="http://127.0.0.1:9", cache_dir=tmp_path, now=V4.now)


async def test_fetching_collateral_refuses_to_block_an_event_loop(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"asyncio\.to_thread"):
        fetch_collateral(V4.raw(), pccs_url="http://127.0.0.1:9", cache_dir=tmp_path, now=V4.now)
