"""Tool calls for text models: how tools and earlier calls are written into the chat, which outputs the grammar
allows for each tool_choice, and how the output is read back into ToolCallDeltas with every token counted."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest

from cocoon.engines.answer_stream import AnswerStream
from cocoon.engines.base import (
    ChatMessage,
    Finished,
    FunctionTool,
    GenerationEvent,
    GenerationRequest,
    OutputFormat,
    SamplingParams,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
)
from cocoon.engines.constraints import answer_grammar
from cocoon.engines.grammar import Grammar
from cocoon.engines.tool_calls import ToolCallReader, call_text, calls_rule, chat_messages, text_or_calls
from cocoon.errors import BadRequest
from cocoon.protocol.usage import TokenUsage
from tests.unit.engines.test_grammar import Accepts, accepts

__all__ = ["accepts"]  # the fixture, shared with test_grammar.py

WEATHER = FunctionTool(
    "get_weather",
    "The weather in a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": False},
)
CLOCK = FunctionTool("get_time", "The time now", {"type": "object", "properties": {}})
QUESTION = (ChatMessage("user", "Weather in Paris?"),)


def tools_request(
    choice: ToolChoice = "auto",
    *,
    name: str | None = None,
    parallel: bool = True,
    messages: tuple[ChatMessage, ...] = QUESTION,
) -> GenerationRequest:
    return GenerationRequest(
        SamplingParams(max_tokens=8),
        messages=messages,
        tools=(WEATHER, CLOCK),
        tool_choice=choice,
        tool_name=name,
        parallel_tool_calls=parallel,
    )


def calls_grammar(request: GenerationRequest) -> str:
    grammar = Grammar()
    return grammar.text(calls_rule(grammar, request))


def auto_grammar(request: GenerationRequest) -> str:
    grammar = Grammar()
    return grammar.text(text_or_calls(grammar, request))


PARIS = call_text("get_weather", '{"city": "Paris"}')
NOW = call_text("get_time", "{}")


def test_required_allows_calls_of_the_tools_with_arguments_that_match_their_schemas(accepts: Accepts) -> None:
    grammar = calls_grammar(tools_request("required"))

    assert accepts(grammar, PARIS)
    assert accepts(grammar, f"{PARIS}\n{NOW}")
    assert not accepts(grammar, call_text("get_weather", '{"town": "Paris"}'))
    assert not accepts(grammar, call_text("get_news", "{}"))
    assert not accepts(grammar, "Sure!")
    assert not accepts(grammar, "")


def test_a_named_function_or_no_parallel_calls_narrow_what_is_allowed(accepts: Accepts) -> None:
    named = calls_grammar(tools_request("function", name="get_time"))
    single = calls_grammar(tools_request("required", parallel=False))

    # A named function is called exactly once, as vLLM reads a named tool_choice.
    assert accepts(named, NOW) and not accepts(named, f"{NOW}\n{NOW}")
    assert not accepts(named, PARIS)
    assert accepts(single, PARIS)
    assert not accepts(single, f"{PARIS}\n{NOW}")


def test_auto_allows_any_text_and_calls_once_the_text_opens_one(accepts: Accepts) -> None:
    grammar = auto_grammar(tools_request())

    assert accepts(grammar, "")
    assert accepts(grammar, "It is sunny. a < b, <b>bold</b>, <tool_cal, <tools> and <<tool_call")
    assert accepts(grammar, PARIS)
    assert accepts(grammar, f"Let me look.\n{PARIS}\n{NOW}")
    assert not accepts(grammar, "<tool_call> I mean nothing")
    assert not accepts(grammar, f"{PARIS} and some text after")


def test_a_parameters_schema_the_grammar_cannot_enforce_is_refused_naming_tools() -> None:
    strict = FunctionTool("f", parameters={"type": "object", "properties": {"s": {"pattern": "x"}}}, strict=True)
    request = GenerationRequest(
        SamplingParams(max_tokens=1), messages=QUESTION, tools=(strict,), tool_choice="required"
    )

    with pytest.raises(BadRequest, match=r"tools\[0\]\.function\.parameters\.properties\.s") as refused:
        calls_grammar(request)
    assert refused.value.param == "tools"


def test_tools_go_into_the_system_message_and_earlier_calls_and_results_are_text_turns() -> None:
    history = (
        ChatMessage("system", "Be brief."),
        *QUESTION,
        ChatMessage("assistant", "", tool_calls=(ToolCall("call_1", "get_weather", '{"city": "Paris"}'),)),
        ChatMessage("tool", '{"sky": "clear"}', tool_call_id="call_1"),
        ChatMessage("tool", '{"time": "noon"}', tool_call_id="call_2"),
    )
    system, user, assistant, results = chat_messages(tools_request(messages=history))

    assert system.role == "system" and system.content.startswith("Be brief.\n\n")
    assert '"name": "get_weather"' in system.content and "<tool_call>" in system.content
    assert user == QUESTION[0]
    assert assistant == ChatMessage("assistant", PARIS)
    assert results == ChatMessage(
        "user",
        '<tool_response>\n{"sky": "clear"}\n</tool_response>\n<tool_response>\n{"time": "noon"}\n</tool_response>',
    )


def test_with_tool_choice_none_no_tools_are_offered_but_the_history_is_still_written() -> None:
    history = (*QUESTION, ChatMessage("assistant", "Checking.", tool_calls=(ToolCall("c", "get_time", "{}"),)))
    user, assistant = chat_messages(tools_request("none", messages=history))

    assert user == QUESTION[0]
    assert assistant.content == f"Checking.\n{NOW}"


def read(pieces: list[str]) -> tuple[str, list[ToolCallDelta], ToolCallReader]:
    reader = ToolCallReader()
    out = [item for piece in pieces for item in reader.feed(piece)] + reader.close()
    text = "".join(item for item in out if isinstance(item, str))
    return text, [item for item in out if isinstance(item, ToolCallDelta)], reader


def test_the_reader_turns_calls_written_in_small_pieces_into_openai_style_deltas() -> None:
    written = f"Let me look.\n{PARIS}\n{NOW}"
    text, deltas, reader = read([written[i : i + 3] for i in range(0, len(written), 3)])

    assert text == "Let me look.\n"
    assert reader.calls == 2
    openings = [d for d in deltas if d.name is not None]
    assert [(d.index, d.name) for d in openings] == [(0, "get_weather"), (1, "get_time")]
    assert all(re.fullmatch(r"call_[0-9a-f]{24}", d.id or "") for d in openings)
    assert len({d.id for d in openings}) == 2
    for index, arguments in ((0, {"city": "Paris"}), (1, {})):
        assert json.loads("".join(d.arguments for d in deltas if d.index == index)) == arguments


def test_text_that_only_starts_like_a_call_is_released_as_text() -> None:
    text, deltas, _ = read(["a <tool", "s> b <tool_c", "all", "ed> c <tool"])

    assert text == "a <tools> b <tool_called> c <tool"
    assert deltas == []


def test_arguments_cut_short_by_max_tokens_are_given_as_far_as_they_go() -> None:
    _, deltas, reader = read([PARIS[: PARIS.index("ris")]])

    assert "".join(d.arguments for d in deltas) == '{"city": "Pa'
    assert reader.calls == 1


def test_every_token_is_carried_by_an_event_and_the_answer_ends_with_tool_calls() -> None:
    events: list[GenerationEvent] = []
    answer = AnswerStream(events.append, (), ToolCallReader())
    pieces = ["Sure", ".\n", *(PARIS[i : i + 4] for i in range(0, len(PARIS), 4)), ""]  # "": the end of turn
    for piece in pieces:
        answer.add(piece)
    answer.finish("", "stop", TokenUsage(10, len(pieces)))

    finished = events[-1]
    assert isinstance(finished, Finished) and finished.finish_reason == "tool_calls"
    assert sum(e.tokens for e in events if isinstance(e, TextDelta | ToolCallDelta)) == len(pieces)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Sure.\n"


def test_a_stop_string_in_the_text_ends_the_answer_before_any_call() -> None:
    events: list[GenerationEvent] = []
    answer = AnswerStream(events.append, ("look",), ToolCallReader())
    answer.add("Let me lo")
    answer.add("ok.")

    assert answer.stopped
    answer.finish("", "stop", TokenUsage(1, 2))
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Let me "]
    assert isinstance(events[-1], Finished) and events[-1].finish_reason == "stop"


def test_auto_with_a_json_response_format_answers_either_calls_or_that_json(accepts: Accepts) -> None:
    request = replace(tools_request(), response_format=OutputFormat("json_object"))
    grammar = answer_grammar(request)

    assert grammar is not None
    assert accepts(grammar, PARIS) and accepts(grammar, '{"sky": "clear"}')
    assert not accepts(grammar, "It is clear.")
    assert answer_grammar(replace(request, tool_choice="none", response_format=OutputFormat())) is None
