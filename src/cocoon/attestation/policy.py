"""Which attestations a network accepts, and the verifier that applies it (results cached per key).

Allow-lists come from the registry contract in production; the devnet writes them to a policy file.
``None`` for a list means "any" and is only sensible on a development network.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, Field

from cocoon.attestation.bundle import AttestationBundle, report_data
from cocoon.attestation.simulated import verify_simulated_quote
from cocoon.errors import AttestationFailed


class AttestationPolicy(BaseModel):
    allow_simulated: bool = Field(False, description="accept quotes signed by a dev authority (devnets only)")
    simulated_authorities: list[str] = Field(
        default_factory=list, description="hex Ed25519 keys of dev authorities trusted for simulated quotes"
    )
    allowed_measurements: list[str] | None = Field(None, description="hex image measurements; empty: any")
    allowed_model_hashes: list[str] | None = Field(None, description="hex weights hashes; empty: any")


@dataclass(frozen=True, slots=True)
class VerifiedWorker:
    """Keys and models a verified bundle vouches for."""

    x25519_pub: bytes
    ed25519_pub: bytes
    model_hashes: frozenset[str]
    measurement: str
    provider: str


class AttestationVerifier:
    """Checks bundles against one policy; remembers each verdict per (bundle) so a worker is checked once."""

    def __init__(self, policy: AttestationPolicy) -> None:
        self.policy = policy
        self._cache: dict[bytes, VerifiedWorker | AttestationFailed] = {}

    def verify(self, bundle: AttestationBundle) -> VerifiedWorker:
        """The verified identity in ``bundle``; ``AttestationFailed`` saying which check failed."""
        cache_key = bundle.quote + bundle.x25519_pub + bundle.ed25519_pub
        cached = self._cache.get(cache_key)
        if cached is None:
            try:
                cached = self._verify(bundle)
            except AttestationFailed as exc:
                cached = exc
            self._cache[cache_key] = cached
        if isinstance(cached, AttestationFailed):
            raise cached
        return cached

    def _verify(self, bundle: AttestationBundle) -> VerifiedWorker:
        policy = self.policy
        if bundle.provider == "simulated":
            if not policy.allow_simulated:
                raise AttestationFailed(
                    "worker presents a simulated attestation and this network's policy refuses them "
                    "(allow_simulated is false): run the worker in a TDX or SEV-SNP guest"
                )
            quote = verify_simulated_quote(bundle.quote, policy.simulated_authorities)
        else:
            raise AttestationFailed(
                f"attestation provider {bundle.provider!r} cannot be verified by this build yet; "
                "only 'simulated' quotes are supported"
            )
        expected = report_data(bundle.x25519_pub, bundle.ed25519_pub, bundle.model_hashes)
        if quote.report_data != expected:
            raise AttestationFailed("quote report data does not commit to the worker's keys and models")
        if quote.measurement != bundle.measurement:
            raise AttestationFailed("bundle measurement differs from the quoted one")
        if policy.allowed_measurements is not None and quote.measurement not in policy.allowed_measurements:
            raise AttestationFailed(f"image measurement {quote.measurement[:16]}… is not on the allow-list")
        if policy.allowed_model_hashes is not None:
            unknown = [h for h in bundle.model_hashes if h not in policy.allowed_model_hashes]
            if unknown:
                raise AttestationFailed(f"model hash {unknown[0][:16]}… is not on the allow-list")
        return VerifiedWorker(
            bundle.x25519_pub,
            bundle.ed25519_pub,
            frozenset(bundle.model_hashes),
            quote.measurement,
            bundle.provider,
        )
