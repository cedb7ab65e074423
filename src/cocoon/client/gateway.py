"""The sidecar: an OpenAI-compatible ASGI app on localhost that speaks to the network through the SDK.

Chat and text completions (whole or as server-sent events), embeddings, models and the OpenAPI document; the
endpoints read the SDK, settings and API keys from ``app.state``, every error is OpenAI-shaped with the right
status, and every response carries an ``x-request-id`` (and CORS headers for allowed web origins, see ``edge``).
With API keys (``client/keys``) every OpenAI endpoint needs one, and each job is held to its key's budget.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import struct
from collections.abc import AsyncIterator
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import TypeVar

from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cocoon.attestation import AttestationVerifier
from cocoon.attestation.registry_policy import RegistryPolicy
from cocoon.chain.network import check_network
from cocoon.client.answers import Choice, Reply, close_all, merged, sse, whole
from cocoon.client.edge import REQUEST_ID, BrowserAccess, RequestIds
from cocoon.client.event_stream import EventStreamResponse
from cocoon.client.intake import admitted, parsed_body, sdk_of, settings_of, within_prompt_limit
from cocoon.client.keys import KeyGate, KeyStore
from cocoon.client.metrics import client_metrics_route
from cocoon.client.openapi import openapi_document
from cocoon.client.responses import responses
from cocoon.client.sdk import CocoonClient, Completion, EmbeddingEvent, Event
from cocoon.client.wallet import NETWORK_ENV, ChannelPayer
from cocoon.config import ClientSettings
from cocoon.errors import (
    BadRequest,
    CocoonError,
    ModelNotFound,
    NotFound,
)
from cocoon.protocol.http import ClientGone, unless_disconnected
from cocoon.protocol.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    Embedding,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
    ModelCard,
    ModelList,
    SamplingFields,
)
from cocoon.protocol.payload import SealedParams

log = logging.getLogger("cocoon.client")
R = TypeVar("R", bound=BaseModel)


def create_gateway(
    settings: ClientSettings, client: CocoonClient | None = None, keys: KeyStore | None = None
) -> Starlette:
    """The sidecar app for ``settings``, on ``client`` (default: an SDK of the configured proxies, paying each
    through its own channel when ``chain_url`` is set), with the API keys of ``keys`` (default: the store the
    settings name)."""
    sdk = client or CocoonClient.for_settings(settings)
    gate = KeyGate(settings, keys or KeyStore.for_settings(settings))

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        # An exposed sidecar without keys refuses to start, as does one pointed at another network than its own,
        # before it signs anything.
        await gate.start()
        try:
            if isinstance(sdk.payer, ChannelPayer):
                await check_network(sdk.payer.toncenter, settings.network, env=NETWORK_ENV)
            following = asyncio.create_task(sdk.follow_registry(settings)) if settings.proxies_from_registry else None
            try:
                async with registry_policy(settings, sdk.directory.verifier):
                    yield
            finally:
                if following is not None:
                    following.cancel()
        finally:
            await gate.close()

    middleware = [Middleware(RequestIds)]
    if settings.allowed_origins:
        middleware.append(Middleware(BrowserAccess, origins=settings.allowed_origins))
    app = Starlette(
        lifespan=lifespan,
        middleware=middleware,
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/responses", responses, methods=["POST"]),
            Route("/v1/models", models),
            Route("/v1/models/{model:path}", model_detail),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            client_metrics_route(),
            Route("/openapi.json", openapi),
        ],
        exception_handlers={CocoonError: cocoon_error, 404: not_found, 405: not_found, Exception: internal_error},
    )
    app.state.settings = settings
    app.state.sdk = sdk
    app.state.keys = gate
    return app


@contextlib.asynccontextmanager
async def registry_policy(settings: ClientSettings, verifier: AttestationVerifier) -> AsyncIterator[None]:
    """With ``registry`` and ``chain_url`` set, judge workers by the registry's allow-lists, re-read every
    ``policy_refresh_s``; otherwise by the local ``policy``. The client pins the registry itself: the proxy's
    word for which images are allowed would be no check at all."""
    if not (settings.registry and settings.chain_url):
        yield
        return
    source = await RegistryPolicy.open(
        settings, settings.registry, settings.policy, refresh_s=settings.policy_refresh_s
    )
    verifier.set_policy(source.policy)
    refresher = asyncio.create_task(source.keep_fresh(verifier.set_policy))
    try:
        yield
    finally:
        refresher.cancel()
        await source.aclose()


# ---- endpoints -------------------------------------------------------------------------------------


async def chat_completions(request: Request) -> Response:
    req = await parsed_body(request, ChatCompletionRequest)
    max_tokens = req.max_completion_tokens or req.max_tokens or settings_of(request).default_max_tokens
    messages = req.sealed_messages()
    within_prompt_limit(request, sum(len(m.content) for m in messages), "messages")
    meter = await admitted(request, req.model, req.timeout)
    sdk = sdk_of(request)
    streams = [
        sdk.stream(
            "chat",
            req.model,
            messages=messages,
            params=req.sealed_params(max_tokens).model_copy(update={"seed": seed}),
            routing=req.routing(),
            timeout=req.timeout,
            openai=req.sealed_body(n=1, **({"seed": seed} if seed is not None else {})),
            meter=meter,
        )
        for seed in _choice_seeds(req.seed, req.n)
    ]
    reply = Reply("chat", req.model, logprobs=bool(req.logprobs))
    return await _respond(request, reply, req, [Choice(i) for i in range(req.n)], streams)


async def completions(request: Request) -> Response:
    req = await parsed_body(request, CompletionRequest)
    prompts = req.prompts()
    within_prompt_limit(request, sum(len(p) for p in prompts), "prompt")
    if req.echo and any(not isinstance(p, str) for p in prompts):
        raise BadRequest("echo needs text prompts: token-id prompts cannot be written back as text", param="echo")
    meter = await admitted(request, req.model, req.timeout)
    sdk = sdk_of(request)
    choices: list[Choice] = []
    streams: list[AsyncIterator[Event]] = []
    max_tokens = req.max_tokens or 16  # OpenAI's default for legacy completions
    for prompt in prompts:
        for seed in _choice_seeds(req.seed, req.n):
            text, ids = (prompt, None) if isinstance(prompt, str) else ("", prompt)
            one = {"seed": seed} if seed is not None else {}
            choices.append(Choice(len(choices), echo=text if req.echo else ""))
            streams.append(
                sdk.stream(
                    "completion",
                    req.model,
                    prompt=text,
                    prompt_ids=ids,
                    params=req.sealed_params(max_tokens).model_copy(update={"seed": seed}),
                    routing=req.routing(),
                    timeout=req.timeout,
                    openai=req.sealed_body(n=1, prompt=prompt, best_of=None, **one),
                    meter=meter,
                )
            )
    reply = Reply("completion", req.model, logprobs=req.logprobs is not None)
    return await _respond(request, reply, req, choices, streams)


async def embeddings(request: Request) -> Response:
    req = await parsed_body(request, EmbeddingRequest)
    inputs = req.inputs()
    if not all(inputs):
        raise BadRequest("input must not contain empty strings or empty token lists", param="input")
    within_prompt_limit(request, sum(map(len, inputs)), "input")
    meter = await admitted(request, req.model, req.timeout)
    vectors: list[list[float]] = []
    final: Completion | None = None
    async for event in sdk_of(request).stream(
        "embedding",
        req.model,
        inputs=inputs,
        params=SealedParams(max_tokens=0),
        timeout=req.timeout,
        openai=req.model_dump(mode="json", exclude_unset=True, exclude=set(req.routing_fields)),
        meter=meter,
    ):
        if isinstance(event, EmbeddingEvent):
            vectors.extend(event.vectors)
        elif isinstance(event, Completion):
            final = event
    assert final is not None
    if req.dimensions is not None:
        vectors = [_shortened(v, req.dimensions) for v in vectors]
    body = EmbeddingList(
        data=[Embedding(index=i, embedding=_encode_vector(v, req.encoding_format)) for i, v in enumerate(vectors)],
        model=req.model,
        usage=EmbeddingUsage(
            prompt_tokens=final.usage.prompt_tokens,
            total_tokens=final.usage.prompt_tokens,
            receipt_ids=[r.receipt_id for r in final.receipts],
            workers=[r.worker_id for r in final.receipts],
            **(final.cost.usage_fields() if final.cost is not None else {}),
        ),
    )
    return JSONResponse(body.model_dump(mode="json"))


async def models(request: Request) -> JSONResponse:
    """The models served, those the request's API key may use (all, without keys)."""
    meter = await admitted(request, None)
    served = await sdk_of(request).models()
    cards = [
        ModelCard(id=name, workers=len(workers), model_hash=workers[0].models[name])
        for name, workers in sorted(served.items())
        if meter is None or meter.key.allows(name)
    ]
    return JSONResponse(ModelList(data=cards).model_dump(mode="json"))


async def model_detail(request: Request) -> JSONResponse:
    name = request.path_params["model"]
    await admitted(request, name)
    if name not in await sdk_of(request).models():
        raise ModelNotFound(f"the model {name!r} does not exist on this network", param="model")
    return JSONResponse(ModelCard(id=name).model_dump(mode="json"))


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


async def readyz(request: Request) -> JSONResponse:
    """200 when the proxy's directory lists at least one worker whose attestation verifies here, else 503 with
    the reason (the proxy is unreachable, or no worker passes this sidecar's policy); both list the proxies
    held, with their health (their URLs only to a caller who may use the sidecar)."""
    sdk = sdk_of(request)
    proxies = sdk.proxies.status()  # which proxies it holds, and how each has answered lately
    if not await _may_see_proxies(request):
        for proxy in proxies:
            del proxy["url"]
    try:
        workers = await sdk.directory.workers(refresh=True)
    except CocoonError as exc:
        return JSONResponse({"ready": False, "reason": exc.message, "proxies": proxies}, status_code=503)
    if not workers:
        reason = "no attested worker passes this sidecar's policy"
        return JSONResponse({"ready": False, "reason": reason, "proxies": proxies}, 503)
    return JSONResponse({"ready": True, "workers": len(workers), "proxies": proxies})


async def _may_see_proxies(request: Request) -> bool:
    """Whether ``/readyz`` names the proxies held: to anyone while the sidecar needs no key, else to a caller
    with a live key (the probe stays open; which proxies a client uses is the owner's to see)."""
    try:
        await request.app.state.keys.caller(request.headers.get("authorization"))
    except CocoonError:
        return False
    return True


async def openapi(request: Request) -> JSONResponse:
    if not hasattr(request.app.state, "openapi"):
        request.app.state.openapi = openapi_document(_version())
    return JSONResponse(request.app.state.openapi)


async def cocoon_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CocoonError)
    return JSONResponse(exc.to_openai(), status_code=exc.status, headers=exc.headers() or None)


async def not_found(request: Request, exc: Exception) -> Response:
    """An unknown route (404) or method (405), in the OpenAI shape of ``NotFound``."""
    error = NotFound(f"{request.method} {request.url.path} is not an endpoint of this API")
    return JSONResponse(error.to_openai(), status_code=getattr(exc, "status_code", 404))


async def internal_error(request: Request, exc: Exception) -> Response:
    """A bug's 500, still in the OpenAI shape and with the request id to find it in the log by (Starlette logs
    the traceback and re-raises after this answer)."""
    request_id = getattr(request.state, "request_id", "")
    error = CocoonError(f"internal error in the sidecar; report it with the request id {request_id}")
    return JSONResponse(error.to_openai(), status_code=500, headers={REQUEST_ID: request_id} if request_id else None)


# ---- helpers ---------------------------------------------------------------------------------------


def _version() -> str:
    with contextlib.suppress(PackageNotFoundError):
        return package_version("cocoon")
    return "0"


async def _respond(
    request: Request,
    reply: Reply,
    req: SamplingFields,
    choices: list[Choice],
    streams: list[AsyncIterator[Event]],
) -> Response:
    """The whole answer as JSON, or its server-sent events once every choice's first event is in (so routing
    and capacity errors get a real HTTP status); an app that hangs up first gets its jobs cancelled."""
    events = merged(streams) if req.stream else None
    try:
        if events is None:
            body = reply.whole(await unless_disconnected(request, whole(choices, streams)))
            return JSONResponse(body.model_dump(mode="json"))
        first = await unless_disconnected(request, anext(events))
    except ClientGone:
        log.info("the app hung up request_id=%s; its job is cancelled", request.state.request_id)
        await close_all(events, *streams)
        return Response(status_code=499)  # nobody reads it
    except BaseException:
        await close_all(events, *streams)
        raise
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return EventStreamResponse(
        sse(reply, choices, first, events, include_usage, request.state.request_id),
        headers={"cache-control": "no-cache"},
    )


def _choice_seeds(seed: int | None, n: int) -> list[int | None]:
    """Each choice's seed: the request's for the first, the next ones after it (so ``n`` choices differ and a
    seeded request stays reproducible), wrapping within 64 bits; no seed, none."""
    if seed is None:
        return [None] * n
    return [((seed + i + 2**63) % 2**64) - 2**63 for i in range(n)]


def _shortened(vector: list[float], dimensions: int) -> list[float]:
    """The first ``dimensions`` components, renormalised to unit length (OpenAI's ``dimensions``)."""
    if dimensions > len(vector):
        raise BadRequest(
            f"dimensions={dimensions} is more than the model's {len(vector)}; ask for at most {len(vector)}",
            param="dimensions",
        )
    head = vector[:dimensions]
    norm = math.sqrt(sum(x * x for x in head)) or 1.0
    return [x / norm for x in head]


def _encode_vector(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector
