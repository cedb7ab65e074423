"""The upstream engine against a real OpenAI-compatible server: llama-cpp-python's, serving the bundled
Gemma 3 270M on a free loopback port (started once for the module, stopped in teardown), and for what needs an
instruct model (JSON output, tool calls) SmolLM2-135M-Instruct under its ``chatml-function-calling`` format.

What that server does with the app's OpenAI fields, as these tests show: ``logprobs`` (chat, with
``top_logprobs``; completions) and ``response_format`` ``json_object`` (grammar-enforced) come back;
``tools`` with a named ``tool_choice`` stream grammar-enforced calls; ``json_schema`` formats and token-id prompts
are refused (it knows neither), and so is ``tool_choice`` "auto" when streaming. vLLM and SGLang do all of these.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from cocoon.engines import (
    ChatMessage,
    EngineSettings,
    Finished,
    GenerationEvent,
    GenerationRequest,
    OpenAIUpstreamEngine,
    SamplingParams,
    TextDelta,
)
from cocoon.engines.base import ToolCallDelta
from cocoon.engines.bundled import SMOLLM2_INSTALL, smollm2_installed, smollm2_model_path
from cocoon.errors import ConfigError, UpstreamFailed
from cocoon.local import free_port
from tests.helpers.upstream import app_request, llama_server

pytestmark = pytest.mark.asyncio(loop_scope="module")

N_CTX = 2048
FAKE_HASH = "ab" * 32  # the upstream engine takes the operator's word for the weights hash
COUNTING = "1, 2, 3, 4, 5,"  # greedy: " 6, 7, 8, 9, ...", one token per digit, comma and space


@pytest.fixture(scope="module")
def upstream_url(bundled_model_path: Path) -> Iterator[str]:
    """Base URL (``.../v1``) of a llama-cpp-python server on the bundled model."""
    with llama_server(bundled_model_path, n_ctx=N_CTX) as (url, _):
        yield url


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(upstream_url: str) -> AsyncIterator[OpenAIUpstreamEngine]:
    engine = OpenAIUpstreamEngine(
        EngineSettings(kind="openai_upstream", upstream_url=upstream_url, model_hash=FAKE_HASH, embeddings=False)
    )
    await engine.start()
    yield engine
    await engine.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def smollm() -> AsyncIterator[OpenAIUpstreamEngine]:
    """The engine on a llama-cpp-python server of SmolLM2-135M-Instruct that calls tools."""
    if not smollm2_installed():
        pytest.skip(f"needs SmolLM2: {SMOLLM2_INSTALL}")
    with llama_server(smollm2_model_path(), n_ctx=N_CTX, chat_format="chatml-function-calling") as (url, _):
        settings = EngineSettings(kind="openai_upstream", upstream_url=url, model_hash=FAKE_HASH, embeddings=False)
        engine = OpenAIUpstreamEngine(settings)
        await engine.start()
        yield engine
        await engine.close()


async def run(engine: OpenAIUpstreamEngine, request: GenerationRequest) -> tuple[str, Finished]:
    events: list[GenerationEvent] = [event async for event in engine.generate(request)]
    deltas = [event for event in events if isinstance(event, TextDelta)]
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert len(deltas) == len(events) - 1, "exactly one Finished, and last"
    return "".join(d.text for d in deltas), finished


async def test_completion_streams_text_and_reports_length(engine: OpenAIUpstreamEngine) -> None:
    request = GenerationRequest(SamplingParams(max_tokens=8, temperature=0.0), prompt=COUNTING)
    text, finished = await run(engine, request)

    assert text == " 6, 7, 8"
    assert finished.finish_reason == "length"


async def test_usage_matches_what_the_upstream_bills_for_the_same_request(
    engine: OpenAIUpstreamEngine, upstream_url: str
) -> None:
    request = GenerationRequest(SamplingParams(max_tokens=8, temperature=0.0), prompt=COUNTING)
    _, finished = await run(engine, request)
    async with httpx.AsyncClient(timeout=60) as client:  # a CPU model on a busy 2-core runner: httpx's 5 s is short
        reply = await client.post(
            f"{upstream_url}/completions", json={"prompt": COUNTING, "max_tokens": 8, "temperature": 0}
        )
    billed = reply.json()["usage"]

    assert finished.usage.prompt_tokens == billed["prompt_tokens"]
    assert finished.usage.completion_tokens == billed["completion_tokens"] == 8


async def test_chat_streams_text_through_the_upstream_template(engine: OpenAIUpstreamEngine) -> None:
    request = GenerationRequest(
        SamplingParams(max_tokens=6, temperature=0.0),
        messages=(ChatMessage("user", "Count with me: 1, 2, 3"),),
    )
    text, finished = await run(engine, request)

    assert text
    assert finished.finish_reason in ("length", "stop")
    assert 0 < finished.usage.completion_tokens <= 6
    assert finished.usage.prompt_tokens > 0


async def test_stop_strings_are_applied_by_the_upstream(engine: OpenAIUpstreamEngine) -> None:
    request = GenerationRequest(SamplingParams(max_tokens=16, temperature=0.0, stop=(", 8",)), prompt=COUNTING)
    text, finished = await run(engine, request)

    assert text == " 6, 7"
    assert finished.finish_reason == "stop"


async def test_completion_continuation_is_appended_to_the_prompt(engine: OpenAIUpstreamEngine) -> None:
    resumed = GenerationRequest(SamplingParams(max_tokens=5, temperature=0.0), prompt=COUNTING, continuation=" 6, 7,")
    text, _ = await run(engine, resumed)

    assert text == " 8, 9"


async def test_closing_the_stream_early_leaves_the_upstream_usable(engine: OpenAIUpstreamEngine) -> None:
    stream = engine.generate(GenerationRequest(SamplingParams(max_tokens=500), prompt="Once upon a time"))
    assert isinstance(await anext(stream), TextDelta)
    await stream.aclose()

    text, _ = await run(engine, GenerationRequest(SamplingParams(max_tokens=2, temperature=0.0), prompt=COUNTING))
    assert text == " 6"


async def test_count_tokens_uses_the_upstream_tokenizer(engine: OpenAIUpstreamEngine) -> None:
    assert await engine.count_tokens(COUNTING) == 14  # same as the embedded engine, BOS excluded
    assert await engine.count_tokens("") == 0


async def test_a_prompt_beyond_the_upstream_context_fails_instead_of_finishing_empty(
    engine: OpenAIUpstreamEngine,
) -> None:
    # llama-cpp-python's server reports this by dropping the stream after HTTP 200 (vLLM answers 400,
    # which becomes ContextLengthExceeded); either way the job must fail, never "finish" with no text.
    request = GenerationRequest(SamplingParams(max_tokens=8), prompt="hello " * (N_CTX + 50))
    with pytest.raises(UpstreamFailed):
        await run(engine, request)


async def test_start_fails_with_upstream_failed_naming_the_url_when_nothing_listens() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    engine = OpenAIUpstreamEngine(EngineSettings(kind="openai_upstream", upstream_url=url, model_hash=FAKE_HASH))
    try:
        with pytest.raises(UpstreamFailed, match=url):
            await engine.start()
    finally:
        await engine.close()


async def test_a_missing_model_hash_is_a_config_error_that_says_what_to_set() -> None:
    with pytest.raises(ConfigError, match="model_hash"):
        OpenAIUpstreamEngine(EngineSettings(kind="openai_upstream", upstream_url="http://127.0.0.1:1/v1"))


# ---- the app's OpenAI fields, forwarded -------------------------------------------------------------


async def pieces(engine: OpenAIUpstreamEngine, request: GenerationRequest) -> list[GenerationEvent]:
    events = [event async for event in engine.generate(request)]
    assert isinstance(events[-1], Finished)
    return events


def chat_body(content: str, **fields: Any) -> dict[str, Any]:
    return {"model": "gemma-3-270m", "messages": [{"role": "user", "content": content}], "temperature": 0} | fields


async def test_chat_logprobs_come_back_one_per_token_with_the_alternatives_asked_for(
    engine: OpenAIUpstreamEngine,
) -> None:
    request = app_request(chat_body("Count with me: 1, 2, 3", max_tokens=5, logprobs=True, top_logprobs=2))
    events = await pieces(engine, request)
    deltas = [event for event in events if isinstance(event, TextDelta)]
    entries = [entry for delta in deltas for entry in delta.logprobs]

    assert all(delta.logprobs for delta in deltas)
    assert "".join(entry.token for entry in entries) == "".join(delta.text for delta in deltas)
    for entry in entries:
        assert 1 <= len(entry.top) <= 3  # two alternatives, and the sampled token where it is not among them
        assert entry.top[0].logprob == pytest.approx(entry.logprob)  # greedy: the sampled token is the best
        assert [t.logprob for t in entry.top] == sorted((t.logprob for t in entry.top), reverse=True)
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.usage.completion_tokens == len(entries)


async def test_completion_logprobs_come_back_as_token_logprobs(engine: OpenAIUpstreamEngine) -> None:
    request = app_request(
        {"model": "gemma-3-270m", "prompt": COUNTING, "max_tokens": 8, "temperature": 0, "logprobs": 2}
    )
    events = await pieces(engine, request)
    deltas = [event for event in events if isinstance(event, TextDelta)]

    assert "".join(d.text for d in deltas) == " 6, 7, 8"
    assert [entry.token for d in deltas for entry in d.logprobs] == [" ", "6", ",", " ", "7", ",", " ", "8"]
    assert all(-20 < entry.logprob <= 0 and entry.top for d in deltas for entry in d.logprobs)


async def test_a_json_schema_response_format_is_refused_by_this_server_with_its_own_words(
    engine: OpenAIUpstreamEngine,
) -> None:
    # llama-cpp-python's server knows response_format "json_object" only (OpenAI's json_schema is vLLM's and
    # SGLang's): the job fails with the upstream's message rather than answering unconstrained text.
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}
    with pytest.raises(UpstreamFailed, match="json_object"):
        await pieces(engine, app_request(chat_body("A person, please.", max_tokens=8, response_format=fmt)))


async def test_a_token_id_prompt_is_refused_by_this_server_with_its_own_words(engine: OpenAIUpstreamEngine) -> None:
    # Forwarded as vLLM reads a token array; llama-cpp-python's server takes text prompts only.
    with pytest.raises(UpstreamFailed, match="prompt"):
        await pieces(engine, app_request({"model": "gemma-3-270m", "prompt": [2, 235274, 235269], "max_tokens": 2}))


async def test_a_json_object_response_format_comes_back_as_json(smollm: OpenAIUpstreamEngine) -> None:
    body = chat_body(
        "Describe a cat as a JSON object with a name.", max_tokens=60, response_format={"type": "json_object"}
    )
    text, finished = await run(smollm, app_request(body))

    assert isinstance(json.loads(text), dict)  # the server's grammar admits JSON only
    assert finished.finish_reason == "stop"


async def test_a_named_tool_choice_streams_one_call_named_once_with_its_arguments(
    smollm: OpenAIUpstreamEngine,
) -> None:
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
    body = chat_body(
        "What is the weather in Paris?",
        max_tokens=40,
        tools=[weather],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    events = await pieces(smollm, app_request(body))
    calls = [event for event in events if isinstance(event, ToolCallDelta)]

    assert calls and all(call.index == 0 for call in calls)
    assert calls[0].name == "get_weather" and calls[0].id
    assert all(call.id is None and call.name is None for call in calls[1:])  # the server repeats them; sent once
    assert "city" in json.loads("".join(call.arguments for call in calls))
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.finish_reason == "tool_calls"
    assert finished.usage.completion_tokens == len(calls)
