"""Which attestations a network accepts, and the verifier that applies it (verdicts cached, boundedly).

Allow-lists come from the registry contract in production; the devnet writes them to a policy file.
``None`` for a list means "any" and is only sensible on a development network. A proxy admitting a worker also
holds its quote to ``max_quote_age_s``; a client reading the directory checks what the quote binds, not its age.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import msgpack
from pydantic import BaseModel, Field

from cocoon.attestation.bundle import AttestationBundle, report_data
from cocoon.attestation.hardware import verify_hardware
from cocoon.attestation.simulated import verify_simulated_quote
from cocoon.errors import AttestationFailed


class AttestationPolicy(BaseModel):
    allow_simulated: bool = Field(False, description="accept quotes signed by a dev authority (devnets only)")
    simulated_authorities: list[str] = Field(
        default_factory=list, description="hex Ed25519 keys of dev authorities trusted for simulated quotes"
    )
    allowed_measurements: list[str] | None = Field(None, description="hex image measurements; empty: any")
    allowed_measurement_digests: list[str] | None = Field(
        None,
        description="hex sha256 of allowed image measurements, as the registry lists them (set from the chain "
        "when the role reads its policy there); empty: any",
    )
    allowed_model_hashes: list[str] | None = Field(None, description="hex weights hashes; empty: any")
    max_quote_age_s: float = Field(
        3600.0, gt=0, description="a proxy refuses to admit a worker whose quote is older than this, seconds"
    )
    accepted_tcb_statuses: list[str] = Field(
        default_factory=lambda: ["UpToDate"],
        description="TDX platform TCB statuses accepted (Intel's: UpToDate, SWHardeningNeeded, OutOfDate, ...)",
    )
    require_gpu_attestation: bool = Field(
        False, description="refuse workers that present no NVIDIA GPU evidence bound to their keys"
    )


@dataclass(frozen=True, slots=True)
class VerifiedWorker:
    """Keys and models a verified bundle vouches for."""

    x25519_pub: bytes
    ed25519_pub: bytes
    model_hashes: frozenset[str]
    measurement: str
    provider: str
    issued_at: float | None = 0.0  # when a simulated quote was made (UTC seconds); None: hardware, undated
    tcb: str = ""  # the platform's TCB as its evidence reports it
    platform: str = ""  # FMSPC, or AMD product and signing key
    gpus: int = 0  # NVIDIA GPUs whose evidence verified


CLOCK_SKEW_S = 60.0  # a quote dated this far in the future is still accepted
VERDICTS_KEPT = 1024  # the cache is bounded: refused registrations cannot grow it without limit
VERDICT_TTL_S = 3600.0  # a verdict is re-reached this often: collateral and certificates expire, CRLs change


class AttestationVerifier:
    """Checks bundles against one policy; remembers the last ``VERDICTS_KEPT`` verdicts by bundle digest."""

    def __init__(
        self, policy: AttestationPolicy, verdicts_kept: int = VERDICTS_KEPT, clock: Callable[[], float] = time.time
    ) -> None:
        self.policy = policy
        self.verdicts_kept = verdicts_kept
        self.clock = clock  # the wall clock certificates and collateral are judged at (tests fix it)
        # A refusal is kept as its message: an exception would keep its traceback, and with it the bundle.
        self._cache: OrderedDict[bytes, tuple[float, VerifiedWorker | str]] = OrderedDict()

    def set_policy(self, policy: AttestationPolicy) -> None:
        """Judge by ``policy`` from now on (a refresh from the registry); earlier verdicts are forgotten."""
        self.policy = policy
        self._cache.clear()

    def verify(self, bundle: AttestationBundle, *, fresh_at: float | None = None) -> VerifiedWorker:
        """The verified identity in ``bundle``; ``AttestationFailed`` saying which check failed.

        With ``fresh_at`` (wall-clock seconds, as a proxy admitting a worker passes) the quote must also have been
        issued within the policy's ``max_quote_age_s`` before it.
        """
        cache_key = _digest(bundle)
        now = self.clock()
        reached_at, cached = self._cache.get(cache_key, (now, None))
        if cached is None or now - reached_at > VERDICT_TTL_S:
            try:
                cached = self._verify(bundle)
            except AttestationFailed as exc:
                cached = exc.message
            self._cache[cache_key] = (now, cached)
            while len(self._cache) > self.verdicts_kept:
                self._cache.popitem(last=False)
        self._cache.move_to_end(cache_key)
        if isinstance(cached, str):
            raise AttestationFailed(cached)
        if fresh_at is not None and cached.issued_at is not None:
            age = fresh_at - cached.issued_at
            if age > self.policy.max_quote_age_s:
                raise AttestationFailed(
                    f"attestation quote is {age:.0f}s old and this network accepts quotes up to "
                    f"{self.policy.max_quote_age_s:g}s old: the worker must present a fresh quote"
                )
            if age < -CLOCK_SKEW_S:
                raise AttestationFailed(f"attestation quote is dated {-age:.0f}s in the future: check the clocks")
        return cached

    def cached_verdicts(self) -> int:
        return len(self._cache)

    def _verify(self, bundle: AttestationBundle) -> VerifiedWorker:
        policy = self.policy
        if bundle.provider == "simulated":
            if not policy.allow_simulated:
                raise AttestationFailed(
                    "worker presents a simulated attestation and this network's policy refuses them "
                    "(allow_simulated is false): run the worker in a TDX or SEV-SNP guest"
                )
            quote = verify_simulated_quote(bundle.quote, policy.simulated_authorities)
            expected = report_data(bundle.x25519_pub, bundle.ed25519_pub, bundle.model_hashes)
            if quote.report_data != expected:
                raise AttestationFailed("quote report data does not commit to the worker's keys and models")
            if quote.measurement != bundle.measurement:
                raise AttestationFailed("bundle measurement differs from the quoted one")
            if bundle.gpus:
                raise AttestationFailed("a simulated guest has no GPU evidence to present")
            if policy.require_gpu_attestation:
                raise AttestationFailed("this network requires GPU attestation, which a simulated guest cannot give")
            measurement, issued_at, tcb, platform, gpus = quote.measurement, quote.issued_at, "", "dev authority", 0
        else:
            hardware = verify_hardware(
                bundle,
                now=self.clock(),
                accepted_tcb=policy.accepted_tcb_statuses,
                require_gpu=policy.require_gpu_attestation,
            )
            measurement, issued_at, tcb, platform = hardware.measurement, None, hardware.tcb, hardware.detail
            gpus = len(hardware.gpus)
        if policy.allowed_measurements is not None and measurement not in policy.allowed_measurements:
            raise AttestationFailed(f"image measurement {measurement[:16]}… is not on the allow-list")
        if policy.allowed_measurement_digests is not None:
            digest = hashlib.sha256(bytes.fromhex(measurement)).hexdigest()
            if digest not in policy.allowed_measurement_digests:
                raise AttestationFailed(
                    f"image measurement {measurement[:16]}… is not allowed by the network's registry"
                )
        if policy.allowed_model_hashes is not None:
            unknown = [h for h in bundle.model_hashes if h not in policy.allowed_model_hashes]
            if unknown:
                raise AttestationFailed(f"model hash {unknown[0][:16]}… is not on the allow-list")
        return VerifiedWorker(
            bundle.x25519_pub,
            bundle.ed25519_pub,
            frozenset(bundle.model_hashes),
            measurement,
            bundle.provider,
            issued_at,
            tcb,
            platform,
            gpus,
        )


def _digest(bundle: AttestationBundle) -> bytes:
    """A short key naming everything the verdict depends on (the bundle itself may be kilobytes)."""
    gpus = [[gpu.report, gpu.cert_chain] for gpu in bundle.gpus]
    fields: list[object] = [bundle.provider, bundle.quote, bundle.collateral, gpus, bundle.x25519_pub]
    fields += [bundle.ed25519_pub, bundle.model_hashes]
    return hashlib.sha256(msgpack.packb([*fields, bundle.measurement], use_bin_type=True)).digest()
