"""``POST /v1/responses``: OpenAI's Responses API, served statelessly on the chat path.

The request becomes one chat completion (``ResponsesRequest.chat_request``), sealed and paid through the SDK as
``gateway.chat_completions`` serves one choice; its answer is written back as a ``Response`` object, or as the
Responses API's named server-sent events from ``response.created`` to ``response.completed``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.responses import Response as HttpResponse

from cocoon.client.answers import Choice, merged, summed_usage, whole
from cocoon.client.event_stream import EventStreamResponse
from cocoon.client.intake import admitted, parsed_body, sdk_of, settings_of, within_prompt_limit
from cocoon.client.sdk import Completion, Event, TextEvent
from cocoon.client.templates import TEXT_MARK, TEXT_MARK_JSON, Template, text_json
from cocoon.errors import BadRequest, CocoonError
from cocoon.protocol.http import ClientGone, unless_disconnected
from cocoon.protocol.openai import TokenLogprob, ToolCallDelta
from cocoon.protocol.openai_responses import (
    ArgumentsDeltaEvent,
    ArgumentsDoneEvent,
    ContentPartEvent,
    FunctionToolCall,
    IncompleteDetails,
    InputTokensDetails,
    LifecycleEvent,
    OutputItem,
    OutputItemEvent,
    OutputLogprob,
    OutputMessage,
    OutputText,
    OutputTokensDetails,
    OutputTopLogprob,
    ReasoningConfig,
    Response,
    ResponseError,
    ResponsesRequest,
    ResponseUsage,
    StreamEvent,
    TextConfig,
    TextDeltaEvent,
    TextDoneEvent,
)

log = logging.getLogger("cocoon.client")
Status = Literal["in_progress", "completed", "incomplete", "failed"]
# Chat's finish reasons that cut an answer short, as the Responses API names them.
CUT_SHORT: dict[str, Literal["max_output_tokens", "content_filter"]] = {
    "length": "max_output_tokens",
    "content_filter": "content_filter",
}


async def responses(request: Request) -> HttpResponse:
    req = await parsed_body(request, ResponsesRequest)
    chat = req.chat_request()
    messages = chat.sealed_messages()
    within_prompt_limit(request, sum(len(m.content) for m in messages), "input")
    max_tokens = chat.max_completion_tokens or settings_of(request).default_max_tokens
    meter = await admitted(request, chat.model, chat.timeout)
    stream = sdk_of(request).stream(
        "chat",
        chat.model,
        messages=messages,
        params=chat.sealed_params(max_tokens),
        routing=chat.routing(),
        timeout=chat.timeout,
        openai=chat.sealed_body(n=1),
        meter=meter,
    )
    writer = ResponseWriter(req)
    choice = Choice(0)
    if not req.stream:
        try:
            with _input_named():
                await unless_disconnected(request, whole([choice], [stream]))
        except ClientGone:
            log.info("the app hung up request_id=%s; its job is cancelled", request.state.request_id)
            return HttpResponse(status_code=499)  # nobody reads it
        return JSONResponse(writer.whole(choice).model_dump(mode="json", by_alias=True))
    # As on chat: the first event is in before the stream starts, so routing and capacity errors get a status.
    events = merged([stream])
    try:
        with _input_named():
            first = await unless_disconnected(request, anext(events))
    except ClientGone:
        log.info("the app hung up request_id=%s; its job is cancelled", request.state.request_id)
        await _closed(events, stream)
        return HttpResponse(status_code=499)
    except BaseException:
        await _closed(events, stream)
        raise
    body = writer.sse(choice, first, events, request.state.request_id)
    return EventStreamResponse(body, headers={"cache-control": "no-cache"})


@contextlib.contextmanager
def _input_named() -> Iterator[None]:
    """The chat path's refusals of ``messages`` (images that no worker takes) name this API's ``input``."""
    try:
        yield
    except BadRequest as exc:
        if exc.param != "messages":
            raise
        raise type(exc)(exc.message, param="input") from exc


async def _closed(*streams: AsyncIterator[object]) -> None:
    """Close each stream now (ending the SDK's requests to the proxy, so the jobs are cancelled on their workers)."""
    for stream in streams:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(RuntimeError):  # already running: it closes itself
                await aclose()


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class ResponseWriter:
    """One response as it is written: its id and the request's settings echoed, its output items (a message,
    then function calls) as they form, and its end: completed, incomplete when cut short, or failed."""

    def __init__(self, req: ResponsesRequest) -> None:
        self.req = req
        self.id = _new_id("resp")
        self.created_at = int(time.time())
        self.items: list[OutputItem] = []
        self._numbers = itertools.count()
        self._deltas: dict[int, Template] = {}  # a text delta's event by its message's output index
        # What streamed into an open item since its text was last read: ``part.text += delta`` would copy the
        # whole text at every delta (quadratic in a long answer). ``_settle`` joins them in.
        self._unjoined: dict[int, list[str]] = {}  # by ``id()`` of the OutputText or FunctionToolCall

    def _settle(self) -> None:
        """Every open item's text and arguments whole again, before they are read."""
        for item in self.items:
            target = item.content[0] if isinstance(item, OutputMessage) and item.content else item
            pieces = self._unjoined.pop(id(target), None)
            if pieces is None:
                continue
            if isinstance(target, OutputText):
                target.text += "".join(pieces)
            elif isinstance(target, FunctionToolCall):
                target.arguments += "".join(pieces)

    def response(self, status: Status, final: Completion | None = None, error: ResponseError | None = None) -> Response:
        """The response object as it stands, ``status`` given; usage once the answer's ``final`` is in."""
        self._settle()
        req = self.req
        cut = CUT_SHORT.get(final.finish_reason) if final is not None else None
        reasoning = req.reasoning or ReasoningConfig()
        return Response(
            id=self.id,
            created_at=self.created_at,
            status=status,
            completed_at=int(time.time()) if status in ("completed", "incomplete") else None,
            error=error,
            incomplete_details=IncompleteDetails(reason=cut) if cut else None,
            instructions=req.instructions,
            max_output_tokens=req.max_output_tokens,
            max_tool_calls=req.max_tool_calls,
            model=req.model,
            output=[item.model_copy(deep=True) for item in self.items],
            parallel_tool_calls=req.parallel_tool_calls is not False,
            reasoning=ReasoningConfig(effort=reasoning.effort, summary=reasoning.summary),
            service_tier="default",
            temperature=1.0 if req.temperature is None else req.temperature,
            text=TextConfig(format=req.text_format(), verbosity=req.text_verbosity() or "medium"),
            tool_choice=req.tool_choice or "auto",
            tools=req.tools or [],
            top_logprobs=req.top_logprobs or 0,
            top_p=1.0 if req.top_p is None else req.top_p,
            usage=_usage(final) if final is not None else None,
            user=req.user,
            safety_identifier=req.safety_identifier,
            prompt_cache_key=req.prompt_cache_key,
            metadata=req.metadata or {},
        )

    def whole(self, choice: Choice) -> Response:
        """The response to a finished ``choice``: its text as one message (always, when it called nothing),
        then its function calls."""
        text = "".join(choice.text)
        calls = choice.tool_calls() or []
        if text or not calls:
            content = [OutputText(text=text, logprobs=self._logprobs(choice.logprobs))]
            self.items.append(OutputMessage(id=_new_id("msg"), status="completed", content=content))
        for call in calls:
            self.items.append(
                FunctionToolCall(
                    id=_new_id("fc"),
                    status="completed",
                    call_id=call.id,
                    name=call.function.name,
                    arguments=call.function.arguments,
                )
            )
        return self._ended(choice.final)

    def _ended(self, final: Completion | None) -> Response:
        cut = final is not None and final.finish_reason in CUT_SHORT
        if cut and self.items:
            self.items[-1].status = "incomplete"  # the item being written when the answer was cut
        return self.response("incomplete" if cut else "completed", final)

    def _logprobs(self, entries: list[TokenLogprob]) -> list[OutputLogprob]:
        if not self.req.wants_logprobs():
            return []
        return [
            OutputLogprob(
                token=e.token,
                bytes=_bytes(e.token, e.bytes),
                logprob=e.logprob,
                top_logprobs=[
                    OutputTopLogprob(token=t.token, bytes=_bytes(t.token, t.bytes), logprob=t.logprob)
                    for t in e.top_logprobs
                ],
            )
            for e in entries
        ]

    # ---- the stream ----------------------------------------------------------------------------------

    async def sse(
        self, choice: Choice, first: tuple[int, Event], events: AsyncIterator[tuple[int, Event]], request_id: str
    ) -> AsyncIterator[bytes]:
        """The response's server-sent events: created and in progress, each item's added, deltas and done, then
        completed (or incomplete); a failure mid-way is ``response.failed`` carrying the error."""
        yield self._event(LifecycleEvent, type="response.created", response=self.response("in_progress"))
        yield self._event(LifecycleEvent, type="response.in_progress", response=self.response("in_progress"))
        message: OutputMessage | None = None  # the message being written, until a function call starts
        calls: dict[int, FunctionToolCall] = {}  # by the chat tool call's index
        try:
            pending: tuple[int, Event] | None = first
            while pending is not None:
                event = pending[1]
                if isinstance(event, TextEvent):
                    pieces, logprobs = choice.add(event)
                    if event.text:
                        if message is None:
                            message = OutputMessage(id=_new_id("msg"), status="in_progress", content=[])
                            for line in self._opened(message):
                                yield line
                        yield self._text(message, event.text, self._logprobs(logprobs))
                    for piece in pieces:
                        if piece.index not in calls:
                            if message is not None:
                                for line in self._closed(message, "completed"):
                                    yield line
                                message = None
                            calls[piece.index] = self._call(piece)
                            for line in self._opened(calls[piece.index]):
                                yield line
                        for line in self._arguments(calls[piece.index], piece):
                            yield line
                elif isinstance(event, Completion):
                    choice.final = event
                pending = await anext(events, None)
            if not self.items:  # nothing at all was said: one empty message, as a whole response has
                message = OutputMessage(id=_new_id("msg"), status="in_progress", content=[])
                for line in self._opened(message):
                    yield line
            open_items = [item for item in self.items if item.status == "in_progress"]
            cut = choice.final is not None and choice.final.finish_reason in CUT_SHORT
            for item in open_items:
                for line in self._closed(item, "incomplete" if cut and item is self.items[-1] else "completed"):
                    yield line
            response = self.response("incomplete" if cut else "completed", choice.final)
            yield self._event(LifecycleEvent, type=f"response.{response.status}", response=response)
        except CocoonError as exc:
            log.warning("response stream failed request_id=%s code=%s", request_id, exc.code)
            for item in self.items:
                if item.status == "in_progress":
                    item.status = "incomplete"
            error = ResponseError(code=exc.code, message=exc.message, type=exc.type, param=exc.param)
            yield self._event(LifecycleEvent, type="response.failed", response=self.response("failed", error=error))
        finally:
            # An app that hangs up closes this generator: closing the SDK's stream too cancels the job now.
            await _closed(events)

    def _event(self, kind: type[StreamEvent], **fields: Any) -> bytes:
        return _line(kind(sequence_number=next(self._numbers), **fields))

    def _opened(self, item: OutputItem) -> list[bytes]:
        self.items.append(item)
        index = len(self.items) - 1
        lines = [self._event(OutputItemEvent, type="response.output_item.added", output_index=index, item=item)]
        if isinstance(item, OutputMessage):
            item.content.append(OutputText(text=""))
            lines.append(self._part(item, "response.content_part.added"))
        return lines

    def _text(self, message: OutputMessage, delta: str, logprobs: list[OutputLogprob]) -> bytes:
        part = message.content[0]
        self._unjoined.setdefault(id(part), []).append(delta)
        part.logprobs += logprobs
        index = self.items.index(message)
        if not logprobs:  # most deltas: from the message's template (``cocoon.client.templates``)
            template = self._deltas.get(index)
            if template is None:
                rendered = _line(
                    TextDeltaEvent(
                        type="response.output_text.delta",
                        sequence_number=_NUMBER_MARK,
                        item_id=message.id,
                        output_index=index,
                        content_index=0,
                        delta=TEXT_MARK,
                        logprobs=[],
                    )
                )
                template = self._deltas[index] = Template(rendered, [_NUMBER_MARK_JSON, TEXT_MARK_JSON])
            return template.fill(b'"sequence_number":%d' % next(self._numbers), text_json(delta))
        return self._event(
            TextDeltaEvent,
            type="response.output_text.delta",
            item_id=message.id,
            output_index=index,
            content_index=0,
            delta=delta,
            logprobs=logprobs,
        )

    def _call(self, piece: ToolCallDelta) -> FunctionToolCall:
        call_id = piece.id or f"call_{uuid.uuid4().hex[:24]}"
        return FunctionToolCall(
            id=_new_id("fc"), status="in_progress", call_id=call_id, name=piece.function.name or "", arguments=""
        )

    def _arguments(self, call: FunctionToolCall, piece: ToolCallDelta) -> list[bytes]:
        call.name = call.name or piece.function.name or ""
        if not piece.function.arguments:
            return []
        self._unjoined.setdefault(id(call), []).append(piece.function.arguments)
        return [
            self._event(
                ArgumentsDeltaEvent,
                type="response.function_call_arguments.delta",
                item_id=call.id,
                output_index=self.items.index(call),
                delta=piece.function.arguments,
            )
        ]

    def _closed(self, item: OutputItem, status: Literal["completed", "incomplete"]) -> list[bytes]:
        self._settle()
        index = self.items.index(item)
        item.status = status
        lines: list[bytes] = []
        if isinstance(item, OutputMessage):
            part = item.content[0]
            lines.append(
                self._event(
                    TextDoneEvent,
                    type="response.output_text.done",
                    item_id=item.id,
                    output_index=index,
                    content_index=0,
                    text=part.text,
                    logprobs=part.logprobs,
                )
            )
            lines.append(self._part(item, "response.content_part.done"))
        else:
            lines.append(
                self._event(
                    ArgumentsDoneEvent,
                    type="response.function_call_arguments.done",
                    item_id=item.id,
                    output_index=index,
                    name=item.name,
                    arguments=item.arguments,
                )
            )
        lines.append(self._event(OutputItemEvent, type="response.output_item.done", output_index=index, item=item))
        return lines

    def _part(self, message: OutputMessage, kind: str) -> bytes:
        return self._event(
            ContentPartEvent,
            type=kind,
            item_id=message.id,
            output_index=self.items.index(message),
            content_index=0,
            part=message.content[0],
        )


_NUMBER_MARK = 7_340_032_993_331  # a sequence number's value in a rendering made for a template
_NUMBER_MARK_JSON = b'"sequence_number":%d' % _NUMBER_MARK


def _line(event: StreamEvent) -> bytes:
    """One server-sent event of ``event``: its type, then its JSON."""
    data = json.dumps(event.model_dump(mode="json", by_alias=True), separators=(",", ":"))
    return f"event: {event.type}\ndata: {data}\n\n".encode()


def _bytes(token: str, given: list[int] | None) -> list[int]:
    return given if given is not None else list(token.encode())


def _usage(final: Completion) -> ResponseUsage:
    """Chat's usage of the one job (its receipts and costs too) under the Responses API's names."""
    usage = summed_usage([final])
    costs = usage.model_dump(include={"prompt_cost", "cached_cost", "completion_cost", "total_cost"})
    return ResponseUsage(
        input_tokens=usage.prompt_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=usage.prompt_tokens_details.cached_tokens),
        output_tokens=usage.completion_tokens,
        output_tokens_details=OutputTokensDetails(reasoning_tokens=usage.completion_tokens_details.reasoning_tokens),
        total_tokens=usage.total_tokens,
        receipt_ids=usage.receipt_ids,
        workers=usage.workers,
        **costs,
    )
