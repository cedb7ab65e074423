"""Registration freshness: quotes age out, the challenge binds key and proxy, the verdict cache stays bounded."""

from __future__ import annotations

import time

import pytest

from cocoon.attestation import (
    DEV_MEASUREMENT,
    AttestationBundle,
    AttestationPolicy,
    AttestationVerifier,
    answer_challenge,
    challenge_answered,
    make_simulated_quote,
    report_data,
)
from cocoon.crypto import NodeKeys, SigningKey
from cocoon.errors import AttestationFailed

MODEL = "cd" * 32


def bundle(authority: SigningKey, keys: NodeKeys, issued_at: float | None = None) -> AttestationBundle:
    data = report_data(keys.sealing.public, keys.signing.public, [MODEL])
    return AttestationBundle(
        provider="simulated",
        quote=make_simulated_quote(authority, data, issued_at=issued_at),
        x25519_pub=keys.sealing.public,
        ed25519_pub=keys.signing.public,
        model_hashes=[MODEL],
        measurement=DEV_MEASUREMENT,
    )


def verifier(authority: SigningKey, **changes: object) -> AttestationVerifier:
    policy = AttestationPolicy(allow_simulated=True, simulated_authorities=[authority.public.hex()])
    return AttestationVerifier(policy.model_copy(update=changes))


def test_a_proxy_refuses_a_quote_older_than_the_policy_allows() -> None:
    authority, keys = SigningKey.generate(), NodeKeys.generate()
    old = bundle(authority, keys, issued_at=time.time() - 600)
    check = verifier(authority, max_quote_age_s=300)
    with pytest.raises(AttestationFailed, match="old"):
        check.verify(old, fresh_at=time.time())
    # A client reading the directory checks what the quote binds, not its age.
    assert check.verify(old).ed25519_pub == keys.signing.public


def test_a_fresh_quote_is_admitted_and_a_quote_from_the_future_is_not() -> None:
    authority, keys = SigningKey.generate(), NodeKeys.generate()
    check = verifier(authority)
    assert check.verify(bundle(authority, keys), fresh_at=time.time()).provider == "simulated"
    with pytest.raises(AttestationFailed, match="future"):
        check.verify(bundle(authority, keys, issued_at=time.time() + 3600), fresh_at=time.time())


def test_the_verdict_cache_keeps_a_bounded_number_of_refusals() -> None:
    authority, rogue = SigningKey.generate(), SigningKey.generate()
    check = AttestationVerifier(verifier(authority).policy, verdicts_kept=8)
    for _ in range(50):
        with pytest.raises(AttestationFailed, match="does not trust"):
            check.verify(bundle(rogue, NodeKeys.generate()))
    assert check.cached_verdicts() == 8


def test_a_challenge_answer_binds_the_key_the_proxy_and_the_nonce() -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    signature = answer_challenge(key, "p-1", b"n" * 32)
    assert challenge_answered(key.public, "p-1", b"n" * 32, signature)
    assert not challenge_answered(other.public, "p-1", b"n" * 32, signature)
    assert not challenge_answered(key.public, "p-2", b"n" * 32, signature)
    assert not challenge_answered(key.public, "p-1", b"m" * 32, signature)
    assert not challenge_answered(key.public, "p-1", b"n" * 32, b"")


def test_a_malformed_quote_is_refused_with_a_reason_not_a_crash() -> None:
    authority, keys = SigningKey.generate(), NodeKeys.generate()
    good = bundle(authority, keys)
    for junk in (b"", b"\x93\x01\x02\x03", b"\x92\xc4\x01x\xa3sig", b"\xc1"):
        with pytest.raises(AttestationFailed, match="malformed"):
            verifier(authority).verify(good.model_copy(update={"quote": junk}))
