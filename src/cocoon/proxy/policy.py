"""The proxy's attestation policy from the network's registry: read at start, re-read every
``policy_refresh_s`` and before admitting a worker when the last read is a few seconds old; a worker whose image
or model the registry no longer allows is evicted at the refresh that notices, told why, and refused until the
registry allows it again.
"""

from __future__ import annotations

import logging

from pydantic import ValidationError

from cocoon.attestation import AttestationBundle, AttestationPolicy
from cocoon.attestation.registry_policy import RegistryPolicy
from cocoon.errors import AttestationFailed, ChainError
from cocoon.proxy.state import ProxyState

log = logging.getLogger("cocoon.proxy")

ADMISSION_REFRESH_S = 5.0  # a registration re-reads a policy older than this first


async def open_policy(state: ProxyState) -> RegistryPolicy | None:
    """The registry's policy when the proxy has a chain and a registry (and reads its policy there); None
    otherwise. ConfigError when the registry cannot be read at start."""
    settings = state.settings
    if not (settings.policy_from_chain and settings.registry and settings.chain_url):
        return None
    source = await RegistryPolicy.open(
        settings, settings.registry, settings.policy, refresh_s=settings.policy_refresh_s
    )
    state.verifier.set_policy(source.policy)
    log.info(
        "policy from the registry measurements=%d models=%d",
        len(source.policy.allowed_measurement_digests or []),
        len(source.policy.allowed_model_hashes or []),
    )
    return source


async def refresh_policy(state: ProxyState, source: RegistryPolicy) -> list[str]:
    """Re-read the registry; on a change, judge by the new policy and evict the workers it no longer admits.
    Returns the ids of the workers evicted."""
    before = state.verifier.policy
    policy = await source.refresh()
    return [] if policy == before else apply_policy(state, policy)


def apply_policy(state: ProxyState, policy: AttestationPolicy) -> list[str]:
    """Judge by ``policy`` from now on and evict the workers it no longer admits; their ids."""
    state.verifier.set_policy(policy)
    log.info("policy changed in the registry; checking the %d connected workers", len(state.directory.workers))
    return evict_unadmitted(state)


def evict_unadmitted(state: ProxyState) -> list[str]:
    """Remove every connected worker the current policy refuses, with the reason it is told."""
    evicted = []
    for entry in list(state.directory.workers.values()):
        try:
            state.verifier.verify(AttestationBundle.model_validate(entry.register.attestation))
        except (AttestationFailed, ValidationError) as exc:
            reason = exc.message if isinstance(exc, AttestationFailed) else str(exc)
            entry.evicted = f"the network's registry no longer admits this worker: {reason}"
            state.directory.remove(entry, "evicted by the registry's policy")
            log.warning("worker evicted worker=%s reason=%s", entry.worker_id, reason)
            evicted.append(entry.worker_id)
    return evicted


async def before_admission(state: ProxyState) -> None:
    """Re-read a policy a few seconds old before judging a registration (a measurement allowed a moment ago)."""
    source = state.policy_source
    if source is None or not source.stale(ADMISSION_REFRESH_S):
        return
    try:
        await refresh_policy(state, source)
    except ChainError as exc:
        log.warning("could not re-read the policy before an admission; judging by the last one: %s", exc.message)
