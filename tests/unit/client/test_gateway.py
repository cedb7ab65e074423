"""The sidecar's HTTP rules, in-process: every error it emits has its status and OpenAI's error body.

Real: the sidecar app and SDK, the proxy app (``cocoon.proxy.create_app``, its lifespan run here) for the jobs
it is sent, the official ``openai`` client, attestation, sealing and receipts. Recorded (``fakes.py``): the
proxy's ``GET /v1/directory`` listing attested workers (real simulated quotes) that no proxy connects, and,
where a test says so, a proxy's whole answer to ``POST /v1/jobs`` (a 402, or a worker's sealed reply).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from starlette.applications import Starlette

from cocoon.client import CocoonClient, create_gateway
from cocoon.config import ClientSettings, ProxySettings
from cocoon.engines.config import DEFAULT_MODEL
from cocoon.errors import PaymentRequired
from cocoon.proxy import create_app
from tests.unit.client.fakes import FakeWorker, answer_with_text, dev_policy, recorded_proxy

PROMPT = [{"role": "user", "content": "Name three colours."}]
BASE_URL = "http://sidecar.test/v1"
WORKERS = [FakeWorker(price_coefficient=1000), FakeWorker(price_coefficient=1200)]


class RecordedDirectory(httpx.AsyncBaseTransport):
    """The proxy as the SDK reaches it: the directory from a recording, every other route from the real app."""

    def __init__(self, proxy_app: Starlette, workers: list[FakeWorker]) -> None:
        self.directory = recorded_proxy(workers)
        self.proxy = httpx.ASGITransport(proxy_app)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/directory":
            return await self.directory.handle_async_request(request)
        return await self.proxy.handle_async_request(request)


class Sidecar:
    """A sidecar app and the two ways apps call it: raw HTTP and the official ``openai`` client."""

    def __init__(self, transport: httpx.AsyncBaseTransport, **settings: Any) -> None:
        proxy = httpx.AsyncClient(transport=transport, base_url="http://proxy.test")
        sdk = CocoonClient("http://proxy.test", dev_policy(), http=proxy)
        self.app = create_gateway(ClientSettings(**settings), client=sdk)
        self.base_url = BASE_URL
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(self.app))
        self.oai = openai.AsyncOpenAI(
            base_url=BASE_URL,
            api_key=settings.get("api_key") or "unused",
            max_retries=0,
            http_client=httpx.AsyncClient(transport=httpx.ASGITransport(self.app)),
        )

    async def aclose(self) -> None:
        await self.oai.close()
        await self.http.aclose()


@pytest.fixture
async def proxy_app(tmp_path: Path) -> AsyncIterator[Starlette]:
    """The real proxy app, started (store, sweeper) and stopped by its own lifespan; no worker connects."""
    app = create_app(ProxySettings(data_dir=tmp_path / "proxy"))
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def network(proxy_app: Starlette) -> AsyncIterator[Sidecar]:
    """A sidecar whose directory lists ``WORKERS`` (recorded) and whose jobs go to the real proxy."""
    sidecar = Sidecar(RecordedDirectory(proxy_app, WORKERS))
    yield sidecar
    await sidecar.aclose()


@pytest.fixture
def oai(network: Sidecar) -> openai.AsyncOpenAI:
    return network.oai


def openai_error(response: httpx.Response) -> dict[str, Any]:
    """The error object of an OpenAI error body, once the body is known to have exactly OpenAI's keys."""
    body = response.json()
    assert list(body) == ["error"]
    assert set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = body["error"]
    return error


# ---- the error tests that once needed a llama.cpp network ------------------------------------------


async def test_unknown_model_is_a_404_naming_the_available_ones(oai: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await oai.chat.completions.create(model="gpt-9", messages=PROMPT)
    body = info.value.body
    assert isinstance(body, dict)
    assert body["code"] == "model_not_found"
    assert DEFAULT_MODEL in body["message"]


async def test_bad_json_is_a_400_in_openai_shape(network: Sidecar) -> None:
    response = await network.http.post(
        f"{network.base_url}/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_json"


async def test_invalid_fields_are_a_400_naming_the_field(oai: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await oai.chat.completions.create(model=DEFAULT_MODEL, messages=PROMPT, temperature=5)
    assert "temperature" in str(info.value)
    with pytest.raises(openai.BadRequestError) as info:
        await oai.chat.completions.create(model=DEFAULT_MODEL, messages=PROMPT, n=9)
    assert info.value.body["param"] == "n"  # type: ignore[index]
    # A field OpenAI does not define is refused by name, never silently dropped.
    with pytest.raises(openai.BadRequestError) as info:
        await oai.chat.completions.create(model=DEFAULT_MODEL, messages=PROMPT, extra_body={"temprature": 0.5})
    assert info.value.body["param"] == "temprature"  # type: ignore[index]
    assert "Extra inputs are not permitted" in str(info.value) or "temprature" in str(info.value)


async def test_oversize_body_is_a_413(network: Sidecar) -> None:
    huge = "word " * 1_000_000
    response = await network.http.post(
        f"{network.base_url}/chat/completions",
        json={"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": huge}]},
        timeout=30,
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


async def test_price_cap_below_every_worker_is_a_503_no_capacity(oai: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        await oai.chat.completions.create(
            model=DEFAULT_MODEL,
            messages=PROMPT,
            max_tokens=4,
            extra_body={"max_coefficient": 10},
        )
    assert info.value.status_code == 503
    assert isinstance(info.value.body, dict)
    assert info.value.body["code"] == "no_capacity"


async def test_unknown_route_is_an_openai_shaped_404(network: Sidecar) -> None:
    response = await network.http.get(f"{network.base_url}/assistants", timeout=10)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


# ---- every error shape, in full ---------------------------------------------------------------------

CHAT = {"model": DEFAULT_MODEL, "messages": PROMPT}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "type_", "code", "param"),
    [
        ("POST", "/chat/completions", b"{not json", 400, "invalid_request_error", "invalid_json", None),
        ("POST", "/chat/completions", CHAT | {"top_p": 0}, 400, "invalid_request_error", "invalid_request", "top_p"),
        ("POST", "/embeddings", {"model": DEFAULT_MODEL, "input": ["a", ""]}, 400, "invalid_request_error",
         "invalid_request", "input"),
        ("POST", "/chat/completions", CHAT | {"model": "gpt-9"}, 404, "invalid_request_error", "model_not_found",
         "model"),
        ("GET", "/models/gpt-9", None, 404, "invalid_request_error", "model_not_found", "model"),
        ("GET", "/assistants", None, 404, "invalid_request_error", "not_found", None),
        ("DELETE", "/chat/completions", None, 405, "invalid_request_error", "not_found", None),
        ("POST", "/chat/completions", {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "w" * 2**22}]},
         413, "invalid_request_error", "request_too_large", None),
        ("POST", "/chat/completions", CHAT | {"max_coefficient": 900}, 503, "service_unavailable", "no_capacity",
         None),
    ],
    ids=["bad-json", "invalid-field", "empty-input", "unknown-model", "unknown-model-detail", "unknown-route",
         "wrong-method", "oversize", "price-cap"],
)  # fmt: skip
async def test_every_error_has_its_status_and_openai_body(
    network: Sidecar, method: str, path: str, body: Any, status: int, type_: str, code: str, param: str | None
) -> None:
    json_type = {"content-type": "application/json"}
    content = {"content": body, "headers": json_type} if isinstance(body, bytes) else {"json": body} if body else {}
    response = await network.http.request(method, f"{network.base_url}{path}", **content)
    assert response.status_code == status
    error = openai_error(response)
    assert (error["type"], error["code"], error["param"]) == (type_, code, param)
    assert error["message"]


@pytest.mark.parametrize(
    ("headers", "body", "status", "code"),
    [
        ({"content-type": "text/plain"}, json.dumps(CHAT).encode(), 415, "unsupported_media_type"),
        ({"content-type": "application/x-www-form-urlencoded"}, b"a=b", 415, "unsupported_media_type"),
        ({"content-type": "application/json", "origin": "https://evil.example"}, json.dumps(CHAT).encode(), 403,
         "forbidden"),
        ({"content-type": "application/json"}, b"[" * 50_000 + b"]" * 50_000, 400, "invalid_json"),
    ],
    ids=["text-plain", "form", "foreign-origin", "nested-json"],
)  # fmt: skip
async def test_what_a_web_page_or_a_hostile_body_sends_is_refused(
    network: Sidecar, headers: dict[str, str], body: bytes, status: int, code: str
) -> None:
    response = await network.http.post(f"{network.base_url}/chat/completions", content=body, headers=headers)
    assert response.status_code == status
    assert openai_error(response)["code"] == code


async def test_an_allowed_origin_may_call_the_sidecar(proxy_app: Starlette) -> None:
    sidecar = Sidecar(RecordedDirectory(proxy_app, WORKERS), allowed_origins=["http://localhost:3000"])
    try:
        response = await sidecar.http.post(
            f"{sidecar.base_url}/chat/completions",
            json=CHAT | {"model": "gpt-9"},
            headers={"origin": "http://localhost:3000"},
        )
    finally:
        await sidecar.aclose()
    assert openai_error(response)["code"] == "model_not_found"  # past the origin check, to the model lookup


async def test_a_503_names_the_workers_the_price_cap_left_out(network: Sidecar) -> None:
    response = await network.http.post(f"{BASE_URL}/chat/completions", json=CHAT | {"max_coefficient": 900})
    assert "2 workers serve 'gemma-3-270m' but none within max_price=900" in openai_error(response)["message"]


async def test_a_wrong_api_key_is_a_401(proxy_app: Starlette) -> None:
    sidecar = Sidecar(RecordedDirectory(proxy_app, WORKERS), api_key="sk-right")
    try:
        response = await sidecar.http.post(
            f"{BASE_URL}/chat/completions", json=CHAT, headers={"authorization": "Bearer sk-wrong"}
        )
        missing = await sidecar.http.post(f"{BASE_URL}/chat/completions", json=CHAT)
    finally:
        await sidecar.aclose()
    for answer in (response, missing):
        assert answer.status_code == 401
        error = openai_error(answer)
        assert (error["type"], error["code"], error["param"]) == ("authentication_error", "invalid_api_key", None)
        assert "Authorization: Bearer" in error["message"]


async def test_the_proxys_own_refusal_passes_through_with_its_status(network: Sidecar) -> None:
    """The real proxy knows none of the recorded workers: it refuses the job, and the app sees its words."""
    response = await network.http.post(f"{BASE_URL}/chat/completions", json=CHAT)
    assert response.status_code == 503
    error = openai_error(response)
    assert (error["type"], error["code"]) == ("service_unavailable", "no_capacity")
    assert "this request was sealed to" in error["message"]


async def test_a_proxy_answering_402_is_passed_through() -> None:
    """Recorded: a paid proxy's 402 to ``POST /v1/jobs`` (a real one needs a chain to bill on)."""
    refusal = PaymentRequired("channel 0:abc has too little deposit; top it up with `cocoon client deposit`")

    def no_funds(job: Any, workers: Any) -> httpx.Response:
        return httpx.Response(402, json=refusal.to_openai())

    sidecar = Sidecar(recorded_proxy(WORKERS, no_funds))
    try:
        response = await sidecar.http.post(f"{BASE_URL}/chat/completions", json=CHAT)
        with pytest.raises(openai.APIStatusError) as info:
            await sidecar.oai.chat.completions.create(model=DEFAULT_MODEL, messages=PROMPT)
    finally:
        await sidecar.aclose()
    assert response.status_code == 402
    assert openai_error(response) == refusal.to_openai()["error"]
    assert info.value.status_code == 402


# ---- and the answers, in the shape the openai client reads --------------------------------------------


async def test_a_chat_completion_comes_back_with_usage_and_the_verified_receipt() -> None:
    """Recorded: the proxy's relay of a worker's sealed reply (the worker's keys, seal and signature are real)."""
    sidecar = Sidecar(recorded_proxy(WORKERS, answer_with_text("Red", ", green", " and blue.")))
    try:
        reply = await sidecar.oai.chat.completions.create(model=DEFAULT_MODEL, messages=PROMPT)
        stream = await sidecar.oai.chat.completions.create(
            model=DEFAULT_MODEL,
            messages=PROMPT,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    finally:
        await sidecar.aclose()
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.content == "Red, green and blue."
    assert reply.usage is not None and reply.usage.completion_tokens == 3
    assert (reply.usage.model_extra or {})["workers"] == [WORKERS[0].worker_id]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Red, green and blue."
    assert chunks[-1].choices == [] and chunks[-1].usage is not None


async def test_readyz_says_whether_any_attested_worker_can_serve() -> None:
    ready = Sidecar(recorded_proxy(WORKERS))
    unreachable = Sidecar(recorded_proxy([]))
    try:
        yes = await ready.http.get("http://sidecar.test/readyz")
        no = await unreachable.http.get("http://sidecar.test/readyz")
    finally:
        await ready.aclose()
        await unreachable.aclose()
    assert yes.status_code == 200 and {k: yes.json()[k] for k in ("ready", "workers")} == {"ready": True, "workers": 2}
    assert no.status_code == 503 and "no attested worker" in no.json()["reason"]
    assert [p["url"] for p in yes.json()["proxies"]] == ["http://proxy.test"]  # which proxies it holds
