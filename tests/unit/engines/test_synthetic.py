"""The synthetic engine: deterministic words at a chosen pace, with the whole Engine contract."""

from __future__ import annotations

import math
import time

import pytest

from cocoon.engines import (
    SCORE_MAX_TOKENS,
    ChatMessage,
    Engine,
    EngineSettings,
    Finished,
    GenerationEvent,
    GenerationRequest,
    SamplingParams,
    ScoreRequest,
    SyntheticEngine,
    TextDelta,
    build_engine,
)
from cocoon.engines.base import FunctionTool, OutputFormat
from cocoon.engines.synthetic import SYNTHETIC_MODEL_HASH
from cocoon.errors import BadRequest, ContextLengthExceeded


def engine(context_length: int = 4096, tokens_per_s: float = 0.0, embeddings: bool = True) -> SyntheticEngine:
    settings = EngineSettings(
        kind="synthetic",
        context_length=context_length,
        synthetic_tokens_per_s=tokens_per_s,
        embeddings=embeddings,
    )
    return SyntheticEngine(settings)


def prompt(text: str = "hello there", max_tokens: int = 8, stop: tuple[str, ...] = ()) -> GenerationRequest:
    return GenerationRequest(SamplingParams(max_tokens=max_tokens, stop=stop), prompt=text)


async def run(synthetic: SyntheticEngine, request: GenerationRequest) -> tuple[str, Finished, list[TextDelta]]:
    events: list[GenerationEvent] = [event async for event in synthetic.generate(request)]
    deltas = [event for event in events if isinstance(event, TextDelta)]
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert len(deltas) == len(events) - 1, "exactly one Finished, and last"
    return "".join(d.text for d in deltas), finished, deltas


async def test_build_engine_makes_a_synthetic_engine_that_satisfies_the_protocol() -> None:
    built = build_engine(EngineSettings(kind="synthetic"))

    assert isinstance(built, SyntheticEngine)
    assert isinstance(built, Engine)
    assert built.info.model_hash == SYNTHETIC_MODEL_HASH


async def test_emits_one_word_per_token_up_to_max_tokens() -> None:
    text, finished, deltas = await run(engine(), prompt(max_tokens=5))

    assert len(text.split()) == 5
    assert [d.tokens for d in deltas] == [1] * 5
    assert finished.finish_reason == "length"
    assert (finished.usage.prompt_tokens, finished.usage.completion_tokens) == (2, 5)


async def test_same_request_same_text_and_resuming_yields_exactly_the_rest() -> None:
    synthetic = engine()
    whole, _, _ = await run(synthetic, prompt(max_tokens=6))
    again, _, _ = await run(synthetic, prompt(max_tokens=6))
    first_two = " ".join(whole.split()[:2])
    resumed = GenerationRequest(SamplingParams(max_tokens=4), prompt="hello there", continuation=first_two)
    rest, finished, _ = await run(synthetic, resumed)

    assert whole == again
    assert whole.split()[2:] == rest.split()
    assert finished.usage.prompt_tokens == 4


async def test_stop_string_across_words_is_cut_and_not_emitted() -> None:
    synthetic = engine()
    whole, _, _ = await run(synthetic, prompt(max_tokens=6))
    words = whole.split()
    stop = f"{words[2][-2:]} {words[3][:2]}"  # spans two tokens
    text, finished, _ = await run(synthetic, prompt(max_tokens=6, stop=(stop,)))

    assert text == whole[: whole.index(stop)]
    assert finished.finish_reason == "stop"
    assert finished.usage.completion_tokens == 4


async def test_chat_prompt_tokens_are_the_words_of_all_messages() -> None:
    chat = GenerationRequest(
        SamplingParams(max_tokens=1),
        messages=(ChatMessage("system", "be brief"), ChatMessage("user", "say three words")),
    )
    _, finished, _ = await run(engine(), chat)

    assert finished.usage.prompt_tokens == 5


async def test_pacing_spreads_tokens_over_time() -> None:
    started = time.monotonic()
    await run(engine(tokens_per_s=200.0), prompt(max_tokens=10))

    assert time.monotonic() - started >= 10 / 200 * 0.9


async def test_prompt_plus_max_tokens_beyond_the_context_is_refused() -> None:
    with pytest.raises(ContextLengthExceeded, match="context length of 128"):
        await run(engine(context_length=128), prompt(max_tokens=128))


async def test_closing_the_stream_early_is_clean() -> None:
    stream = engine().generate(prompt(max_tokens=1000))
    assert isinstance(await anext(stream), TextDelta)
    await stream.aclose()


async def test_embeddings_are_deterministic_unit_vectors_and_can_be_disabled() -> None:
    result = await engine().embed(["a b", "c"])

    assert len(result.vectors) == 2
    assert all(math.isclose(math.fsum(x * x for x in v), 1.0) for v in result.vectors)
    assert result.vectors == (await engine().embed(["a b", "c"])).vectors
    assert result.prompt_tokens == 3
    with pytest.raises(BadRequest):
        await engine(embeddings=False).embed(["a"])


async def test_count_tokens_counts_whitespace_words() -> None:
    assert await engine().count_tokens("  one two\nthree ") == 3


async def test_score_rates_its_own_answer_likely_and_other_text_unlikely() -> None:
    synthetic = engine()
    messages = (ChatMessage("user", "tell me about the network"),)
    request = GenerationRequest(SamplingParams(max_tokens=12), messages=messages)
    answer = "".join([e.text async for e in synthetic.generate(request) if isinstance(e, TextDelta)])

    own = await synthetic.score(ScoreRequest(answer, messages=messages))
    other = await synthetic.score(ScoreRequest("a completely different answer of some words", messages=messages))

    assert len(own.logprobs) == 12 and own.greedy_rate == 1.0
    assert own.mean_nll == pytest.approx(-math.log(0.9))
    assert other.greedy_rate < 0.5 and other.mean_nll > 5


async def test_score_rates_at_most_score_max_tokens() -> None:
    scores = await engine().score(ScoreRequest("word " * (SCORE_MAX_TOKENS + 5), prompt="p"))

    assert len(scores.logprobs) == SCORE_MAX_TOKENS and scores.truncated


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        (
            GenerationRequest(
                SamplingParams(max_tokens=4),
                messages=(ChatMessage("user", "weather?"),),
                tools=(FunctionTool("get_weather"),),
                tool_choice="required",
            ),
            "tools",
        ),
        (
            GenerationRequest(
                SamplingParams(max_tokens=4),
                messages=(ChatMessage("user", "json"),),
                response_format=OutputFormat("json_object"),
            ),
            "response_format",
        ),
        (GenerationRequest(SamplingParams(max_tokens=4), prompt="p", logprobs=True), "logprobs"),
        (
            GenerationRequest(
                SamplingParams(max_tokens=4),
                messages=(ChatMessage("user", "what is it?", images=("https://x/y.png",)),),
            ),
            "messages",
        ),
    ],
)
async def test_what_fixed_words_cannot_do_is_refused_naming_the_field(request_: GenerationRequest, param: str) -> None:
    with pytest.raises(BadRequest) as refused:
        await run(engine(), request_)

    assert refused.value.param == param


async def test_tools_offered_with_tool_choice_none_are_ignored_as_a_model_would() -> None:
    request = GenerationRequest(
        SamplingParams(max_tokens=3),
        messages=(ChatMessage("user", "hello"),),
        tools=(FunctionTool("get_weather"),),
        tool_choice="none",
    )
    text, finished, _ = await run(engine(), request)

    assert len(text.split()) == 3 and finished.finish_reason == "length"


async def test_a_token_id_prompt_counts_one_word_per_id() -> None:
    request = GenerationRequest(SamplingParams(max_tokens=1), prompt="", prompt_ids=(0, 1, 2, 3))
    _, finished, _ = await run(engine(), request)

    assert finished.usage.prompt_tokens == 4
