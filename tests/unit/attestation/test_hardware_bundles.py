"""Real TDX and SEV-SNP evidence in a worker's bundle: collected through configfs-tsm, verified to the vendor
roots, and refused when it does not commit to the worker's keys.

The evidence is real (``../shared/attestation-samples``), so its report data commits to whatever its producer
chose, never to a key made here: every bundle below is one a worker could present with a quote it copied.
A quote bound to this worker's keys needs the hardware (the gap, named). Collateral carries a validity window,
so the verifier's clock is fixed at the sample's time.
"""

from __future__ import annotations

import json
import struct
import uuid
from pathlib import Path
from typing import Any

import msgpack
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from starlette.testclient import TestClient

from cocoon.attestation import AttestationBundle, AttestationPolicy, AttestationVerifier, tdx, tsm
from cocoon.attestation.bundle import SnpCollateral
from cocoon.attestation.challenge import challenge_message
from cocoon.attestation.collect import ARK_GUID, ASK_GUID, VCEK_GUID, resolve_provider, snp_certificates
from cocoon.config import ProxySettings, WorkerSettings
from cocoon.crypto import load_or_create_node_keys, node_id_for
from cocoon.errors import AttestationFailed
from cocoon.proxy.app import create_app
from cocoon.worker.node import attest
from tests.helpers.samples import samples_dir
from tests.helpers.tsm import FakeTsm

TDX_AT = 1752919234  # README: the collateral of tdx_quote is valid then
MODEL = "ab" * 32
PRODUCTION = AttestationPolicy(allowed_model_hashes=[MODEL])  # no allow_simulated: hardware or nothing


def tdx_sample() -> tuple[bytes, str]:
    folder = samples_dir() / "tdx-dcap-qvl"
    return (folder / "tdx_quote").read_bytes(), (folder / "tdx_quote_collateral.json").read_text()


def snp_sample() -> tuple[bytes, bytes, bytes]:
    folder = samples_dir() / "sev-snp-virtee"
    report = bytes.fromhex((folder / "report_milan.hex").read_text().strip())
    return report, (folder / "vcek_milan.der").read_bytes(), (folder / "cert_chain_milan").read_bytes()


def verifier() -> AttestationVerifier:
    return AttestationVerifier(PRODUCTION, clock=lambda: TDX_AT)


def bundle_for(tmp_path: Path, provider: str, quote: bytes, collateral: bytes, measurement: str) -> AttestationBundle:
    keys = load_or_create_node_keys(tmp_path / "keys.json")
    return AttestationBundle(
        provider=provider,  # type: ignore[arg-type]
        quote=quote,
        collateral=collateral,
        x25519_pub=keys.sealing.public,
        ed25519_pub=keys.signing.public,
        model_hashes=[MODEL],
        measurement=measurement,
    )


def test_a_real_tdx_quote_not_bound_to_the_workers_keys_is_refused_after_it_verifies(tmp_path: Path) -> None:
    quote, collateral = tdx_sample()
    bundle = bundle_for(tmp_path, "tdx", quote, collateral.encode(), tdx.parse_quote(quote).measurement)
    with pytest.raises(AttestationFailed, match="tdx report data does not commit to the worker's keys and models"):
        verifier().verify(bundle)


def test_a_real_snp_report_not_bound_to_the_workers_keys_is_refused_after_it_verifies(tmp_path: Path) -> None:
    report, vcek, chain = snp_sample()
    collateral = SnpCollateral(vcek=vcek, chain=chain).model_dump_json().encode()
    bundle = bundle_for(tmp_path, "sev-snp", report, collateral, report[0x90:0xC0].hex())
    with pytest.raises(AttestationFailed, match="sev-snp report data does not commit to the worker's keys"):
        verifier().verify(bundle)


def test_a_tampered_quote_fails_on_its_signature_before_the_binding_is_looked_at(tmp_path: Path) -> None:
    quote, collateral = tdx_sample()
    tampered = bytearray(quote)
    tampered[200] ^= 1  # inside MRTD
    bundle = bundle_for(tmp_path, "tdx", bytes(tampered), collateral.encode(), tdx.parse_quote(quote).measurement)
    with pytest.raises(AttestationFailed, match="does not verify"):
        verifier().verify(bundle)


def test_hardware_evidence_without_its_collateral_says_what_the_worker_must_send(tmp_path: Path) -> None:
    quote, _ = tdx_sample()
    with pytest.raises(AttestationFailed, match="without its Intel collateral"):
        verifier().verify(bundle_for(tmp_path, "tdx", quote, b"", tdx.parse_quote(quote).measurement))
    report, _, _ = snp_sample()
    with pytest.raises(AttestationFailed, match="without its VCEK/VLEK and chain"):
        verifier().verify(bundle_for(tmp_path, "sev-snp", report, b"", report[0x90:0xC0].hex()))


def test_auto_takes_the_tee_configfs_tsm_names_and_never_falls_back_to_simulated_silently(tmp_path: Path) -> None:
    root = tmp_path / "report"
    with pytest.raises(AttestationFailed, match="no TEE here"):
        resolve_provider("auto", tsm_root=root, dev_authority=False)
    assert resolve_provider("auto", tsm_root=root, dev_authority=True) == "simulated"


@pytest.fixture
def guest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeTsm:
    """A TDX guest's configfs-tsm that answers with the recorded real quote, whatever report data it is given."""
    quote, collateral = tdx_sample()
    root = tmp_path / "tsm" / "report"
    root.mkdir(parents=True)
    kernel = FakeTsm(root, "tdx_guest", report=lambda _inblob: quote)
    monkeypatch.setattr(tsm, "_make_entry", kernel.make_entry)
    monkeypatch.setattr(tsm, "_remove_entry", kernel.remove_entry)
    # Intel PCS cannot be reached from here: the collateral it would serve for this quote's FMSPC is the sample's.
    monkeypatch.setattr(tdx, "fetch_collateral", lambda raw, **_: collateral)
    monkeypatch.setattr(tsm, "detect_provider", lambda _root=root: "tdx")
    return kernel


async def test_a_worker_in_a_tdx_guest_presents_its_quote_and_collateral_and_is_refused_when_unbound(
    guest: FakeTsm, tmp_path: Path
) -> None:
    settings = WorkerSettings(attestation="auto", tsm_root=guest.root, keys_file=tmp_path / "keys.json")
    keys = load_or_create_node_keys(settings.keys_file)

    bundle = await attest(settings, keys, [MODEL])

    quote, collateral = tdx_sample()
    assert (bundle.provider, bundle.quote, bundle.collateral) == ("tdx", quote, collateral.encode())
    assert bundle.measurement == tdx.parse_quote(quote).measurement and len(bundle.measurement) == 480
    assert guest.entries and guest.removed == guest.entries
    with pytest.raises(AttestationFailed, match="does not commit to the worker's keys"):
        verifier().verify(bundle)


def test_the_snp_certificate_table_from_the_host_gives_the_vcek_and_its_chain() -> None:
    _report, vcek, chain = snp_sample()
    ask, ark = x509.load_pem_x509_certificates(chain)
    certs = [(VCEK_GUID, vcek), (ASK_GUID, ask.public_bytes(Encoding.DER)), (ARK_GUID, ark.public_bytes(Encoding.DER))]
    offset = 24 * (len(certs) + 1)
    table, blobs = b"", b""
    for guid, der in certs:
        table += guid.bytes_le + struct.pack("<II", offset + len(blobs), len(der))
        blobs += der
    leaf, pem = snp_certificates(table + bytes(24) + blobs) or (b"", b"")
    assert leaf == vcek
    assert [c.subject for c in x509.load_pem_x509_certificates(pem)] == [ask.subject, ark.subject]
    assert snp_certificates(uuid.uuid4().bytes_le + struct.pack("<II", 48, 0) + bytes(24)) is None


def test_a_proxy_with_a_production_policy_refuses_the_copied_quote_at_registration_saying_why(tmp_path: Path) -> None:
    quote, collateral = tdx_sample()
    keys = load_or_create_node_keys(tmp_path / "keys.json")
    bundle = bundle_for(tmp_path, "tdx", quote, collateral.encode(), tdx.parse_quote(quote).measurement)
    app = create_app(ProxySettings(data_dir=tmp_path / "proxy", policy=PRODUCTION))
    with TestClient(app) as client, client.websocket_connect("/v1/worker/connect") as ws:
        app.state.proxy.verifier.clock = lambda: TDX_AT
        challenge = msgpack.unpackb(ws.receive_bytes())
        signature = keys.signing.sign(challenge_message(challenge["proxy_id"], challenge["nonce"]))
        ws.send_bytes(msgpack.packb(registration(keys, bundle, signature), use_bin_type=True))
        refusal = msgpack.unpackb(ws.receive_bytes())
    assert refusal["t"] == "error"
    assert "report data does not commit to the worker's keys" in json.dumps(refusal["error"])


def registration(keys: Any, bundle: AttestationBundle, signature: bytes) -> dict[str, Any]:
    return {
        "t": "register",
        "v": 1,
        "worker_id": node_id_for(keys.signing.public),
        "software": "cocoon/test",
        "models": [{"model": "m", "model_hash": MODEL, "context_length": 4096}],
        "slots": 1,
        "price_coefficient": 1000,
        "region": "",
        "payout_address": "",
        "ed25519_pub": keys.signing.public,
        "x25519_pub": keys.sealing.public,
        "attestation": bundle.model_dump(),
        "challenge_signature": signature,
    }
