"""The attestation policy: what a network accepts, and a clear reason when it refuses."""

from __future__ import annotations

import pytest

from cocoon.attestation import (
    DEV_MEASUREMENT,
    AttestationBundle,
    AttestationPolicy,
    AttestationVerifier,
    make_simulated_quote,
    report_data,
)
from cocoon.crypto import NodeKeys, SigningKey
from cocoon.errors import AttestationFailed

MODEL = "cd" * 32


def bundle(authority: SigningKey, keys: NodeKeys, models: list[str] | None = None) -> AttestationBundle:
    models = models or [MODEL]
    quote = make_simulated_quote(authority, report_data(keys.sealing.public, keys.signing.public, models))
    return AttestationBundle(
        provider="simulated",
        quote=quote,
        x25519_pub=keys.sealing.public,
        ed25519_pub=keys.signing.public,
        model_hashes=models,
        measurement=DEV_MEASUREMENT,
    )


def dev_policy(authority: SigningKey, **changes: object) -> AttestationPolicy:
    return AttestationPolicy(
        allow_simulated=True,
        simulated_authorities=[authority.public.hex()],
        allowed_measurements=[DEV_MEASUREMENT],
        allowed_model_hashes=[MODEL],
    ).model_copy(update=changes)


def test_a_dev_network_accepts_a_quote_from_its_authority() -> None:
    authority, keys = SigningKey.generate(), NodeKeys.generate()
    verified = AttestationVerifier(dev_policy(authority)).verify(bundle(authority, keys))
    assert verified.ed25519_pub == keys.signing.public
    assert verified.model_hashes == {MODEL}


def test_production_refuses_simulated_quotes() -> None:
    authority = SigningKey.generate()
    with pytest.raises(AttestationFailed, match="allow_simulated"):
        AttestationVerifier(dev_policy(authority, allow_simulated=False)).verify(bundle(authority, NodeKeys.generate()))


def test_a_quote_from_an_untrusted_authority_is_refused() -> None:
    authority, rogue = SigningKey.generate(), SigningKey.generate()
    with pytest.raises(AttestationFailed, match="does not trust"):
        AttestationVerifier(dev_policy(authority)).verify(bundle(rogue, NodeKeys.generate()))


def test_keys_swapped_after_quoting_are_refused() -> None:
    authority, keys, thief = SigningKey.generate(), NodeKeys.generate(), NodeKeys.generate()
    swapped = bundle(authority, keys).model_copy(update={"x25519_pub": thief.sealing.public})
    with pytest.raises(AttestationFailed, match="report data"):
        AttestationVerifier(dev_policy(authority)).verify(swapped)


def test_weights_off_the_allow_list_are_refused() -> None:
    authority = SigningKey.generate()
    with pytest.raises(AttestationFailed, match="model hash"):
        AttestationVerifier(dev_policy(authority)).verify(bundle(authority, NodeKeys.generate(), ["ee" * 32]))


def test_verdicts_are_cached_per_bundle() -> None:
    authority = SigningKey.generate()
    verifier = AttestationVerifier(dev_policy(authority))
    good = bundle(authority, NodeKeys.generate())
    assert verifier.verify(good) is verifier.verify(good)
