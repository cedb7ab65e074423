"""Coalescing by time: the first text goes out at once, later text is merged over the window, nothing is lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from cocoon.engines.base import Finished, GenerationEvent, TextDelta, TokenLogprob, ToolCallDelta
from cocoon.protocol.usage import TokenUsage
from cocoon.worker.pacing import coalesced


async def engine(gap_s: float, words: int) -> AsyncGenerator[GenerationEvent, None]:
    for i in range(words):
        await asyncio.sleep(gap_s)
        yield TextDelta(f"w{i} ")
    yield Finished("length", TokenUsage(prompt_tokens=1, completion_tokens=words))


async def test_text_after_the_first_is_merged_over_the_window_and_nothing_is_lost() -> None:
    events = [e async for e in coalesced(engine(0.002, 40), window_s=0.05)]
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert deltas[0] == TextDelta("w0 ", 1)  # time to first token is not paid for privacy
    assert len(deltas) < 20
    assert "".join(d.text for d in deltas) == "".join(f"w{i} " for i in range(40))
    assert sum(d.tokens for d in deltas) == 40
    assert isinstance(events[-1], Finished)


async def test_no_window_passes_every_delta_through() -> None:
    events = [e async for e in coalesced(engine(0, 5), window_s=0)]
    assert len(events) == 6


async def test_no_window_still_merges_the_deltas_already_there_after_the_first() -> None:
    async def one_read() -> AsyncGenerator[GenerationEvent, None]:
        # An upstream's events parsed out of one network read: nothing awaits between them.
        for i in range(5):
            yield TextDelta(f"w{i} ")
        yield Finished("length", TokenUsage(prompt_tokens=1, completion_tokens=5))

    events = [e async for e in coalesced(one_read(), window_s=0)]

    assert events[0] == TextDelta("w0 ", 1)  # the first text still goes out alone
    assert events[1] == TextDelta("w1 w2 w3 w4 ", 4)
    assert isinstance(events[2], Finished) and len(events) == 3


async def test_an_engine_error_surfaces_to_the_reader() -> None:
    async def failing() -> AsyncGenerator[GenerationEvent, None]:
        yield TextDelta("a")
        raise RuntimeError("engine died")

    try:
        [e async for e in coalesced(failing(), window_s=0.01)]
    except RuntimeError as exc:
        assert "engine died" in str(exc)
    else:
        raise AssertionError("the engine's error was swallowed")


async def test_merged_text_keeps_every_logprob_and_tool_call_pieces_pass_through() -> None:
    async def answer() -> AsyncGenerator[GenerationEvent, None]:
        for i in range(6):
            yield TextDelta(f"t{i}", logprobs=(TokenLogprob(f"t{i}", -0.5 * i),))
        yield ToolCallDelta(0, id="call_1", name="add", tokens=2)
        yield ToolCallDelta(0, arguments='{"a": 1}', tokens=5)
        yield Finished("tool_calls", TokenUsage(prompt_tokens=1, completion_tokens=13))

    events = [e async for e in coalesced(answer(), window_s=0.05)]
    texts = [e for e in events if isinstance(e, TextDelta)]
    assert [lp.token for d in texts for lp in d.logprobs] == [f"t{i}" for i in range(6)]
    assert len(texts) < 6  # merged after the first
    calls = [e for e in events if isinstance(e, ToolCallDelta)]
    assert [c.arguments for c in calls] == ["", '{"a": 1}'] and isinstance(events[-1], Finished)
