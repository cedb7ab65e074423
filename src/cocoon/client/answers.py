"""From the SDK's events to OpenAI's objects: choices (``n`` of them, each one sealed job with its own receipts),
their text, tool calls and log-probabilities, whole or as server-sent chunks, and usage summed over them all.

What a worker sealed in OpenAI's shapes (tool-call pieces, token log-probabilities) is validated against the
response models before an app sees it: a worker can be anyone, and a malformed piece is ``UpstreamFailed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from cocoon.client.sdk import Completion, Event, Kind, TextEvent
from cocoon.client.templates import TEXT_MARK, TEXT_MARK_JSON, Template, text_json
from cocoon.errors import CocoonError, UpstreamFailed
from cocoon.protocol.openai import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionUsageChunk,
    ChatDelta,
    ChoiceLogprobs,
    CompletionTokensDetails,
    FunctionCall,
    PromptTokensDetails,
    TextChoice,
    TextCompletion,
    TextCompletionChunk,
    TextLogprobs,
    TokenLogprob,
    ToolCallDelta,
    ToolCallOut,
    Usage,
)

log = logging.getLogger("cocoon.client")
M = TypeVar("M", bound=BaseModel)


@dataclass
class Choice:
    """One choice as it accumulates: its text, tool calls (by index) and log-probabilities, then its end."""

    index: int
    echo: str = ""  # a legacy completion's prompt, written before the text (``echo``)
    text: list[str] = field(default_factory=list)
    calls: dict[int, dict[str, str]] = field(default_factory=dict)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    final: Completion | None = None

    def add(self, event: TextEvent) -> tuple[list[ToolCallDelta], list[TokenLogprob]]:
        """Take ``event`` in; returns its tool-call pieces and log-probabilities, validated."""
        if event.text:
            self.text.append(event.text)
        pieces = [_validated(ToolCallDelta, raw, "tool call") for raw in event.tool_calls]
        for piece in pieces:
            call = self.calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
            call["id"] = piece.id or call["id"]
            call["name"] = piece.function.name or call["name"]
            call["arguments"] += piece.function.arguments or ""
        logprobs = [_validated(TokenLogprob, raw, "token log-probability") for raw in event.logprobs]
        self.logprobs += logprobs
        return pieces, logprobs

    def tool_calls(self) -> list[ToolCallOut] | None:
        if not self.calls:
            return None
        return [
            ToolCallOut(
                id=c["id"] or f"call_{uuid.uuid4().hex[:24]}",
                function=FunctionCall(name=c["name"], arguments=c["arguments"]),
            )
            for _, c in sorted(self.calls.items())
        ]


def _validated(model: type[M], raw: dict[str, Any], what: str) -> M:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise UpstreamFailed(f"a worker sealed a malformed {what}: {exc.errors()[0]['msg']}") from exc


class Reply:
    """The OpenAI objects of one chat or text completion with its choices (one id for them all)."""

    def __init__(self, kind: Kind, model: str, *, logprobs: bool = False) -> None:
        self.kind = kind
        self.model = model
        self.logprobs = logprobs
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())

    def whole(self, choices: Sequence[Choice]) -> ChatCompletion | TextCompletion:
        finals = [c.final for c in choices if c.final is not None]
        usage = summed_usage(finals)
        if self.kind == "chat":
            return ChatCompletion(
                id=self.id,
                created=self.created,
                model=self.model,
                choices=[self._chat_choice(c) for c in choices],
                usage=usage,
            )
        return TextCompletion(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[
                TextChoice(
                    index=c.index,
                    text=c.echo + "".join(c.text),
                    logprobs=self._text_logprobs(c.logprobs, len(c.echo)) if self.logprobs else None,
                    finish_reason=_finish(c),
                )
                for c in choices
            ],
            usage=usage,
        )

    def _chat_choice(self, choice: Choice) -> ChatChoice:
        calls = choice.tool_calls()
        text = "".join(choice.text)
        message = AssistantMessage(content=text if text or not calls else None, tool_calls=calls)
        logprobs = ChoiceLogprobs(content=choice.logprobs) if self.logprobs else None
        return ChatChoice(index=choice.index, message=message, logprobs=logprobs, finish_reason=_finish(choice))

    def chunk(
        self,
        index: int,
        text: str | None,
        finish_reason: str | None = None,
        *,
        first: bool = False,
        tool_calls: list[ToolCallDelta] | None = None,
        logprobs: list[TokenLogprob] | None = None,
        offset: int = 0,
    ) -> ChatCompletionChunk | TextCompletionChunk:
        if self.kind == "chat":
            delta = ChatDelta(role="assistant" if first else None, content=text, tool_calls=tool_calls or None)
            lp = ChoiceLogprobs(content=logprobs) if self.logprobs and logprobs is not None else None
            choice = ChatChunkChoice(index=index, delta=delta, logprobs=lp, finish_reason=finish_reason)
            return ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=[choice])
        text_lp = self._text_logprobs(logprobs, offset) if self.logprobs and logprobs else None
        text_choice = TextChoice(index=index, text=text or "", logprobs=text_lp, finish_reason=finish_reason)
        return TextCompletionChunk(id=self.id, created=self.created, model=self.model, choices=[text_choice])

    def usage_chunk(self, finals: Sequence[Completion]) -> ChatCompletionUsageChunk | TextCompletion:
        usage = summed_usage(finals)
        if self.kind == "chat":
            return ChatCompletionUsageChunk(id=self.id, created=self.created, model=self.model, usage=usage)
        return TextCompletion(id=self.id, created=self.created, model=self.model, choices=[], usage=usage)

    @staticmethod
    def _text_logprobs(entries: Sequence[TokenLogprob] | None, offset: int) -> TextLogprobs:
        offsets: list[int] = []
        for entry in entries or ():
            offsets.append(offset)
            offset += len(entry.token)
        return TextLogprobs(
            tokens=[e.token for e in entries or ()],
            token_logprobs=[e.logprob for e in entries or ()],
            top_logprobs=[{t.token: t.logprob for t in e.top_logprobs} for e in entries or ()],
            text_offset=offsets,
        )


def _finish(choice: Choice) -> str:
    return choice.final.finish_reason if choice.final is not None else "stop"


def summed_usage(finals: Sequence[Completion]) -> Usage:
    """Usage over every choice: each is its own job, so its prompt is counted (and billed) once per choice."""
    prompt = sum(f.usage.prompt_tokens for f in finals)
    completion = sum(f.usage.completion_tokens for f in finals)
    costs = [f.cost for f in finals if f.cost is not None]
    cost_fields: dict[str, Any] = {}
    if costs:
        total = costs[0]
        for cost in costs[1:]:
            total = total + cost
        cost_fields = total.usage_fields()
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=sum(f.usage.cached_tokens for f in finals)),
        completion_tokens_details=CompletionTokensDetails(
            reasoning_tokens=sum(f.usage.reasoning_tokens for f in finals)
        ),
        receipt_ids=[r.receipt_id for f in finals for r in f.receipts],
        workers=[r.worker_id for f in finals for r in f.receipts],
        **cost_fields,
    )


async def whole(choices: Sequence[Choice], streams: Sequence[AsyncIterator[Event]]) -> list[Choice]:
    """Run every choice's stream to its end, concurrently; the first failure cancels the others."""

    async def run(choice: Choice, events: AsyncIterator[Event]) -> None:
        try:
            async for event in events:
                if isinstance(event, TextEvent):
                    choice.add(event)
                elif isinstance(event, Completion):
                    choice.final = event
        finally:
            await close_all(events)

    tasks = [asyncio.create_task(run(c, e)) for c, e in zip(choices, streams, strict=True)]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return list(choices)


async def merged(streams: Sequence[AsyncIterator[Event]]) -> AsyncIterator[tuple[int, Event]]:
    """Every stream's events as they come, tagged by stream index; a failure in one ends them all (raised)."""
    if len(streams) == 1:
        async for event in streams[0]:
            yield 0, event
        return
    queue: asyncio.Queue[tuple[int, Event | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, events: AsyncIterator[Event]) -> None:
        try:
            async for event in events:
                await queue.put((index, event))
            await queue.put((index, None))
        except BaseException as exc:  # handed to the reader, which raises it
            await queue.put((index, exc))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        running = len(streams)
        while running:
            index, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for events in streams:
            await close_all(events)


async def sse(
    reply: Reply,
    choices: Sequence[Choice],
    first: tuple[int, Event],
    events: AsyncIterator[tuple[int, Event]],
    include_usage: bool,
    request_id: str,
) -> AsyncIterator[bytes]:
    """The server-sent events of a streamed completion, ``[DONE]`` last; a failure mid-way is an error event."""
    lines = ChunkLines(reply, include_usage)
    line, chunk = sse_line, lines.chunk

    if reply.kind == "chat":
        for choice in choices:
            yield chunk(choice.index, "", first=True)
    else:
        for choice in choices:
            if choice.echo:
                yield chunk(choice.index, choice.echo)
    try:
        pending: tuple[int, Event] | None = first
        while pending is not None:
            slot, event = pending
            choice = choices[slot]
            if isinstance(event, TextEvent):
                offset = len(choice.echo) + sum(map(len, choice.text))
                calls, logprobs = choice.add(event)
                text = event.text if event.text or not calls else None
                if text is not None and not calls and not reply.logprobs:
                    yield lines.text(choice.index, text)
                else:
                    yield chunk(choice.index, text, tool_calls=calls, logprobs=logprobs, offset=offset)
            elif isinstance(event, Completion):
                choice.final = event
                yield chunk(choice.index, None if reply.kind == "chat" else "", event.finish_reason)
            pending = await anext(events, None)
        if include_usage:
            yield line(reply.usage_chunk([c.final for c in choices if c.final is not None]))
    except CocoonError as exc:
        log.warning("stream failed request_id=%s code=%s", request_id, exc.code)
        yield line(exc.to_openai())
    finally:
        # An app that hangs up closes this generator: closing the SDK's too ends its requests to the proxy now
        # (not when the garbage collector gets to them), so the jobs are cancelled on their workers.
        await close_all(events)
    yield b"data: [DONE]\n\n"


def sse_line(obj: BaseModel | dict[str, object]) -> bytes:
    """One server-sent event of ``obj``'s JSON."""
    body = obj.model_dump(mode="json") if isinstance(obj, BaseModel) else obj
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


class ChunkLines:
    """The events of one streamed reply's chunks. Most chunks are a choice's next text and nothing else: each
    choice's is made once from a template (``cocoon.client.templates``) and filled in; ``text`` gives the bytes
    ``chunk`` gives for the same text (``test_answers.py`` holds the two to it)."""

    def __init__(self, reply: Reply, include_usage: bool) -> None:
        self.reply = reply
        # OpenAI writes "usage": null on every chunk of a stream that will end with usage, and no key otherwise.
        self._exclude: set[str] = set() if include_usage else {"usage"}
        self._templates: dict[int, Template] = {}

    def chunk(self, *args: Any, **kwargs: Any) -> bytes:
        return sse_line(self.reply.chunk(*args, **kwargs).model_dump(mode="json", exclude=self._exclude))

    def text(self, index: int, text: str) -> bytes:
        """``chunk(index, text)`` of a reply without log-probabilities."""
        template = self._templates.get(index)
        if template is None:
            template = self._templates[index] = Template(self.chunk(index, TEXT_MARK), [TEXT_MARK_JSON])
        return template.fill(text_json(text))


async def close_all(*streams: object) -> None:
    """``aclose()`` each of ``streams`` that has one (None and plain iterators are skipped)."""
    for stream in streams:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(RuntimeError):  # already running: it closes itself
                await aclose()
