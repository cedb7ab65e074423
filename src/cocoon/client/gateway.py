"""The sidecar: an OpenAI-compatible ASGI app on localhost that speaks to the network through the SDK.

Chat and text completions (whole or as server-sent events), embeddings, models and the OpenAPI document; the
endpoints read the SDK and settings from ``app.state``, every error is OpenAI-shaped with the right status, and
every response carries an ``x-request-id`` (and CORS headers for allowed web origins, see ``edge``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import struct
import time
import uuid
from collections.abc import AsyncIterator
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import TypeVar

from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from cocoon.attestation import AttestationVerifier
from cocoon.attestation.registry_policy import RegistryPolicy
from cocoon.chain.network import check_network
from cocoon.client.edge import REQUEST_ID, BrowserAccess, RequestIds
from cocoon.client.openai_schema import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionUsageChunk,
    ChatDelta,
    CompletionRequest,
    CompletionTokensDetails,
    Embedding,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
    ModelCard,
    ModelList,
    PromptTokensDetails,
    SamplingFields,
    TextChoice,
    TextCompletion,
    TextCompletionChunk,
    Usage,
)
from cocoon.client.openapi import openapi_document
from cocoon.client.sdk import CocoonClient, Completion, EmbeddingEvent, Event, Kind, TextEvent
from cocoon.client.wallet import NETWORK_ENV, ChannelPayer, sidecar_payer
from cocoon.config import ClientSettings
from cocoon.errors import (
    BadRequest,
    CocoonError,
    Forbidden,
    ModelNotFound,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
)
from cocoon.protocol.http import ClientGone, parse_json, read_body, unless_disconnected
from cocoon.protocol.payload import SealedParams

log = logging.getLogger("cocoon.client")
R = TypeVar("R", bound=BaseModel)


def create_gateway(settings: ClientSettings, client: CocoonClient | None = None) -> Starlette:
    """The sidecar app for ``settings``, on ``client`` (default: a new SDK, paying when ``chain_url`` is set)."""
    sdk = client or CocoonClient(
        settings.proxy_url, settings.policy, candidates=settings.candidates, timeout=settings.timeout
    )
    if client is None and settings.chain_url:
        sdk.payer = sidecar_payer(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        # A sidecar pointed at another network than its own refuses to start, before it signs anything.
        if isinstance(sdk.payer, ChannelPayer):
            await check_network(sdk.payer.toncenter, settings.network, env=NETWORK_ENV)
        async with registry_policy(settings, sdk.directory.verifier):
            yield

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
            Route("/v1/models", models),
            Route("/v1/models/{model:path}", model_detail),
            Route("/healthz", healthz),
            Route("/openapi.json", openapi),
        ],
        exception_handlers={CocoonError: cocoon_error, 404: not_found, 405: not_found, Exception: internal_error},
    )
    app.state.settings = settings
    app.state.sdk = sdk
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
    req = await _parse(request, ChatCompletionRequest)
    max_tokens = req.max_completion_tokens or req.max_tokens or _settings(request).default_max_tokens
    messages = req.sealed_messages()
    _within_prompt_limit(request, sum(len(m.content) for m in messages), "messages")
    events = _sdk(request).stream(
        "chat",
        req.model,
        messages=messages,
        params=req.sealed_params(max_tokens),
        routing=req.routing(),
        timeout=req.timeout,
    )
    return await _respond(request, _Reply("chat", req.model), req, events)


async def completions(request: Request) -> Response:
    req = await _parse(request, CompletionRequest)
    prompt = req.prompt_text()
    _within_prompt_limit(request, len(prompt), "prompt")
    events = _sdk(request).stream(
        "completion",
        req.model,
        prompt=prompt,
        params=req.sealed_params(req.max_tokens or 16),  # OpenAI's default for legacy completions
        routing=req.routing(),
        timeout=req.timeout,
    )
    return await _respond(request, _Reply("completion", req.model), req, events)


async def embeddings(request: Request) -> Response:
    req = await _parse(request, EmbeddingRequest)
    inputs = req.inputs()
    if not all(inputs):
        raise BadRequest("input must not contain empty strings", param="input")
    _within_prompt_limit(request, sum(map(len, inputs)), "input")
    vectors: list[list[float]] = []
    final: Completion | None = None
    async for event in _sdk(request).stream(
        "embedding", req.model, inputs=inputs, params=SealedParams(max_tokens=0), timeout=req.timeout
    ):
        if isinstance(event, EmbeddingEvent):
            vectors.extend(event.vectors)
        elif isinstance(event, Completion):
            final = event
    assert final is not None
    body = EmbeddingList(
        data=[Embedding(index=i, embedding=_encode_vector(v, req.encoding_format)) for i, v in enumerate(vectors)],
        model=req.model,
        usage=EmbeddingUsage(
            prompt_tokens=final.usage.prompt_tokens,
            total_tokens=final.usage.prompt_tokens,
            **(final.cost.usage_fields() if final.cost is not None else {}),
        ),
    )
    return JSONResponse(body.model_dump(mode="json"))


async def models(request: Request) -> JSONResponse:
    served = await _sdk(request).models()
    cards = [
        ModelCard(id=name, workers=len(workers), model_hash=workers[0].models[name])
        for name, workers in sorted(served.items())
    ]
    return JSONResponse(ModelList(data=cards).model_dump(mode="json"))


async def model_detail(request: Request) -> JSONResponse:
    name = request.path_params["model"]
    if name not in await _sdk(request).models():
        raise ModelNotFound(f"the model {name!r} does not exist on this network", param="model")
    return JSONResponse(ModelCard(id=name).model_dump(mode="json"))


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


async def openapi(request: Request) -> JSONResponse:
    if not hasattr(request.app.state, "openapi"):
        request.app.state.openapi = openapi_document(_version())
    return JSONResponse(request.app.state.openapi)


async def cocoon_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CocoonError)
    return JSONResponse(exc.to_openai(), status_code=exc.status)


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


def _settings(request: Request) -> ClientSettings:
    settings: ClientSettings = request.app.state.settings
    return settings


def _sdk(request: Request) -> CocoonClient:
    sdk: CocoonClient = request.app.state.sdk
    return sdk


def _version() -> str:
    with contextlib.suppress(PackageNotFoundError):
        return package_version("cocoon")
    return "0"


def _within_prompt_limit(request: Request, chars: int, param: str) -> None:
    """``PayloadTooLarge`` for a prompt over ``max_prompt_chars``, before anything is looked up or sealed."""
    limit = _settings(request).max_prompt_chars
    if chars > limit:
        raise PayloadTooLarge(
            f"the prompt has {chars} characters, over this sidecar's limit of {limit} (max_prompt_chars)", param=param
        )


async def _parse(request: Request, model: type[R]) -> R:
    """The JSON body as ``model``, from a caller holding the API key (when one is set) and not a foreign web page.

    A browser sends a page's cross-site ``text/plain`` or form post without asking first (no CORS preflight), with
    its ``Origin``: refusing other content types and origins not in ``allowed_origins`` keeps any web page the user
    opens from spending the deposit through the sidecar (403, 415). Apps and SDKs send no ``Origin``.
    """
    settings = _settings(request)
    origin = request.headers.get("origin")
    if origin is not None and origin not in settings.allowed_origins:
        raise Forbidden(
            f"requests from the web origin {origin!r} are refused; add it to the sidecar's allowed_origins to allow it"
        )
    if settings.api_key and request.headers.get("authorization") != f"Bearer {settings.api_key}":
        raise Unauthorized("missing or wrong API key: send 'Authorization: Bearer <key>'")
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise UnsupportedMediaType(
            f"the body must be JSON sent as 'content-type: application/json', not {media_type or 'no content type'!r}"
        )
    return parse_json(await read_body(request, settings.max_request_bytes), model)


async def _respond(request: Request, reply: _Reply, req: SamplingFields, events: AsyncIterator[Event]) -> Response:
    try:
        if not req.stream:
            body = await unless_disconnected(request, _whole(reply, events))
            return JSONResponse(body.model_dump(mode="json"))
        # Pull the first event before answering, so routing and capacity errors get a real HTTP status.
        first = await unless_disconnected(request, anext(events))
    except ClientGone:
        log.info("the app hung up request_id=%s; its job is cancelled", request.state.request_id)
        return Response(status_code=499)  # nobody reads it
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return StreamingResponse(
        _sse(reply, first, events, include_usage, request.state.request_id),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache"},
    )


async def _whole(reply: _Reply, events: AsyncIterator[Event]) -> ChatCompletion | TextCompletion:
    text: list[str] = []
    final: Completion | None = None
    async for event in events:
        if isinstance(event, TextEvent):
            text.append(event.text)
        elif isinstance(event, Completion):
            final = event
    assert final is not None
    return reply.whole("".join(text), final)


class _Reply:
    """The OpenAI objects of one chat or text completion, whole or as stream chunks (one id for them all)."""

    def __init__(self, kind: Kind, model: str) -> None:
        self.kind = kind
        self.model = model
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())

    def whole(self, text: str, final: Completion) -> ChatCompletion | TextCompletion:
        usage = _usage(final)
        if self.kind == "chat":
            choice = ChatChoice(message=AssistantMessage(content=text), finish_reason=final.finish_reason)
            return ChatCompletion(id=self.id, created=self.created, model=self.model, choices=[choice], usage=usage)
        text_choice = TextChoice(text=text, finish_reason=final.finish_reason)
        return TextCompletion(id=self.id, created=self.created, model=self.model, choices=[text_choice], usage=usage)

    def chunk(
        self, text: str | None, finish_reason: str | None, first: bool = False
    ) -> ChatCompletionChunk | TextCompletionChunk:
        if self.kind == "chat":
            delta = ChatDelta(role="assistant" if first else None, content=text)
            choice = ChatChunkChoice(delta=delta, finish_reason=finish_reason)
            return ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=[choice])
        text_choice = TextChoice(text=text or "", finish_reason=finish_reason)
        return TextCompletionChunk(id=self.id, created=self.created, model=self.model, choices=[text_choice])

    def usage_chunk(self, final: Completion) -> ChatCompletionUsageChunk | TextCompletion:
        if self.kind == "chat":
            return ChatCompletionUsageChunk(id=self.id, created=self.created, model=self.model, usage=_usage(final))
        return TextCompletion(id=self.id, created=self.created, model=self.model, choices=[], usage=_usage(final))


def _usage(final: Completion) -> Usage:
    u = final.usage
    return Usage(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        total_tokens=u.prompt_tokens + u.completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=u.cached_tokens),
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=u.reasoning_tokens),
        receipt_ids=[r.receipt_id for r in final.receipts],
        workers=[r.worker_id for r in final.receipts],
        **(final.cost.usage_fields() if final.cost is not None else {}),
    )


async def _sse(
    reply: _Reply, first: Event, events: AsyncIterator[Event], include_usage: bool, request_id: str
) -> AsyncIterator[bytes]:
    def line(obj: BaseModel | dict[str, object]) -> bytes:
        body = obj.model_dump(mode="json") if isinstance(obj, BaseModel) else obj
        return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"

    def chunk(text: str | None, finish_reason: str | None, first: bool = False) -> bytes:
        # OpenAI writes "usage": null on every chunk of a stream that will end with usage, and no key otherwise.
        dumped = reply.chunk(text, finish_reason, first).model_dump(
            mode="json", exclude=set() if include_usage else {"usage"}
        )
        return line(dumped)

    if reply.kind == "chat":
        yield chunk("", None, first=True)
    try:
        event: Event | None = first
        while event is not None:
            if isinstance(event, TextEvent):
                yield chunk(event.text, None)
            elif isinstance(event, Completion):
                yield chunk(None if reply.kind == "chat" else "", event.finish_reason)
                if include_usage:
                    yield line(reply.usage_chunk(event))
            event = await anext(events, None)
    except CocoonError as exc:
        log.warning("stream failed request_id=%s code=%s", request_id, exc.code)
        yield line(exc.to_openai())
    finally:
        # An app that hangs up closes this generator: closing the SDK's too ends its request to the proxy now
        # (not when the garbage collector gets to it), so the job is cancelled on its worker.
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
    yield b"data: [DONE]\n\n"


def _encode_vector(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector
