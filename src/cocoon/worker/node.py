"""The worker node: load engines, prove what runs (attestation bundle), and serve its proxies (configured, or
chosen from the registry by ``discovery.py``)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging

import httpx

from cocoon import __version__
from cocoon.attestation import DEV_MEASUREMENT, AttestationBundle, report_data
from cocoon.attestation.collect import collect, resolve_provider
from cocoon.config import WorkerSettings
from cocoon.crypto import NodeKeys, load_or_create_node_keys
from cocoon.engines import Engine, EngineSettings, build_engine
from cocoon.engines.config import MAX_PARALLEL
from cocoon.errors import AttestationFailed, ConfigError, map_http_errors
from cocoon.protocol import ModelOffer, Register
from cocoon.protocol.tls import trust_context
from cocoon.worker.chaos import ImpostorEngine
from cocoon.worker.discovery import ProxySet, registry_worker_urls
from cocoon.worker.earnings import payout_address
from cocoon.worker.link import ProxyLink
from cocoon.worker.runner import JobRunner
from cocoon.worker.status import serve_status, status_app

log = logging.getLogger("cocoon.worker")


def attestation_url(settings: WorkerSettings) -> str:
    """Where this worker gets its simulated quotes; ``AttestationFailed`` when none is configured."""
    if not settings.dev_attestation_url:
        raise AttestationFailed(
            "simulated attestation needs the dev network's authority to sign a quote: set dev_attestation_url "
            "(`cocoon up` serves one and sets it for its workers)"
        )
    return settings.dev_attestation_url


async def attest(settings: WorkerSettings, keys: NodeKeys, model_hashes: list[str]) -> AttestationBundle:
    """The bundle this worker presents now: evidence whose report data binds its keys and models.

    In a TDX or SEV-SNP guest (``attestation = "auto"`` finds which through configfs-tsm) the hardware makes it,
    with its collateral and the GPUs' reports beside it. Elsewhere a simulated quote is signed by the dev
    network's authority on request (``dev_attestation_url``); the worker never holds that key.
    ``AttestationFailed`` when no evidence can be had, ``UpstreamFailed`` when the authority cannot be reached.
    """
    provider = resolve_provider(
        settings.attestation, tsm_root=settings.tsm_root, dev_authority=bool(settings.dev_attestation_url)
    )
    binding = report_data(keys.sealing.public, keys.signing.public, model_hashes)
    if provider != "simulated":
        evidence = await collect(
            provider,
            binding,
            tsm_root=settings.tsm_root,
            pccs_url=settings.tdx_pccs_url,
            gpu_count=settings.gpu_attestation,
        )
        log.info("attested with %s measurement=%s… gpus=%d", provider, evidence.measurement[:16], len(evidence.gpus))
        return AttestationBundle(
            provider=provider,
            quote=evidence.quote,
            collateral=evidence.collateral,
            gpus=list(evidence.gpus),
            x25519_pub=keys.sealing.public,
            ed25519_pub=keys.signing.public,
            model_hashes=model_hashes,
            measurement=evidence.measurement,
        )
    url = attestation_url(settings)
    body = {"x25519_pub": keys.sealing.public.hex(), "ed25519_pub": keys.signing.public.hex(), "models": model_hashes}
    async with httpx.AsyncClient(timeout=10) as http:
        with map_http_errors(f"the dev attestation authority at {url}"):
            response = await http.post(url, json=body)
    if response.status_code != 200:
        raise AttestationFailed(f"the dev attestation authority at {url} refused to sign: {response.text[:200]}")
    try:
        quote = base64.b64decode(response.json()["quote"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise AttestationFailed(f"the dev attestation authority at {url} sent no quote: {exc!r}") from exc
    return AttestationBundle(
        provider="simulated",
        quote=quote,
        x25519_pub=keys.sealing.public,
        ed25519_pub=keys.signing.public,
        model_hashes=model_hashes,
        measurement=DEV_MEASUREMENT,
    )


def _engine(engine: EngineSettings, settings: WorkerSettings) -> Engine:
    if engine.parallel is None:  # generations decoded together: as many as the jobs this worker runs at once
        engine = engine.model_copy(update={"parallel": min(settings.slots, MAX_PARALLEL)})
    impostor = settings.chaos_serve_model_path
    if impostor is not None and engine.kind == "llamacpp":  # test/chaos knob only, see worker/chaos.py
        log.warning("CHAOS: serving %s while attesting %s's weights", impostor, engine.model)
        return ImpostorEngine(engine, impostor)
    return build_engine(engine)


class WorkerNode:
    def __init__(self, settings: WorkerSettings) -> None:
        if not settings.engines:
            raise ConfigError("a worker needs at least one [[engines]] entry")
        names = [e.model for e in settings.engines]
        if len(set(names)) != len(names):
            raise ConfigError(f"two engines serve the same model name: {names}")
        self.settings = settings
        self.keys = load_or_create_node_keys(settings.keys_file)
        self.engines: dict[str, Engine] = {e.model: _engine(e, settings) for e in settings.engines}
        self.links: list[ProxyLink] = []  # the static proxies' links (registry proxies: ``discovery.links``)
        self.discovery: ProxySet | None = None
        self.runner: JobRunner | None = None

    @property
    def worker_id(self) -> str:
        return self.keys.node_id

    async def start(self) -> None:
        """Load every engine (may take seconds) and build the registration the proxies will see."""
        # Fail at start-up, not at every reconnect, and say which provider vouches for this worker.
        provider = resolve_provider(
            self.settings.attestation,
            tsm_root=self.settings.tsm_root,
            dev_authority=bool(self.settings.dev_attestation_url),
        )
        log.info("attestation provider=%s (configured: %s)", provider, self.settings.attestation)
        await asyncio.gather(*(engine.start() for engine in self.engines.values()))
        offers = [
            ModelOffer(
                model=name,
                model_hash=engine.info.model_hash,
                context_length=engine.info.context_length,
                supports_embeddings=engine.info.supports_embeddings,
                supports_vision=engine.info.supports_vision,
            )
            for name, engine in self.engines.items()
        ]
        payout = payout_address(self.settings)

        async def registration() -> Register:
            bundle = await attest(self.settings, self.keys, [o.model_hash for o in offers])
            return Register(
                worker_id=self.worker_id,
                software=f"cocoon/{__version__}",
                models=offers,
                slots=self.settings.slots,
                price_coefficient=self.settings.price_coefficient,
                region=self.settings.region,
                payout_address=payout,
                ed25519_pub=self.keys.signing.public,
                x25519_pub=self.keys.sealing.public,
                attestation=bundle.model_dump(mode="python"),
            )

        runner = JobRunner(self.keys, self.engines, self.settings.slots, self.settings.max_queue)
        runner.chaos_bad_receipts = self.settings.chaos_bad_receipts
        runner.pad_bytes, runner.coalesce_s = self.settings.chunk_pad_bytes, self.settings.chunk_coalesce_ms / 1000
        settings = self.settings

        tls = trust_context(settings.tls_ca_file)

        def link(url: str) -> ProxyLink:
            return ProxyLink(
                url,
                registration,
                self.keys.signing,
                runner,
                settings.heartbeat_interval,
                settings.reconnect_max_backoff,
                tls,
            )

        self.runner = runner
        if settings.registry and settings.chain_url:
            registry = settings.registry
            log.info("proxies from the registry %s (%d at once)", registry, settings.proxy_count)

            async def listing() -> list[str]:
                return await registry_worker_urls(settings, registry)

            self.discovery = ProxySet(
                listing,
                link,
                count=settings.proxy_count,
                repick_s=settings.proxy_repick_s,
                refresh_s=settings.proxy_refresh_s,
            )
        else:
            self.links = [link(url) for url in settings.proxies]

    async def serve(self) -> None:
        """Run until cancelled: keep a link to every configured proxy, or to those the registry lists."""
        if self.runner is None:
            await self.start()
        log.info("worker up worker_id=%s models=%s", self.worker_id, list(self.engines))
        status: asyncio.Task[None] | None = None
        if self.settings.status_port:
            app = status_app(self.worker_id, self.current_links, list(self.engines))
            status = asyncio.create_task(serve_status(app, self.settings.status_host, self.settings.status_port))
        try:
            if self.discovery is not None:
                await self.discovery.run_forever()
            else:
                await asyncio.gather(*(link.run_forever() for link in self.links))
        finally:
            if status is not None:
                status.cancel()
            await asyncio.gather(*(engine.close() for engine in self.engines.values()))

    def current_links(self) -> list[ProxyLink]:
        """The links this worker keeps now: to its static proxies, or to those the registry gave it."""
        return self.discovery.links if self.discovery is not None else self.links
