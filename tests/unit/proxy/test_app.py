"""The proxy app in-process (no socket, its own lifespan run here): every HTTP error it answers is the OpenAI
shape with its status, and the directory, models and health read what is connected."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
from starlette.applications import Starlette

from cocoon import __version__
from cocoon.config import ProxySettings
from cocoon.errors import PaymentRequired
from cocoon.protocol import pack
from cocoon.proxy import create_app
from cocoon.proxy.money.mock import MockCashier
from cocoon.proxy.state import ProxyState
from tests.unit.proxy.fakes import MODEL, MODEL_HASH, FakeWorker, request

MAX_REQUEST = 4096


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[Starlette]:
    app = create_app(ProxySettings(data_dir=tmp_path, max_request_bytes=MAX_REQUEST))
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def http(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://proxy.test") as client:
        yield client


def proxy_of(app: Starlette) -> ProxyState:
    state: ProxyState = app.state.proxy
    return state


def connect(app: Starlette, name: str) -> FakeWorker:
    """A worker in the proxy's directory, as if it had registered over the socket."""
    worker = FakeWorker(name)
    proxy_of(app).directory.add(worker.entry)
    return worker


def openai_error(response: httpx.Response, status: int, type_: str, code: str) -> str:
    """The message of ``response``, once it is an OpenAI error body of exactly that status, type and code."""
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert list(body) == ["error"]
    assert set(body["error"]) == {"message", "type", "code", "param"}
    assert (body["error"]["type"], body["error"]["code"]) == (type_, code)
    message: str = body["error"]["message"]
    assert message
    return message


async def test_a_body_that_is_not_msgpack_is_a_400(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/jobs", content=b"\xc1 not msgpack")
    assert "msgpack" in openai_error(response, 400, "invalid_request_error", "invalid_request")


async def test_a_job_request_with_a_bad_field_is_a_400_naming_it(http: httpx.AsyncClient) -> None:
    raw = msgpack.unpackb(pack(request(FakeWorker("w"))), raw=False)
    for bad in (raw | {"max_tokens": -1}, {k: v for k, v in raw.items() if k != "max_tokens"}):
        response = await http.post("/v1/jobs", content=msgpack.packb(bad, use_bin_type=True))
        assert "max_tokens" in openai_error(response, 400, "invalid_request_error", "invalid_request")


async def test_an_unknown_route_is_a_404(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/nowhere")
    assert "/v1/nowhere" in openai_error(response, 404, "invalid_request_error", "not_found")


async def test_a_known_route_with_the_wrong_method_is_a_405(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/jobs")
    assert "GET /v1/jobs" in openai_error(response, 405, "invalid_request_error", "not_found")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/payment"),
        ("POST", "/v1/vouchers"),
        ("POST", "/v1/vouchers/reject"),
        ("GET", "/v1/channels/0:" + "a" * 64),
        ("GET", "/v1/books"),
        ("POST", "/v1/settle"),
    ],
)
async def test_money_routes_on_a_free_proxy_are_a_404_saying_it_is_free(
    http: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await http.request(method, path, content=b"{}")
    assert "this proxy is free" in openai_error(response, 404, "invalid_request_error", "not_found")


async def test_a_body_over_the_size_limit_is_a_413(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/jobs", content=b"\0" * (MAX_REQUEST + 1))
    message = openai_error(response, 413, "invalid_request_error", "request_too_large")
    assert str(MAX_REQUEST) in message


async def test_a_request_the_cashier_refuses_is_a_402_and_reaches_no_worker(
    app: Starlette, http: httpx.AsyncClient
) -> None:
    worker = connect(app, "w")
    proxy_of(app).cashier = MockCashier(refuse=PaymentRequired("channel 0:ab has 0 nanoton free; top up"))
    response = await http.post("/v1/jobs", content=pack(request(worker)))
    assert "top up" in openai_error(response, 402, "insufficient_quota", "insufficient_funds")
    assert worker.sent.empty()


async def test_a_request_sealed_to_no_connected_worker_is_a_503(app: Starlette, http: httpx.AsyncClient) -> None:
    connect(app, "other")
    response = await http.post("/v1/jobs", content=pack(request(FakeWorker("gone"))))
    message = openai_error(response, 503, "service_unavailable", "no_capacity")
    assert "1 connected workers serve 'm'" in message


async def test_the_directory_lists_connected_workers_with_keys_and_scores(
    app: Starlette, http: httpx.AsyncClient
) -> None:
    worker = connect(app, "w")
    response = await http.get("/v1/directory")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "directory" and body["proxy_id"] == proxy_of(app).proxy_id
    [entry] = body["workers"]
    assert entry["worker_id"] == "w" and entry["models"][0]["model"] == MODEL
    assert entry["attestation"]["quote"] == "cQ=="  # bytes travel as base64
    assert set(entry["score"]) >= {"expected_latency_ms", "score_ms", "cached_prefixes"}
    assert entry["reputation"]["factor"] == 1.0 and entry["breaker"]["state"] == "closed"
    assert (await http.get("/v1/directory", params={"model": "other"})).json()["workers"] == []
    assert worker.sent.empty()


async def test_models_lists_what_the_connected_workers_serve(app: Starlette, http: httpx.AsyncClient) -> None:
    assert (await http.get("/v1/models")).json() == {"object": "list", "data": []}
    connect(app, "w1")
    connect(app, "w2")
    body = (await http.get("/v1/models")).json()
    assert body["object"] == "list"
    [model] = body["data"]
    assert model | {"created": 0} == {
        "id": MODEL,
        "object": "model",
        "created": 0,
        "owned_by": "cocoon",
        "model_hash": MODEL_HASH,
        "context_length": 4096,
        "workers": 2,
        "supports_embeddings": False,
    }


async def test_healthz_says_who_the_proxy_is_and_how_many_workers_it_has(
    app: Starlette, http: httpx.AsyncClient
) -> None:
    connect(app, "w")
    response = await http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"ok": True, "proxy_id": proxy_of(app).proxy_id, "version": __version__, "workers": 1}


async def test_readyz_is_503_until_a_worker_connects(app: Starlette, http: httpx.AsyncClient) -> None:
    waiting = await http.get("/readyz")
    assert waiting.status_code == 503 and waiting.json()["reason"] == "no attested worker is connected yet"
    connect(app, "w")
    ready = await http.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {
        "ready": True,
        "proxy_id": proxy_of(app).proxy_id,
        "workers": 1,
    }


async def test_a_replayed_request_id_is_a_409_and_reaches_no_worker(app: Starlette, http: httpx.AsyncClient) -> None:
    job = pack(request(FakeWorker("gone"), request_id="req-once"))
    first = await http.post("/v1/jobs", content=job)
    assert first.status_code == 503  # refused for its own reason, yet its id is spent
    again = await http.post("/v1/jobs", content=job)
    assert "req-once" in openai_error(again, 409, "invalid_request_error", "request_replayed")
