"""What every sidecar response carries, in-process: its ``x-request-id`` (errors and streams too), CORS headers
for allowed web origins only, and ``usage: null`` on the chunks of a stream that will end with usage.

Recorded (``fakes.py``): a proxy whose directory lists one attested worker and whose jobs it answers.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from cocoon.client import CocoonClient, create_gateway
from cocoon.config import ClientSettings
from tests.unit.client.fakes import MODEL, FakeWorker, answer_with_text, dev_policy, recorded_proxy

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Name three colours."}]}
PAGE = "http://localhost:3000"


def sidecar(**settings: Any) -> httpx.AsyncClient:
    proxy = httpx.AsyncClient(
        transport=recorded_proxy([FakeWorker()], answer_with_text("Red", ", green")), base_url="http://proxy.test"
    )
    app = create_gateway(ClientSettings(**settings), client=CocoonClient("http://proxy.test", dev_policy(), http=proxy))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://sidecar.test")


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with sidecar() as client:
        yield client


@pytest.fixture
async def browser_app() -> AsyncIterator[httpx.AsyncClient]:
    async with sidecar(allowed_origins=[PAGE]) as client:
        yield client


def sse_events(response: httpx.Response) -> list[dict[str, Any]]:
    lines = [line.removeprefix("data: ") for line in response.text.split("\n\n") if line]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


# ---- x-request-id ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/chat/completions", CHAT),
        ("POST", "/v1/chat/completions", CHAT | {"stream": True}),
        ("POST", "/v1/chat/completions", CHAT | {"temperature": 9}),
        ("POST", "/v1/chat/completions", CHAT | {"model": "gpt-9"}),
        ("GET", "/v1/nowhere", None),
        ("GET", "/healthz", None),
    ],
    ids=["answer", "stream", "400", "404", "unknown-route", "healthz"],
)
async def test_every_response_echoes_the_callers_request_id(
    http: httpx.AsyncClient, method: str, path: str, body: Any
) -> None:
    response = await http.request(method, path, json=body, headers={"x-request-id": "app-7f3a:42"})
    assert response.headers["x-request-id"] == "app-7f3a:42"


@pytest.mark.parametrize("given", [None, "", "x" * 129, "two words", b"caf\xe9", "a;b", "<script>"])
async def test_a_missing_or_unsafe_request_id_is_replaced_by_a_fresh_one(
    http: httpx.AsyncClient, given: str | bytes | None
) -> None:
    headers = {} if given is None else {"x-request-id": given}
    first = await http.post("/v1/chat/completions", json=CHAT | {"n": 2}, headers=headers)
    second = await http.post("/v1/chat/completions", json=CHAT | {"n": 2}, headers=headers)
    ids = {first.headers["x-request-id"], second.headers["x-request-id"]}
    assert len(ids) == 2 and all(i.startswith("req_") and len(i) <= 128 for i in ids)


async def test_a_request_id_of_128_characters_is_kept(http: httpx.AsyncClient) -> None:
    given = "r" * 128
    response = await http.get("/healthz", headers={"x-request-id": given})
    assert response.headers["x-request-id"] == given


# ---- CORS -------------------------------------------------------------------------------------------

PREFLIGHT = {
    "origin": PAGE,
    "access-control-request-method": "POST",
    "access-control-request-headers": "authorization, content-type, x-stainless-lang",
}


async def test_an_allowed_pages_preflight_is_answered_with_what_it_may_send(browser_app: httpx.AsyncClient) -> None:
    response = await browser_app.options("/v1/chat/completions", headers=PREFLIGHT)
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == PAGE
    assert "POST" in response.headers["access-control-allow-methods"]
    assert response.headers["access-control-allow-headers"] == "authorization, content-type, x-stainless-lang"
    assert "origin" in response.headers["vary"].lower()
    assert response.headers["x-request-id"]


async def test_an_allowed_page_may_read_answers_errors_and_streams(browser_app: httpx.AsyncClient) -> None:
    headers = {"origin": PAGE}
    for body, status in ((CHAT, 200), (CHAT | {"stream": True}, 200), (CHAT | {"model": "gpt-9"}, 404)):
        response = await browser_app.post("/v1/chat/completions", json=body, headers=headers)
        assert response.status_code == status
        assert response.headers["access-control-allow-origin"] == PAGE
        assert "x-request-id" in response.headers["access-control-expose-headers"]


async def test_a_foreign_page_gets_no_cors_headers_and_is_refused(browser_app: httpx.AsyncClient) -> None:
    foreign = PREFLIGHT | {"origin": "https://evil.example"}
    preflight = await browser_app.options("/v1/chat/completions", headers=foreign)
    post = await browser_app.post("/v1/chat/completions", json=CHAT, headers={"origin": "https://evil.example"})
    assert preflight.status_code == 405 and post.status_code == 403
    for response in (preflight, post):
        assert "access-control-allow-origin" not in response.headers
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


async def test_cors_is_off_by_default(http: httpx.AsyncClient) -> None:
    response = await http.options("/v1/chat/completions", headers=PREFLIGHT)
    assert response.status_code == 405
    assert not any(h.startswith("access-control-") for h in response.headers)


# ---- usage in streams ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_a_stream_asked_to_include_usage_writes_usage_null_on_every_chunk_but_the_last(
    http: httpx.AsyncClient, path: str
) -> None:
    body = {"model": MODEL, "stream": True, "stream_options": {"include_usage": True}}
    body |= {"messages": CHAT["messages"]} if "chat" in path else {"prompt": "Red"}
    events = sse_events(await http.post(path, json=body))
    assert len(events) >= 3
    assert all("usage" in e and e["usage"] is None for e in events[:-1])
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 2


async def test_a_stream_not_asked_for_usage_has_no_usage_key(http: httpx.AsyncClient) -> None:
    events = sse_events(await http.post("/v1/chat/completions", json=CHAT | {"stream": True}))
    assert events and not any("usage" in e for e in events)
