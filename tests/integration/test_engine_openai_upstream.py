"""The upstream engine against a real OpenAI-compatible server: llama-cpp-python's, serving the bundled
Gemma 3 270M on a free loopback port (started once for the module, stopped in teardown)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

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
from cocoon.errors import ConfigError, UpstreamFailed
from cocoon.local import free_port
from tests.helpers.upstream import llama_server

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
    async with httpx.AsyncClient() as client:
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
