"""Fetching a VCEK from AMD KDS, against a fake KDS (no network here); the real service is not exercised."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from cocoon.attestation.amd_kds import fetch_vcek
from cocoon.attestation.sev_snp import parse_report, verify_report
from cocoon.errors import AttestationFailed
from tests.helpers.samples import samples_dir

HWID = (
    "c38427a30d4c7af9d96f7a15b97269825a64cb76a2352ffd5d18115d89ad473f"
    "8e8c0bcd9a5d9286612bad4aadfb4426205a3b9e4fea82301135a170e477524e"
)


class FakeKds:
    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.asked: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.asked.append(str(request.url))
        folder = samples_dir()
        if request.url.path.endswith("/cert_chain"):
            body = (folder / "sev-snp-go-sev-guest/ask_ark_milan.pem").read_bytes()
        else:
            body = (folder / "sev-snp-trustee/snp_test-vcek.der").read_bytes()
        return httpx.Response(self.status, content=body)


def _cached_files(folder: Path) -> list[Path]:
    return list(folder.rglob("*"))


def _report_bytes() -> bytes:
    return (samples_dir() / "sev-snp-trustee/snp_test-report.bin").read_bytes()


async def test_vcek_and_chain_are_fetched_once_then_served_from_the_cache(tmp_path: Path) -> None:
    kds = FakeKds()
    report = parse_report(_report_bytes())
    async with httpx.AsyncClient(transport=httpx.MockTransport(kds)) as client:
        first = await fetch_vcek(report, product="Milan", cache_dir=tmp_path, client=client)
        second = await fetch_vcek(report, product="Milan", cache_dir=tmp_path, client=client)
    assert kds.asked == [
        f"https://kdsintf.amd.com/vcek/v1/Milan/{HWID}?blSPL=3&teeSPL=0&snpSPL=8&ucodeSPL=115",
        "https://kdsintf.amd.com/vcek/v1/Milan/cert_chain",
    ]
    assert first == second
    assert verify_report(_report_bytes(), *first).signing_key == "VCEK"


async def test_a_kds_refusal_names_the_url(tmp_path: Path) -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(FakeKds(status=429))) as client:
        with pytest.raises(AttestationFailed, match=r"HTTP 429 for https://kdsintf\.amd\.com/vcek/v1/Milan/c384"):
            await fetch_vcek(parse_report(_report_bytes()), product="Milan", cache_dir=tmp_path, client=client)
    assert _cached_files(tmp_path) == []


async def test_a_vlek_report_or_an_unnamed_product_is_refused_before_asking(tmp_path: Path) -> None:
    vlek = parse_report((samples_dir() / "sev-snp-trustee/snp_test-vlek-report.bin").read_bytes())
    with pytest.raises(AttestationFailed, match="cloud provider supplies a VLEK"):
        await fetch_vcek(vlek, cache_dir=tmp_path)
    with pytest.raises(AttestationFailed, match="pass product="):
        await fetch_vcek(parse_report(_report_bytes()), cache_dir=tmp_path)
