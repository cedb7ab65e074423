"""Hostile bodies get an OpenAI-shaped 4xx naming the field, never a 500: every case is refused by validation
at the edge, before the SDK looks up a worker or seals anything.

Recorded (``fakes.py``): a proxy whose directory lists one attested worker and whose jobs it answers ``ok``,
so a body that got past validation would come back 200, not fail somewhere later.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from cocoon.client import CocoonClient, create_gateway
from cocoon.config import ClientSettings
from cocoon.protocol.openai import ChatCompletionRequest
from tests.unit.client.fakes import MODEL, FakeWorker, answer_with_text, dev_policy, recorded_proxy

WORKERS = [FakeWorker()]
PROMPT = [{"role": "user", "content": "hi"}]
CHAT = {"model": MODEL, "messages": PROMPT}
LONE = "\ud800"  # json.dumps writes it as the escape "\ud800"
HUGE = 2**70


@pytest.fixture
async def sidecar() -> AsyncIterator[httpx.AsyncClient]:
    proxy = httpx.AsyncClient(transport=recorded_proxy(WORKERS, answer_with_text("ok")), base_url="http://proxy.test")
    app = create_gateway(
        ClientSettings(max_prompt_chars=1000), client=CocoonClient("http://proxy.test", dev_policy(), http=proxy)
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://sidecar.test") as http:
        yield http
    await proxy.aclose()


async def post(http: httpx.AsyncClient, path: str, body: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await http.post(path, content=content, headers={"content-type": "application/json"})


def refusal(response: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = body["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    return error


async def test_a_valid_request_gets_through(sidecar: httpx.AsyncClient) -> None:
    response = await post(sidecar, "/v1/chat/completions", CHAT)
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == "ok"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", CHAT | {"messages": [{"role": "user", "content": LONE}]}, "messages.0.content"),
        ("/v1/chat/completions", CHAT | {"messages": [{"role": "user", "content": [{"type": "text", "text": LONE}]}]},
         "messages.0.content.0.text"),
        ("/v1/chat/completions", CHAT | {"model": "gemma" + LONE}, "model"),
        ("/v1/chat/completions", CHAT | {"stop": ["a", LONE]}, "stop.1"),
        ("/v1/chat/completions", CHAT | {"user": LONE}, "user"),
        ("/v1/chat/completions", CHAT | {"tools": [{"type": "function", "function": {"name": LONE}}]},
         "tools.0.function.name"),
        ("/v1/chat/completions", CHAT | {"provider": {"region": LONE}}, "provider.region"),
        ("/v1/chat/completions", CHAT | {"metadata": {LONE: "x"}}, "metadata"),
        ("/v1/completions", {"model": MODEL, "prompt": "a" + LONE}, "prompt"),
        ("/v1/embeddings", {"model": MODEL, "input": ["fine", LONE]}, "input.1"),
    ],
    ids=["content", "content-part", "model", "stop", "user", "tool-name", "region", "unknown-key", "prompt",
         "embedding-input"],
)  # fmt: skip
async def test_a_lone_surrogate_anywhere_is_a_400_naming_its_field(
    sidecar: httpx.AsyncClient, path: str, body: dict[str, Any], param: str
) -> None:
    error = refusal(await post(sidecar, path, body))
    assert (error["code"], error["param"]) == ("invalid_json", param)
    assert "surrogate" in error["message"]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", CHAT | {"max_tokens": HUGE}, "max_tokens"),
        ("/v1/chat/completions", CHAT | {"max_tokens": 2**31}, "max_tokens"),
        ("/v1/chat/completions", CHAT | {"max_completion_tokens": HUGE}, "max_completion_tokens"),
        ("/v1/chat/completions", CHAT | {"seed": HUGE}, "seed"),
        ("/v1/chat/completions", CHAT | {"seed": -HUGE}, "seed"),
        ("/v1/chat/completions", CHAT | {"n": HUGE}, "n"),
        ("/v1/chat/completions", CHAT | {"n": 9}, "n"),
        ("/v1/chat/completions", CHAT | {"max_coefficient": HUGE}, "max_coefficient"),
        ("/v1/chat/completions", CHAT | {"provider": {"max_price": HUGE}}, "provider.max_price"),
        ("/v1/chat/completions", CHAT | {"provider": {"max_price": 1e300}}, "provider.max_price"),
        ("/v1/chat/completions", CHAT | {"logprobs": HUGE}, "logprobs"),
        ("/v1/completions", {"model": MODEL, "prompt": "a", "max_tokens": HUGE}, "max_tokens"),
        ("/v1/completions", {"model": MODEL, "prompt": "a", "seed": HUGE}, "seed"),
    ],
    ids=["max_tokens", "max_tokens-32bit", "max_completion_tokens", "seed", "negative-seed", "n", "n-9",
         "max_coefficient", "max_price", "max_price-float", "logprobs", "completion-max_tokens", "completion-seed"],
)  # fmt: skip
async def test_a_number_past_its_bounds_is_a_400_naming_it(
    sidecar: httpx.AsyncClient, path: str, body: dict[str, Any], param: str
) -> None:
    error = refusal(await post(sidecar, path, body))
    assert (error["code"], error["param"]) == ("invalid_request", param)


async def test_the_largest_seed_and_max_tokens_still_work(sidecar: httpx.AsyncClient) -> None:
    response = await post(sidecar, "/v1/chat/completions", CHAT | {"seed": 2**63 - 1, "max_tokens": 2**31 - 1})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "m", "messages": [], "temperature": NaN}',
        b'{"model": "m", "messages": [], "temperature": -Infinity}',
        b'{"model": "m", "messages": [], "provider": {"max_price": Infinity}}',
        b'{"model": "m", "messages": [], "timeout": 1e999}',
        b'{"model": "m", "messages": [], "seed": ' + b"9" * 5000 + b"}",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        b'{"model": "\xff"}',
    ],
    ids=["nan", "minus-infinity", "infinity-in-object", "overflowing-float", "5000-digits", "deep-arrays",
         "deep-objects", "not-utf8"],
)  # fmt: skip
async def test_what_strict_json_does_not_allow_is_a_400_invalid_json(sidecar: httpx.AsyncClient, body: bytes) -> None:
    assert refusal(await post(sidecar, "/v1/chat/completions", body))["code"] == "invalid_json"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", [CHAT], None),
        ("/v1/chat/completions", {"model": 7, "messages": PROMPT}, "model"),
        ("/v1/chat/completions", CHAT | {"messages": "hi"}, "messages"),
        ("/v1/chat/completions", CHAT | {"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ("/v1/chat/completions", CHAT | {"stream": "maybe"}, "stream"),
        ("/v1/chat/completions", CHAT | {"stream_options": []}, "stream_options"),
        ("/v1/chat/completions", CHAT | {"stop": [1]}, "stop.str"),
        ("/v1/chat/completions", CHAT | {"provider": {"sort": {}}}, "provider.sort"),
        ("/v1/chat/completions", CHAT | {"model": "m" * 257}, "model"),
        ("/v1/completions", {"model": MODEL, "prompt": {"text": "a"}}, "prompt.str"),
        ("/v1/embeddings", {"model": MODEL, "input": [["a"]]}, "input.str"),
        ("/v1/embeddings", {"model": MODEL, "input": "a", "encoding_format": 3}, "encoding_format"),
    ],
    ids=["array-body", "model-number", "messages-string", "unknown-role", "stream-string", "stream-options-list",
         "stop-number", "sort-object", "model-too-long", "prompt-object", "nested-input", "encoding-number"],
)  # fmt: skip
async def test_a_wrong_type_is_a_400_naming_the_field(
    sidecar: httpx.AsyncClient, path: str, body: Any, param: str | None
) -> None:
    error = refusal(await post(sidecar, path, body))
    assert (error["code"], error["param"]) == ("invalid_request", param)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", CHAT | {"messages": [{"role": "user", "content": "w" * 600}] * 2}, "messages"),
        ("/v1/completions", {"model": MODEL, "prompt": "w" * 1001}, "prompt"),
        ("/v1/embeddings", {"model": MODEL, "input": ["w" * 500, "w" * 501]}, "input"),
    ],
    ids=["chat", "completion", "embeddings"],
)
async def test_a_prompt_over_max_prompt_chars_is_a_413_before_any_work(
    sidecar: httpx.AsyncClient, path: str, body: dict[str, Any], param: str
) -> None:
    error = refusal(await post(sidecar, path, body), status=413)
    assert (error["code"], error["param"]) == ("request_too_large", param)
    assert "max_prompt_chars" in error["message"]


async def test_a_negative_content_length_is_a_400(sidecar: httpx.AsyncClient) -> None:
    request = sidecar.build_request(
        "POST", "/v1/chat/completions", content=b"{}", headers={"content-type": "application/json"}
    )
    request.headers["content-length"] = "-5"
    assert refusal(await sidecar.send(request))["code"] == "invalid_request"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"frequency_penalty": 99}, "frequency_penalty"),
        ({"presence_penalty": -2.5}, "presence_penalty"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 200}}, "logit_bias"),
        ({"logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias"),
    ],
    ids=["frequency", "presence", "bias-key", "bias-value", "bias-size"],
)
async def test_penalties_and_logit_bias_outside_openais_ranges_are_refused(
    sidecar: httpx.AsyncClient, extra: dict[str, Any], param: str
) -> None:
    error = refusal(await post(sidecar, "/v1/chat/completions", CHAT | extra))
    assert error["param"] == param


async def test_penalties_and_logit_bias_are_sealed_to_the_worker(sidecar: httpx.AsyncClient) -> None:
    body = CHAT | {"frequency_penalty": 0.5, "presence_penalty": -1, "logit_bias": {"42": -100, "7": 2.5}}
    assert (await post(sidecar, "/v1/chat/completions", body)).status_code == 200
    params = ChatCompletionRequest.model_validate(body).sealed_params(16)
    assert (params.frequency_penalty, params.presence_penalty) == (0.5, -1.0)
    assert params.logit_bias == [(42, -100.0), (7, 2.5)]
