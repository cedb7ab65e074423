"""The explorer in-process (the proxy app, its lifespan run here): pages escape what other parties chose, the
JSON behind them agrees with ``/v1/directory``, and a relayed job shows in the time series."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from cocoon.config import ProxySettings
from cocoon.protocol import ModelOffer, pack
from cocoon.proxy import create_app
from cocoon.proxy.explorer.markup import esc, link, stat, table, tag
from cocoon.proxy.state import ProxyState
from tests.unit.proxy.fakes import MODEL, MODEL_HASH, FakeWorker, request

HOSTILE = '"><script>alert(1)</script><img src=x onerror=alert(2)>'


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[Starlette]:
    app = create_app(ProxySettings(data_dir=tmp_path))
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def http(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://proxy.test") as client:
        yield client


def connect(app: Starlette, worker: FakeWorker) -> FakeWorker:
    state: ProxyState = app.state.proxy
    state.directory.add(worker.entry)
    return worker


def hostile_worker() -> FakeWorker:
    """A worker whose id, region, software and model name are markup."""
    worker = FakeWorker("w" + HOSTILE)
    offers = [ModelOffer(model=name, model_hash=MODEL_HASH, context_length=4096) for name in (MODEL, "m" + HOSTILE)]
    worker.entry.register = worker.register.model_copy(
        update={"region": HOSTILE, "software": HOSTILE, "models": offers}
    )
    return worker


def test_markup_escapes_text_and_attributes_and_links_only_to_https() -> None:
    assert esc(HOSTILE) == "&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;"
    assert tag("td", HOSTILE, data_value=HOSTILE).count("<") == 2  # only the tag's own
    assert link("x", "javascript:alert(1)") == "x"
    assert link("x", "https://tonviewer.com/EQ" + HOSTILE).count("<") == 2
    assert "<script" not in table(["h" + HOSTILE], [[HOSTILE, stat("s", HOSTILE)]])


@pytest.mark.parametrize("path", ["/", "/workers", "/money"])
async def test_pages_escape_what_workers_chose(app: Starlette, http: httpx.AsyncClient, path: str) -> None:
    connect(app, hostile_worker())
    response = await http.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in response.headers["content-security-policy"]
    page = response.text
    assert "<script" not in page and "<img" not in page
    if path != "/money":
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # shown, as text


async def test_workers_stats_agree_with_the_directory(app: Starlette, http: httpx.AsyncClient) -> None:
    connect(app, FakeWorker("w1"))
    connect(app, hostile_worker())
    directory = (await http.get("/v1/directory")).json()["workers"]
    stats = (await http.get("/v1/stats/workers")).json()["workers"]
    assert [w["worker_id"] for w in stats] == [w["worker_id"] for w in directory]
    for shown, listed in zip(stats, directory, strict=True):
        assert shown["region"] == listed["region"]
        assert shown["reputation"]["factor"] == listed["reputation"]["factor"]
        assert shown["attested"]["provider"] == "simulated"
        assert shown["earnings"] is None  # a free proxy pays nobody
    assert (await http.get("/v1/stats/money")).json()["paid"] is False


async def test_a_relayed_job_shows_in_the_network_stats(app: Starlette, http: httpx.AsyncClient) -> None:
    worker = connect(app, FakeWorker("w1"))
    answer = asyncio.create_task(http.post("/v1/jobs", content=pack(request(worker))))
    job = await worker.next_sent("job")
    worker.feed(job["job_id"], worker.chunk(0, b"sealed"), worker.end(job, prompt_tokens=5, completion_tokens=3))
    assert (await answer).status_code == 200

    stats = (await http.get("/v1/stats")).json()
    [model] = stats["models"]
    assert (model["model"], model["workers"], model["requests"], model["errors"]) == (MODEL, 1, 1, 0)
    assert stats["totals"]["requests"] == 1 and stats["totals"]["ttft_p50_ms"] is not None
    assert sum(s["tokens"] for s in stats["series"]["minutes"]) == 8
    assert stats["workers_online"] == 1 and [w["worker_id"] for w in stats["workers"]] == ["w1"]
    assert await app.state.timeline.flush() == 1  # written in a batch, read back the same
    again = (await http.get("/v1/stats/network")).json()
    assert again["totals"]["requests"] == 1 and again["models"][0]["requests"] == 1
    page = (await http.get("/")).text
    assert 'data-stat="workers_online" data-value="1"' in page
