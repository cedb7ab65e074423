"""The sidecar's API keys at its HTTP edge, in-process: once a key exists every OpenAI endpoint needs one; a key
is refused for other models (403), past its rpm (429 with Retry-After), past its budget (402, the job never
posted), expired (403) or revoked (401); what a request paid is what its key spent; and a sidecar listening
beyond loopback without a key does not start.

Real: the sidecar app, its key store (SQLite), the SDK, sealing and receipts. Recorded (``fakes.py``): the
proxy's directory and its relay of a worker's answer; a payer that prices receipts as a paid proxy's would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from cocoon.chain.pricing import Cost, Prices, cost_of
from cocoon.client import CocoonClient, create_gateway
from cocoon.client.keys import KeyStore
from cocoon.config import ClientSettings
from cocoon.errors import ConfigError
from cocoon.protocol import JobRequest, Receipt
from cocoon.protocol.payload import RequestPayload
from cocoon.store import utcnow
from tests.unit.client.fakes import MODEL, FakeWorker, answer_with_text, dev_policy, recorded_proxy

WORKERS = [FakeWorker(price_coefficient=1000), FakeWorker(price_coefficient=1500)]
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Name three colours."}], "max_tokens": 8}
PRICES = Prices(prompt=10_000_000, cached=1_000_000, completion=20_000_000)  # nanoton per million tokens
SIDECAR = "http://sidecar.test"


class PricedPayer:
    """A ``ChannelPayer`` of a paid proxy that prices each receipt as the real one does and writes down what
    it paid (in nanoton)."""

    max_coefficient = 4000
    enabled = True

    def __init__(self) -> None:
        self.paid: list[int] = []

    async def auth(self, request_id: str) -> None:
        return None

    async def prices(self, model: str) -> Prices:
        return PRICES

    async def pay(self, verified: Sequence[Receipt], coefficients: Mapping[str, int]) -> Cost:
        cost = Cost()
        for r in verified:
            cost += cost_of(r.prompt_tokens, r.cached_tokens, r.completion_tokens, PRICES, coefficients[r.worker_id])
        self.paid.append(cost.total)
        return cost

    async def reject(self, receipt_id: str, reason: str) -> None:
        return None

    def finished(self, request_id: str) -> None:
        return None


class Sidecar:
    """A sidecar whose proxy is recorded (``posted`` counts the jobs it got) keeping its keys in ``keys``."""

    def __init__(self, tmp_path: Path, *, payer: PricedPayer | None = None, **settings: Any) -> None:
        self.posted: list[str] = []
        self.sealed: list[RequestPayload] = []  # what the worker each job went to opened
        answer = answer_with_text("Red", ", green", " and blue.")

        def counted(job: JobRequest, workers: Sequence[FakeWorker]) -> httpx.Response:
            self.posted.append(job.request_id)
            self.sealed.append(next(w for w in workers if w.worker_id == job.keys[0].worker_id).take(job)[1])
            return answer(job, workers)

        proxy = httpx.AsyncClient(transport=recorded_proxy(WORKERS, counted), base_url="http://proxy.test")
        sdk = CocoonClient("http://proxy.test", dev_policy(), http=proxy, payer=payer)  # type: ignore[arg-type]
        self.settings = ClientSettings(data_dir=tmp_path / "sidecar", **settings)
        self.keys = KeyStore.for_settings(self.settings)
        self.app = create_gateway(self.settings, client=sdk, keys=KeyStore.for_settings(self.settings))
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(self.app), base_url=SIDECAR)

    def oai(self, key: str) -> openai.AsyncOpenAI:
        http = httpx.AsyncClient(transport=httpx.ASGITransport(self.app))
        return openai.AsyncOpenAI(base_url=f"{SIDECAR}/v1", api_key=key, max_retries=0, http_client=http)

    async def chat(self, key: str | None, body: dict[str, Any] = CHAT) -> httpx.Response:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return await self.http.post("/v1/chat/completions", json=body, headers=headers)

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.keys.close()
        await self.app.state.keys.store.close()


@pytest.fixture
async def sidecar(tmp_path: Path) -> AsyncIterator[Sidecar]:
    side = Sidecar(tmp_path)
    yield side
    await side.aclose()


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = body["error"]
    return error


async def test_without_keys_the_sidecar_is_open_and_keeps_nothing_on_disk(sidecar: Sidecar, tmp_path: Path) -> None:
    assert (await sidecar.chat(None)).status_code == 200
    assert (await sidecar.http.get("/v1/models")).json()["data"]
    assert not (tmp_path / "sidecar").exists()


async def test_readyz_stays_open_but_names_the_proxies_only_to_a_caller_with_a_key(sidecar: Sidecar) -> None:
    assert [p["url"] for p in (await sidecar.http.get("/readyz")).json()["proxies"]] == ["http://proxy.test"]
    _, secret = await sidecar.keys.create("app", 10**9)
    anyone = await sidecar.http.get("/readyz")
    assert anyone.status_code == 200 and anyone.json()["ready"] is True
    assert anyone.json()["proxies"] and all("url" not in p for p in anyone.json()["proxies"])
    wrong = await sidecar.http.get("/readyz", headers={"authorization": "Bearer ck-" + "A" * 43})
    assert all("url" not in p for p in wrong.json()["proxies"])
    owner = await sidecar.http.get("/readyz", headers={"authorization": f"Bearer {secret}"})
    assert [p["url"] for p in owner.json()["proxies"]] == ["http://proxy.test"]


async def test_each_key_seals_its_own_prompt_cache_scope(sidecar: Sidecar) -> None:
    """Two apps behind one sidecar: a worker's prompt cache is shared within one key's requests, never across
    keys (one app could otherwise time the other's prompts through it)."""
    assert (await sidecar.chat(None)).status_code == 200
    _, one = await sidecar.keys.create("one", 10**9)
    _, two = await sidecar.keys.create("two", 10**9)
    for key in (one, two, one):
        assert (await sidecar.chat(key)).status_code == 200

    keyless, first, second, first_again = (payload.cache_scope for payload in sidecar.sealed)
    assert first == first_again
    assert len({keyless, first, second}) == 3
    assert all(scope is not None and len(scope) == 32 for scope in (keyless, first, second))


async def test_once_a_key_exists_every_openai_endpoint_needs_one(sidecar: Sidecar) -> None:
    _, secret = await sidecar.keys.create("app", 10**9)
    for response in (
        await sidecar.chat(None),
        await sidecar.chat("sk-something-else"),
        await sidecar.chat("ck-" + "A" * 43),
        await sidecar.http.get("/v1/models"),
        await sidecar.http.get(f"/v1/models/{MODEL}"),
        await sidecar.http.post("/v1/embeddings", json={"model": MODEL, "input": "hi"}),
        await sidecar.http.post("/v1/responses", json={"model": MODEL, "input": "hi"}),
    ):
        error = error_of(response, 401)
        assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key")
        assert "Authorization: Bearer ck-..." in error["message"]
    assert (await sidecar.http.get("/healthz")).status_code == 200  # not an OpenAI endpoint

    client = sidecar.oai(secret)
    reply = await client.chat.completions.create(model=MODEL, messages=CHAT["messages"], max_tokens=8)
    assert reply.choices[0].message.content == "Red, green and blue."
    assert [m.id for m in (await client.models.list()).data] == [MODEL]
    with pytest.raises(openai.AuthenticationError):
        await sidecar.oai("ck-wrong").models.list()


async def test_a_key_for_other_models_is_forbidden_them_and_lists_only_its_own(sidecar: Sidecar) -> None:
    _, secret = await sidecar.keys.create("narrow", 10**9, models=["other-model"])
    error = error_of(await sidecar.chat(secret), 403)
    assert (error["type"], error["code"], error["param"]) == ("permission_error", "forbidden", "model")
    assert f"may not use the model {MODEL!r}" in error["message"]
    listed = await sidecar.http.get("/v1/models", headers={"authorization": f"Bearer {secret}"})
    assert listed.status_code == 200 and listed.json()["data"] == []
    assert sidecar.posted == []


async def test_an_expired_key_is_403_and_a_revoked_one_401(sidecar: Sidecar) -> None:
    _, brief = await sidecar.keys.create("brief", 10**9, expires_at=utcnow() - timedelta(seconds=1))
    _, gone = await sidecar.keys.create("gone", 10**9)
    await sidecar.keys.revoke("gone")
    assert "'brief' expired" in error_of(await sidecar.chat(brief), 403)["message"]
    assert "'gone' was revoked" in error_of(await sidecar.chat(gone), 401)["message"]


async def test_past_its_rpm_a_key_gets_429_with_retry_after(sidecar: Sidecar) -> None:
    _, secret = await sidecar.keys.create("slow", 10**9, rpm=2)
    assert (await sidecar.chat(secret)).status_code == 200
    assert (await sidecar.http.get("/v1/models", headers={"authorization": f"Bearer {secret}"})).status_code == 200
    limited = await sidecar.chat(secret)
    error = error_of(limited, 429)
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert "2 requests a minute" in error["message"]
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    with pytest.raises(openai.RateLimitError):
        await sidecar.oai(secret).models.list()
    assert len(sidecar.posted) == 1


async def test_a_budget_short_of_the_requests_maximum_cost_is_402_and_nothing_is_posted(tmp_path: Path) -> None:
    sidecar = Sidecar(tmp_path, payer=PricedPayer())
    try:
        _, secret = await sidecar.keys.create("tiny", 1000)  # nanoton: less than any request's maximum cost
        error = error_of(await sidecar.chat(secret), 402)
        assert (error["type"], error["code"]) == ("insufficient_quota", "budget_exhausted")
        assert "'tiny' has 1000 nanoton left" in error["message"]
        assert "cocoon client keys topup tiny" in error["message"]
        assert sidecar.posted == []
        assert (await sidecar.keys.find("tiny")).reserved == 0
    finally:
        await sidecar.aclose()


async def test_what_a_request_paid_is_what_its_key_spent_and_nothing_stays_held(tmp_path: Path) -> None:
    payer = PricedPayer()
    sidecar = Sidecar(tmp_path, payer=payer)
    try:
        _, secret = await sidecar.keys.create("app", 10**9)
        whole = (await sidecar.chat(secret)).json()
        streamed = await sidecar.chat(secret, CHAT | {"stream": True, "n": 2})
        assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")
        key = await sidecar.keys.find("app")
        assert whole["usage"]["total_cost"] == payer.paid[0] > 0
        assert (key.spent, key.reserved) == (sum(payer.paid), 0) and len(payer.paid) == 3
        (usage,) = await sidecar.keys.usage(utcnow() - timedelta(minutes=1))
        assert (usage.key, usage.model, usage.requests, usage.cost) == ("app", MODEL, 3, key.spent)
    finally:
        await sidecar.aclose()


async def test_require_keys_needs_a_key_before_any_exists(tmp_path: Path) -> None:
    sidecar = Sidecar(tmp_path, require_keys=True)
    try:
        assert "needs an API key" in error_of(await sidecar.chat(None), 401)["message"]
    finally:
        await sidecar.aclose()


async def test_a_sidecar_beyond_loopback_without_a_live_key_does_not_start(tmp_path: Path) -> None:
    sidecar = Sidecar(tmp_path, host="0.0.0.0")
    try:
        with pytest.raises(ConfigError, match=r"listen on 0\.0\.0\.0, beyond this machine, with no live API key"):
            async with sidecar.app.router.lifespan_context(sidecar.app):
                pass
        await sidecar.keys.create("lan", 10**9)
        async with sidecar.app.router.lifespan_context(sidecar.app):
            assert (await sidecar.chat(None)).status_code == 401  # keys are needed there anyway
    finally:
        await sidecar.aclose()


async def test_keys_and_the_shared_api_key_do_not_start_together(tmp_path: Path) -> None:
    sidecar = Sidecar(tmp_path, api_key="sk-shared")
    try:
        await sidecar.keys.create("app", 10**9)
        with pytest.raises(ConfigError, match="unset it"):
            async with sidecar.app.router.lifespan_context(sidecar.app):
                pass
    finally:
        await sidecar.aclose()
