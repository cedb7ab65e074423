"""The devnet authority signs quotes only for the workers its network started, over loopback."""

from __future__ import annotations

import base64

import httpx

from cocoon.attestation import AttestationPolicy, AttestationVerifier
from cocoon.attestation.bundle import AttestationBundle
from cocoon.attestation.simulated import DEV_MEASUREMENT
from cocoon.crypto import NodeKeys
from cocoon.local.authority import DevAuthority

MODEL = "ab" * 32


def request(keys: NodeKeys) -> dict[str, object]:
    return {"x25519_pub": keys.sealing.public.hex(), "ed25519_pub": keys.signing.public.hex(), "models": [MODEL]}


def test_an_enrolled_worker_gets_a_quote_the_policy_accepts_and_a_stranger_gets_none() -> None:
    authority, worker, stranger = DevAuthority(), NodeKeys.generate(), NodeKeys.generate()
    authority.enroll(worker)
    url = authority.start()
    try:
        answer = httpx.post(url, json=request(worker), timeout=5)
        refused = httpx.post(url, json=request(stranger), timeout=5)
        malformed = httpx.post(url, content=b"{", timeout=5)
    finally:
        authority.stop()
    assert answer.status_code == 200
    assert refused.status_code == 403
    assert malformed.status_code == 400
    bundle = AttestationBundle(
        provider="simulated",
        quote=base64.b64decode(answer.json()["quote"]),
        x25519_pub=worker.sealing.public,
        ed25519_pub=worker.signing.public,
        model_hashes=[MODEL],
        measurement=DEV_MEASUREMENT,
    )
    policy = AttestationPolicy(allow_simulated=True, simulated_authorities=[authority.public_hex])
    assert AttestationVerifier(policy).verify(bundle).ed25519_pub == worker.signing.public
