"""The proxy's ASGI app: the client API, the worker WebSocket and metrics.

Routes: ``GET /v1/directory``, ``GET /v1/models``, ``POST /v1/jobs`` (msgpack ``JobRequest`` in, length-
prefixed msgpack frames out), ``WS /v1/worker/connect``, ``GET /metrics``, ``GET /healthz``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgpack
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from cocoon import __version__
from cocoon.attestation import AttestationBundle, AttestationVerifier
from cocoon.config import ProxySettings
from cocoon.crypto import load_or_create_signing_key, node_id_for
from cocoon.errors import (
    AttestationFailed,
    BadRequest,
    CocoonError,
    NoCapacity,
)
from cocoon.protocol import (
    PROTOCOL_VERSION,
    ErrorBody,
    Heartbeat,
    JobError,
    JobRequest,
    Ping,
    Register,
    Registered,
    pack,
    unpack_as,
)
from cocoon.protocol.http import read_body
from cocoon.proxy import reputation_store
from cocoon.proxy.affinity import PrefixAffinity
from cocoon.proxy.breaker import Breakers
from cocoon.proxy.capture import WireCapture
from cocoon.proxy.directory import Directory, WorkerEntry
from cocoon.proxy.evidence import EvidenceLog
from cocoon.proxy.money import Money, money_routes
from cocoon.proxy.relay import JobRelay
from cocoon.proxy.reputation import ReputationBook
from cocoon.proxy.router import RoutingBook, rank, score
from cocoon.proxy.store import Store, default_url
from cocoon.proxy.stream_response import FrameStreamResponse

log = logging.getLogger("cocoon.proxy")

JOBS = Counter("cocoon_proxy_jobs_total", "jobs relayed", ["model", "outcome"])
WORKERS = Gauge("cocoon_proxy_workers", "attested workers connected")
FAILOVERS = Counter("cocoon_proxy_failovers_total", "jobs moved to another worker")


class ProxyState:
    """Everything the proxy holds in memory; one per process."""

    def __init__(self, settings: ProxySettings) -> None:
        self.settings = settings
        self.key = load_or_create_signing_key(settings.data_dir / "proxy-key.json")
        self.proxy_id = "p-" + node_id_for(self.key.public)[2:]
        self.directory = Directory()
        self.verifier = AttestationVerifier(settings.policy)
        self.store = Store(settings.store_url or default_url(settings.data_dir))
        self.money: Money | None = None  # set at startup when the proxy bills (chain_url)
        self.routing = RoutingBook(ReputationBook(settings.reputation_half_life_s), Breakers(), PrefixAffinity())
        self.evidence = EvidenceLog(self.routing)
        self._ping_nonce = 0
        self._ping_sent: dict[tuple[str, int], float] = {}

    async def sweep_forever(self) -> None:
        """Drop silent workers and ping the rest (round-trip time feeds routing)."""
        # Sweep often so a silent worker leaves within heartbeat_timeout + 0.1 s; ping every 0.5 s.
        interval = min(0.1, self.settings.heartbeat_timeout / 4)
        sweeps = 0
        while True:
            await asyncio.sleep(interval)
            for worker in self.directory.stale(self.settings.heartbeat_timeout):
                log.warning("worker dropped worker=%s reason=missed-heartbeats", worker.worker_id)
                self.directory.remove(worker, "missed heartbeats")
            WORKERS.set(len(self.directory.workers))
            sweeps += 1
            if sweeps % max(1, round(0.5 / interval)):
                continue
            self._ping_nonce += 1
            for worker in list(self.directory.workers.values()):
                self._ping_sent[(worker.worker_id, self._ping_nonce)] = time.monotonic()
                with contextlib.suppress(Exception):
                    await worker.send(pack(Ping(nonce=self._ping_nonce)))
            cutoff = self._ping_nonce - 10
            self._ping_sent = {k: v for k, v in self._ping_sent.items() if k[1] > cutoff}

    def pong(self, worker: WorkerEntry, nonce: int) -> None:
        sent = self._ping_sent.pop((worker.worker_id, nonce), None)
        if sent is not None:
            rtt = time.monotonic() - sent
            worker.rtt_s = rtt if worker.rtt_s == 0 else 0.8 * worker.rtt_s + 0.2 * rtt


def create_app(settings: ProxySettings) -> Starlette:
    state = ProxyState(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await state.store.start()
        await reputation_store.load(state.store, state.routing.reputation)
        saver = asyncio.create_task(reputation_store.save_forever(state.store, state.routing.reputation))
        if settings.chain_url:
            state.money = await Money.start(settings, state.key, state.store)
        sweeper = asyncio.create_task(state.sweep_forever())
        log.info("proxy up proxy_id=%s", state.proxy_id)
        try:
            yield
        finally:
            sweeper.cancel()
            saver.cancel()
            await reputation_store.save(state.store, state.routing.reputation)
            if state.money is not None:
                await state.money.close()
            await state.store.close()

    async def directory(request: Request) -> JSONResponse:
        model = request.query_params.get("model")
        workers = [
            _directory_entry(state, w) for w in state.directory.workers.values() if model is None or w.serves(model)
        ]
        return JSONResponse({"object": "directory", "proxy_id": state.proxy_id, "workers": workers})

    async def models(request: Request) -> JSONResponse:
        data = []
        for name, workers in sorted(state.directory.models().items()):
            offer = next(o for o in workers[0].register.models if o.model == name)
            data.append(
                {
                    "id": name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "cocoon",
                    "model_hash": offer.model_hash,
                    "context_length": offer.context_length,
                    "workers": len(workers),
                    "supports_embeddings": any(
                        o.supports_embeddings for w in workers for o in w.register.models if o.model == name
                    ),
                }
            )
        if state.money is not None:
            await state.money.annotate_models(data, state.directory.models())
        return JSONResponse({"object": "list", "data": data})

    async def jobs(request: Request) -> Response:
        job = unpack_as(await read_body(request, settings.max_request_bytes, "sealed request"), JobRequest)
        live = [
            state.directory.workers[k.worker_id]
            for k in job.keys
            if k.worker_id in state.directory.workers and state.directory.workers[k.worker_id].serves(job.model)
        ]
        candidates = rank(live, job, state.routing)
        if not candidates:
            serving = len(state.directory.serving(job.model))
            JOBS.labels(job.model, "no_capacity").inc()
            raise NoCapacity(
                f"none of the {len(job.keys)} workers this request was sealed to can take it "
                f"({serving} connected workers serve {job.model!r}); refresh the directory and retry"
            )
        reservation = await state.money.billing.admit(job, candidates) if state.money else None
        relay = JobRelay(
            job,
            candidates,
            settings.first_byte_timeout,
            settings.chunk_timeout,
            evidence=state.evidence,
            dispatch_timeout=settings.dispatch_timeout,
        )
        if state.money is not None and reservation is not None:
            relay.on_receipt = functools.partial(state.money.billing.on_receipt, reservation)
        try:
            attempt, first = await relay.first_frame()
        except BaseException as exc:
            if state.money is not None and reservation is not None:
                state.money.billing.release(reservation)
            if isinstance(exc, CocoonError):
                JOBS.labels(job.model, exc.code).inc()
            raise
        state.routing.affinity.remember(attempt.worker.worker_id, job.prefix_hashes)
        if len(relay.attempts) > 1:
            FAILOVERS.inc(len(relay.attempts) - 1)

        async def body_stream() -> AsyncIterator[bytes]:
            outcome = "cancelled"
            try:
                async for chunk in relay.stream(attempt, first):
                    yield chunk
                outcome = "ok" if relay.receipts else "error"
            finally:
                JOBS.labels(job.model, outcome).inc()
                if state.money is not None and reservation is not None:
                    state.money.billing.release(reservation)

        return FrameStreamResponse(body_stream(), lambda: relay.finished, "application/x-cocoon-frames")

    async def worker_connect(ws: WebSocket) -> None:
        await ws.accept()
        send_lock = asyncio.Lock()

        async def send(data: bytes) -> None:
            async with send_lock:
                await ws.send_bytes(data)

        try:
            register = unpack_as(await asyncio.wait_for(ws.receive_bytes(), 10), Register)
            entry = _admit(state, register, send)
            if state.money is not None:
                state.money.check_worker(register)
        except (CocoonError, TimeoutError, ValidationError) as exc:
            err = exc if isinstance(exc, CocoonError) else BadRequest(f"registration failed: {exc}")
            log.warning("worker refused reason=%s", err.message)
            with contextlib.suppress(Exception):
                await send(
                    pack(
                        JobError(
                            status=err.status,
                            error=ErrorBody(message=err.message, type=err.type, code=err.code),
                        )
                    )
                )
                await ws.close(code=4003)
            return
        except WebSocketDisconnect:
            return
        replaced = state.directory.add(entry)
        if replaced is not None:
            state.directory.remove(replaced, "worker reconnected")
        WORKERS.set(len(state.directory.workers))
        await send(pack(Registered(proxy_id=state.proxy_id, heartbeat_interval=0.5)))
        log.info("worker joined worker=%s models=%s", entry.worker_id, [m.model for m in register.models])
        try:
            while not entry.gone:  # dropped for silence: close, so it re-registers if it ever wakes up
                data = await ws.receive_bytes()
                _on_worker_frame(state, entry, data)
            with contextlib.suppress(Exception):
                await ws.close(code=4008)
        except (WebSocketDisconnect, RuntimeError, KeyError):
            pass
        except BadRequest as exc:
            log.warning("worker sent a bad frame worker=%s error=%s", entry.worker_id, exc.message)
        finally:
            state.directory.remove(entry, "disconnected")
            WORKERS.set(len(state.directory.workers))
            log.info("worker left worker=%s", entry.worker_id)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "ok": True,
                "proxy_id": state.proxy_id,
                "version": __version__,
                "workers": len(state.directory.workers),
            }
        )

    async def cocoon_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, CocoonError)
        return JSONResponse(exc.to_openai(), status_code=exc.status)

    app = Starlette(
        routes=[
            Route("/v1/directory", directory),
            Route("/v1/models", models),
            Route("/v1/jobs", jobs, methods=["POST"]),
            Route("/metrics", metrics),
            Route("/healthz", healthz),
            *money_routes(lambda: state.money),
            WebSocketRoute("/v1/worker/connect", worker_connect),
        ],
        lifespan=lifespan,
        exception_handlers={CocoonError: cocoon_error},
    )
    app.state.proxy = state
    return app


def wrap_capture(app: Callable[..., Awaitable[None]], capture_file: str | None) -> Any:
    """Wrap ``app`` so every byte it receives and sends is appended to ``capture_file`` (audits, tests)."""
    return WireCapture(app, capture_file) if capture_file else app


def _admit(state: ProxyState, register: Register, send: Callable[[bytes], Awaitable[None]]) -> WorkerEntry:
    """Verify a worker's registration against the policy; ``AttestationFailed`` says why not."""
    try:
        bundle = AttestationBundle.model_validate(register.attestation)
    except ValidationError as exc:
        raise AttestationFailed(f"attestation bundle is malformed: {exc.errors()[0]['msg']}") from exc
    verified = state.verifier.verify(bundle)
    if verified.x25519_pub != register.x25519_pub or verified.ed25519_pub != register.ed25519_pub:
        raise AttestationFailed("registered keys differ from the attested ones")
    if register.worker_id != node_id_for(register.ed25519_pub):
        raise AttestationFailed("worker id does not derive from its signing key")
    unattested = [o.model for o in register.models if o.model_hash not in verified.model_hashes]
    if unattested:
        raise AttestationFailed(f"models {unattested} are not covered by the attestation")
    return WorkerEntry(register.worker_id, register, verified, send)


def _on_worker_frame(state: ProxyState, entry: WorkerEntry, data: bytes) -> None:
    raw = msgpack.unpackb(data, raw=False)
    if raw.get("v", PROTOCOL_VERSION) != PROTOCOL_VERSION:
        raise BadRequest(f"worker speaks protocol v{raw.get('v')}")
    kind = raw.get("t")
    if kind in ("chunk", "end", "error"):
        queue = entry.jobs.get(raw.get("job_id", ""))
        if queue is not None:
            queue.put_nowait(raw)
    elif kind == "heartbeat":
        entry.apply(Heartbeat.model_validate(raw))
    elif kind == "pong":
        entry.last_seen = time.monotonic()
        state.pong(entry, int(raw["nonce"]))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _directory_entry(state: ProxyState, w: WorkerEntry) -> dict[str, Any]:
    reg = w.register
    attestation = {k: (_b64(v) if isinstance(v, bytes) else v) for k, v in reg.attestation.items()}
    parts = score(w, 0, [], state.routing)
    return {
        "worker_id": w.worker_id,
        "software": reg.software,
        "models": [o.model_dump() for o in reg.models],
        "x25519_pub": _b64(reg.x25519_pub),
        "ed25519_pub": _b64(reg.ed25519_pub),
        "attestation": attestation,
        "price_coefficient": reg.price_coefficient,
        "region": reg.region,
        "slots": reg.slots,
        "free_slots": w.free_slots,
        "queue_depth": w.queue_depth,
        "inflight": w.inflight,
        "tokens_per_s": round(w.tokens_per_s, 2),
        "completed": w.completed,
        "failed": w.failed,
        "score": parts.as_json()
        | {
            "avg_job_ms": round(w.avg_job_s * 1000, 3),
            "avg_ttft_ms": round(w.avg_ttft_s * 1000, 3),
            "promised_ttft_ms": round(w.promised_ttft_s * 1000, 3),
            "prefill_tokens_per_s": round(w.prefill_tokens_per_s, 1),
            "decode_tokens_per_s": round(w.decode_tokens_per_s, 1),
            "cached_prefixes": state.routing.affinity.size(w.worker_id),
        },
        "reputation": state.routing.reputation.view(w.worker_id),
        "breaker": state.routing.breakers.view(w.worker_id),
    }
