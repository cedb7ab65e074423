"""What the sidecar makes of an app's whole OpenAI request: ``n`` choices (one sealed job each), the request
sealed as the app sent it, tool calls and log-probabilities in OpenAI's shapes, lists of prompts, token ids,
embedding ``dimensions`` and OpenRouter's provider filters.

Real: the sidecar app, the SDK, sealing, receipts, the official ``openai`` client. Recorded (``fakes.py``):
the proxy's directory and its relay of each worker's sealed answer.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable

import httpx
import openai
import pytest

from cocoon.client import CocoonClient, create_gateway
from cocoon.config import ClientSettings
from cocoon.engines.config import DEFAULT_MODEL
from cocoon.protocol.payload import ChunkPayload, RequestPayload
from tests.unit.client.fakes import FakeWorker, answer_with, dev_policy, recorded_proxy

PROMPT = [{"role": "user", "content": "What is the weather in Paris?"}]
WORKERS = [FakeWorker(), FakeWorker()]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


class Network:
    def __init__(
        self, chunks_for: Callable[[RequestPayload], list[ChunkPayload]], workers: list[FakeWorker] = WORKERS
    ) -> None:
        self.seen: list[RequestPayload] = []
        transport = recorded_proxy(workers, answer_with(chunks_for, seen=self.seen))
        proxy = httpx.AsyncClient(transport=transport, base_url="http://proxy.test")
        sdk = CocoonClient("http://proxy.test", dev_policy(), http=proxy)
        app = create_gateway(ClientSettings(), client=sdk)
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://sidecar.test/v1")
        self.oai = openai.AsyncOpenAI(
            base_url="http://sidecar.test/v1",
            api_key="unused",
            max_retries=0,
            http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app)),
        )

    async def aclose(self) -> None:
        await self.oai.close()
        await self.http.aclose()


@pytest.fixture
async def echo() -> AsyncIterator[Network]:
    """Each job answers with its choice's seed, so choices can be told apart."""
    net = Network(lambda p: [ChunkPayload(text=f"seed={p.params.seed}", tokens=2), ChunkPayload(finish_reason="stop")])
    yield net
    await net.aclose()


async def test_n_choices_are_one_sealed_job_each_with_their_own_receipts(echo: Network) -> None:
    reply = await echo.oai.chat.completions.create(model=DEFAULT_MODEL, messages=PROMPT, n=3, seed=7)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert sorted(c.message.content or "" for c in reply.choices) == ["seed=7", "seed=8", "seed=9"]
    assert reply.usage is not None and reply.usage.completion_tokens == 6
    assert len((reply.usage.model_extra or {})["receipt_ids"]) == 3
    # Each job carries the app's request for one choice, and nothing of cocoon's routing extras.
    assert sorted(p.openai["seed"] for p in echo.seen if p.openai) == [7, 8, 9]
    assert all(p.openai is not None and p.openai["n"] == 1 for p in echo.seen)


async def test_n_choices_stream_interleaved_with_their_index(echo: Network) -> None:
    stream = await echo.oai.chat.completions.create(
        model=DEFAULT_MODEL, messages=PROMPT, n=2, seed=1, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    texts = {0: "", 1: ""}
    finishes = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert sorted(texts.values()) == ["seed=1", "seed=2"]
    assert finishes == {0: "stop", 1: "stop"}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


async def test_the_sealed_request_is_the_apps_request_without_routing_extras(echo: Network) -> None:
    await echo.oai.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=PROMPT,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice="auto",
        response_format={"type": "json_object"},
        logprobs=True,
        top_logprobs=3,
        user="u-1",
        extra_body={"max_coefficient": 5000, "provider": {"sort": "price"}, "timeout": 30},
    )
    (payload,) = echo.seen
    assert payload.openai is not None
    body = payload.openai
    assert body["tools"] == [WEATHER_TOOL] and body["tool_choice"] == "auto"
    assert body["response_format"] == {"type": "json_object"}
    assert (body["logprobs"], body["top_logprobs"], body["user"]) == (True, 3, "u-1")
    assert not {"max_coefficient", "provider", "timeout"} & set(body)


async def test_tool_calls_come_back_as_openai_shapes_them() -> None:
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    more = {"index": 0, "function": {"arguments": '{"city": "Paris"}'}}
    net = Network(
        lambda _: [
            ChunkPayload(tool_calls=[call], tokens=3),
            ChunkPayload(tool_calls=[more], tokens=5),
            ChunkPayload(finish_reason="tool_calls"),
        ]
    )
    try:
        tools = [WEATHER_TOOL]
        reply = await net.oai.chat.completions.create(model=DEFAULT_MODEL, messages=PROMPT, tools=tools)  # type: ignore[arg-type]
        stream = await net.oai.chat.completions.create(
            model=DEFAULT_MODEL,
            messages=PROMPT,
            tools=tools,
            stream=True,  # type: ignore[arg-type]
        )
        chunks = [chunk async for chunk in stream]
    finally:
        await net.aclose()
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (made,) = choice.message.tool_calls or []
    assert (made.id, made.function.name, made.function.arguments) == ("call_1", "get_weather", '{"city": "Paris"}')
    deltas = [tc for c in chunks for ch in c.choices for tc in ch.delta.tool_calls or []]
    assert deltas[0].id == "call_1" and deltas[0].function is not None and deltas[0].function.name == "get_weather"
    assert "".join(d.function.arguments or "" for d in deltas if d.function) == '{"city": "Paris"}'
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_logprobs_come_back_per_token() -> None:
    entry = {
        "token": "Hi",
        "logprob": -0.25,
        "bytes": [72, 105],
        "top_logprobs": [{"token": "Hi", "logprob": -0.25, "bytes": [72, 105]}],
    }
    net = Network(
        lambda _: [ChunkPayload(text="Hi", tokens=1, token_logprobs=[entry]), ChunkPayload(finish_reason="stop")]
    )
    try:
        reply = await net.oai.chat.completions.create(
            model=DEFAULT_MODEL, messages=PROMPT, logprobs=True, top_logprobs=1
        )
        text = await net.oai.completions.create(model=DEFAULT_MODEL, prompt="Say", logprobs=1)
    finally:
        await net.aclose()
    content = reply.choices[0].logprobs.content if reply.choices[0].logprobs else None
    assert content is not None and content[0].token == "Hi" and content[0].logprob == -0.25
    assert content[0].top_logprobs[0].token == "Hi"
    legacy = text.choices[0].logprobs
    assert legacy is not None and legacy.tokens == ["Hi"] and legacy.token_logprobs == [-0.25]
    assert legacy.top_logprobs == [{"Hi": -0.25}] and legacy.text_offset == [0]


async def test_a_malformed_tool_call_from_a_worker_is_a_502_not_a_500() -> None:
    net = Network(lambda _: [ChunkPayload(tool_calls=[{"index": "x"}], tokens=1), ChunkPayload(finish_reason="stop")])
    try:
        with pytest.raises(openai.APIStatusError) as info:
            await net.oai.chat.completions.create(model=DEFAULT_MODEL, messages=PROMPT)
    finally:
        await net.aclose()
    assert info.value.status_code == 502


async def test_a_list_of_prompts_gets_a_choice_per_prompt_and_n(echo: Network) -> None:
    reply = await echo.oai.completions.create(model=DEFAULT_MODEL, prompt=["a", "b"], n=2, seed=3, echo=True)
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    assert [c.text for c in reply.choices] == ["aseed=3", "aseed=4", "bseed=3", "bseed=4"]
    assert [p.prompt for p in echo.seen].count("a") == 2


async def test_a_token_id_prompt_is_sealed_as_token_ids(echo: Network) -> None:
    await echo.oai.completions.create(model=DEFAULT_MODEL, prompt=[1, 2, 3], max_tokens=4)
    (payload,) = echo.seen
    assert payload.prompt_ids == [1, 2, 3] and payload.prompt == ""
    response = await echo.http.post("/completions", json={"model": DEFAULT_MODEL, "prompt": [1, 2], "echo": True})
    assert response.status_code == 400 and response.json()["error"]["param"] == "echo"


async def test_embeddings_take_token_arrays_and_dimensions() -> None:
    net = Network(lambda p: [ChunkPayload(embeddings=[[3.0, 4.0, 12.0] for _ in p.input or []])])
    try:
        reply = await net.oai.embeddings.create(model=DEFAULT_MODEL, input=[[1, 2], [3]], dimensions=2)
        too_many = await net.http.post("/embeddings", json={"model": DEFAULT_MODEL, "input": "a", "dimensions": 4})
    finally:
        await net.aclose()
    assert net.seen[0].input == [[1, 2], [3]]
    vector = reply.data[0].embedding
    assert vector == pytest.approx([0.6, 0.8], rel=1e-6)  # the SDK asks base64: float32 on the wire
    assert math.isclose(math.hypot(*vector), 1.0, rel_tol=1e-6)
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "dimensions"


async def test_provider_only_ignore_and_order_choose_the_workers(echo: Network) -> None:
    first, second = (w.worker_id for w in WORKERS)
    reply = await echo.oai.chat.completions.create(
        model=DEFAULT_MODEL, messages=PROMPT, extra_body={"provider": {"only": [second]}}
    )
    assert (reply.usage.model_extra or {})["workers"] == [second]  # type: ignore[union-attr]
    reply = await echo.oai.chat.completions.create(
        model=DEFAULT_MODEL, messages=PROMPT, extra_body={"provider": {"ignore": [first]}}
    )
    assert (reply.usage.model_extra or {})["workers"] == [second]  # type: ignore[union-attr]
    reply = await echo.oai.chat.completions.create(
        model=DEFAULT_MODEL, messages=PROMPT, extra_body={"provider": {"order": [second, first]}}
    )
    assert (reply.usage.model_extra or {})["workers"] == [second]  # type: ignore[union-attr]
    with pytest.raises(openai.InternalServerError) as info:
        await echo.oai.chat.completions.create(
            model=DEFAULT_MODEL, messages=PROMPT, extra_body={"provider": {"only": ["w-nobody"]}}
        )
    assert info.value.status_code == 503


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"audio": {"voice": "alloy"}}, "audio"),
        ({"store": True}, "store"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "function": {"name": "other"}}}, "tool_choice"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"service_tier": "flex"}, "service_tier"),
    ],
)
async def test_fields_cocoon_cannot_honour_are_refused_by_name(
    echo: Network, body: dict[str, object], param: str
) -> None:
    response = await echo.http.post("/chat/completions", json={"model": DEFAULT_MODEL, "messages": PROMPT} | body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert echo.seen == []


async def test_an_image_for_a_network_without_vision_workers_is_a_400(echo: Network) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, image]}]
    response = await echo.http.post("/chat/completions", json={"model": DEFAULT_MODEL, "messages": messages})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages" and "images" in response.json()["error"]["message"]
    assert echo.seen == []


async def test_an_image_goes_only_to_a_worker_that_declares_vision() -> None:
    seeing = FakeWorker(vision=True)
    net = Network(
        lambda _: [ChunkPayload(text="a cat", tokens=2), ChunkPayload(finish_reason="stop")], [*WORKERS, seeing]
    )
    image = {"type": "image_url", "image_url": {"url": "https://example.test/cat.png", "detail": "low"}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, image]}]
    try:
        reply = await net.oai.chat.completions.create(model=DEFAULT_MODEL, messages=messages)  # type: ignore[arg-type]
    finally:
        await net.aclose()
    assert (reply.usage.model_extra or {})["workers"] == [seeing.worker_id]  # type: ignore[union-attr]
    (payload,) = net.seen
    assert payload.openai is not None and payload.openai["messages"][0]["content"][1] == image


async def test_an_audio_part_is_refused_in_words_that_say_why(echo: Network) -> None:
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    messages = [{"role": "user", "content": [audio]}]
    response = await echo.http.post("/chat/completions", json={"model": DEFAULT_MODEL, "messages": messages})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "messages.0.content" and "'input_audio' are not supported" in error["message"]


async def test_embedding_usage_carries_its_receipts() -> None:
    net = Network(lambda p: [ChunkPayload(embeddings=[[1.0, 0.0] for _ in p.input or []])])
    try:
        reply = await net.http.post("/embeddings", json={"model": DEFAULT_MODEL, "input": ["a", "b"]})
    finally:
        await net.aclose()
    usage = reply.json()["usage"]
    assert len(usage["receipt_ids"]) == 1 and usage["workers"] == [WORKERS[0].worker_id]
