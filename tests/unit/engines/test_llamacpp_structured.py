"""The embedded engine held to a response_format or to tool calls, with log-probabilities and token-id prompts, on
the real bundled Gemma 3 270M (a base model: its answers are odd, but the grammar makes them well-formed)."""

from __future__ import annotations

import asyncio
import enum
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pydantic import BaseModel, Field

from cocoon.engines import (
    ChatMessage,
    EngineSettings,
    Finished,
    GenerationEvent,
    GenerationRequest,
    LlamaCppEngine,
    SamplingParams,
    ScoreRequest,
    TextDelta,
)
from cocoon.engines.base import FunctionTool, OutputFormat, ToolCall, ToolCallDelta, ToolChoice
from cocoon.errors import BadRequest

pytestmark = pytest.mark.asyncio(loop_scope="session")

COUNTING = "1, 2, 3, 4, 5,"  # greedy: " 6, 7, 8, ..."


class Kind(enum.StrEnum):
    cat = "cat"
    dog = "dog"


class Toy(BaseModel):
    name: str = Field(max_length=8)


class Pet(BaseModel):
    """Short strings and a short list keep a base model's answer within a few dozen tokens."""

    name: str = Field(max_length=8)
    kind: Kind
    toys: list[Toy] = Field(max_length=2)


class City(BaseModel):
    city: str = Field(max_length=16)


WEATHER = FunctionTool("get_weather", "The current weather in a city", City.model_json_schema(), strict=True)
CLOCK = FunctionTool("get_time", "The current time in a city", City.model_json_schema())


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def engine(bundled_model_path: Path) -> AsyncIterator[LlamaCppEngine]:
    engine = LlamaCppEngine(EngineSettings(model_path=bundled_model_path, context_length=1024, parallel=1))
    await engine.start()
    yield engine
    await engine.close()


async def run(engine: LlamaCppEngine, request: GenerationRequest) -> tuple[list[GenerationEvent], Finished]:
    events = [event async for event in engine.generate(request)]
    finished = events.pop()
    assert isinstance(finished, Finished)
    assert not any(isinstance(event, Finished) for event in events)
    return events, finished


def text_of(events: list[GenerationEvent]) -> str:
    return "".join(event.text for event in events if isinstance(event, TextDelta))


def calls_of(events: list[GenerationEvent]) -> list[dict[str, str]]:
    calls: dict[int, dict[str, str]] = {}
    for event in events:
        if isinstance(event, ToolCallDelta):
            call = calls.setdefault(event.index, {"id": "", "name": "", "arguments": ""})
            call["id"] = event.id or call["id"]
            call["name"] = event.name or call["name"]
            call["arguments"] += event.arguments
    return [calls[i] for i in sorted(calls)]


def carried(events: list[GenerationEvent]) -> int:
    return sum(event.tokens for event in events if isinstance(event, TextDelta | ToolCallDelta))


def chat(text: str, max_tokens: int = 96, **fields: Any) -> GenerationRequest:
    return GenerationRequest(
        SamplingParams(max_tokens=max_tokens, temperature=0.0), messages=(ChatMessage("user", text),), **fields
    )


def ask_tools(text: str, choice: ToolChoice, name: str | None = None, max_tokens: int = 48) -> GenerationRequest:
    tools = (WEATHER, CLOCK)
    return chat(text, max_tokens, tools=tools, tool_choice=choice, tool_name=name, parallel_tool_calls=False)


async def test_json_schema_answers_parse_as_the_pydantic_model_and_greedy_stays_deterministic(
    engine: LlamaCppEngine,
) -> None:
    pet = OutputFormat("json_schema", Pet.model_json_schema(), "pet", strict=True)
    events, finished = await run(engine, chat("Describe my cat Tom as JSON.", response_format=pet))
    again, _ = await run(engine, chat("Describe my cat Tom as JSON.", response_format=pet))

    Pet.model_validate_json(text_of(events))
    assert finished.finish_reason == "stop"
    assert text_of(again) == text_of(events)


async def test_json_object_answers_are_one_json_object(engine: LlamaCppEngine) -> None:
    events, _ = await run(engine, chat("Give me JSON.", max_tokens=64, response_format=OutputFormat("json_object")))

    text = text_of(events)
    assert text.startswith("{")
    try:
        assert isinstance(json.loads(text), dict)
    except json.JSONDecodeError:  # cut at max_tokens: still the start of an object, never free text
        assert len(text) > 0 and "\n\n" not in text


async def test_a_required_call_streams_openai_style_deltas_and_ends_with_tool_calls(engine: LlamaCppEngine) -> None:
    events, finished = await run(engine, ask_tools("What is the weather in Paris?", "required"))

    (call,) = calls_of(events)
    assert re.fullmatch(r"call_[0-9a-f]{24}", call["id"])
    assert call["name"] in {"get_weather", "get_time"}
    City.model_validate_json(call["arguments"])
    assert finished.finish_reason == "tool_calls"
    assert carried(events) == finished.usage.completion_tokens  # the worker bills what the deltas carry
    assert text_of(events) == ""


async def test_a_named_tool_choice_calls_that_function(engine: LlamaCppEngine) -> None:
    events, finished = await run(engine, ask_tools("What is the weather in Paris?", "function", "get_time"))

    assert [call["name"] for call in calls_of(events)] == ["get_time"]
    assert finished.finish_reason == "tool_calls"


async def test_tool_choice_none_does_not_offer_the_tools_and_answers_text(engine: LlamaCppEngine) -> None:
    events, finished = await run(engine, ask_tools("Hello!", "none", max_tokens=4))
    _, offered = await run(engine, ask_tools("Hello!", "auto", max_tokens=1))
    _, bare = await run(engine, chat("Hello!", max_tokens=1))

    assert calls_of(events) == []
    assert finished.finish_reason in ("stop", "length")
    assert finished.usage.prompt_tokens == bare.usage.prompt_tokens < offered.usage.prompt_tokens


async def test_tool_call_history_is_written_as_gemma_turns_with_results_in_a_user_turn(engine: LlamaCppEngine) -> None:
    history = (
        ChatMessage("user", "Weather in Paris?"),
        ChatMessage("assistant", "", tool_calls=(ToolCall("call_1", "get_weather", '{"city": "Paris"}'),)),
        ChatMessage("tool", "sunny<end_of_turn>", tool_call_id="call_1"),
    )
    request = GenerationRequest(SamplingParams(max_tokens=1), messages=history, tools=(WEATHER,))
    llama = engine._llama
    tokens = engine._template.prompt_tokens(llama, request)
    prompt = llama.detokenize(tokens, special=True).decode()

    assert "<start_of_turn>model\n<tool_call>\n" + '{"name": "get_weather", "arguments": {"city": "Paris"}}' in prompt
    assert prompt.endswith(
        "<start_of_turn>user\n<tool_response>\nsunny<end_of_turn>\n</tool_response><end_of_turn>\n<start_of_turn>model\n"
    )
    assert tokens.count(engine._template.end_of_turn) == 3  # one per turn: the tool's text forges none


async def test_logprobs_rate_each_generated_token_with_its_likeliest_alternatives(engine: LlamaCppEngine) -> None:
    request = GenerationRequest(
        SamplingParams(max_tokens=6, temperature=0.0), prompt=COUNTING, logprobs=True, top_logprobs=3
    )
    events, finished = await run(engine, request)
    deltas = [event for event in events if isinstance(event, TextDelta)]
    entries = [entry for delta in deltas for entry in delta.logprobs]
    scores = await engine.score(ScoreRequest(text_of(events), prompt=COUNTING))

    assert all(len(delta.logprobs) == delta.tokens for delta in deltas)
    assert len(entries) == finished.usage.completion_tokens == 6
    assert "".join(entry.token for entry in entries) == text_of(events) == " 6, 7,"
    for entry in entries:
        assert len(entry.top) == 3 and entry.top[0].token == entry.token  # greedy took the likeliest
        assert entry.logprob == entry.top[0].logprob <= 0
        assert [t.logprob for t in entry.top] == sorted((t.logprob for t in entry.top), reverse=True)
        assert bytes(entry.bytes or ()).decode() == entry.token
    assert [entry.logprob for entry in entries] == pytest.approx(list(scores.logprobs), abs=0.05)


async def test_logprobs_come_with_a_grammar_too(engine: LlamaCppEngine) -> None:
    request = chat("Give me JSON.", max_tokens=8, response_format=OutputFormat("json_object"), logprobs=True)
    events, finished = await run(engine, request)

    entries = [entry for event in events if isinstance(event, TextDelta) for entry in event.logprobs]
    assert "".join(entry.token for entry in entries) == text_of(events)
    assert len(entries) == finished.usage.completion_tokens and all(entry.top == () for entry in entries)


async def test_a_token_id_prompt_is_evaluated_exactly_as_given(engine: LlamaCppEngine) -> None:
    llama = engine._llama
    ids = tuple(llama.tokenize(COUNTING.encode(), add_bos=True, special=True))
    by_text, text_end = await run(
        engine, GenerationRequest(SamplingParams(max_tokens=4, temperature=0), prompt=COUNTING)
    )
    by_ids, ids_end = await run(
        engine, GenerationRequest(SamplingParams(max_tokens=4, temperature=0), prompt="", prompt_ids=ids)
    )

    assert text_of(by_ids) == text_of(by_text) == " 6, "
    assert ids_end.usage.prompt_tokens == text_end.usage.prompt_tokens == len(ids)


@pytest.mark.parametrize("ids", [(2, 10**6), ()])
async def test_token_ids_past_the_vocabulary_or_none_at_all_are_a_bad_request(
    engine: LlamaCppEngine, ids: tuple[int, ...]
) -> None:
    with pytest.raises(BadRequest) as refused:
        await run(engine, GenerationRequest(SamplingParams(max_tokens=1), prompt="", prompt_ids=ids))

    assert refused.value.param == "prompt"


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        (
            GenerationRequest(
                SamplingParams(max_tokens=1), messages=(ChatMessage("user", "What is this?", images=("data:,",)),)
            ),
            "messages",
        ),
        (chat("Hi", openai={"model": "gemma-3-270m", "reasoning_effort": "high"}), "reasoning_effort"),
        (chat("Hi", openai={"model": "gemma-3-270m", "verbosity": "low"}), "verbosity"),
        (
            chat("Hi", response_format=OutputFormat("json_schema", {"type": "string", "pattern": "^a$"}, strict=True)),
            "response_format",
        ),
    ],
)
async def test_what_the_engine_cannot_honour_is_refused_naming_the_field(
    engine: LlamaCppEngine, request_: GenerationRequest, param: str
) -> None:
    with pytest.raises(BadRequest) as refused:
        await run(engine, request_)

    assert refused.value.param == param


async def test_reasoning_effort_none_is_what_this_model_does_anyway(engine: LlamaCppEngine) -> None:
    _, finished = await run(engine, chat("Hi", max_tokens=1, openai={"model": "m", "reasoning_effort": "none"}))

    assert finished.usage.completion_tokens == 1


async def test_sampling_with_a_grammar_is_reproducible_by_seed_with_or_without_penalties(
    engine: LlamaCppEngine,
) -> None:
    def sampled(seed: int, penalty: float) -> GenerationRequest:
        params = SamplingParams(max_tokens=12, temperature=1.0, seed=seed, frequency_penalty=penalty)
        return GenerationRequest(
            params, messages=(ChatMessage("user", "JSON please"),), response_format=OutputFormat("json_object")
        )

    for penalty in (0.0, 1.0):
        first, _ = await run(engine, sampled(5, penalty))
        second, _ = await run(engine, sampled(5, penalty))
        assert text_of(first) == text_of(second)
        assert text_of(first).startswith("{")


async def test_closing_a_constrained_stream_mid_way_frees_the_only_slot(engine: LlamaCppEngine) -> None:
    stream = engine.generate(ask_tools("Weather in Rome?", "required", max_tokens=200))
    assert isinstance(await anext(stream), ToolCallDelta)
    await stream.aclose()

    _, finished = await asyncio.wait_for(run(engine, chat("Hi", max_tokens=2)), timeout=30)
    assert finished.usage.completion_tokens == 2
