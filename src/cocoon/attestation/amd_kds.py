"""Fetch a chip's VCEK and AMD's ASK/ARK chain from AMD's Key Distribution Service, cached on disk.

What comes back is untrusted until ``sev_snp.verify_report`` checks it against the pinned ARKs, so the cache may
hold anything KDS served. A VLEK cannot be fetched here: cloud providers hand it out with the report.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx

from cocoon.attestation.sev_snp import SnpReport, TcbVersion
from cocoon.errors import AttestationFailed

KDS_URL = "https://kdsintf.amd.com"
DEFAULT_CACHE_DIR = Path("~/.cache/cocoon/amd-kds")
KDS_TIMEOUT_S = 20.0


async def fetch_vcek(
    report: SnpReport,
    *,
    product: str | None = None,
    cache_dir: Path | None = None,
    client: httpx.AsyncClient | None = None,
) -> tuple[bytes, bytes]:
    """``(vcek_der, chain_pem)`` for the chip and reported TCB of ``report``, from the cache or from AMD KDS.

    ``product`` ("Milan", "Genoa", "Turin") defaults to the one the report's CPUID names (reports of version 3
    and later). Files are kept under ``cache_dir`` (``~/.cache/cocoon/amd-kds``). ``AttestationFailed`` names the
    URL when KDS cannot be reached or refuses; KDS limits how often one address may ask.
    """
    if report.signing_key != "VCEK":
        raise AttestationFailed(
            f"the report is signed by a {report.signing_key}, which AMD KDS does not serve: "
            "the cloud provider supplies a VLEK with the report"
        )
    product = product or report.product_hint
    if product is None:
        raise AttestationFailed("the report does not name its AMD product (version 2): pass product='Milan' or so")
    tcb = TcbVersion.decode(report.reported_tcb.raw, turin=product == "Turin")
    hwid = report.chip_id[: 8 if product == "Turin" else 64].hex()
    if not hwid.strip("0"):
        raise AttestationFailed("the report's chip id is masked (zero): KDS cannot name its VCEK")
    folder = (cache_dir or DEFAULT_CACHE_DIR).expanduser() / product
    spls = {"fmcSPL": tcb.fmc} if tcb.fmc is not None else {}
    spls |= {"blSPL": tcb.bootloader, "teeSPL": tcb.tee, "snpSPL": tcb.snp, "ucodeSPL": tcb.microcode}
    query = "&".join(f"{name}={value}" for name, value in spls.items())
    owned = client is None
    http = client or httpx.AsyncClient(timeout=KDS_TIMEOUT_S)
    try:
        vcek = await _cached(
            http, f"{KDS_URL}/vcek/v1/{product}/{hwid}?{query}", folder / f"{hwid[:16]}-{tcb.raw:016x}.der"
        )
        chain = await _cached(http, f"{KDS_URL}/vcek/v1/{product}/cert_chain", folder / "cert_chain.pem")
    finally:
        if owned:
            await http.aclose()
    return vcek, chain


async def _cached(http: httpx.AsyncClient, url: str, path: Path) -> bytes:
    kept = await asyncio.to_thread(_read_if_kept, path)
    if kept is not None:
        return kept
    try:
        response = await http.get(url)
    except httpx.HTTPError as exc:
        raise AttestationFailed(f"cannot fetch {url} from AMD KDS: {exc!r}") from exc
    if response.status_code != 200:
        hint = "; KDS limits requests per address, wait and retry" if response.status_code == 429 else ""
        raise AttestationFailed(f"AMD KDS answered HTTP {response.status_code} for {url}{hint}")
    await asyncio.to_thread(_write_atomically, path, response.content)
    return response.content


def _read_if_kept(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_bytes(data)
    partial.replace(path)
