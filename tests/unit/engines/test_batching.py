"""Several generations decoded together in one llama.cpp context (``cocoon.engines.batching``), on the real bundled
Gemma 3 270M: each sequence keeps its own answer, stop strings, cancellation, cache and counts."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from cocoon.engines import (
    EngineSettings,
    Finished,
    GenerationEvent,
    GenerationRequest,
    LlamaCppEngine,
    SamplingParams,
    ScoreRequest,
    TextDelta,
)
from cocoon.engines.batching import PREFILL_CHUNK

pytestmark = pytest.mark.asyncio(loop_scope="session")

PARALLEL = 4
COUNTING = "1, 2, 3, 4, 5,"  # greedy: " 6, 7, 8, 9, 10, 11, 12,"
LETTERS = "A, B, C, D, E,"  # greedy: " F, G, H, I, J, K,"
LONG = "Once upon a time there was a small village by the sea. " * 30  # ~360 tokens: prefilled over steps


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def batched(bundled_model_path: Path) -> AsyncIterator[LlamaCppEngine]:
    engine = LlamaCppEngine(EngineSettings(model_path=bundled_model_path, context_length=512, parallel=PARALLEL))
    await engine.start()
    yield engine
    await engine.close()


def greedy(prompt: str, max_tokens: int = 12, stop: tuple[str, ...] = (), scope: str = "") -> GenerationRequest:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, stop=stop)
    return GenerationRequest(params, prompt=prompt, cache_scope=scope)


async def answer(engine: LlamaCppEngine, request: GenerationRequest) -> tuple[str, Finished]:
    events: list[GenerationEvent] = [event async for event in engine.generate(request)]
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert events.count(finished) == 1
    if not request.params.stop:  # the tokens of a stop string are in the usage, not in an event
        assert sum(e.tokens for e in events if isinstance(e, TextDelta)) == finished.usage.completion_tokens
    return "".join(e.text for e in events if isinstance(e, TextDelta)), finished


async def test_one_context_decodes_every_slot_with_all_cores(batched: LlamaCppEngine) -> None:
    assert batched.info.extra["parallel"] == str(PARALLEL)
    assert batched.info.extra["threads"] == str(os.cpu_count() or 1)


async def test_concurrent_sequences_each_get_their_own_answer(batched: LlamaCppEngine) -> None:
    alone = [await answer(batched, greedy(prompt)) for prompt in (COUNTING, LETTERS)]

    together = await asyncio.gather(*(answer(batched, greedy(p)) for p in (COUNTING, LETTERS, COUNTING, LETTERS)))

    assert alone[0][0].startswith(" 6, 7, 8") and alone[1][0].startswith(" F, G, H")
    assert [text for text, _ in together] == [alone[0][0], alone[1][0]] * 2
    assert all(f.finish_reason == "length" and f.usage.completion_tokens == 12 for _, f in together)


async def test_more_jobs_than_sequences_wait_their_turn_and_all_finish(batched: LlamaCppEngine) -> None:
    results = await asyncio.gather(*(answer(batched, greedy(COUNTING, max_tokens=4)) for _ in range(3 * PARALLEL)))

    alone, _ = await answer(batched, greedy(COUNTING, max_tokens=4))
    assert {text for text, _ in results} == {alone}


async def test_stop_strings_end_only_their_own_sequence(batched: LlamaCppEngine) -> None:
    stopped, plain = await asyncio.gather(
        answer(batched, greedy(COUNTING, max_tokens=20, stop=("9",))), answer(batched, greedy(COUNTING, max_tokens=20))
    )

    assert stopped[0] == " 6, 7, 8, " and stopped[1].finish_reason == "stop"
    assert "9, 10" in plain[0] and plain[1].finish_reason == "length" and plain[1].usage.completion_tokens == 20


async def test_closing_one_stream_leaves_the_others_running(batched: LlamaCppEngine) -> None:
    doomed = batched.generate(greedy(COUNTING, max_tokens=200))
    survivor = asyncio.create_task(answer(batched, greedy(LETTERS, max_tokens=16)))
    assert isinstance(await anext(doomed), TextDelta)
    await doomed.aclose()

    text, finished = await asyncio.wait_for(survivor, timeout=60)

    assert text.startswith(" F, G, H") and finished.usage.completion_tokens == 16
    assert await answer(batched, greedy(COUNTING, max_tokens=3))  # the freed sequence serves again


async def test_a_new_request_is_answered_while_a_long_one_decodes(batched: LlamaCppEngine) -> None:
    long_job = batched.generate(greedy(COUNTING, max_tokens=300))
    assert isinstance(await anext(long_job), TextDelta)
    try:
        # Before continuous batching this waited for the 300 tokens: here it joins the next step.
        text, _ = await asyncio.wait_for(answer(batched, greedy(LETTERS, max_tokens=4)), timeout=20)
        assert text.startswith(" F, G")
    finally:
        await long_job.aclose()


async def test_a_long_prompt_is_prefilled_beside_decoding_and_its_cache_reused(batched: LlamaCppEngine) -> None:
    decoding = asyncio.create_task(answer(batched, greedy(COUNTING, max_tokens=40)))
    await asyncio.sleep(0.2)
    first, cold = await answer(batched, greedy(LONG, max_tokens=4))
    await decoding

    second, warm = await answer(batched, greedy(LONG, max_tokens=4))

    assert cold.usage.cached_tokens == 0
    assert warm.usage.cached_tokens == (warm.usage.prompt_tokens - 1) // PREFILL_CHUNK * PREFILL_CHUNK > 0
    assert second == first


async def test_each_job_finds_the_sequence_that_cached_its_prompt(batched: LlamaCppEngine) -> None:
    other = "The quick brown fox jumps over the lazy dog. " * 30
    await answer(batched, greedy(LONG, max_tokens=2))
    await answer(batched, greedy(other, max_tokens=2))

    _, long_again = await answer(batched, greedy(LONG, max_tokens=2))
    _, other_again = await answer(batched, greedy(other, max_tokens=2))

    assert long_again.usage.cached_tokens > 0 and other_again.usage.cached_tokens > 0


async def test_scores_are_computed_beside_generations(batched: LlamaCppEngine) -> None:
    alone = await batched.score(ScoreRequest(" 6, 7, 8", prompt=COUNTING))

    together = await asyncio.gather(
        batched.score(ScoreRequest(" 6, 7, 8", prompt=COUNTING)),
        answer(batched, greedy(LETTERS, max_tokens=8)),
        batched.score(ScoreRequest(" bananas", prompt=COUNTING)),
    )

    assert together[0].greedy == alone.greedy and all(together[0].greedy)
    assert together[0].logprobs == pytest.approx(alone.logprobs, abs=0.05)
    assert together[2].mean_nll > alone.mean_nll + 1


async def test_sampled_sequences_draw_from_their_own_seeds(batched: LlamaCppEngine) -> None:
    def sampled(seed: int) -> GenerationRequest:
        return GenerationRequest(SamplingParams(max_tokens=12, temperature=1.0, seed=seed), prompt=COUNTING)

    # Side by side, each sequence draws from its own random stream; the same seed repeats its text when the batch
    # around it is the same (rows of different batches round differently, and a draw can land on the other side).
    alone = [await answer(batched, sampled(7)) for _ in range(2)]
    together = await asyncio.gather(*(answer(batched, sampled(seed)) for seed in (7, 8, 9)))

    assert alone[0][0] == alone[1][0]
    assert all(f.usage.completion_tokens == 12 or f.finish_reason == "stop" for _, f in together)
    assert len({text for text, _ in together}) > 1


SYSTEM = "You are a careful assistant. You answer every question with a short list of items, nothing more. " * 3


async def test_requests_sharing_a_system_prompt_evaluate_it_once(batched: LlamaCppEngine) -> None:
    """Requests arriving together with one long prefix: the later ones copy the first one's KV of it instead of
    evaluating it again, and each still gets the answer it gets alone."""
    questions = [SYSTEM + COUNTING, SYSTEM + LETTERS]
    alone = [await answer(batched, greedy(q, max_tokens=8)) for q in questions]
    before = batched.shared_prompt_tokens

    together = await asyncio.gather(*(answer(batched, greedy(q, max_tokens=8)) for q in questions * 2))

    assert [text for text, _ in together] == [text for text, _ in alone] * 2
    pairs = zip(together, alone * 2, strict=True)
    assert all(mine.usage.prompt_tokens == theirs.usage.prompt_tokens for (_, mine), (_, theirs) in pairs)
    shared = batched.shared_prompt_tokens - before
    system_tokens = len(batched._llama.tokenize(SYSTEM.encode(), add_bos=True)) - 1  # type: ignore[union-attr]
    assert shared >= 3 * system_tokens  # each follower copied at least the system prompt


async def test_a_follower_whose_leader_is_cancelled_evaluates_its_prompt_itself(batched: LlamaCppEngine) -> None:
    """The first request of a shared prefix cancelled while the next one waits to copy it: the next one falls
    back to evaluating the prompt (or copies what was there already) and answers as it does alone."""
    prefix = "The rain in Spain falls mainly on the plain, they say in the old song. " * 25  # ~450 tokens, not cached
    decoding = asyncio.create_task(answer(batched, greedy(COUNTING, max_tokens=60)))  # prefill goes a chunk a step
    await asyncio.sleep(0.2)
    leader = asyncio.create_task(answer(batched, greedy(prefix + COUNTING, max_tokens=6)))
    await asyncio.sleep(0.05)
    follower = asyncio.create_task(answer(batched, greedy(prefix + LETTERS, max_tokens=6)))
    await asyncio.sleep(0.05)
    leader.cancel()

    text, finished = await asyncio.wait_for(follower, timeout=120)
    await decoding
    alone, _ = await answer(batched, greedy(prefix + LETTERS, max_tokens=6))

    assert text == alone and finished.usage.completion_tokens == 6
    with pytest.raises(asyncio.CancelledError):
        await leader


async def test_a_few_shared_tokens_of_a_long_sequence_are_evaluated_not_copied(batched: LlamaCppEngine) -> None:
    """A copy takes every cell of the leader's sequence: sharing a handful of tokens (say, a chat template's
    opening) with a sequence hundreds of tokens long, the follower evaluates its prompt itself."""
    long_one = "Once upon a time " + "there was a lighthouse keeper who counted the ships. " * 30
    short_one = "Once upon a time the sea was calm and"
    before = batched.shared_prompt_tokens
    running = asyncio.create_task(answer(batched, greedy(long_one, max_tokens=30)))
    await asyncio.sleep(0.5)
    text, _ = await answer(batched, greedy(short_one, max_tokens=6))
    await running
    assert batched.shared_prompt_tokens == before
    assert text == (await answer(batched, greedy(short_one, max_tokens=6)))[0]


SECRET = "Minutes of the board: the merger with the northern shipyard is to close in May, not June. " * 16


async def test_a_cached_prompt_is_reused_only_within_its_cache_scope(batched: LlamaCppEngine) -> None:
    """A client's prompt left in a slot's cache is not another client's hit: its time to first token and
    ``cached_tokens`` would tell that client the prompt was asked."""
    _, cold = await answer(batched, greedy(SECRET, max_tokens=2, scope="victim"))
    _, warm = await answer(batched, greedy(SECRET, max_tokens=2, scope="victim"))
    _, probe = await answer(batched, greedy(SECRET, max_tokens=2, scope="attacker"))
    _, unscoped = await answer(batched, greedy(SECRET, max_tokens=2))

    assert cold.usage.cached_tokens == 0 and warm.usage.cached_tokens >= PREFILL_CHUNK
    assert probe.usage.cached_tokens == 0 and unscoped.usage.cached_tokens == 0


async def test_a_running_prompt_is_copied_only_within_its_cache_scope(batched: LlamaCppEngine) -> None:
    questions = [SYSTEM + "Second " + COUNTING, SYSTEM + "Second " + LETTERS]
    before = batched.shared_prompt_tokens
    apart = await asyncio.gather(
        *(answer(batched, greedy(q, max_tokens=4, scope=f"client-{i}")) for i, q in enumerate(questions * 2))
    )
    assert batched.shared_prompt_tokens == before
    together = await asyncio.gather(*(answer(batched, greedy(q, max_tokens=4, scope="one")) for q in questions * 2))
    assert batched.shared_prompt_tokens > before
    assert [text for text, _ in together] == [text for text, _ in apart]
