"""An engine that forwards to an OpenAI-compatible server: vLLM, SGLang, Ollama, llama.cpp's server.

The worker runs next to the upstream (same TEE), so the request leaves the enclave only sealed; this
module turns a ``GenerationRequest`` into ``/chat/completions`` or ``/completions`` and parses the SSE
stream back into engine events.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
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
    TextDelta,
    TokenScores,
)
from cocoon.engines.config import EngineSettings
from cocoon.errors import (
    BadRequest,
    CocoonError,
    ConfigError,
    ContextLengthExceeded,
    EngineError,
    UpstreamFailed,
    map_http_errors,
)
from cocoon.protocol.usage import TokenUsage

log = logging.getLogger(__name__)

_TIMEOUT = httpx.Timeout(connect=10.0, read=300.0, write=30.0, pool=30.0)
_CONTEXT_HINTS = (
    "context length",
    "context_length",
    "maximum context",
    "context window",
    "n_ctx",
    "too long",
)


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
            headers = {"Authorization": f"Bearer {self._settings.upstream_api_key}"}
            self._client = httpx.AsyncClient(
                timeout=_TIMEOUT,
                headers=headers if self._settings.upstream_api_key else None,
                transport=self._transport,
            )
        response = await self._request("GET", f"{self._base}/models")
        if response.status_code >= 400:
            raise _error_from_response(response.status_code, response.text, f"{self._base}/models")

    async def close(self) -> None:
        """Close the HTTP client; running streams end with it."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        """Stream from the upstream; closing the iterator closes the HTTP stream (the upstream aborts).

        Raises ``ContextLengthExceeded`` when the upstream rejects the prompt as too long,
        ``UpstreamTimeout``/``UpstreamFailed`` for anything else that goes wrong on the way.
        """
        client = self._require_client()
        path, body = self._request_body(request)
        url = f"{self._base}{path}"
        usage: TokenUsage | None = None
        finish: str | None = None
        deltas = 0
        with map_http_errors(f"upstream {url}", hint="is the server running? see its log"):
            async with client.stream("POST", url, json=body) as response:
                if response.status_code >= 400:
                    raw = await response.aread()
                    raise _error_from_response(response.status_code, raw.decode(errors="replace"), url)
                async for chunk in _sse_events(response):
                    if "error" in chunk:
                        raise _error_from_response(400, json.dumps(chunk), url)
                    for choice in chunk.get("choices") or ():
                        text = _choice_text(choice)
                        if text:
                            deltas += 1
                            yield TextDelta(text)
                        if choice.get("finish_reason"):
                            finish = choice["finish_reason"]
                    if chunk.get("usage"):
                        usage = _usage(chunk["usage"])
        if finish is None:
            # Some servers (llama-cpp-python's) hit errors after answering 200 and just end the stream.
            raise UpstreamFailed(f"upstream {url} ended the stream without a finish_reason; see its log")
        if usage is None:
            # The server ignored stream_options.include_usage (llama-cpp-python's does): count one token per
            # streamed delta (servers send one per token, save for held-back stop prefixes) and re-tokenize
            # the prompt text (without the chat template's markers). Approximate; logged so it is visible.
            log.info("upstream sent no usage; counting deltas url=%s", url)
            usage = TokenUsage(await self._count_prompt_tokens(_prompt_text(request)), deltas)
        yield Finished("length" if finish == "length" else "stop", usage)

    def _request_body(self, request: GenerationRequest) -> tuple[str, dict[str, Any]]:
        params = request.params
        body: dict[str, Any] = {
            "model": self._model,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        if params.frequency_penalty:
            body["frequency_penalty"] = params.frequency_penalty
        if params.presence_penalty:
            body["presence_penalty"] = params.presence_penalty
        if params.logit_bias:
            body["logit_bias"] = {str(token): bias for token, bias in params.logit_bias}
        if request.prompt is not None:
            body["prompt"] = request.prompt + request.continuation
            return "/completions", body
        assert request.messages is not None
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        if request.continuation:
            # Resume a partial answer: vLLM (and SGLang) render the last assistant message without closing
            # its turn when asked with these two extra parameters; servers without them start a new turn.
            messages.append({"role": "assistant", "content": request.continuation})
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
        body["messages"] = messages
        return "/chat/completions", body

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
            raise _error_from_response(response.status_code, response.text, url)
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
            raise _error_from_response(response.status_code, response.text, url)
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


async def _sse_events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of an OpenAI server-sent-event stream, until ``data: [DONE]``."""
    data: list[str] = []
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
            continue
        if line or not data:
            continue  # comments (": ping"), event names, or blank keep-alives
        payload, data = "\n".join(data), []
        if payload == "[DONE]":
            return
        try:
            event = json.loads(payload)
        except ValueError as exc:
            raise UpstreamFailed(f"upstream {response.url} sent a malformed event: {payload[:200]!r}") from exc
        if isinstance(event, dict):
            yield event


def _choice_text(choice: dict[str, Any]) -> str:
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return str(delta.get("content") or "")
    return str(choice.get("text") or "")


def _usage(raw: dict[str, Any]) -> TokenUsage:
    details = raw.get("prompt_tokens_details") or {}
    completion_details = raw.get("completion_tokens_details") or {}
    return TokenUsage(
        prompt_tokens=int(raw.get("prompt_tokens") or 0),
        completion_tokens=int(raw.get("completion_tokens") or 0),
        cached_tokens=int(details.get("cached_tokens") or 0),
        reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
    )


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


def _error_from_response(status: int, text: str, url: str) -> CocoonError:
    """Map an upstream error answer onto cocoon's tree, keeping the upstream's own message."""
    message = _error_message(text).strip()[:500] or f"HTTP {status}"
    if status in (400, 413, 422) and any(hint in message.lower() for hint in _CONTEXT_HINTS):
        return ContextLengthExceeded(f"upstream rejected the prompt as too long: {message}")
    return UpstreamFailed(f"upstream {url} answered HTTP {status}: {message}")


def _error_message(text: str) -> str:
    """The human part of an error body: OpenAI's ``error.message``, FastAPI's ``detail``, or the raw text."""
    try:
        body = json.loads(text)
    except ValueError:
        return text
    if not isinstance(body, dict):
        return text
    err = body.get("error")
    if isinstance(err, dict) and err.get("message"):
        return str(err["message"])
    if isinstance(err, str):
        return err
    return str(body.get("detail") or body.get("message") or text)
