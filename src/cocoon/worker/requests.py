"""What the engine is asked: a sealed payload, opened, as a ``GenerationRequest``.

The payload carries the app's OpenAI request itself (``RequestPayload.openai``); the worker validates it again
with the same models the client used (``cocoon.protocol.openai``: the client can be anyone) and reads the
fields its engine acts on: messages with their tool calls and images, tools and ``tool_choice``,
``response_format``, log-probabilities. Payloads without it (canaries, the SDK's own calls) are text only.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import ValidationError

from cocoon.engines.base import (
    ChatMessage,
    FunctionTool,
    GenerationRequest,
    OutputFormat,
    SamplingParams,
    ToolCall,
    ToolChoice,
)
from cocoon.errors import BadRequest, first_problem
from cocoon.protocol.openai import ChatCompletionRequest, CompletionRequest, NamedToolChoice
from cocoon.protocol.payload import RequestPayload

M = TypeVar("M", ChatCompletionRequest, CompletionRequest)


def generation_request(payload: RequestPayload, params: SamplingParams, continuation: str) -> GenerationRequest:
    """The engine's request for ``payload``, generating under ``params`` after ``continuation`` (resume).

    Raises ``BadRequest`` naming the field when the sealed OpenAI request is invalid or does not match the
    payload, and when a constrained request (tools, a response format, log-probabilities) would be resumed
    mid-answer: its constraint cannot be carried over from another worker's partial output.
    """
    if payload.openai is None:
        return _text_only(payload, params, continuation)
    if payload.openai.get("model") != payload.model:
        raise BadRequest("the sealed OpenAI request names another model than the job", param="model")
    if payload.kind == "chat":
        chat = _validated(ChatCompletionRequest, payload.openai)
        request = GenerationRequest(
            params=params,
            messages=tuple(_message(m) for m in chat.messages),
            continuation=continuation,
            tools=tuple(_tool(t.model_dump(by_alias=True)) for t in chat.tools or ()),
            tool_choice=_tool_choice(chat),
            tool_name=chat.tool_choice.function.name if isinstance(chat.tool_choice, NamedToolChoice) else None,
            parallel_tool_calls=chat.parallel_tool_calls is not False,
            response_format=_output_format(chat),
            logprobs=bool(chat.logprobs),
            top_logprobs=chat.top_logprobs or 0,
            openai=payload.openai,
        )
    else:
        text = _validated(CompletionRequest, payload.openai)
        ids = tuple(payload.prompt_ids) if payload.prompt_ids is not None else None
        request = GenerationRequest(
            params=params,
            prompt=payload.prompt or "",
            prompt_ids=ids,
            continuation=continuation,
            logprobs=text.logprobs is not None,
            top_logprobs=text.logprobs or 0,
            openai=payload.openai,
        )
    constrained = request.wants_tools or request.response_format.type != "text" or request.logprobs
    if continuation and constrained:
        raise BadRequest(
            "this request uses tools, a response_format or logprobs, which cannot be resumed on another worker "
            "mid-answer; send it again"
        )
    return request


def _text_only(payload: RequestPayload, params: SamplingParams, continuation: str) -> GenerationRequest:
    if payload.kind == "chat":
        messages = tuple(ChatMessage(m.role, m.content) for m in payload.messages or [])
        return GenerationRequest(params=params, messages=messages, continuation=continuation)
    ids = tuple(payload.prompt_ids) if payload.prompt_ids is not None else None
    return GenerationRequest(params=params, prompt=payload.prompt or "", prompt_ids=ids, continuation=continuation)


def _validated(model: type[M], body: dict[str, Any]) -> M:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        where, message = first_problem(exc)
        raise BadRequest(f"sealed OpenAI request: {where}: {message}", param=where or None) from exc


def _message(m: Any) -> ChatMessage:
    calls = tuple(ToolCall(c.id, c.function.name, c.function.arguments) for c in m.tool_calls or ())
    return ChatMessage(
        m.role, m.text(), tool_calls=calls, tool_call_id=m.tool_call_id, name=m.name, images=tuple(m.images())
    )


def _tool(raw: dict[str, Any]) -> FunctionTool:
    function = raw["function"]
    return FunctionTool(
        name=function["name"],
        description=function.get("description") or "",
        parameters=function.get("parameters") or {"type": "object", "properties": {}},
        strict=bool(function.get("strict")),
    )


def _tool_choice(chat: ChatCompletionRequest) -> ToolChoice:
    if isinstance(chat.tool_choice, NamedToolChoice):
        return "function"
    return chat.tool_choice or ("auto" if chat.tools else "none")


def _output_format(chat: ChatCompletionRequest) -> OutputFormat:
    fmt = chat.response_format
    if fmt is None or fmt.type == "text":
        return OutputFormat()
    if fmt.type == "json_object":
        return OutputFormat("json_object")
    assert fmt.json_schema is not None
    return OutputFormat(
        "json_schema",
        schema=fmt.json_schema.schema_ or {},
        name=fmt.json_schema.name,
        strict=bool(fmt.json_schema.strict),
    )
