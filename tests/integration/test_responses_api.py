"""The sidecar's Responses API on a real network: the official ``openai`` client's ``responses`` calls answered by
SmolLM2-135M-Instruct on a llama.cpp worker, sealed end to end. Needs the smollm extra; skipped without it.

The shapes and refusals that need no model are specified in-process, in ``tests/unit/client/test_responses.py``.
Structured output and function calling are held to their schemas by the embedded engine's grammars.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from cocoon.engines.bundled import SMOLLM2_INSTALL, SMOLLM2_MODEL, smollm2_installed
from cocoon.local import LocalNetwork
from tests.helpers.network import start_network

pytestmark = pytest.mark.skipif(not smollm2_installed(), reason=f"needs SmolLM2: {SMOLLM2_INSTALL}")

# Strict: once the llama.cpp engine constrains tools and response_format with grammars, these pass, the XPASS
# fails the run, and this marker is to be taken off them.
QUESTION = "What is the capital city of Japan?"
GREEDY: dict[str, Any] = {"model": SMOLLM2_MODEL, "temperature": 0}
WEATHER_TOOL: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory, bundled_model_path: Path) -> Iterator[LocalNetwork]:
    net = start_network(tmp_path_factory.mktemp("responses"), workers=1, model_path=bundled_model_path, smollm2=True)
    yield net
    net.stop()


@pytest.fixture
def oai(network: LocalNetwork) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=network.base_url, api_key="unused", max_retries=0, timeout=120)
    yield client
    client.close()


def test_a_response_answers_the_input_under_the_instructions(oai: openai.OpenAI) -> None:
    response = oai.responses.create(
        **GREEDY, instructions="You are a geography teacher. Answer briefly.", input=QUESTION, max_output_tokens=24
    )
    assert response.object == "response" and response.model == SMOLLM2_MODEL
    assert response.status in ("completed", "incomplete")
    assert "Tokyo" in response.output_text
    assert response.usage is not None
    assert response.usage.input_tokens > 10 and 0 < response.usage.output_tokens <= 24
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert (response.usage.model_extra or {})["receipt_ids"][0].startswith("rcpt-")


def test_a_streamed_response_sends_named_events_and_agrees_with_the_whole_one(oai: openai.OpenAI) -> None:
    whole = oai.responses.create(**GREEDY, input=QUESTION, max_output_tokens=12)
    events = list(oai.responses.create(**GREEDY, input=QUESTION, max_output_tokens=12, stream=True))
    types = [e.type for e in events]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[4 : 4 + len(deltas)] == ["response.output_text.delta"] * len(deltas) and deltas
    assert types[4 + len(deltas) :] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        f"response.{whole.status}",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(d.delta for d in deltas) == whole.output_text == events[-1].response.output_text


def test_an_answer_cut_at_max_output_tokens_is_incomplete(oai: openai.OpenAI) -> None:
    response = oai.responses.create(**GREEDY, input="Write a long story about a dragon.", max_output_tokens=3)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None and response.usage.output_tokens == 3


def test_a_conversation_goes_on_when_the_app_sends_it_back_whole(oai: openai.OpenAI) -> None:
    first = oai.responses.create(**GREEDY, input=QUESTION, max_output_tokens=24)
    history: Any = [
        {"role": "user", "content": QUESTION},
        *[item.model_dump(exclude_none=True) for item in first.output],
        {"role": "user", "content": "What is the capital city of France?"},
    ]
    second = oai.responses.create(**GREEDY, input=history, max_output_tokens=24)
    assert "Paris" in second.output_text
    assert second.usage is not None and first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    with pytest.raises(openai.BadRequestError) as info:
        oai.responses.create(**GREEDY, input="And of France?", previous_response_id=first.id)
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "previous_response_id"


def test_parse_fills_the_apps_model_from_a_json_schema_answer(oai: openai.OpenAI) -> None:
    class City(BaseModel):
        name: str
        country: str

    parsed = oai.responses.parse(
        **GREEDY, input="Name the capital city of Japan and its country.", text_format=City, max_output_tokens=48
    )
    assert isinstance(parsed.output_parsed, City)
    assert parsed.output_parsed.name and parsed.output_parsed.country


def test_a_required_function_tool_is_called_with_arguments_matching_its_schema(oai: openai.OpenAI) -> None:
    response = oai.responses.create(
        **GREEDY,
        input="What is the weather like in Paris today?",
        tools=[WEATHER_TOOL],
        tool_choice="required",
        max_output_tokens=48,
    )
    calls = [item for item in response.output if item.type == "function_call"]
    assert calls, response.output
    call = calls[0]
    assert call.name == "get_weather" and call.call_id and call.id is not None and call.id.startswith("fc_")
    arguments = json.loads(call.arguments)
    assert set(arguments) == {"city"} and isinstance(arguments["city"], str)
