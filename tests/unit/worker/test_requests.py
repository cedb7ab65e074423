"""The worker reads the app's sealed OpenAI request itself: validated again (the client can be anyone), turned
into the engine's request field by field, and refused by name where it is invalid or cannot be resumed."""

from __future__ import annotations

from typing import Any

import pytest

from cocoon.engines.base import SamplingParams
from cocoon.errors import BadRequest
from cocoon.protocol.payload import RequestPayload, SealedMessage, SealedParams
from cocoon.worker.requests import generation_request

MODEL = "smollm2-135m-instruct"
TOOL = {
    "type": "function",
    "function": {"name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}},
}


def chat(**fields: Any) -> RequestPayload:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]} | fields
    return RequestPayload(
        kind="chat",
        model=MODEL,
        salt=b"s" * 16,
        messages=[SealedMessage(role="user", content="hi")],
        params=SealedParams(max_tokens=8),
        openai=body,
    )


PARAMS = SamplingParams(max_tokens=8)


def test_tools_tool_choice_and_response_format_reach_the_engine() -> None:
    request = generation_request(
        chat(
            tools=[TOOL],
            tool_choice={"type": "function", "function": {"name": "add"}},
            parallel_tool_calls=False,
            logprobs=True,
            top_logprobs=2,
        ),
        PARAMS,
        "",
    )
    assert [t.name for t in request.tools] == ["add"] and request.tools[0].parameters["type"] == "object"
    assert (request.tool_choice, request.tool_name, request.parallel_tool_calls) == ("function", "add", False)
    assert (request.logprobs, request.top_logprobs) == (True, 2)
    assert request.openai is not None and request.openai["tools"] == [TOOL]
    schema = {"type": "object", "properties": {"x": {"type": "string"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "X", "schema": schema, "strict": True}}
    request = generation_request(chat(response_format=fmt), PARAMS, "")
    assert (request.response_format.type, request.response_format.schema) == ("json_schema", schema)
    assert request.response_format.strict and request.tool_choice == "none"


def test_tool_call_history_becomes_messages_with_their_calls() -> None:
    messages = [
        {"role": "user", "content": "add 1"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a":1}'}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "2"},
        {"role": "user", "content": [{"type": "text", "text": "and "}, {"type": "text", "text": "now?"}]},
    ]
    request = generation_request(chat(messages=messages, tools=[TOOL]), PARAMS, "")
    assert request.messages is not None
    assistant, tool, last = request.messages[1:]
    assert assistant.tool_calls[0].name == "add" and assistant.tool_calls[0].arguments == '{"a":1}'
    assert (tool.role, tool.tool_call_id, tool.content) == ("tool", "call_1", "2")
    assert last.content == "and now?"


def test_a_sealed_request_for_another_model_is_refused() -> None:
    payload = chat()
    assert payload.openai is not None
    forged = payload.model_copy(update={"openai": payload.openai | {"model": "other"}})
    with pytest.raises(BadRequest) as info:
        generation_request(forged, PARAMS, "")
    assert info.value.param == "model"


def test_an_invalid_sealed_request_is_a_400_naming_the_field() -> None:
    with pytest.raises(BadRequest) as info:
        generation_request(chat(temperature=9), PARAMS, "")
    assert info.value.param == "temperature"
    with pytest.raises(BadRequest) as info:
        generation_request(chat(tool_choice="required"), PARAMS, "")
    assert info.value.param == "tool_choice"


def test_a_constrained_request_is_not_resumed_from_another_workers_text() -> None:
    with pytest.raises(BadRequest, match="cannot be resumed"):
        generation_request(chat(response_format={"type": "json_object"}), PARAMS, '{"a": ')
    assert generation_request(chat(), PARAMS, "partial").continuation == "partial"


def test_a_token_id_prompt_reaches_the_engine() -> None:
    payload = RequestPayload(
        kind="completion",
        model=MODEL,
        salt=b"s" * 16,
        prompt="",
        prompt_ids=[5, 6, 7],
        params=SealedParams(max_tokens=8),
        openai={"model": MODEL, "prompt": [5, 6, 7], "logprobs": 3},
    )
    request = generation_request(payload, PARAMS, "")
    assert request.prompt_ids == (5, 6, 7) and (request.logprobs, request.top_logprobs) == (True, 3)
