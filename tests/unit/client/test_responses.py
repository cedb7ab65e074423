"""``POST /v1/responses`` in-process: the official ``openai`` client's Responses API against the sidecar.

Real: the sidecar app and SDK, the ``openai`` client (``responses.create``, ``.stream``, ``.parse``), attestation,
sealing and receipts. Recorded (``fakes.py``): the proxy's directory and its relay of a worker's sealed reply;
the fake worker opens each sealed job, so the tests read the chat request a Responses request became.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from cocoon.engines.config import DEFAULT_MODEL
from cocoon.protocol.payload import ChunkPayload, RequestPayload
from tests.unit.client.fakes import FakeWorker, answer_with, answer_with_text, recorded_proxy
from tests.unit.client.test_gateway import BASE_URL, WORKERS, Sidecar, openai_error

TEXT_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.delta",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}


def text(*pieces: str, finish_reason: str = "stop") -> Callable[[RequestPayload], list[ChunkPayload]]:
    """A worker's answer of ``pieces``, one token each."""
    return lambda _: [*(ChunkPayload(text=p, tokens=1) for p in pieces), ChunkPayload(finish_reason=finish_reason)]


def calls(*made: tuple[str, str, list[str]], said: str = "") -> Callable[[RequestPayload], list[ChunkPayload]]:
    """A worker's answer of ``said`` and then each call ``(call_id, name, argument pieces)``, streamed as chat
    tool-call deltas: the first piece names the call, the rest add to its arguments."""
    chunks = [ChunkPayload(text=said, tokens=1)] if said else []
    for index, (call_id, name, pieces) in enumerate(made):
        head = {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
        chunks.append(ChunkPayload(tool_calls=[head], tokens=1))
        chunks += [ChunkPayload(tool_calls=[{"index": index, "function": {"arguments": p}}], tokens=1) for p in pieces]
    return lambda _: [*chunks, ChunkPayload(finish_reason="tool_calls")]


async def events_of(sidecar: Sidecar, **request: Any) -> list[Any]:
    stream = await sidecar.oai.responses.create(model=DEFAULT_MODEL, stream=True, **request)
    return [event async for event in stream]


# ---- whole responses ---------------------------------------------------------------------------------


async def test_a_response_has_its_output_text_usage_and_the_verified_receipt() -> None:
    sidecar = Sidecar(recorded_proxy(WORKERS, answer_with_text("Red", ", green", " and blue.")))
    try:
        response = await sidecar.oai.responses.create(
            model=DEFAULT_MODEL, input="Name three colours.", instructions="Be brief.", max_output_tokens=20
        )
    finally:
        await sidecar.aclose()
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status == "completed" and response.error is None and response.incomplete_details is None
    assert response.output_text == "Red, green and blue."
    message = response.output[0]
    assert message.type == "message" and message.id.startswith("msg_") and message.status == "completed"
    assert message.content[0].type == "output_text" and message.content[0].annotations == []
    assert (response.instructions, response.max_output_tokens, response.model) == ("Be brief.", 20, DEFAULT_MODEL)
    assert response.previous_response_id is None and response.tools == [] and response.tool_choice == "auto"
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (5, 3, 8)
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert response.usage.output_tokens_details.reasoning_tokens == 0
    extra = response.usage.model_extra or {}
    assert extra["workers"] == [WORKERS[0].worker_id] and extra["receipt_ids"][0].startswith("rcpt-")


async def test_an_answer_cut_at_max_output_tokens_is_incomplete() -> None:
    sidecar = Sidecar(recorded_proxy(WORKERS, answer_with_text("Red", ", gre", finish_reason="length")))
    try:
        response = await sidecar.oai.responses.create(model=DEFAULT_MODEL, input="Colours?", max_output_tokens=2)
        events = await events_of(sidecar, input="Colours?", max_output_tokens=2)
    finally:
        await sidecar.aclose()
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete" and response.output_text == "Red, gre"
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"


async def test_function_calls_are_output_items_with_their_call_ids() -> None:
    answer = calls(("call_1", "get_weather", ['{"city":', ' "Paris"}']), said="Let me look.")
    sidecar = Sidecar(recorded_proxy(WORKERS, answer_with(answer, seen=[])))
    try:
        response = await sidecar.oai.responses.create(
            model=DEFAULT_MODEL, input="Weather in Paris?", tools=[WEATHER_TOOL], tool_choice="required"
        )
    finally:
        await sidecar.aclose()
    message, call = response.output
    assert message.type == "message" and response.output_text == "Let me look."
    assert call.type == "function_call" and call.id is not None and call.id.startswith("fc_")
    assert (call.call_id, call.name, call.arguments, call.status) == (
        "call_1", "get_weather", '{"city": "Paris"}', "completed"
    )  # fmt: skip
    assert response.tool_choice == "required"
    assert response.tools[0].type == "function" and response.tools[0].name == "get_weather"


async def test_parse_reads_the_json_answer_into_the_apps_model() -> None:
    class Colour(BaseModel):
        name: str
        hex: str

    sealed: list[RequestPayload] = []
    answer = answer_with(text('{"name": "red", ', '"hex": "#ff0000"}'), seen=sealed)
    sidecar = Sidecar(recorded_proxy(WORKERS, answer))
    try:
        parsed = await sidecar.oai.responses.parse(model=DEFAULT_MODEL, input="A colour as JSON.", text_format=Colour)
    finally:
        await sidecar.aclose()
    assert parsed.output_parsed == Colour(name="red", hex="#ff0000")
    assert sealed[0].openai is not None
    response_format = sealed[0].openai["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["name"] == "Colour" and response_format["json_schema"]["strict"] is True
    assert response_format["json_schema"]["schema"]["required"] == ["name", "hex"]


# ---- what the worker is sealed -----------------------------------------------------------------------


async def test_input_items_are_sealed_as_the_chat_conversation_they_are() -> None:
    sealed: list[RequestPayload] = []
    sidecar = Sidecar(recorded_proxy(WORKERS, answer_with(text("Sunny."), seen=sealed)))
    history: list[Any] = [
        {"role": "developer", "content": "Answer in one word."},
        {"role": "user", "content": [{"type": "input_text", "text": "Weather in "},
                                     {"type": "input_text", "text": "Paris?"}]},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "Checking.", "annotations": []}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}',
         "id": "fc_1", "status": "completed"},
        {"type": "function_call_output", "call_id": "call_1", "output": '{"sky":"clear"}'},
    ]  # fmt: skip
    try:
        response = await sidecar.oai.responses.create(
            model=DEFAULT_MODEL,
            instructions="You are a weather bot.",
            input=history,
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "name": "get_weather"},
            parallel_tool_calls=False,
            temperature=0.2,
            top_p=0.9,
            max_output_tokens=7,
            metadata={"session": "s-1"},
            user="u-1",
            extra_body={"max_coefficient": 5000},
        )
    finally:
        await sidecar.aclose()
    assert response.output_text == "Sunny." and response.metadata == {"session": "s-1"}
    assert response.parallel_tool_calls is False and response.temperature == 0.2
    chat = sealed[0].openai
    assert chat is not None
    assert chat["messages"] == [
        {"role": "system", "content": "You are a weather bot."},
        {"role": "developer", "content": "Answer in one word."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"sky":"clear"}'},
    ]  # fmt: skip
    assert chat["tools"] == [{"type": "function", "function": {k: v for k, v in WEATHER_TOOL.items() if k != "type"}}]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert (chat["parallel_tool_calls"], chat["temperature"], chat["top_p"]) == (False, 0.2, 0.9)
    assert (chat["max_completion_tokens"], chat["user"]) == (7, "u-1")
    assert sealed[0].params.max_tokens == 7
    assert "metadata" not in chat and "max_coefficient" not in chat  # echoed / read by the client, never sealed


async def test_a_function_call_without_text_before_it_starts_an_assistant_message() -> None:
    sealed: list[RequestPayload] = []
    sidecar = Sidecar(recorded_proxy(WORKERS, answer_with(text("Done."), seen=sealed)))
    calls = [
        {"type": "function_call", "call_id": f"call_{i}", "name": "get_weather", "arguments": "{}"} for i in (1, 2)
    ]
    outputs = [{"type": "function_call_output", "call_id": f"call_{i}", "output": "ok"} for i in (1, 2)]
    try:
        await sidecar.oai.responses.create(model=DEFAULT_MODEL, input=[*calls, *outputs])  # type: ignore[list-item]
    finally:
        await sidecar.aclose()
    assert sealed[0].openai is not None
    messages = sealed[0].openai["messages"]
    assert [m["role"] for m in messages] == ["assistant", "tool", "tool"]
    assert messages[0]["content"] is None and [c["id"] for c in messages[0]["tool_calls"]] == ["call_1", "call_2"]


# ---- streams -----------------------------------------------------------------------------------------


async def test_a_stream_names_its_events_in_order_and_ends_with_the_whole_response() -> None:
    sidecar = Sidecar(recorded_proxy(WORKERS, answer_with_text("Red", ", green", " and blue.")))
    try:
        events = await events_of(sidecar, input="Name three colours.")
        async with sidecar.oai.responses.stream(model=DEFAULT_MODEL, input="Name three colours.") as stream:
            final = await stream.get_final_response()
    finally:
        await sidecar.aclose()
    assert [e.type for e in events] == TEXT_EVENTS
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Red, green and blue."
    created, done = events[0].response, events[-1].response
    assert created.id == done.id and created.status == "in_progress" and created.output == []
    assert done.status == "completed" and done.output_text == "Red, green and blue."
    assert done.usage is not None and done.usage.output_tokens == 3
    item_id = events[2].item.id
    assert all(e.item_id == item_id for e in events[3:10] if hasattr(e, "item_id"))
    assert events[9].item.status == "completed" and done.output[0].id == item_id
    assert final.output_text == "Red, green and blue."


async def test_a_streamed_function_call_sends_its_arguments_in_pieces() -> None:
    answer = calls(("call_7", "get_weather", ['{"city":', ' "Oslo"}']))
    sidecar = Sidecar(recorded_proxy(WORKERS, answer_with(answer, seen=[])))
    try:
        events = await events_of(sidecar, input="Weather in Oslo?", tools=[WEATHER_TOOL], tool_choice="required")
    finally:
        await sidecar.aclose()
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    added, done = events[2].item, events[6].item
    assert (added.type, added.call_id, added.name, added.arguments) == ("function_call", "call_7", "get_weather", "")
    assert (done.arguments, done.status) == ('{"city": "Oslo"}', "completed") and done.id == added.id
    assert events[5].arguments == '{"city": "Oslo"}'
    assert events[-1].response.output[0].call_id == "call_7"


async def test_a_failure_before_the_stream_starts_has_its_status() -> None:
    sidecar = Sidecar(recorded_proxy(WORKERS, answer_with_text("ok")))
    try:
        with pytest.raises(openai.NotFoundError) as info:
            await sidecar.oai.responses.create(model="gpt-9", input="Hi.", stream=True)
    finally:
        await sidecar.aclose()
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "model_not_found"


async def test_a_worker_failing_mid_stream_ends_it_with_response_failed() -> None:
    broken = ChunkPayload(tool_calls=[{"index": "first", "function": {}}], tokens=1)
    malformed = answer_with(lambda _: [ChunkPayload(text="Hel", tokens=1), broken], seen=[])
    sidecar = Sidecar(recorded_proxy(WORKERS, malformed))
    try:
        events = await events_of(sidecar, input="Hi.")
    finally:
        await sidecar.aclose()
    assert events[-1].type == "response.failed"
    failed = events[-1].response
    assert failed.status == "failed" and failed.error is not None and failed.error.code == "upstream_failed"
    assert "malformed tool call" in failed.error.message
    assert failed.output[0].content[0].text == "Hel" and failed.output[0].status == "incomplete"


# ---- what is refused, and why --------------------------------------------------------------------------

BASIC = {"model": DEFAULT_MODEL, "input": "Hi."}


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id", "send the whole conversation as input"),
        ({"conversation": "conv_1"}, "conversation", "stateless"),
        ({"store": True}, "store", "store=false"),
        ({"background": True}, "background", "stream instead"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt", "instructions"),
        ({"truncation": "auto"}, "truncation", "disabled"),
        ({"temprature": 0.5}, "temprature", "Extra inputs are not permitted"),
        ({"Temperature": 0.5}, "Temperature", "Extra inputs are not permitted"),
        ({"input": [{"role": "user", "content": "Hi.", "Name": "x"}]}, "input.0.Name", "Extra inputs"),
        ({"tools": [{"type": "web_search"}]}, "tools.0.type", "only function tools"),
        ({"tool_choice": {"type": "file_search"}}, "tool_choice", "not supported"),
        ({"include": ["file_search_call.results"]}, "include", "message.output_text.logprobs"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input.0", "item_reference"),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input.0.content.0",
         "input files"),
        ({"input": [{"type": "function_call", "call_id": "", "name": "f", "arguments": "{}"}]}, "input.0.call_id",
         "at least 1 character"),
        ({"input": []}, "input", "input is empty"),
        ({"reasoning": {"summary": "detailed"}}, "reasoning.summary", "summaries"),
        ({"tool_choice": "required"}, "tool_choice", "needs tools"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema", "Field required"),
    ],
    ids=["previous-response", "conversation", "store", "background", "prompt", "truncation", "unknown-field",
         "unknown-capitalised", "unknown-in-an-item",
         "built-in-tool", "built-in-tool-choice", "include", "item-reference", "input-file", "empty-call-id",
         "empty-input", "reasoning-summary", "tool-choice-without-tools", "schema-missing"],
)  # fmt: skip
async def test_what_cocoon_cannot_do_is_a_400_naming_the_field(extra: dict[str, Any], param: str, words: str) -> None:
    sidecar = Sidecar(recorded_proxy(WORKERS, answer_with_text("never sent")))
    try:
        response = await sidecar.http.post(f"{BASE_URL}/responses", json=BASIC | extra)
    finally:
        await sidecar.aclose()
    assert response.status_code == 400
    error = openai_error(response)
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert words in error["message"]


async def test_previous_response_id_is_refused_through_the_sdk_too() -> None:
    sidecar = Sidecar(recorded_proxy(WORKERS, answer_with_text("never sent")))
    try:
        with pytest.raises(openai.BadRequestError) as info:
            await sidecar.oai.responses.create(model=DEFAULT_MODEL, input="And then?", previous_response_id="resp_1")
    finally:
        await sidecar.aclose()
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "previous_response_id"


async def test_a_whole_stream_is_plain_server_sent_events_with_event_names() -> None:
    sidecar = Sidecar(recorded_proxy(WORKERS, answer_with_text("ok")))
    try:
        response = await sidecar.http.post(f"{BASE_URL}/responses", json=BASIC | {"stream": True})
    finally:
        await sidecar.aclose()
    assert response.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in response.text.split("\n\n") if b]
    for block in blocks:
        name, data = block.split("\n")
        assert name.removeprefix("event: ") == json.loads(data.removeprefix("data: "))["type"]
    assert "[DONE]" not in response.text


async def test_logprobs_asked_by_include_come_back_on_the_output_text() -> None:
    top = {"token": "Blue", "logprob": -1.5, "bytes": None}
    entry = {"token": "Red", "logprob": -0.25, "bytes": [82, 101, 100], "top_logprobs": [top]}
    chunks = [ChunkPayload(text="Red", tokens=1, token_logprobs=[entry]), ChunkPayload(finish_reason="stop")]
    sealed: list[RequestPayload] = []
    sidecar = Sidecar(recorded_proxy(WORKERS, answer_with(lambda _: chunks, seen=sealed)))
    asked: dict[str, Any] = {"input": "A colour?", "include": ["message.output_text.logprobs"], "top_logprobs": 1}
    try:
        response = await sidecar.oai.responses.create(model=DEFAULT_MODEL, **asked)
        events = await events_of(sidecar, **asked)
    finally:
        await sidecar.aclose()
    assert sealed[0].openai is not None
    assert (sealed[0].openai["logprobs"], sealed[0].openai["top_logprobs"]) == (True, 1)
    logprobs = response.output[0].content[0].logprobs
    assert logprobs is not None and (logprobs[0].token, logprobs[0].logprob, logprobs[0].bytes) == (
        "Red",
        -0.25,
        [82, 101, 100],
    )
    assert logprobs[0].top_logprobs[0].token == "Blue" and logprobs[0].top_logprobs[0].bytes == [66, 108, 117, 101]
    delta = next(e for e in events if e.type == "response.output_text.delta")
    assert delta.logprobs[0].token == "Red" and response.top_logprobs == 1


async def test_an_image_goes_to_a_vision_worker_and_elsewhere_is_a_400_naming_input() -> None:
    parts = [{"type": "input_text", "text": "What is this?"}, {"type": "input_image", "image_url": "data:image/png;,"}]
    image = {"role": "user", "content": parts}
    sealed: list[RequestPayload] = []
    seeing = Sidecar(recorded_proxy([FakeWorker(vision=True)], answer_with(text("A dot."), seen=sealed)))
    blind = Sidecar(recorded_proxy(WORKERS, answer_with(text("never sent"), seen=[])))
    try:
        answer = await seeing.oai.responses.create(model=DEFAULT_MODEL, input=[image])
        refused = await blind.http.post(f"{BASE_URL}/responses", json=BASIC | {"input": [image]})
    finally:
        await seeing.aclose()
        await blind.aclose()
    assert answer.output_text == "A dot."
    assert sealed[0].openai is not None
    assert sealed[0].openai["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;,", "detail": "auto"}},
    ]
    assert refused.status_code == 400 and openai_error(refused)["param"] == "input"


async def test_the_sidecars_door_rules_hold_for_responses_too() -> None:
    """The same refusals as chat's: a wrong API key, a foreign web page, a body that is not JSON, a huge prompt."""
    sidecar = Sidecar(recorded_proxy(WORKERS, answer_with(text("never sent"), seen=[])), api_key="sk-right")
    url, key = f"{BASE_URL}/responses", {"authorization": "Bearer sk-right"}
    try:
        unauthorized = await sidecar.http.post(url, json=BASIC)
        foreign = await sidecar.http.post(url, json=BASIC, headers=key | {"origin": "https://evil.example"})
        plain = await sidecar.http.post(url, content=json.dumps(BASIC), headers=key | {"content-type": "text/plain"})
        huge = await sidecar.http.post(url, json=BASIC | {"instructions": "w" * 2**21}, headers=key)
    finally:
        await sidecar.aclose()
    assert [r.status_code for r in (unauthorized, foreign, plain, huge)] == [401, 403, 415, 413]
    assert openai_error(huge)["param"] == "input"


async def test_an_agents_sdk_agent_calls_its_tool_and_answers_whole_and_streamed() -> None:
    """The OpenAI Agents SDK (``openai-agents``, not a dependency: skipped without it) on the Responses API."""
    agents = pytest.importorskip("agents", reason="needs the openai-agents package")
    agents.set_tracing_disabled(True)

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    def weather_then_answer(payload: RequestPayload) -> list[ChunkPayload]:
        assert payload.openai is not None
        if payload.openai["messages"][-1]["role"] == "tool":
            return text("It is ", "sunny.")(payload)
        return calls(("call_9", "get_weather", ['{"city": ', '"Paris"}']))(payload)

    sealed: list[RequestPayload] = []
    sidecar = Sidecar(recorded_proxy(WORKERS, answer_with(weather_then_answer, seen=sealed)))
    model = agents.OpenAIResponsesModel(model=DEFAULT_MODEL, openai_client=sidecar.oai)
    agent = agents.Agent(name="weather", instructions="Be brief.", model=model, tools=[get_weather])
    try:
        result = await agents.Runner.run(agent, "Weather in Paris?")
        streamed = agents.Runner.run_streamed(agent, "Weather in Paris?")
        kinds = [event.type async for event in streamed.stream_events()]
    finally:
        await sidecar.aclose()
    assert result.final_output == streamed.final_output == "It is sunny."
    assert sealed[1].openai is not None
    assert sealed[1].openai["messages"][-1] == {"role": "tool", "tool_call_id": "call_9", "content": "sunny in Paris"}
    assert "raw_response_event" in kinds and "run_item_stream_event" in kinds
