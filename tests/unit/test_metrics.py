"""The three roles' ``/metrics`` speak one vocabulary: the same metric names and labels, told apart only by
``role``, so one dashboard (``deploy/grafana/cocoon.json``) reads them all; and that dashboard asks only for
metrics that exist."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from cocoon.client.metrics import RequestCount, client_metrics_route
from cocoon.config import ProxySettings
from cocoon.metrics import METRIC_NAMES, record_money
from cocoon.protocol.usage import TokenUsage
from cocoon.proxy import create_app
from cocoon.worker.status import status_app

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "cocoon.json"


async def scrape(app: Starlette) -> str:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://role.test") as http:
        response = await http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return response.text


def families(text: str) -> set[str]:
    """Every metric family named in a scrape, ``_total`` kept on counters as Prometheus queries them."""
    return {f"{f.name}_total" if f.type == "counter" else f.name for f in text_string_to_metric_families(text)}


def roles_app(tmp_path: Path) -> dict[str, Starlette]:
    return {
        "proxy": create_app(ProxySettings(data_dir=tmp_path)),
        "worker": status_app("w-test", list, ["m"]),
        "client": Starlette(routes=[client_metrics_route()]),
    }


async def test_every_role_exposes_the_shared_metric_names(tmp_path: Path) -> None:
    scraped = {role: families(await scrape(app)) for role, app in roles_app(tmp_path).items()}
    for role, names in scraped.items():
        assert set(METRIC_NAMES) <= names, f"{role} lacks {set(METRIC_NAMES) - names}"


async def test_a_client_request_is_counted_with_its_tokens_and_first_event(tmp_path: Path) -> None:
    app = roles_app(tmp_path)["client"]
    count = RequestCount("gemma-test")
    count.saw(None)
    count.saw(TokenUsage(prompt_tokens=7, completion_tokens=3))
    count.ended("cancelled")  # after the Completion nothing changes how it ended
    record_money("client", "paid", 1234)
    text = await scrape(app)
    assert 'cocoon_requests_total{model="gemma-test",outcome="ok",role="client"} 1.0' in text
    assert 'cocoon_tokens_total{kind="completion",model="gemma-test",role="client"} 3.0' in text
    assert 'cocoon_ttft_seconds_count{model="gemma-test",role="client"} 1.0' in text
    assert 'model="gemma-test",outcome="cancelled",role="client"' not in text  # the registry is the process's
    assert re.search(r'cocoon_money_nanoton_total\{flow="paid",role="client"\} \d', text)


def test_money_counters_only_grow() -> None:
    with pytest.raises(ValueError, match="only grows"):
        record_money("proxy", "fee", -1)


def dashboard_expressions() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]


def test_the_dashboard_queries_only_metrics_that_exist() -> None:
    expressions = dashboard_expressions()
    assert expressions, "the dashboard has no queries"
    known = set(METRIC_NAMES) | {"cocoon_proxy_workers", "cocoon_proxy_voucher_seconds"}
    for expr in expressions:
        used = set(re.findall(r"\bcocoon_[a-z_]+", expr))
        assert used, f"{expr!r} reads no cocoon metric"
        for name in used:
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert name in known or base in known, f"{expr!r} reads {name}, which no role exposes"
