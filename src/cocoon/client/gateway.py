"""The sidecar: an OpenAI-compatible ASGI app on localhost that speaks to the network through the SDK.

``POST /v1/chat/completions``, ``POST /v1/completions`` (streamed as server-sent events or whole),
``POST /v1/embeddings``, ``GET /v1/models``. Every error is OpenAI-shaped with the right status.
"""

from __future__ import annotations

import base64
import json
import logging
import struct
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from cocoon.client.openai_schema import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    SamplingFields,
)
from cocoon.client.sdk import CocoonClient, Completion, EmbeddingEvent, Event, Kind, TextEvent
from cocoon.client.wallet import sidecar_payer
from cocoon.config import ClientSettings
from cocoon.errors import BadRequest, CocoonError, ModelNotFound, Unauthorized
from cocoon.protocol.http import parse_json, read_body
from cocoon.protocol.payload import SealedMessage, SealedParams

log = logging.getLogger("cocoon.client")
R = TypeVar("R", bound=BaseModel)


def create_gateway(settings: ClientSettings, client: CocoonClient | None = None) -> Starlette:
    sdk = client or CocoonClient(
        settings.proxy_url, settings.policy, candidates=settings.candidates, timeout=settings.timeout
    )
    if client is None and settings.chain_url:
        sdk.payer = sidecar_payer(settings)

    async def parse(request: Request, model: type[R]) -> R:
        if settings.api_key and request.headers.get("authorization") != f"Bearer {settings.api_key}":
            raise Unauthorized("missing or wrong API key: send 'Authorization: Bearer <key>'")
        return parse_json(await read_body(request, settings.max_request_bytes), model)

    def params(req: SamplingFields, max_tokens: int | None) -> SealedParams:
        return SealedParams(
            max_tokens=max_tokens or settings.default_max_tokens,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            stop=req.stops(),
            seed=req.seed,
        )

    async def chat_completions(request: Request) -> Response:
        req = await parse(request, ChatCompletionRequest)
        messages = [SealedMessage(role=m.role, content=m.text()) for m in req.messages]
        events = sdk.stream(
            "chat",
            req.model,
            messages=messages,
            params=params(req, req.max_completion_tokens or req.max_tokens),
            routing=req.routing(),
            timeout=req.timeout,
        )
        return await respond("chat", req, events)

    async def completions(request: Request) -> Response:
        req = await parse(request, CompletionRequest)
        events = sdk.stream(
            "completion",
            req.model,
            prompt=req.prompt_text(),
            params=params(req, req.max_tokens or 16),
            routing=req.routing(),
            timeout=req.timeout,
        )
        return await respond("completion", req, events)

    async def respond(kind: Kind, req: SamplingFields, events: AsyncIterator[Event]) -> Response:
        shape = _Shape(kind, req.model)
        # Pull the first event before answering, so routing and capacity errors get a real HTTP status.
        first = await anext(events)
        if not req.stream:
            text: list[str] = [first.text] if isinstance(first, TextEvent) else []
            final = first if isinstance(first, Completion) else None
            async for event in events:
                if isinstance(event, TextEvent):
                    text.append(event.text)
                elif isinstance(event, Completion):
                    final = event
            assert final is not None
            return JSONResponse(shape.whole("".join(text), final))
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(
            _sse(shape, first, events, include_usage),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache"},
        )

    async def embeddings(request: Request) -> Response:
        req = await parse(request, EmbeddingRequest)
        inputs = req.inputs()
        if not all(inputs):
            raise BadRequest("input must not contain empty strings", param="input")
        vectors: list[list[float]] = []
        final: Completion | None = None
        async for event in sdk.stream(
            "embedding", req.model, inputs=inputs, params=SealedParams(max_tokens=0), timeout=req.timeout
        ):
            if isinstance(event, EmbeddingEvent):
                vectors.extend(event.vectors)
            elif isinstance(event, Completion):
                final = event
        assert final is not None
        data = [
            {"object": "embedding", "index": i, "embedding": _encode_vector(v, req.encoding_format)}
            for i, v in enumerate(vectors)
        ]
        usage = {"prompt_tokens": final.usage.prompt_tokens, "total_tokens": final.usage.prompt_tokens}
        usage |= final.cost.usage_fields() if final.cost is not None else {}
        return JSONResponse({"object": "list", "data": data, "model": req.model, "usage": usage})

    async def models(request: Request) -> JSONResponse:
        served = await sdk.models()
        data = [
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "cocoon",
                "workers": len(workers),
                "model_hash": workers[0].models[name],
            }
            for name, workers in sorted(served.items())
        ]
        return JSONResponse({"object": "list", "data": data})

    async def model_detail(request: Request) -> JSONResponse:
        name = request.path_params["model"]
        served = await sdk.models()
        if name not in served:
            raise ModelNotFound(f"the model {name!r} does not exist on this network", param="model")
        return JSONResponse({"id": name, "object": "model", "created": 0, "owned_by": "cocoon"})

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def cocoon_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, CocoonError)
        return JSONResponse(exc.to_openai(), status_code=exc.status)

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        body = {
            "error": {
                "message": f"{request.method} {request.url.path} is not an endpoint of this API",
                "type": "invalid_request_error",
                "param": None,
                "code": "not_found",
            }
        }
        return JSONResponse(body, status_code=status)

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/models", models),
            Route("/v1/models/{model:path}", model_detail),
            Route("/healthz", healthz),
        ],
        exception_handlers={CocoonError: cocoon_error, 404: not_found, 405: not_found},
    )
    app.state.sdk = sdk
    return app


class _Shape:
    """Formats events as OpenAI chat or text completion objects (whole or as stream chunks)."""

    def __init__(self, kind: Kind, model: str) -> None:
        self.kind = kind
        self.model = model
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.object = "chat.completion" if kind == "chat" else "text_completion"

    def _base(self, obj: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
        }

    def whole(self, text: str, final: Completion) -> dict[str, Any]:
        body = self._base(self.object)
        if self.kind == "chat":
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": final.finish_reason,
            }
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": final.finish_reason}
        body["choices"] = [choice]
        body["usage"] = usage_json(final)
        return body

    def chunk(self, text: str | None, finish_reason: str | None, first: bool = False) -> dict[str, Any]:
        body = self._base(self.object + ".chunk" if self.kind == "chat" else self.object)
        if self.kind == "chat":
            delta: dict[str, Any] = {}
            if first:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice: dict[str, Any] = {
                "index": 0,
                "delta": delta,
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        body["choices"] = [choice]
        return body

    def usage_chunk(self, final: Completion) -> dict[str, Any]:
        body = self._base(self.object + ".chunk" if self.kind == "chat" else self.object)
        body["choices"] = []
        body["usage"] = usage_json(final)
        return body


def usage_json(final: Completion) -> dict[str, Any]:
    u = final.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "receipt_ids": [r.receipt_id for r in final.receipts],
        "workers": [r.worker_id for r in final.receipts],
        **(final.cost.usage_fields() if final.cost is not None else {}),
    }


async def _sse(shape: _Shape, first: Event, events: AsyncIterator[Event], include_usage: bool) -> AsyncIterator[bytes]:
    def line(obj: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    if shape.kind == "chat":
        yield line(shape.chunk("", None, first=True))
    try:
        event: Event | None = first
        while event is not None:
            if isinstance(event, TextEvent):
                yield line(shape.chunk(event.text, None))
            elif isinstance(event, Completion):
                yield line(shape.chunk(None if shape.kind == "chat" else "", event.finish_reason))
                if include_usage:
                    yield line(shape.usage_chunk(event))
            event = await anext(events, None)
    except CocoonError as exc:
        log.warning("stream failed code=%s", exc.code)
        yield line(exc.to_openai())
    yield b"data: [DONE]\n\n"


def _encode_vector(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector
