"""The network's attestation policy as its registry contract lists it, kept fresh.

The registry holds the allowed image measurements (their sha256) and the models with their weights hashes;
the chain is the public record of every change (``cocoon chain policy --history``). A role connected to a chain
reads its allow-lists there instead of from a local file: ``RegistryPolicy`` lays them over the role's local
policy (which still says what the chain cannot: trusted dev authorities, quote age, TCB statuses) and
re-reads them every ``refresh_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from cocoon.attestation.policy import AttestationPolicy
from cocoon.chain.address import parse_address
from cocoon.chain.liteserver import ChainSettings, chain_for
from cocoon.chain.registry import Registry
from cocoon.errors import ChainError, ConfigError

log = logging.getLogger(__name__)


class RegistryPolicy:
    """``base`` with the allow-lists of ``registry``; ``policy`` is the one last read."""

    def __init__(self, registry: Registry, base: AttestationPolicy, *, refresh_s: float = 30.0) -> None:
        self.registry = registry
        self.base = base
        self.refresh_s = refresh_s
        self.policy = base
        self.read_at = float("-inf")  # time.monotonic() of the last read

    @classmethod
    async def open(
        cls, settings: ChainSettings, registry: str, base: AttestationPolicy, *, refresh_s: float
    ) -> RegistryPolicy:
        """The policy of ``registry`` on the chain ``settings`` name, read once; ConfigError when it cannot be
        read (a role starting without its policy would judge by the wrong one)."""
        source = cls(Registry(chain_for(settings), parse_address(registry)), base, refresh_s=refresh_s)
        try:
            await source.refresh()
        except ChainError as exc:
            await source.aclose()
            raise ConfigError(f"cannot read the attestation policy from the registry {registry}: {exc}") from exc
        return source

    async def aclose(self) -> None:
        await self.registry.client.aclose()

    async def keep_fresh(self, on_change: Callable[[AttestationPolicy], object]) -> None:
        """Re-read every ``refresh_s`` until cancelled and call ``on_change`` with a policy that changed; a
        failed read keeps the last policy and is logged."""
        while True:
            await asyncio.sleep(self.refresh_s)
            before = self.policy
            try:
                policy = await self.refresh()
                if policy != before:
                    log.info("policy changed in the registry")
                    on_change(policy)
            except Exception:  # a dead refresher would keep a revoked image trusted forever
                log.exception("reading the policy from the registry failed; keeping the last one")

    async def refresh(self) -> AttestationPolicy:
        """Read the allow-lists now; ChainError when the registry cannot be read (the last policy stays)."""
        measurements = await self.registry.get_measurements()
        models = await self.registry.get_models()
        self.policy = self.base.model_copy(
            update={
                "allowed_measurements": None,  # the registry keeps digests; the chain is the authority here
                "allowed_measurement_digests": sorted(key.hex() for key in measurements),
                "allowed_model_hashes": sorted({m.weights_hash.hex() for m in models}),
            }
        )
        self.read_at = time.monotonic()
        return self.policy

    def stale(self, older_than_s: float | None = None) -> bool:
        """Whether the last read is older than ``older_than_s`` (default: ``refresh_s``)."""
        return time.monotonic() - self.read_at > (self.refresh_s if older_than_s is None else older_than_s)
