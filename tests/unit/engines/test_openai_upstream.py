"""What the upstream engine sends to and reads from a vLLM-shaped server: the parts llama-cpp-python's server
(used by the integration tests) does not exercise: usage chunks, cached tokens, continuation, 400 errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from cocoon.engines import (
    ChatMessage,
    EngineSettings,
    Finished,
    GenerationRequest,
    OpenAIUpstreamEngine,
    SamplingParams,
    ScoreRequest,
    TextDelta,
)
from cocoon.errors import ContextLengthExceeded, UpstreamFailed

URL = "http://vllm.test/v1"
Handler = Callable[[httpx.Request], httpx.Response]


def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def vllm(generate: Handler, seen: list[httpx.Request]) -> httpx.MockTransport:
    """A vLLM-shaped server: /v1/models, /tokenize, and ``generate`` for everything else."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "gemma"}]})
        if request.url.path == "/tokenize":
            body = json.loads(request.content)
            return httpx.Response(200, json={"count": len(body["prompt"].split()), "max_model_len": 8192})
        return generate(request)

    return httpx.MockTransport(handle)


async def started(generate: Handler, seen: list[httpx.Request]) -> OpenAIUpstreamEngine:
    settings = EngineSettings(kind="openai_upstream", upstream_url=URL, model_hash="AB" * 32, upstream_model="gemma")
    engine = OpenAIUpstreamEngine(settings, transport=vllm(generate, seen))
    await engine.start()
    return engine


def chat(continuation: str = "") -> GenerationRequest:
    return GenerationRequest(
        SamplingParams(max_tokens=4, temperature=0.5, top_p=0.9, seed=3, stop=("\n",)),
        messages=(ChatMessage("user", "hi"),),
        continuation=continuation,
    )


async def test_usage_and_cached_tokens_come_from_the_final_usage_chunk() -> None:
    def generate(_: httpx.Request) -> httpx.Response:
        body = sse(
            {"choices": [{"index": 0, "delta": {"role": "assistant"}}]},
            {"choices": [{"index": 0, "delta": {"content": "Hel"}}]},
            {"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "length"}]},
            {
                "choices": [],
                "usage": {
                    "prompt_tokens": 12,
                    "completion_tokens": 4,
                    "prompt_tokens_details": {"cached_tokens": 8},
                },
            },
        )
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    engine = await started(generate, [])
    events = [event async for event in engine.generate(chat())]

    assert events[:-1] == [TextDelta("Hel"), TextDelta("lo")]
    assert isinstance(events[-1], Finished)
    assert events[-1].finish_reason == "length"
    assert (events[-1].usage.prompt_tokens, events[-1].usage.completion_tokens) == (12, 4)
    assert events[-1].usage.cached_tokens == 8
    assert engine.info.model_hash == "ab" * 32


async def test_chat_request_carries_openai_knobs_and_asks_for_usage() -> None:
    seen: list[httpx.Request] = []

    def generate(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))

    engine = await started(generate, seen)
    [_ async for _ in engine.generate(chat())]
    body = json.loads(next(r for r in seen if r.url.path == "/v1/chat/completions").content)

    assert body["model"] == "gemma"
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["seed"]) == (4, 0.5, 0.9, 3)
    assert body["stop"] == ["\n"]
    assert "continue_final_message" not in body
    assert "frequency_penalty" not in body and "logit_bias" not in body  # OpenAI's defaults are left out


async def test_penalties_and_logit_bias_are_forwarded_as_openai_names_them() -> None:
    seen: list[httpx.Request] = []

    def generate(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))

    engine = await started(generate, seen)
    params = SamplingParams(
        max_tokens=4, frequency_penalty=0.5, presence_penalty=-0.25, logit_bias=((42, -100.0), (7, 3.5))
    )
    [_ async for _ in engine.generate(GenerationRequest(params, messages=(ChatMessage("user", "hi"),)))]
    body = json.loads(next(r for r in seen if r.url.path == "/v1/chat/completions").content)
    assert (body["frequency_penalty"], body["presence_penalty"]) == (0.5, -0.25)
    assert body["logit_bias"] == {"42": -100.0, "7": 3.5}


async def test_chat_continuation_is_sent_as_an_open_assistant_message() -> None:
    seen: list[httpx.Request] = []

    def generate(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))

    engine = await started(generate, seen)
    [_ async for _ in engine.generate(chat(continuation="Hello wor"))]
    body = json.loads(next(r for r in seen if r.url.path == "/v1/chat/completions").content)

    assert body["messages"][-1] == {"role": "assistant", "content": "Hello wor"}
    assert body["continue_final_message"] is True
    assert body["add_generation_prompt"] is False


async def test_a_400_about_context_length_becomes_context_length_exceeded() -> None:
    def generate(_: httpx.Request) -> httpx.Response:
        message = "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens."
        return httpx.Response(400, json={"object": "error", "message": message, "code": 400})

    engine = await started(generate, [])
    with pytest.raises(ContextLengthExceeded, match="8192"):
        [_ async for _ in engine.generate(chat())]


async def test_other_upstream_errors_become_upstream_failed_with_the_upstream_message() -> None:
    def generate(_: httpx.Request) -> httpx.Response:
        return httpx.Response(500, json={"error": {"message": "CUDA out of memory"}})

    engine = await started(generate, [])
    with pytest.raises(UpstreamFailed, match="CUDA out of memory"):
        [_ async for _ in engine.generate(chat())]


async def test_count_tokens_uses_vllm_tokenize_without_special_tokens() -> None:
    seen: list[httpx.Request] = []
    engine = await started(lambda _: httpx.Response(404), seen)

    assert await engine.count_tokens("three little words") == 3
    tokenize = json.loads(next(r for r in seen if r.url.path == "/tokenize").content)
    assert tokenize["add_special_tokens"] is False
    assert seen[-1].url == httpx.URL("http://vllm.test/tokenize")


async def test_embeddings_come_back_in_input_order() -> None:
    def generate(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/embeddings"
        rows = [{"index": 1, "embedding": [0.0, 1.0]}, {"index": 0, "embedding": [1.0, 0.0]}]
        return httpx.Response(200, json={"data": rows, "usage": {"prompt_tokens": 5}})

    engine = await started(generate, [])
    result = await engine.embed(["a", "b"])

    assert result.vectors == [[1.0, 0.0], [0.0, 1.0]]
    assert result.prompt_tokens == 5


def prompt_logprobs(*rated: tuple[int, float, int]) -> list[dict[str, dict[str, Any]] | None]:
    """vLLM's ``prompt_logprobs`` for prompt_logprobs=0: None for the first token, then one entry per token."""
    out: list[dict[str, dict[str, Any]] | None] = [None]
    for token_id, logprob, rank in rated:
        out.append({str(token_id): {"logprob": logprob, "rank": rank, "decoded_token": f"t{token_id}"}})
    return out


async def test_score_reads_the_completions_last_prompt_logprobs_with_ranks_as_greedy_replay() -> None:
    bodies: list[dict[str, Any]] = []

    def generate(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/chat/completions"
        bodies.append(json.loads(request.content))
        # Five template/prompt tokens, then the completion's two ("Paris is" counts 2 at /tokenize).
        entries = prompt_logprobs((1, -5.0, 9), (2, -4.0, 3), (3, -3.0, 2), (4, -2.0, 1), (5, -0.25, 1), (6, -2.5, 4))
        return httpx.Response(200, json={"choices": [{"message": {"content": "."}}], "prompt_logprobs": entries})

    engine = await started(generate, [])
    scores = await engine.score(ScoreRequest("Paris is", messages=(ChatMessage("user", "capital?"),)))

    assert scores.logprobs == (-0.25, -2.5)
    assert scores.greedy == (True, False)
    assert scores.prompt_tokens == 5
    body = bodies[0]
    assert body["prompt_logprobs"] == 0 and body["max_tokens"] == 1
    assert body["messages"][-1] == {"role": "assistant", "content": "Paris is"}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False


async def test_score_of_a_completion_prompt_reads_choices_prompt_logprobs() -> None:
    def generate(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/completions"
        assert json.loads(request.content)["prompt"] == "Once upon a time"
        entries = prompt_logprobs((7, -1.0, 2), (8, -0.5, 1), (9, -0.1, 1))
        return httpx.Response(200, json={"choices": [{"text": ",", "prompt_logprobs": entries}]})

    engine = await started(generate, [])
    scores = await engine.score(ScoreRequest("a time", prompt="Once upon "))

    assert scores.logprobs == (-0.5, -0.1)
    assert scores.mean_nll == pytest.approx(0.3)
    assert scores.greedy_rate == 1.0


async def test_score_against_a_server_without_prompt_logprobs_says_it_needs_vllm() -> None:
    engine = await started(lambda _: httpx.Response(200, json={"choices": [{"text": ","}]}), [])

    with pytest.raises(UpstreamFailed, match="prompt_logprobs"):
        await engine.score(ScoreRequest("a time", prompt="Once upon "))
