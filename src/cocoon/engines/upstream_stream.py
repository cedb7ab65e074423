"""Reading an OpenAI-compatible server's answer: server-sent events into engine events, checked and bounded.

The upstream runs in the same TEE but is another project's code, and what it streams becomes sealed chunks the
client turns into OpenAI responses. So every chunk is checked against OpenAI's shapes (text, tool-call pieces,
log-probabilities, finish reason, usage) before it becomes a ``TextDelta`` or ``ToolCallDelta``; anything else
is ``UpstreamFailed`` saying what was wrong. Error answers map onto cocoon's tree here too.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any, NoReturn

import httpx

from cocoon.engines.base import (
    FinishReason,
    GenerationRequest,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
    TopLogprob,
)
from cocoon.errors import BadRequest, CocoonError, ContextLengthExceeded, UpstreamFailed
from cocoon.protocol.openai import MAX_TOKENS, MAX_TOP_LOGPROBS
from cocoon.protocol.usage import TokenUsage

MAX_EVENT_BYTES = 1 << 20  # one server-sent event; a chunk holds a few tokens
_MAX_PIECE_CHARS = 1 << 16  # one fragment of text or of a tool call's arguments
_MAX_TOKEN_CHARS = 1024  # one token's text in a log-probability entry
_MAX_ENTRIES = 1024  # log-probability entries in one chunk
_MAX_TOP = MAX_TOP_LOGPROBS + 1  # legacy completions add the sampled token to its alternatives
_MAX_TOOL_CALLS = 128
_MAX_ID_CHARS = 128  # an app sends a call's id back in its history, where it is bounded so
_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")  # a function name, as an app's tools may name one
_NEG_INF_LOGPROB = -9999.0  # vLLM's stand-in for -inf: JSON has no infinity to hand the app
_FINISH: dict[str, FinishReason] = {"length": "length", "tool_calls": "tool_calls", "function_call": "tool_calls"}
_CONTEXT_HINTS = ("context length", "context_length", "maximum context", "context window", "n_ctx", "too long")

Piece = TextDelta | ToolCallDelta


async def sse_events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of an OpenAI server-sent-event stream, until ``data: [DONE]``.

    Lines are split in bytes and each event's data parsed from bytes: httpx's ``aiter_lines`` decodes every
    piece to text and splits it again (about a tenth of a worker's CPU on a streamed request). Lines end with
    CRLF, LF or CR, as the SSE format allows. Raises ``UpstreamFailed`` for an event that is not a JSON object
    or is longer than ``MAX_EVENT_BYTES``.
    """
    data: list[bytes] = []
    size = 0
    held = b""
    pieces = response.aiter_bytes()
    async for piece in pieces:
        held = held + piece if held else piece
        if b"\r" in held:
            # A CR at the very end may be half of a CRLF: it waits for the next piece.
            cut = len(held) - 1 if held.endswith(b"\r") else len(held)
            lines = held[:cut].replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
            lines[-1] += held[cut:]
        else:
            lines = held.split(b"\n")
        held = lines.pop()
        if len(held) > MAX_EVENT_BYTES:
            raise UpstreamFailed(f"upstream {response.url} sent an event over {MAX_EVENT_BYTES} bytes")
        for line in lines:
            if line.startswith(b"data:"):
                data.append(line[6:] if line[5:6] == b" " else line[5:])
                size += len(line)
                if size > MAX_EVENT_BYTES:
                    raise UpstreamFailed(f"upstream {response.url} sent an event over {MAX_EVENT_BYTES} bytes")
                continue
            if line or not data:
                continue  # comments (": ping"), event names, or blank keep-alives
            payload = data[0] if len(data) == 1 else b"\n".join(data)
            data, size = [], 0
            if payload == b"[DONE]":
                # Read on to the end of the body (there is normally nothing left), so that the connection is kept
                # for the next request: left unread, it is closed, and every request paid a new TCP connection.
                left = MAX_EVENT_BYTES
                async for rest in pieces:
                    left -= len(rest)
                    if left < 0:
                        break
                return
            try:
                event = json.loads(payload)
            except ValueError as exc:
                raise UpstreamFailed(f"upstream {response.url} sent a malformed event: {_shown(payload)}") from exc
            if not isinstance(event, dict):
                raise UpstreamFailed(f"upstream {response.url} sent an event that is not an object: {_shown(payload)}")
            yield event


def _shown(payload: bytes) -> str:
    return repr(payload[:200].decode(errors="replace"))


class StreamReader:
    """Reads the chunks of one upstream stream for ``request``: ``read`` turns each into engine events; after the
    last, ``finish_reason`` and ``usage`` (``None`` when the server sent none) and ``tokens`` (the completion
    tokens the pieces stand for: one per piece, or one per log-probability entry) say how it ended."""

    def __init__(self, url: str, request: GenerationRequest) -> None:
        self.url = url
        self.finish_reason: FinishReason | None = None
        self.usage: TokenUsage | None = None
        self.tokens = 0
        self._chat = request.messages is not None
        self._logprobs = request.logprobs
        self._tools = request.wants_tools
        # An honest server sends at most a piece or two per token; more means it ignores max_tokens.
        self._max_pieces = 2 * request.params.max_tokens + 64
        self._pieces = 0
        self._calls: dict[int, tuple[str | None, str]] = {}  # index -> (id, function name), as first sent

    def read(self, chunk: dict[str, Any]) -> list[Piece]:
        """The events of one chunk (a ``chat.completion.chunk`` or ``text_completion``), in order.

        Raises the mapped error for an ``error`` event, ``UpstreamFailed`` for anything malformed.
        """
        if "error" in chunk:
            raise upstream_error(400, json.dumps(chunk), self.url)
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            self._malformed(f"choices is {type(choices).__name__}, not a list")
        events: list[Piece] = []
        for choice in choices:
            if not isinstance(choice, dict):
                self._malformed("a choice is not an object")
            if choice.get("index", 0) != 0:
                self._malformed(f"a choice of index {choice.get('index')!r}, but one choice was asked for")
            events += self._choice(choice)
        if chunk.get("usage"):
            self.usage = self._usage(chunk["usage"])
        self._pieces += len(events)
        if self._pieces > self._max_pieces:
            self._malformed(f"over {self._max_pieces} pieces: it does not honour max_tokens")
        return events

    def _choice(self, choice: dict[str, Any]) -> list[Piece]:
        raw_calls: Any = ()
        if self._chat:
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict):
                self._malformed("a choice's delta is not an object")
            text = self._string(delta.get("content"), "delta.content")
            raw_calls = delta.get("tool_calls") or ()
            if not isinstance(raw_calls, list | tuple):
                self._malformed("delta.tool_calls is not a list")
        else:
            text = self._string(choice.get("text"), "text")
        logprobs = self._read_logprobs(choice.get("logprobs")) if self._logprobs else ()
        if (text or raw_calls) and self.finish_reason is not None:
            self._malformed("more of the answer after its finish_reason")
        if text and self._logprobs and not logprobs:
            raise UpstreamFailed(
                f"upstream {self.url} streamed text without the log-probabilities the request asked for; does it "
                "support logprobs? (llama-cpp-python's server returns them only with top_logprobs set)"
            )
        calls = [call for call in map(self._tool_call, raw_calls) if call is not None]
        tokens = len(logprobs) if logprobs else int(bool(text or calls))
        self.tokens += tokens
        events: list[Piece] = []
        if text or (logprobs and not calls):  # OpenAI rates the content's tokens only, not a tool call's
            events.append(TextDelta(text, tokens, logprobs))
            tokens = 0
        for call in calls:
            events.append(replace(call, tokens=tokens))
            tokens = 0
        finish = choice.get("finish_reason")
        if finish is not None:
            if not isinstance(finish, str):
                self._malformed(f"finish_reason {finish!r}")
            reason = _FINISH.get(finish, "stop")
            if reason == "tool_calls" and not self._calls:
                reason = "stop"  # else the app would get a tool-call answer without calls
            self.finish_reason = self.finish_reason or reason
        return events

    def _tool_call(self, raw: Any) -> ToolCallDelta | None:
        """One piece of ``delta.tool_calls``: the first of an index names the call (id, function name), later ones
        carry fragments of its arguments. A server that repeats the id and name on every piece (llama-cpp-python's)
        has them taken once, so an app that joins pieces as OpenAI's SDK does sees each once."""
        if not self._tools:
            self._malformed("a tool call, but the request offered no tools to call")
        if not isinstance(raw, dict):
            self._malformed("a tool call piece is not an object")
        index = raw.get("index")
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index <= len(self._calls):
            self._malformed(f"tool call index {index!r} (the next would be {len(self._calls)})")
        if raw.get("type") not in (None, "function"):
            self._malformed(f"a tool call of type {raw.get('type')!r}; only function calls exist")
        call_id = raw.get("id") or None
        if call_id is not None and (not isinstance(call_id, str) or len(call_id) > _MAX_ID_CHARS):
            self._malformed(f"tool call id {str(call_id)[:200]!r} (a string of at most {_MAX_ID_CHARS} characters)")
        function = raw.get("function") or {}
        if not isinstance(function, dict):
            self._malformed("a tool call's function is not an object")
        name = function.get("name") or None
        if name is not None and (not isinstance(name, str) or not _NAME.fullmatch(name)):
            self._malformed(f"function name {str(name)[:200]!r} (1 to 64 of A-Z a-z 0-9 _ . : -)")
        arguments = self._string(function.get("arguments"), "tool call arguments")
        known = self._calls.get(index)
        if known is None:
            if name is None:
                self._malformed(f"tool call {index} starts without its function name")
            if len(self._calls) >= _MAX_TOOL_CALLS:
                self._malformed(f"over {_MAX_TOOL_CALLS} tool calls")
            self._calls[index] = (call_id, name)
            return ToolCallDelta(index, call_id, name, arguments)
        known_id, known_name = known
        if name is not None and name != known_name:
            self._malformed(f"tool call {index} renamed from {known_name!r} to {name!r}")
        if call_id is not None and known_id is not None and call_id != known_id:
            self._malformed(f"tool call {index} changed its id from {known_id!r} to {call_id!r}")
        new_id = call_id if known_id is None else None
        if new_id is not None:
            self._calls[index] = (new_id, known_name)
        if not arguments and new_id is None:
            return None
        return ToolCallDelta(index, new_id, None, arguments)

    def _read_logprobs(self, raw: Any) -> tuple[TokenLogprob, ...]:
        """Chat's ``logprobs.content`` entries, or legacy completions' ``logprobs`` lists, as ``TokenLogprob``s."""
        if raw is None:
            return ()
        if not isinstance(raw, dict):
            self._malformed("logprobs is not an object")
        if self._chat:
            entries = raw.get("content") or []
            if not isinstance(entries, list) or len(entries) > _MAX_ENTRIES:
                self._malformed(f"logprobs.content is not a list of at most {_MAX_ENTRIES} entries")
            return tuple(self._chat_entry(entry) for entry in entries)
        tokens, values, tops = raw.get("tokens") or [], raw.get("token_logprobs") or [], raw.get("top_logprobs")
        if tops is None:
            tops = [None] * len(tokens)
        lists = (tokens, values, tops)
        if not all(isinstance(x, list) for x in lists) or len({len(x) for x in lists}) != 1:
            self._malformed("logprobs' tokens, token_logprobs and top_logprobs are not lists of one length")
        if len(tokens) > _MAX_ENTRIES:
            self._malformed(f"over {_MAX_ENTRIES} log-probability entries in one chunk")
        return tuple(
            TokenLogprob(self._token(token), self._logprob(value), None, self._text_top(top))
            for token, value, top in zip(tokens, values, tops, strict=True)
        )

    def _chat_entry(self, entry: Any) -> TokenLogprob:
        if not isinstance(entry, dict):
            self._malformed("a logprobs.content entry is not an object")
        tops = entry.get("top_logprobs") or []
        if not isinstance(tops, list) or len(tops) > _MAX_TOP:
            self._malformed(f"top_logprobs is not a list of at most {_MAX_TOP} entries")
        top: list[TopLogprob] = []
        for alternative in tops:
            if not isinstance(alternative, dict):
                self._malformed("a top_logprobs entry is not an object")
            token, logprob = self._token(alternative.get("token")), self._logprob(alternative.get("logprob"))
            top.append(TopLogprob(token, logprob, self._bytes(alternative.get("bytes"))))
        return TokenLogprob(
            self._token(entry.get("token")),
            self._logprob(entry.get("logprob")),
            self._bytes(entry.get("bytes")),
            _best_first(top),
        )

    def _text_top(self, top: Any) -> tuple[TopLogprob, ...]:
        """Legacy completions' alternatives, a map of token text to log-probability."""
        if top is None:
            return ()
        if not isinstance(top, dict) or len(top) > _MAX_TOP:
            self._malformed(f"a top_logprobs entry is not a map of at most {_MAX_TOP} tokens")
        return _best_first([TopLogprob(self._token(token), self._logprob(value)) for token, value in top.items()])

    def _token(self, value: Any) -> str:
        if not isinstance(value, str) or len(value) > _MAX_TOKEN_CHARS:
            self._malformed(f"a log-probability's token {str(value)[:200]!r} is not a string of a token's length")
        return value

    def _logprob(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value) or value > 1e-3:
            self._malformed(f"log-probability {value!r} (a number at most 0)")
        return _NEG_INF_LOGPROB if math.isinf(value) else min(float(value), 0.0)

    def _bytes(self, value: Any) -> tuple[int, ...] | None:
        if value is None:
            return None
        if not isinstance(value, list) or len(value) > 4 * _MAX_TOKEN_CHARS:
            self._malformed("a log-probability's bytes is not a list of a token's length")
        if not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in value):
            self._malformed("a log-probability's bytes are not all bytes (0 to 255)")
        return tuple(value)

    def _string(self, value: Any, what: str) -> str:
        if value is None:
            return ""
        if not isinstance(value, str) or len(value) > _MAX_PIECE_CHARS:
            self._malformed(f"{what} is not a string of at most {_MAX_PIECE_CHARS} characters")
        return value

    def _usage(self, raw: Any) -> TokenUsage:
        if not isinstance(raw, dict):
            self._malformed("usage is not an object")
        details = raw.get("prompt_tokens_details") or {}
        completion_details = raw.get("completion_tokens_details") or {}
        if not isinstance(details, dict) or not isinstance(completion_details, dict):
            self._malformed("usage details are not objects")
        return TokenUsage(
            prompt_tokens=self._count(raw.get("prompt_tokens"), "prompt_tokens"),
            completion_tokens=self._count(raw.get("completion_tokens"), "completion_tokens"),
            cached_tokens=self._count(details.get("cached_tokens"), "cached_tokens"),
            reasoning_tokens=self._count(completion_details.get("reasoning_tokens"), "reasoning_tokens"),
        )

    def _count(self, value: Any, what: str) -> int:
        if value is None:
            return 0
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS:
            self._malformed(f"usage {what} {value!r} (a count from 0 to {MAX_TOKENS})")
        return value

    def _malformed(self, what: str) -> NoReturn:
        raise UpstreamFailed(f"upstream {self.url} sent a malformed stream: {what}; see its log")


def _best_first(top: list[TopLogprob]) -> tuple[TopLogprob, ...]:
    return tuple(sorted(top, key=lambda alternative: -alternative.logprob))


def upstream_error(status: int, text: str, url: str) -> CocoonError:
    """Map an upstream error answer onto cocoon's tree, keeping the upstream's own message."""
    message = _error_message(text).strip()[:500] or f"HTTP {status}"
    if status in (400, 413, 422) and any(hint in message.lower() for hint in _CONTEXT_HINTS):
        return ContextLengthExceeded(f"upstream rejected the prompt as too long: {message}")
    if status in (400, 422):
        # The server judged the app's own request (a schema it cannot compile, a field it does not take): the app
        # must change it, and another worker on the same server would say the same, so it is no 502 to retry.
        return BadRequest(f"the model server refused the request: {message}")
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
