"""A network of several proxies: workers serve both, the client sidecar holds both, and a proxy SIGKILLed under
load costs no request that had not started streaming (free, and paid through a channel with each proxy);
workers told the registry find proxies listed there."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from cocoon.chain import TON, ClientChannel, WorkerChannel
from cocoon.chain.devnet import DevnetClient
from cocoon.engines.config import DEFAULT_MODEL
from cocoon.local import LocalNetwork, free_port
from cocoon.local.chain import money_options, wallet_of
from tests.helpers.chain import TEST_API_KEY
from tests.helpers.money import OPERATOR_KEY, books_at, on_chain, settle_at, start_paid_network
from tests.helpers.network import NO_CANARIES, wait_for
from tests.helpers.proxies import directory_size, start_proxy, start_sidecar, wait_for_workers, worker_socket

THREADS, PER_THREAD = 4, 12


@pytest.fixture
def two_proxies(tmp_path: Path, bundled_model_path: Path) -> Iterator[tuple[LocalNetwork, str, str]]:
    """Two proxies, two synthetic workers linked to both, and a sidecar holding both; yields the network, the
    second proxy's URL and the sidecar's OpenAI base URL."""
    first, second = free_port(), free_port()
    net = LocalNetwork(
        port_base=free_port(),
        proxy_port=first,
        home=tmp_path,
        workers=2,
        model_path=bundled_model_path,
        engine={"kind": "synthetic", "synthetic_tokens_per_s": 100},
        proxy_options=NO_CANARIES,
        worker_options={"proxies": [worker_socket(first), worker_socket(second)], "reconnect_max_backoff": 1},
    )
    try:
        net.start()
        start_proxy(net, "proxy-2", second)
        net.wait_ready(timeout=120)
        other = f"http://127.0.0.1:{second}"
        wait_for_workers(other, 2)
        _, base_url = start_sidecar(net, "client-2", [net.proxy_url, other])
        wait_for(lambda: _models(base_url), 30, "the two-proxy sidecar")
        yield net, other, base_url
    finally:
        net.stop()


def _models(base_url: str) -> bool:
    try:
        return bool(openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=2).models.list().data)
    except openai.APIError:
        return False


def test_no_request_that_had_not_started_streaming_fails_when_a_proxy_is_sigkilled_under_load(
    two_proxies: tuple[LocalNetwork, str, str],
) -> None:
    net, other, base_url = two_proxies
    outcomes, killed_at = _load_and_kill(net, base_url)
    unstarted = [o for o in outcomes if not o[0] and not o[1]]
    assert unstarted == [], f"requests failed before their first byte: {unstarted}"
    after = [o for o in outcomes if o[2] > killed_at + 1]
    assert after and all(o[0] for o in after)  # the survivor serves everything once the dead proxy is noticed
    assert directory_size(other) == 2


@pytest.fixture
def paid(tmp_path: Path) -> Iterator[LocalNetwork]:
    network = start_paid_network(tmp_path, workers=1, reconnect_max_backoff=1)
    yield network
    network.stop()


def registry_cli(net: LocalNetwork, *args: str) -> None:
    """The network owner runs `cocoon chain registry ...` on the devnet."""
    assert net.chain is not None
    command = [sys.executable, "-m", "cocoon", "chain", "registry", *args, "--registry", net.chain.registry]
    command += ["--owner-key", str(net.home / "chain-owner.json"), "--chain-url", net.chain.url]
    command += ["--api-key", TEST_API_KEY]
    subprocess.run(command, check=True, capture_output=True, timeout=120)


def test_a_worker_told_the_registry_serves_the_proxies_it_lists_and_leaves_one_delisted(paid: LocalNetwork) -> None:
    assert paid.chain is not None
    wait_for(lambda: directory_size(paid.proxy_url) == 1, 30, "the statically configured worker")
    proxy_wallet = wallet_of(paid.home / "proxy" / "proxy-key.json").address.to_str()
    registry_cli(paid, "add-proxy", paid.proxy_url, "--address", proxy_wallet)

    paid.worker_overrides[2] = {"registry": paid.chain.registry, "proxies": [], "proxy_refresh_s": 1}
    paid.add_worker(2)
    wait_for(lambda: directory_size(paid.proxy_url) == 2, 60, "the worker to find the proxy in the registry")
    log = (paid.home / "logs" / "worker-2.log").read_text()
    assert "serving proxy from the registry" in log and f"ws://127.0.0.1:{paid.proxy_port}" in log

    registry_cli(paid, "remove-proxy", paid.proxy_url)
    wait_for(lambda: directory_size(paid.proxy_url) == 1, 60, "the worker to leave the delisted proxy")


def test_a_paid_client_of_two_proxies_pays_each_through_its_own_channel_and_survives_losing_one(
    tmp_path: Path,
) -> None:
    """COCOON's shape with money: two proxies of one registry, each with its own wallet and books. The sidecar
    follows the registry (it starts with the one proxy listed and takes the second once it is listed); the
    client funds a channel with each (`cocoon client deposit --proxy all`), requests are paid to whichever
    proxy served them, one proxy is SIGKILLed under load and then delisted, and the survivor's books settle on
    chain to the nanoton."""
    first, second = free_port(), free_port()
    sockets = [worker_socket(first), worker_socket(second)]
    net = start_paid_network(tmp_path, workers=2, proxy_port=first, proxies=sockets, reconnect_max_backoff=1)
    try:
        assert net.chain is not None
        other = f"http://127.0.0.1:{second}"
        wallet = wallet_of(net.home / "proxy-2" / "proxy-key.json")  # gas for its settlement

        async def fund() -> None:
            async with DevnetClient(net.chain.url) as devnet:  # type: ignore[union-attr]
                await devnet.fund(wallet.address, 10 * TON)

        asyncio.run(fund())
        money = money_options(net.chain, net.home, "proxy")
        start_proxy(net, "proxy-2", second, **money, operator_key=OPERATOR_KEY, settle_min_amount=10**18)
        wait_for_workers(net.proxy_url, 2)
        wait_for_workers(other, 2)
        registry_cli(net, "add-proxy", net.proxy_url, "--address", _wallet(net.home / "proxy"))
        client = money_options(net.chain, net.home, "client") | {"proxies_from_registry": True, "proxy_refresh_s": 1}
        sidecar, base_url = start_sidecar(net, "client-2", [], **client)
        wait_for(lambda: _held(base_url) == [net.proxy_url], 60, "the sidecar to hold the listed proxy")
        registry_cli(net, "add-proxy", other, "--address", _wallet(net.home / "proxy-2"))
        wait_for(
            lambda: sorted(_held(base_url)) == sorted([net.proxy_url, other]),
            60,
            "the sidecar to take the newly listed proxy",
        )
        config = str(net.home / "client-2.toml")
        deposit = [sys.executable, "-m", "cocoon", "client", "deposit", "--proxy", "all", "--amount", "1"]
        done = subprocess.run([*deposit, "-c", config], capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr
        wait_for(lambda: _models(base_url), 30, "the paid two-proxy sidecar")

        outcomes, _ = _load_and_kill(net, base_url)
        unstarted = [o for o in outcomes if not o[0] and not o[1]]
        assert unstarted == [], f"requests failed before their first byte: {unstarted}"
        assert sum(o[0] for o in outcomes) >= len(outcomes) - THREADS  # at most the ones streaming at the kill
        registry_cli(net, "remove-proxy", net.proxy_url)
        wait_for(lambda: _held(base_url) == [other], 60, "the sidecar to drop the delisted proxy")
        assert "proxy dropped url=" + net.proxy_url in sidecar.log.read_text()

        held = books_at(other)
        (channel,) = held["clients"]  # the client's own channel with this proxy, not the first proxy's
        assert channel["channel"] != net.chain.client_channel
        assert channel["vouchered"] == channel["charged"] > 0  # every receipt it served is paid
        report = settle_at(other, timeout=180)
        assert report["failed"] == {}, report
        settled = books_at(other)
        claimed = on_chain(net, channel["channel"], ClientChannel)[1]
        assert claimed == channel["vouchered"] == settled["worker_credits"] + settled["proxy_fees"]
        for worker in settled["workers"]:  # funded once, exactly what this proxy vouchered the worker
            assert on_chain(net, worker["channel"], WorkerChannel)[0] == worker["vouchered"] == worker["funded"]
    finally:
        net.stop()


def _load_and_kill(net: LocalNetwork, base_url: str) -> tuple[list[tuple[bool, bool, float, str]], float]:
    """``THREADS`` × ``PER_THREAD`` streamed requests through ``base_url``; the network's first proxy is
    SIGKILLed once a few finished. Returns each outcome (succeeded, had text before failing, finished at,
    error) and when the proxy was killed."""
    outcomes: list[tuple[bool, bool, float, str]] = []
    lock = threading.Lock()

    def load() -> None:
        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
        for i in range(PER_THREAD):
            started, error = False, ""
            try:
                stream = client.chat.completions.create(
                    model=DEFAULT_MODEL,
                    messages=[{"role": "user", "content": f"Tell story number {i}."}],
                    max_tokens=16,
                    stream=True,
                )
                for chunk in stream:
                    started = started or bool(chunk.choices and chunk.choices[0].delta.content)
            except Exception as exc:  # every failure is an outcome the test counts, whatever its kind
                error = repr(exc)
            with lock:
                outcomes.append((not error, started, time.monotonic(), error))

    threads = [threading.Thread(target=load) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(outcomes) >= THREADS * 2, 60, "requests to flow through both proxies")
    killed_at = time.monotonic()
    os.kill(net.child("proxy").process.pid, signal.SIGKILL)
    for thread in threads:
        thread.join(timeout=180)
    assert len(outcomes) == THREADS * PER_THREAD
    return outcomes, killed_at


def _wallet(data_dir: Path) -> str:
    """The wallet address of the proxy keeping its keys in ``data_dir``."""
    return wallet_of(data_dir / "proxy-key.json").address.to_str()


def _held(base_url: str) -> list[str]:
    """The proxies the sidecar at ``base_url`` holds now, from its ``/readyz``."""
    try:
        body = httpx.get(base_url.removesuffix("/v1") + "/readyz", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return []
    return [p["url"] for p in body.get("proxies", [])]
