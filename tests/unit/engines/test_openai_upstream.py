"""What the upstream engine sends to and reads from a vLLM-shaped server: the parts llama-cpp-python's server
(used by the integration tests) does not exercise: usage chunks, cached tokens, continuation, 400 errors, the app's
request forwarded field for field, tool-call and log-probability streams in OpenAI's exact shapes, and what a
buggy upstream may stream instead."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from cocoon.engines import (
    ChatMessage,
    EngineSettings,
    Finished,
    GenerationEvent,
    GenerationRequest,
    OpenAIUpstreamEngine,
    SamplingParams,
    ScoreRequest,
    TextDelta,
    TokenUsage,
)
from cocoon.engines.base import FunctionTool, OutputFormat, TokenLogprob, ToolCall, ToolCallDelta, TopLogprob
from cocoon.errors import BadRequest, ContextLengthExceeded, UpstreamFailed
from tests.helpers.upstream import app_request

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


async def started(
    generate: Handler, seen: list[httpx.Request], *, vision: bool = False, cache_salt: bool = False
) -> OpenAIUpstreamEngine:
    settings = EngineSettings(
        kind="openai_upstream",
        upstream_url=URL,
        model_hash="AB" * 32,
        upstream_model="gemma",
        vision=vision,
        upstream_cache_salt=cache_salt,
    )
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


async def test_the_cache_scope_goes_as_vllms_cache_salt_when_the_engine_says_so() -> None:
    def generate(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))

    scoped = GenerationRequest(SamplingParams(max_tokens=4), messages=(ChatMessage("user", "hi"),), cache_scope="c1")
    bodies = []
    for cache_salt in (True, False):
        seen: list[httpx.Request] = []
        engine = await started(generate, seen, cache_salt=cache_salt)
        [_ async for _ in engine.generate(scoped)]
        bodies.append(json.loads(next(r for r in seen if r.url.path == "/v1/chat/completions").content))
    assert bodies[0]["cache_salt"] == "c1"
    assert "cache_salt" not in bodies[1]  # a server without the field (OpenAI's own) would refuse it


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


async def test_an_upstream_refusing_the_apps_request_is_a_400_not_a_502() -> None:
    def generate(_: httpx.Request) -> httpx.Response:
        return httpx.Response(422, json={"detail": "response_format: unsupported schema keyword 'patternProperties'"})

    engine = await started(generate, [])
    with pytest.raises(BadRequest, match="patternProperties") as info:
        [_ async for _ in engine.generate(chat())]
    assert info.value.status == 400 and "127.0.0.1" not in info.value.message


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


# ---- the app's request, forwarded ------------------------------------------------------------------

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "strict": True,
    },
}
PERSON = {
    "type": "json_schema",
    "json_schema": {
        "name": "person",
        "schema": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
        "strict": True,
    },
}
HISTORY = [
    {"role": "developer", "content": "Answer briefly."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Where is this, and what is the weather there?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
        ],
    },
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
]


def stopped(_: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))


async def forwarded(request: GenerationRequest, *, vision: bool = False) -> dict[str, Any]:
    """The body the engine posts upstream for ``request``."""
    seen: list[httpx.Request] = []
    engine = await started(stopped, seen, vision=vision)
    [_ async for _ in engine.generate(request)]
    (post,) = [r for r in seen if r.url.path in ("/v1/chat/completions", "/v1/completions")]
    body: dict[str, Any] = json.loads(post.content)
    return body


async def test_the_apps_chat_request_goes_upstream_field_for_field_but_model_stream_budget_and_one_choice() -> None:
    app = {
        "model": "gemma-3-270m",
        "messages": HISTORY,
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
        "response_format": PERSON,
        "logprobs": True,
        "top_logprobs": 3,
        "temperature": 0.3,
        "top_p": 0.8,
        "seed": 11,
        "stop": ["\n\n"],
        "frequency_penalty": 0.5,
        "presence_penalty": -0.5,
        "logit_bias": {"42": -100.0},
        "user": "user-7",
        "metadata": {"trace": "abc"},
        "reasoning_effort": "low",
        "verbosity": "low",
        "prompt_cache_key": "k1",
        "safety_identifier": "s1",
        "service_tier": "auto",
        "store": False,
        "max_completion_tokens": 100,
        "n": 2,
        "stream": False,
        "stream_options": {"include_obfuscation": True},
        "max_coefficient": 2000,
        "timeout": 30,
        "provider": {"sort": "price"},
    }
    body = await forwarded(app_request(app, budget=37), vision=True)

    expected = {k: v for k, v in app.items() if k not in ("max_completion_tokens", "n", "max_coefficient", "timeout")}
    del expected["provider"]
    expected |= {"model": "gemma", "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 37}
    assert body == expected


async def test_cocoons_extras_never_go_upstream_even_when_a_client_seals_them() -> None:
    # A client can be anyone: the worker's validation accepts the routing extras, so the engine leaves them out.
    openai = {"model": "gemma-3-270m", "prompt": "hi", "max_coefficient": 2000, "timeout": 5, "provider": {}, "n": 3}
    request = GenerationRequest(SamplingParams(max_tokens=4), prompt="hi", openai=openai)
    body = await forwarded(request)

    assert not {"max_coefficient", "timeout", "provider", "n"} & set(body)
    assert body["prompt"] == "hi"


async def test_an_app_that_leaves_temperature_out_gets_openais_default_not_the_upstreams() -> None:
    body = await forwarded(app_request({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))

    assert (body["temperature"], body["top_p"]) == (1.0, 1.0)
    assert body["max_tokens"] == 16


async def test_a_completion_forwards_logprobs_and_leaves_echo_to_the_client() -> None:
    app = {"model": "m", "prompt": "Once upon", "max_tokens": 8, "logprobs": 2, "best_of": 1, "user": "u"}
    body = await forwarded(app_request(app))
    assert body == {
        "model": "gemma",
        "prompt": "Once upon",
        "max_tokens": 8,
        "logprobs": 2,
        "user": "u",
        "temperature": 1.0,
        "top_p": 1.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    echoed = await forwarded(app_request({"model": "m", "prompt": "Once upon", "echo": True}))
    assert "echo" not in echoed  # the sidecar writes the prompt back itself; upstream it would come twice


async def test_a_token_id_prompt_goes_upstream_as_the_token_array() -> None:
    body = await forwarded(app_request({"model": "m", "prompt": [2, 651, 6037], "max_tokens": 4}))

    assert body["prompt"] == [2, 651, 6037]


async def test_a_token_id_prompt_cannot_be_resumed_mid_answer() -> None:
    request = GenerationRequest(SamplingParams(max_tokens=4), prompt="", prompt_ids=(2, 651), continuation=" once")
    with pytest.raises(BadRequest, match="token ids") as info:
        await forwarded(request)
    assert info.value.param == "prompt"


async def test_a_resumed_chat_keeps_the_apps_messages_and_opens_the_answer_so_far() -> None:
    app = {"model": "m", "messages": [*HISTORY[:1], {"role": "user", "content": "Count", "name": "ann"}]}
    body = await forwarded(app_request(app, continuation="1, 2,"))

    assert body["messages"] == [*app["messages"], {"role": "assistant", "content": "1, 2,"}]
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False


async def test_image_parts_are_refused_unless_the_upstream_declares_vision() -> None:
    seen: list[httpx.Request] = []
    engine = await started(stopped, seen)
    request = app_request({"model": "m", "messages": HISTORY[1:2]})
    assert not engine.info.supports_vision

    with pytest.raises(BadRequest, match="vision") as info:
        [_ async for _ in engine.generate(request)]
    assert info.value.param == "messages"
    assert not [r for r in seen if r.url.path == "/v1/chat/completions"]

    seeing = await started(stopped, [], vision=True)
    assert seeing.info.supports_vision
    body = await forwarded(request, vision=True)
    assert body["messages"] == HISTORY[1:2]  # the image part verbatim, detail included


def test_only_an_upstream_engine_can_declare_vision() -> None:
    with pytest.raises(ValidationError, match="openai_upstream"):
        EngineSettings(kind="llamacpp", vision=True)


async def test_a_request_without_the_apps_body_is_written_out_in_openais_shape() -> None:
    request = GenerationRequest(
        SamplingParams(max_tokens=5),
        messages=(
            ChatMessage("user", "Weather here?", images=("https://example.com/a.png",)),
            ChatMessage("assistant", "", tool_calls=(ToolCall("call_1", "get_weather", "{}"),)),
            ChatMessage("tool", "sunny", tool_call_id="call_1"),
        ),
        tools=(FunctionTool("get_weather", "Weather", {"type": "object"}),),
        tool_choice="function",
        tool_name="get_weather",
        response_format=OutputFormat("json_object"),
        logprobs=True,
        top_logprobs=2,
    )
    body = await forwarded(request, vision=True)

    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather here?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            ],
        },
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather",
                "parameters": {"type": "object"},
                "strict": False,
            },
        }
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["response_format"] == {"type": "json_object"}
    assert (body["logprobs"], body["top_logprobs"]) == (True, 2)


# ---- what comes back -------------------------------------------------------------------------------


def streaming(*events: dict[str, Any]) -> Handler:
    def generate(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=sse(*events), headers={"content-type": "text/event-stream"})

    return generate


def delta(**fields: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": fields, "logprobs": None, "finish_reason": None}]}


def finish(reason: str, **usage: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = [{"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}]
    if usage:
        events.append({"choices": [], "usage": usage})
    return events


def tool_piece(index: int, arguments: str, **first: Any) -> dict[str, Any]:
    """One entry of ``delta.tool_calls``; ``first`` (id, name) as OpenAI sends it on a call's first piece."""
    piece: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if first:
        piece |= {"id": first["id"], "type": "function"}
        piece["function"]["name"] = first["name"]
    return piece


def weather_call(**extra: Any) -> GenerationRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "Weather in Paris and Rome?"}], "tools": [WEATHER]}
    return app_request(body | extra)


async def events_of(request: GenerationRequest, *events: dict[str, Any]) -> list[GenerationEvent]:
    engine = await started(streaming(*events), [])
    return [event async for event in engine.generate(request)]


async def test_tool_call_pieces_come_back_as_openai_streams_them() -> None:
    events = await events_of(
        weather_call(),
        delta(role="assistant", content=None),
        delta(tool_calls=[tool_piece(0, "", id="call_a", name="get_weather")]),
        delta(tool_calls=[tool_piece(0, '{"city": ')]),
        delta(tool_calls=[tool_piece(0, '"Paris"}')]),
        delta(tool_calls=[tool_piece(1, "", id="call_b", name="get_weather")]),
        delta(tool_calls=[tool_piece(1, '{"city": "Rome"}')]),
        *finish("tool_calls", prompt_tokens=30, completion_tokens=19),
    )

    assert events == [
        ToolCallDelta(0, "call_a", "get_weather", "", tokens=1),
        ToolCallDelta(0, None, None, '{"city": ', tokens=1),
        ToolCallDelta(0, None, None, '"Paris"}', tokens=1),
        ToolCallDelta(1, "call_b", "get_weather", "", tokens=1),
        ToolCallDelta(1, None, None, '{"city": "Rome"}', tokens=1),
        Finished("tool_calls", TokenUsage(30, 19)),
    ]


async def test_a_server_repeating_id_and_name_on_every_piece_has_them_passed_on_once() -> None:
    # llama-cpp-python's chatml-function-calling stream: id, type and name on each piece, and the legacy
    # function_call beside tool_calls. An app joining pieces as OpenAI's SDK does must see the name once.
    def piece(arguments: str) -> dict[str, Any]:
        call = {"index": 0, "id": "call__0_get_weather_cmpl-1", "type": "function"}
        call["function"] = {"name": "get_weather", "arguments": arguments}
        fields = {"role": None, "content": None, "function_call": call["function"], "tool_calls": [call]}
        return delta(**fields)

    request = weather_call(tool_choice={"type": "function", "function": {"name": "get_weather"}})
    events = await events_of(
        request,
        delta(role="assistant", content=None, tool_calls=None),
        piece("{"),
        piece('"city": "Paris"}'),
        piece(""),
        *finish("tool_calls"),
    )

    calls = [event for event in events if isinstance(event, ToolCallDelta)]
    assert [(c.id, c.name, c.arguments) for c in calls] == [
        ("call__0_get_weather_cmpl-1", "get_weather", "{"),
        (None, None, '"city": "Paris"}'),
    ]
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.finish_reason == "tool_calls"
    assert finished.usage.completion_tokens == 2  # no usage upstream: one token per piece that said anything


async def test_a_legacy_function_call_finish_is_a_tool_calls_finish() -> None:
    events = await events_of(
        weather_call(), delta(tool_calls=[tool_piece(0, "{}", id="c", name="get_weather")]), *finish("function_call")
    )
    assert isinstance(events[-1], Finished) and events[-1].finish_reason == "tool_calls"


async def test_a_tool_calls_finish_without_calls_is_a_stop() -> None:
    events = await events_of(weather_call(), delta(content="It is sunny."), *finish("tool_calls"))
    assert isinstance(events[-1], Finished) and events[-1].finish_reason == "stop"


async def test_chat_logprobs_come_back_per_token_with_alternatives_best_first() -> None:
    request = app_request(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 2}
    )
    entries = [
        {
            "token": "Hel",
            "logprob": -0.5,
            "bytes": [72, 101, 108],
            "top_logprobs": [
                {"token": "Hi", "logprob": -1.5, "bytes": [72, 105]},
                {"token": "Hel", "logprob": -0.5, "bytes": [72, 101, 108]},
            ],
        },
        {"token": "lo", "logprob": -0.25, "bytes": None, "top_logprobs": []},
    ]
    chunk = {"choices": [{"index": 0, "delta": {"content": "Hello"}, "logprobs": {"content": entries}}]}
    events = await events_of(request, chunk, *finish("stop", prompt_tokens=3, completion_tokens=2))

    hel = TokenLogprob(
        "Hel", -0.5, (72, 101, 108), (TopLogprob("Hel", -0.5, (72, 101, 108)), TopLogprob("Hi", -1.5, (72, 105)))
    )
    assert events[0] == TextDelta("Hello", tokens=2, logprobs=(hel, TokenLogprob("lo", -0.25)))


async def test_legacy_completion_logprobs_become_the_same_token_logprobs() -> None:
    request = app_request({"model": "m", "prompt": "1, 2, 3,", "logprobs": 2})
    chunk = {
        "choices": [
            {
                "index": 0,
                "text": " 4,",
                "logprobs": {
                    "tokens": [" ", "4", ","],
                    "token_logprobs": [-0.1, -0.2, -0.3],
                    "top_logprobs": [{" and": -3.0, " ": -0.1}, {"4": -0.2}, None],
                    "text_offset": [8, 9, 10],
                },
                "finish_reason": None,
            }
        ]
    }
    events = await events_of(request, chunk, {"choices": [{"index": 0, "text": "", "finish_reason": "length"}]})

    assert events[0] == TextDelta(
        " 4,",
        tokens=3,
        logprobs=(
            TokenLogprob(" ", -0.1, None, (TopLogprob(" ", -0.1), TopLogprob(" and", -3.0))),
            TokenLogprob("4", -0.2, None, (TopLogprob("4", -0.2),)),
            TokenLogprob(",", -0.3),
        ),
    )
    assert isinstance(events[-1], Finished) and events[-1].usage.completion_tokens == 3


async def test_a_minus_infinite_logprob_becomes_vllms_floor() -> None:
    request = app_request({"model": "m", "prompt": "x", "logprobs": 0})
    logprobs = b'{"tokens": ["y"], "token_logprobs": [-Infinity]}'  # Python's json writes -inf so
    raw = b'data: {"choices": [{"index": 0, "text": "y", "logprobs": ' + logprobs + b"}]}\n\n"
    done = sse(*finish("stop"))

    def generate(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=raw + done)

    engine = await started(generate, [])
    events = [event async for event in engine.generate(request)]
    assert events[0] == TextDelta("y", logprobs=(TokenLogprob("y", -9999.0),))


async def test_text_without_the_logprobs_asked_for_fails_instead_of_answering_without_them() -> None:
    request = app_request({"model": "m", "messages": [{"role": "user", "content": "hi"}], "logprobs": True})
    with pytest.raises(UpstreamFailed, match="log-probabilities"):
        await events_of(request, delta(content="Hello"), *finish("stop"))


MALFORMED = {
    "choices not a list": {"choices": {"index": 0}},
    "a second choice": {"choices": [{"index": 1, "delta": {"content": "x"}}]},
    "content not text": delta(content=["x"]),
    "a piece too long": delta(content="x" * 70_000),
    "a call without a name": delta(tool_calls=[{"index": 0, "id": "c", "function": {"arguments": "{}"}}]),
    "a call index skipped": delta(tool_calls=[tool_piece(1, "{}", id="c", name="get_weather")]),
    "a bad function name": delta(tool_calls=[tool_piece(0, "{}", id="c", name="get weather()")]),
    "an id too long": delta(tool_calls=[tool_piece(0, "{}", id="c" * 200, name="get_weather")]),
    "a call that is not a function": delta(tool_calls=[{"index": 0, "type": "code", "function": {"name": "f"}}]),
    "negative usage": {"choices": [], "usage": {"prompt_tokens": -1, "completion_tokens": 2}},
}


@pytest.mark.parametrize("chunk", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_chunk_fails_the_job_saying_so(chunk: dict[str, Any]) -> None:
    with pytest.raises(UpstreamFailed, match="malformed stream"):
        await events_of(weather_call(), chunk, *finish("stop"))


async def test_a_tool_call_renamed_midway_or_offered_no_tools_is_malformed() -> None:
    renamed = [
        delta(tool_calls=[tool_piece(0, "", id="c", name="get_weather")]),
        delta(tool_calls=[tool_piece(0, "{}", id="c", name="get_time")]),
    ]
    with pytest.raises(UpstreamFailed, match="renamed"):
        await events_of(weather_call(), *renamed, *finish("tool_calls"))
    with pytest.raises(UpstreamFailed, match="offered no tools"):
        await events_of(chat(), renamed[0], *finish("tool_calls"))
    with pytest.raises(UpstreamFailed, match="offered no tools"):
        await events_of(weather_call(tool_choice="none"), renamed[0], *finish("tool_calls"))


@pytest.mark.parametrize("logprob", [0.5, "low", None, True])
async def test_a_logprob_that_is_not_a_log_probability_is_malformed(logprob: object) -> None:
    request = app_request({"model": "m", "prompt": "x", "logprobs": 0})
    chunk = {"choices": [{"index": 0, "text": "y", "logprobs": {"tokens": ["y"], "token_logprobs": [logprob]}}]}
    with pytest.raises(UpstreamFailed, match="log-probability"):
        await events_of(request, chunk, *finish("stop"))


async def test_text_after_the_finish_reason_is_malformed() -> None:
    with pytest.raises(UpstreamFailed, match="after its finish_reason"):
        await events_of(chat(), *finish("stop"), delta(content="more"))


async def test_a_server_streaming_far_past_max_tokens_is_stopped() -> None:
    pieces = [delta(content="x")] * (2 * 4 + 65)
    with pytest.raises(UpstreamFailed, match="max_tokens"):
        await events_of(chat(), *pieces, *finish("length"))


async def test_the_stream_is_read_to_its_end_past_done_so_the_connection_is_kept() -> None:
    from cocoon.engines.upstream_stream import sse_events

    body = sse({"choices": []}) + b": a server's trailing comment\n\n"
    response = httpx.Response(200, stream=httpx.ByteStream(body), request=httpx.Request("POST", URL))

    assert [event async for event in sse_events(response)] == [{"choices": []}]
    # httpx closes a response (and hands its connection back to the pool) once its body was read to the end.
    assert response.is_closed


class _Pieces(httpx.AsyncByteStream):
    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
async def test_events_are_read_whatever_the_line_ends_and_wherever_the_pieces_break(newline: bytes) -> None:
    """SSE lines end in LF, CRLF or CR; a piece may end anywhere, inside a CRLF too; data lines of one event
    join with LF; comments and event names are skipped."""
    from cocoon.engines.upstream_stream import sse_events

    lines = [b": ping", b"", b"event: chunk", b'data: {"a":', b'data: "x\\u00e9"}', b"", b'data:{"b": 2}', b""]
    body = newline.join([*lines, b"data: [DONE]", b"", b""])
    expected = [{"a": "xé"}, {"b": 2}]
    for size in (1, 2, 3, 7, len(body)):
        pieces = [body[at : at + size] for at in range(0, len(body), size)]
        response = httpx.Response(200, stream=_Pieces(pieces), request=httpx.Request("POST", URL))
        assert [event async for event in sse_events(response)] == expected, (newline, size)


async def test_an_endless_line_is_refused_before_it_fills_the_memory() -> None:
    from cocoon.engines.upstream_stream import MAX_EVENT_BYTES, sse_events

    pieces = [b"data: " + b"x" * 65536] * (MAX_EVENT_BYTES // 65536 + 2)
    response = httpx.Response(200, stream=_Pieces(pieces), request=httpx.Request("POST", URL))
    with pytest.raises(UpstreamFailed, match="over"):
        [event async for event in sse_events(response)]
