"""What an operator sees of a running network: ``cocoon worker doctor`` run as a command against a real local
network, and every role's ``/metrics`` after a request went through it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cocoon.chain.pricing import PER_MILLION, cost_of, split
from cocoon.engines.config import DEFAULT_MODEL
from cocoon.local import LocalNetwork
from tests.helpers.money import COEFFICIENT, PRICES, oai, settle, start_paid_network
from tests.helpers.network import free_port, start_network


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, bundled_model_path: Path) -> Iterator[LocalNetwork]:
    """One llama.cpp worker whose status port (and so its /metrics) is on."""
    home = tmp_path_factory.mktemp("operators")
    network = start_network(
        home, workers=1, model_path=bundled_model_path, worker_overrides={1: {"status_port": free_port()}}
    )
    yield network
    network.stop()


def doctor(net: LocalNetwork, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "cocoon", "worker", "doctor", "--config", str(net.home / "worker-1.toml")]
    env = os.environ | {"COCOON_HOME": str(net.home)}
    return subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=300)


def test_doctor_finds_a_dev_worker_able_to_serve_its_network(net: LocalNetwork) -> None:
    done = doctor(net, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    by_check = {f["check"]: f for f in report["checks"]}
    assert report["can_earn"] is True
    assert by_check["proxy"]["status"] == "ok" and str(net.proxy_port) in by_check["proxy"]["message"]
    assert by_check["engine"]["status"] == "ok" and "loads in llama.cpp" in by_check["engine"]["message"]
    assert by_check["tee"]["status"] == "warn" and "simulated" in by_check["tee"]["message"]
    assert by_check["price"]["status"] == "warn" and "free proxy" in by_check["price"]["message"]


def test_doctor_prints_one_marked_line_per_check(net: LocalNetwork) -> None:
    done = doctor(net)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line[:1] in "✓!✗"]
    assert {line.split()[1] for line in lines} >= {"tee", "gpu", "memory", "engine", "proxy", "wallet", "price"}
    assert "this worker can earn" in done.stdout


def worker_status_url(net: LocalNetwork) -> str:
    text = (net.home / "worker-1.toml").read_text()
    port = next(line.split("=")[1].strip() for line in text.splitlines() if line.startswith("status_port"))
    return f"http://127.0.0.1:{port}"


def test_proxy_and_worker_count_a_request_under_the_same_names(net: LocalNetwork) -> None:
    reply = httpx.post(
        f"{net.base_url}/chat/completions",
        json={"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    proxy = httpx.get(f"{net.proxy_url}/metrics", timeout=10).text
    worker = httpx.get(f"{worker_status_url(net)}/metrics", timeout=10).text
    for role, text in (("proxy", proxy), ("worker", worker)):
        assert f'cocoon_requests_total{{model="{DEFAULT_MODEL}",outcome="ok",role="{role}"}}' in text, text
        assert f'cocoon_tokens_total{{kind="completion",model="{DEFAULT_MODEL}",role="{role}"}}' in text
        assert f'cocoon_ttft_seconds_count{{model="{DEFAULT_MODEL}",role="{role}"}}' in text
        assert f'cocoon_failovers_total{{role="{role}"}}' in text


def test_the_sidecar_counts_the_request_too(net: LocalNetwork) -> None:
    response = httpx.get(f"http://127.0.0.1:{net.client_port}/metrics", timeout=10)
    if response.status_code == 404:
        pytest.skip("the sidecar's gateway does not mount cocoon.client.metrics.client_metrics_route() yet")
    httpx.post(
        f"{net.base_url}/chat/completions",
        json={"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
        timeout=120,
    ).raise_for_status()
    text = httpx.get(f"http://127.0.0.1:{net.client_port}/metrics", timeout=10).text
    assert f'cocoon_requests_total{{model="{DEFAULT_MODEL}",outcome="ok",role="client"}}' in text


@pytest.fixture(scope="module")
def paid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    network = start_paid_network(tmp_path_factory.mktemp("operators-paid"), workers=1)
    yield network
    network.stop()


def money(net: LocalNetwork) -> dict[str, float]:
    """The proxy's ``cocoon_money_nanoton_total`` by flow."""
    text = httpx.get(f"{net.proxy_url}/metrics", timeout=10).text
    return {
        s.labels["flow"]: s.value
        for family in text_string_to_metric_families(text)
        if family.name == "cocoon_money_nanoton"
        for s in family.samples
        if s.name.endswith("_total") and s.labels.get("role") == "proxy"
    }


def test_doctor_on_a_paid_network_reads_the_registry_price_and_the_wallet_balance(paid: LocalNetwork) -> None:
    done = doctor(paid, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    by_check = {f["check"]: f for f in json.loads(done.stdout)["checks"]}
    fee = int(httpx.get(f"{paid.proxy_url}/v1/payment", timeout=5).json()["proxy_fee_bps"])
    completion = split(cost_of(0, 0, PER_MILLION, PRICES, COEFFICIENT).total, fee)[0]
    assert by_check["price"]["status"] == "ok"
    assert f"{completion} nanoton per million completion tokens" in by_check["price"]["message"]
    assert by_check["wallet"]["status"] == "ok" and "TON on chain" in by_check["wallet"]["message"]


def test_the_proxy_counts_what_clients_paid_workers_earned_and_it_kept(paid: LocalNetwork) -> None:
    before = money(paid)
    reply = oai(paid).chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=5
    )
    cost = int((reply.usage.model_extra or {})["total_cost"])  # type: ignore[union-attr]
    after = money(paid)
    paid_now = after["paid"] - before.get("paid", 0)
    assert paid_now == cost > 0
    assert after["earned"] - before.get("earned", 0) + after["fee"] - before.get("fee", 0) == cost
    settle(paid)
    assert money(paid)["settled"] - before.get("settled", 0) >= cost
