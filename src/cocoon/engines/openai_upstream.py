"""An engine that forwards to an OpenAI-compatible server: vLLM, SGLang, Ollama, llama.cpp's server.

The worker runs next to the upstream (same TEE), so the request leaves the enclave only sealed. The app's
OpenAI request goes on as it came (``upstream_request.py``), the SSE stream comes back checked
(``upstream_stream.py``); this module holds the HTTP client, the engine contract, embeddings, scoring and
token counting.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from cocoon.engines.base import (
    SCORE_MAX_TOKENS,
    Embeddings,
    EngineInfo,
    Finished,
    GenerationEvent,
    GenerationRequest,
    ScoreRequest,
    TokenScores,
)
from cocoon.engines.config import EngineSettings
from cocoon.engines.upstream_request import upstream_request
from cocoon.engines.upstream_stream import StreamReader, sse_events, upstream_error
from cocoon.errors import BadRequest, ConfigError, EngineError, UpstreamFailed, map_http_errors
from cocoon.protocol.http_client import LeanClient
from cocoon.protocol.usage import TokenUsage

log = logging.getLogger(__name__)

_TIMEOUT = httpx.Timeout(connect=10.0, read=300.0, write=30.0, pool=30.0)


@dataclass(frozen=True, slots=True)
class _TokenizeRoute:
    """How one server family counts tokens: path (relative to the server root), body, result field."""

    path: str
    text_field: str
    extra: tuple[tuple[str, Any], ...] = ()


# Tried in order on first use; the first that answers is kept. ``baseline`` (the count for "") is
# subtracted, because some servers add BOS.
_TOKENIZE_ROUTES = (
    _TokenizeRoute("/tokenize", "prompt", (("add_special_tokens", False),)),  # vLLM, SGLang
    _TokenizeRoute("/tokenize", "content"),  # llama.cpp's C++ server
    _TokenizeRoute("/extras/tokenize/count", "input"),  # llama-cpp-python's server
)


class OpenAIUpstreamEngine:
    """Streams from ``settings.upstream_url`` (e.g. ``http://127.0.0.1:8000/v1``).

    ``settings.model_hash`` is required (the upstream cannot prove what it loaded; the operator states
    the sha256 of the weights, and the attestation commits to it). Raises ``ConfigError`` without it.
    ``settings.vision`` says the upstream model takes image content parts; without it they are refused.
    """

    def __init__(self, settings: EngineSettings, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        """``transport`` replaces the network (httpx's hook), for tests against an in-process server."""
        if not settings.upstream_url:
            raise ConfigError(
                f"engine {settings.model!r} is openai_upstream but has no upstream_url; set it to the "
                "server's base URL, e.g. http://127.0.0.1:8000/v1"
            )
        if not settings.model_hash:
            raise ConfigError(
                f"engine {settings.model!r} is openai_upstream but has no model_hash; set it to the sha256 "
                "(hex) of the weights the upstream serves"
            )
        self._settings = settings
        self._base = settings.upstream_url.rstrip("/")
        self._root = self._base.removesuffix("/v1")
        self._model = settings.upstream_model or settings.model
        self._info = EngineInfo(
            model=settings.model,
            model_hash=settings.model_hash.lower(),
            context_length=settings.context_length,
            supports_embeddings=settings.embeddings,
            supports_vision=settings.vision,
            extra={"backend": "openai_upstream", "upstream_model": self._model},
        )
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._tokenize: tuple[_TokenizeRoute, int] | None = None
        self._tokenize_probed = False

    @property
    def info(self) -> EngineInfo:
        return self._info

    async def start(self) -> None:
        """Open the HTTP client and check that the upstream answers ``GET /models``.

        Raises ``UpstreamFailed`` (naming the URL) when it does not.
        """
        if self._client is None:
            key = self._settings.upstream_api_key
            headers = {"Authorization": f"Bearer {key}"} if key else None
            if self._transport is None:  # the hot path: each request straight on cocoon's own transport
                self._client = LeanClient(timeout=_TIMEOUT, headers=headers)
            else:
                self._client = httpx.AsyncClient(timeout=_TIMEOUT, headers=headers, transport=self._transport)
        response = await self._request("GET", f"{self._base}/models")
        if response.status_code >= 400:
            raise upstream_error(response.status_code, response.text, f"{self._base}/models")

    async def close(self) -> None:
        """Close the HTTP client; running streams end with it."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        """Stream from the upstream; closing the iterator closes the HTTP stream (the upstream aborts).

        The app's OpenAI request is forwarded as ``upstream_request`` writes it; text, tool-call pieces and
        log-probabilities come back as the upstream streams them. Raises ``BadRequest`` (``param`` messages) for
        image parts when ``vision`` is off, ``ContextLengthExceeded`` when the upstream rejects the prompt as too
        long, ``UpstreamTimeout``/``UpstreamFailed`` for anything else that goes wrong on the way, a malformed
        stream included.
        """
        if not self._info.supports_vision and any(m.images for m in request.messages or ()):
            raise BadRequest(
                f"model {self._info.model!r} on this worker takes no images; send text only, or ask a worker whose "
                "upstream engine declares vision = true",
                param="messages",
            )
        client = self._require_client()
        path, body = upstream_request(request, self._model, self._settings.upstream_cache_salt)
        url = f"{self._base}{path}"
        reader = StreamReader(url, request)
        with map_http_errors(f"upstream {url}", hint="is the server running? see its log"):
            async with client.stream("POST", url, json=body) as response:
                if response.status_code >= 400:
                    raw = await response.aread()
                    raise upstream_error(response.status_code, raw.decode(errors="replace"), url)
                async for chunk in sse_events(response):
                    for event in reader.read(chunk):
                        yield event
        if reader.finish_reason is None:
            # Some servers (llama-cpp-python's) hit errors after answering 200 and just end the stream.
            raise UpstreamFailed(f"upstream {url} ended the stream without a finish_reason; see its log")
        usage = reader.usage
        if usage is None:
            # The server ignored stream_options.include_usage (llama-cpp-python's does): count the tokens the
            # streamed pieces stand for (one each, save for held-back stop prefixes; exact with logprobs) and
            # re-tokenize the prompt text (without the chat template's markers). Approximate; logged so it shows.
            log.info("upstream sent no usage; counting deltas url=%s", url)
            if request.prompt_ids is not None:
                prompt_tokens = len(request.prompt_ids)
            else:
                prompt_tokens = await self._count_prompt_tokens(_prompt_text(request))
            usage = TokenUsage(prompt_tokens, reader.tokens)
        yield Finished(reader.finish_reason, usage)

    async def embed(self, inputs: Sequence[str | Sequence[int]]) -> Embeddings:
        """Forward to ``POST /embeddings``; vectors come back in input order."""
        if not self._info.supports_embeddings:
            raise BadRequest(f"embeddings are disabled for model {self._info.model!r}; set embeddings = true")
        if not inputs:
            raise BadRequest("input is empty; send at least one string to embed", param="input")
        url = f"{self._base}/embeddings"
        body = {"model": self._model, "input": [x if isinstance(x, str) else list(x) for x in inputs]}
        response = await self._request("POST", url, json=body)
        if response.status_code >= 400:
            raise upstream_error(response.status_code, response.text, url)
        try:
            payload = response.json()
            rows = sorted(payload["data"], key=lambda row: row.get("index", 0))
            vectors = [[float(x) for x in row["embedding"]] for row in rows]
            prompt_tokens = int((payload.get("usage") or {}).get("prompt_tokens", 0))
        except (ValueError, KeyError, TypeError) as exc:
            raise UpstreamFailed(f"upstream {url} answered an unreadable embeddings body: {exc!r}") from exc
        if len(vectors) != len(inputs):
            raise UpstreamFailed(f"upstream {url} returned {len(vectors)} embeddings for {len(inputs)} inputs")
        return Embeddings(vectors, prompt_tokens=prompt_tokens)

    async def score(self, request: ScoreRequest) -> TokenScores:
        """Teacher-forced log-probabilities through vLLM's ``prompt_logprobs`` (an extension of the OpenAI API).

        The completion is sent as the end of the prompt (a completion prompt's tail, or an open final assistant
        message with ``continue_final_message``), with ``max_tokens`` 1 and ``prompt_logprobs`` 0: vLLM then
        returns, for every prompt token, its log-probability and rank (rank 1: greedy would have chosen it). The
        last n entries are the completion's, n counted by the upstream's tokenizer. Servers without
        ``prompt_logprobs`` (SGLang, Ollama, llama.cpp's) answer without it: ``UpstreamFailed`` says so.
        """
        completion = request.completion
        n = await self.count_tokens(completion)
        body: dict[str, Any] = {"model": self._model, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0}
        if request.prompt is not None:
            path, body["prompt"] = "/completions", request.prompt + completion
        else:
            assert request.messages is not None
            messages = [{"role": m.role, "content": m.content} for m in request.messages]
            messages.append({"role": "assistant", "content": completion})
            path = "/chat/completions"
            body |= {"messages": messages, "continue_final_message": True, "add_generation_prompt": False}
        url = f"{self._base}{path}"
        response = await self._request("POST", url, json=body)
        if response.status_code >= 400:
            raise upstream_error(response.status_code, response.text, url)
        try:
            payload = response.json()
            entries = payload.get("prompt_logprobs") or payload["choices"][0].get("prompt_logprobs")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise UpstreamFailed(f"upstream {url} answered an unreadable body: {exc!r}") from exc
        if not isinstance(entries, list):
            raise UpstreamFailed(
                f"upstream {url} returned no prompt_logprobs; scoring (canaries) needs vLLM's prompt_logprobs"
            )
        rated = [_rated_token(entry) for entry in entries[len(entries) - n :]] if n else []
        rated = rated[:SCORE_MAX_TOKENS]
        return TokenScores(
            tuple(logprob for logprob, _ in rated),
            tuple(rank == 1 for _, rank in rated),
            prompt_tokens=len(entries) - n,
            truncated=n > SCORE_MAX_TOKENS,
        )

    async def _count_prompt_tokens(self, text: str) -> int:
        """Like ``count_tokens`` but with the tokens the server adds to a prompt (BOS) included."""
        count = await self.count_tokens(text)
        return count + (self._tokenize[1] if self._tokenize is not None else 0)

    async def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` alone, from the upstream's tokenize endpoint when it has one.

        Servers without one (Ollama, OpenAI itself) get an estimate of one token per 4 characters,
        the usual ratio for English; that is only used for routing and limits, never for billing.
        """
        if not self._tokenize_probed:
            self._tokenize = await self._probe_tokenize()
            self._tokenize_probed = True
        if self._tokenize is None:
            return len(text) // 4
        route, baseline = self._tokenize
        count = await self._count_with(route, text)
        if count is None:
            raise UpstreamFailed(f"upstream {self._root}{route.path} stopped answering tokenize requests")
        return max(0, count - baseline)

    async def _probe_tokenize(self) -> tuple[_TokenizeRoute, int] | None:
        for route in _TOKENIZE_ROUTES:
            baseline = await self._count_with(route, "")
            if baseline is not None:
                log.info("upstream tokenizes at %s%s", self._root, route.path)
                return route, baseline
        log.info("upstream has no tokenize endpoint; estimating 4 characters per token url=%s", self._root)
        return None

    async def _count_with(self, route: _TokenizeRoute, text: str) -> int | None:
        """The count ``route`` returns for ``text``, or None when the server does not speak it."""
        body = {"model": self._model, route.text_field: text, **dict(route.extra)}
        response = await self._request("POST", f"{self._root}{route.path}", json=body)
        if response.status_code >= 400:
            return None
        try:
            payload = response.json()
        except ValueError:
            return None
        if isinstance(payload, dict) and isinstance(payload.get("count"), int):
            return int(payload["count"])
        if isinstance(payload, dict) and isinstance(payload.get("tokens"), list):
            return len(payload["tokens"])
        return None

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        client = self._require_client()
        with map_http_errors(f"upstream {url}", hint="is the server running? see its log"):
            return await client.request(method, url, **kwargs)

    def _require_client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise EngineError("the upstream engine is not started; call start() first")
        return self._client


def _rated_token(entry: Any) -> tuple[float, int]:
    """One entry of vLLM's ``prompt_logprobs`` asked with 0 alternatives: ``{token_id: {"logprob", "rank", ...}}``,
    the prompt's own token only. Returns its log-probability and rank."""
    if not isinstance(entry, dict) or len(entry) != 1:
        raise UpstreamFailed(f"upstream sent a prompt_logprobs entry vLLM never sends for 0 alternatives: {entry!r}")
    (rated,) = entry.values()
    try:
        return float(rated["logprob"]), int(rated.get("rank") or 1)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UpstreamFailed(f"upstream sent an unreadable prompt_logprobs entry: {entry!r}") from exc


def _prompt_text(request: GenerationRequest) -> str:
    if request.messages is not None:
        return "\n".join(m.content for m in request.messages) + request.continuation
    return (request.prompt or "") + request.continuation
