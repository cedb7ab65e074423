"""The worker node: load engines, prove what runs (attestation bundle), and serve every configured proxy."""

from __future__ import annotations

import asyncio
import logging

from cocoon import __version__
from cocoon.attestation import DEV_MEASUREMENT, AttestationBundle, make_simulated_quote, report_data
from cocoon.config import WorkerSettings
from cocoon.crypto import NodeKeys, load_or_create_node_keys, load_or_create_signing_key
from cocoon.engines import Engine, build_engine
from cocoon.errors import AttestationFailed, ConfigError
from cocoon.protocol import ModelOffer, Register
from cocoon.worker.earnings import payout_address
from cocoon.worker.link import ProxyLink
from cocoon.worker.runner import JobRunner

log = logging.getLogger("cocoon.worker")


def attest(settings: WorkerSettings, keys: NodeKeys, model_hashes: list[str]) -> AttestationBundle:
    """The bundle this worker presents: a quote whose report data binds its keys and models."""
    data = report_data(keys.sealing.public, keys.signing.public, model_hashes)
    if settings.attestation != "simulated":
        raise AttestationFailed(
            f"attestation provider {settings.attestation!r} is not available in this build; use 'simulated' "
            "on development networks"
        )
    authority = load_or_create_signing_key(settings.dev_authority_key_file)
    quote = make_simulated_quote(authority, data)
    return AttestationBundle(
        provider="simulated",
        quote=quote,
        x25519_pub=keys.sealing.public,
        ed25519_pub=keys.signing.public,
        model_hashes=model_hashes,
        measurement=DEV_MEASUREMENT,
    )


class WorkerNode:
    def __init__(self, settings: WorkerSettings) -> None:
        if not settings.engines:
            raise ConfigError("a worker needs at least one [[engines]] entry")
        names = [e.model for e in settings.engines]
        if len(set(names)) != len(names):
            raise ConfigError(f"two engines serve the same model name: {names}")
        self.settings = settings
        self.keys = load_or_create_node_keys(settings.keys_file)
        self.engines: dict[str, Engine] = {e.model: build_engine(e) for e in settings.engines}
        self.links: list[ProxyLink] = []

    @property
    def worker_id(self) -> str:
        return self.keys.node_id

    async def start(self) -> None:
        """Load every engine (may take seconds) and build the registration the proxies will see."""
        await asyncio.gather(*(engine.start() for engine in self.engines.values()))
        offers = [
            ModelOffer(
                model=name,
                model_hash=engine.info.model_hash,
                context_length=engine.info.context_length,
                supports_embeddings=engine.info.supports_embeddings,
            )
            for name, engine in self.engines.items()
        ]
        bundle = attest(self.settings, self.keys, [o.model_hash for o in offers])
        register = Register(
            worker_id=self.worker_id,
            software=f"cocoon/{__version__}",
            models=offers,
            slots=self.settings.slots,
            price_coefficient=self.settings.price_coefficient,
            region=self.settings.region,
            payout_address=payout_address(self.settings),
            ed25519_pub=self.keys.signing.public,
            x25519_pub=self.keys.sealing.public,
            attestation=bundle.model_dump(mode="python"),
        )
        runner = JobRunner(self.keys, self.engines, self.settings.slots, self.settings.max_queue)
        runner.chaos_bad_receipts = self.settings.chaos_bad_receipts
        self.links = [
            ProxyLink(url, register, runner, self.settings.heartbeat_interval, self.settings.reconnect_max_backoff)
            for url in self.settings.proxies
        ]

    async def serve(self) -> None:
        """Run until cancelled: keep a link to every proxy."""
        if not self.links:
            await self.start()
        log.info("worker up worker_id=%s models=%s", self.worker_id, list(self.engines))
        try:
            await asyncio.gather(*(link.run_forever() for link in self.links))
        finally:
            await asyncio.gather(*(engine.close() for engine in self.engines.values()))
