"""Money on real processes: a devnet with the real contracts, a billing proxy, paid workers, a paying client.

Clients pay only for verified receipts, every nanoton is accounted for (client debits = worker credits +
proxy fees, off chain and on chain), a SIGKILLed proxy still claims what it held, and over-limit clients get 402.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import tomli_w

from cocoon.chain import ClientChannel, WorkerChannel
from cocoon.chain.devnet import DevnetClient
from cocoon.chain.pricing import cost_of
from cocoon.engines.config import DEFAULT_MODEL
from cocoon.local import LocalNetwork, free_port
from tests.helpers.chain import TEST_API_KEY
from tests.helpers.money import (
    COEFFICIENT,
    OPERATOR_KEY,
    PRICES,
    books,
    mixed_requests,
    oai,
    on_chain,
    settle,
    start_paid_network,
)
from tests.helpers.network import wait_for


@pytest.fixture(scope="module")
def paid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    net = start_paid_network(tmp_path_factory.mktemp("paid"))
    yield net
    net.stop()


def test_models_list_registry_prices_and_each_response_carries_its_exact_cost(paid: LocalNetwork) -> None:
    model = httpx.get(f"{paid.proxy_url}/v1/models", timeout=5).json()["data"][0]
    assert model["pricing"] | {"unit": ""} == PRICES.to_json() | {"unit": ""}
    assert model["price_coefficients"] == [COEFFICIENT]

    reply = oai(paid).chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": "Hello there"}], max_tokens=7
    )

    usage = reply.usage.model_extra  # type: ignore[union-attr]
    expected = cost_of(reply.usage.prompt_tokens, 0, reply.usage.completion_tokens, PRICES, COEFFICIENT)  # type: ignore[union-attr]
    assert usage["total_cost"] == expected.total > 0
    assert (usage["prompt_cost"], usage["completion_cost"]) == (expected.prompt, expected.completion)
    assert usage["receipt_ids"][0].startswith("rcpt-")


def test_client_debits_equal_worker_credits_plus_proxy_fees_off_and_on_chain(paid: LocalNetwork) -> None:
    before = books(paid)
    costs = mixed_requests(paid, 24)

    after = books(paid)
    debits = after["client_debits"] - before["client_debits"]
    assert debits == sum(costs) > 0
    assert after["client_debits"] == after["worker_credits"] + after["proxy_fees"]
    assert after["proxy_fees"] - before["proxy_fees"] <= debits * 500 // 10_000 + 1
    assert after["receipts"] == {"paid": after["receipts"]["paid"]}  # nothing owed, rejected or invalid

    report = settle(paid)
    assert report["failed"] == {}
    settled = books(paid)
    (client,) = settled["clients"]
    assert on_chain(paid, client["channel"], ClientChannel)[1] == client["vouchered"] == client["claimed"]
    for worker in settled["workers"]:
        assert on_chain(paid, worker["channel"], WorkerChannel)[0] == worker["vouchered"] == worker["funded"]

    for i in range(1, paid.workers + 1):  # each worker claims its vouchers on chain with the CLI
        config = str(paid.home / f"worker-{i}.toml")
        done = subprocess.run(
            [sys.executable, "-m", "cocoon", "worker", "claim", "--config", config], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
    worker_claims = sum(on_chain(paid, w["channel"], WorkerChannel)[1] for w in settled["workers"])
    client_claims = on_chain(paid, client["channel"], ClientChannel)[1]
    assert client_claims == worker_claims + settled["proxy_fees"]
    assert settled["onchain_operations"] - before["onchain_operations"] <= 1 + paid.workers


def test_a_client_over_its_credit_limit_is_refused_with_402(paid: LocalNetwork) -> None:
    # 10^9 tokens at 20 nanoton × 1.5 would be 30 TON: more than the 10 TON deposit.
    with pytest.raises(openai.APIStatusError) as refused:
        oai(paid).chat.completions.create(
            model=DEFAULT_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=10**9
        )
    assert refused.value.status_code == 402
    message = str(refused.value.body)
    assert "cocoon client deposit" in message and "may cost up to" in message
    assert books(paid)["clients"][0]["reserved"] == 0


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        ("response-digest", "rejected"),  # only the client can tell: the proxy charges, the client refuses
        ("signature", "invalid"),  # the proxy can tell too: it never charges
    ],
)
def test_client_pays_nothing_when_a_receipt_is_forged(tmp_path: Path, fault: str, status: str) -> None:
    net = start_paid_network(tmp_path, workers=1, chaos_bad_receipts=fault)
    try:
        with pytest.raises(openai.APIStatusError) as failed:
            oai(net).chat.completions.create(
                model=DEFAULT_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=5
            )
        assert failed.value.status_code == 502 and "Nothing is paid" in str(failed.value.body)
        wait_for(lambda: books(net)["receipts"] == {status: 1}, 10, f"the receipt to be booked {status}")
        ledger = books(net)
        assert ledger["client_debits"] == ledger["worker_credits"] == ledger["proxy_fees"] == 0
        assert ledger["clients"][0]["charged"] == 0
        assert settle(net)["claimed"] == {}
    finally:
        net.stop()


def test_a_proxy_killed_with_sigkill_still_claims_every_voucher_it_held(tmp_path: Path) -> None:
    net = start_paid_network(tmp_path)
    try:
        costs = mixed_requests(net, 8)
        held = books(net)
        assert held["client_debits"] == sum(costs) > 0

        proxy = net.child("proxy")
        os.kill(proxy.process.pid, signal.SIGKILL)
        proxy.process.wait(10)
        net.children.remove(proxy)
        net._spawn("proxy", "proxy.toml")
        wait_for(lambda: _answers(f"{net.proxy_url}/healthz"), 30, "the proxy to restart")

        assert books(net)["clients"] == held["clients"]
        settle(net)
        (client,) = held["clients"]
        assert on_chain(net, client["channel"], ClientChannel)[1] == client["vouchered"]
        for worker in held["workers"]:
            assert on_chain(net, worker["channel"], WorkerChannel)[0] == worker["vouchered"]
    finally:
        net.stop()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_client_tops_up_and_reads_its_balance_with_the_cli(paid: LocalNetwork) -> None:
    config = str(paid.home / "client.toml")

    def cocoon(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "cocoon", *args], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    before = json.loads(cocoon("client", "balance", "--config", config, "--json"))
    cocoon("client", "deposit", "--amount", "1.5", "--config", config)
    after = json.loads(cocoon("client", "balance", "--config", config, "--json"))

    assert after["deposit"] == before["deposit"] + 1_500_000_000
    assert after["vouchered"] == books(paid)["clients"][0]["vouchered"]


def test_operators_read_the_chain_status_with_their_key_and_strangers_are_told_how(paid: LocalNetwork) -> None:
    assert paid.chain is not None
    where = ["--proxy-url", paid.proxy_url, "--api-key", TEST_API_KEY]

    def cocoon(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cocoon", *args], capture_output=True, text=True)

    status = cocoon("chain", "status", "--chain-url", paid.chain.url, *where, "--operator-key", OPERATOR_KEY, "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert {c["channel"] for c in report["channels"] if c["kind"] == "client"} == {
        c["channel"] for c in books(paid)["clients"]
    }

    refused = cocoon("chain", "status", "--chain-url", paid.chain.url, *where, "--operator-key", "wrong", "--json")
    assert refused.returncode == 2
    assert "operator" in refused.stderr and "Traceback" not in refused.stderr

    settled = cocoon("proxy", "settle", "--proxy-url", paid.proxy_url, "--operator-key", OPERATOR_KEY, "--json")
    assert settled.returncode == 0, settled.stderr
    assert "claimed_total" in json.loads(settled.stdout)


def test_a_deposit_killed_before_its_outcome_was_known_and_run_again_deposits_once(paid: LocalNetwork) -> None:
    """The first run dies after sending; its message lands; the user runs the command again. The rerun finds
    the message it sent in the wallet's outbox, sees it landed, and sends nothing."""
    assert paid.chain is not None
    config = str(paid.home / "client.toml")
    outbox = paid.home / "client-wallet.json.outbox.json"
    set_inclusion_delay(paid, 4000)  # the first run dies while its message waits to be included
    try:
        before = balance_of(config)
        first = subprocess.Popen(
            [sys.executable, "-m", "cocoon", "client", "deposit", "--amount", "1", "--config", config],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(outbox.exists, 60, "the first run to write its message down")
        time.sleep(0.5)  # past sendBoc
        first.kill()
        first.wait()
        assert outbox.exists()
        wait_for(lambda: balance_of(config)["deposit"] > before["deposit"], 60, "the first run's deposit to land")

        again = subprocess.run(
            [sys.executable, "-m", "cocoon", "client", "deposit", "--amount", "1", "--config", config],
            capture_output=True,
            text=True,
        )
        assert again.returncode == 0, again.stderr
        assert "sent earlier has landed; it is not sent again" in again.stderr
        time.sleep(4.5)  # a second message, had one been sent, would have landed by now
        assert balance_of(config)["deposit"] == before["deposit"] + 1_000_000_000
        assert not outbox.exists()
    finally:
        set_inclusion_delay(paid, 1000)


def test_every_role_refuses_a_chain_of_another_network(paid: LocalNetwork, tmp_path: Path) -> None:
    assert paid.chain is not None
    proxy_config = tomllib.loads((paid.home / "proxy.toml").read_text())
    proxy_config |= {"network": "testnet", "port": free_port(), "data_dir": str(tmp_path / "proxy")}
    (tmp_path / "proxy.toml").write_text(tomli_w.dumps(proxy_config))
    proxy = subprocess.run(
        [sys.executable, "-m", "cocoon", "proxy", "--config", str(tmp_path / "proxy.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    client = subprocess.run(
        [sys.executable, "-m", "cocoon", "client", "balance", "--config", str(paid.home / "client.toml")],
        capture_output=True,
        text=True,
        env=os.environ | {"COCOON_CLIENT_NETWORK": "mainnet", "COCOON_CLIENT_CHAIN_READS": "http"},
    )
    sidecar = subprocess.run(
        [
            sys.executable,
            "-m",
            "cocoon",
            "client",
            "--config",
            str(paid.home / "client.toml"),
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ | {"COCOON_CLIENT_NETWORK": "testnet"},
    )

    assert proxy.returncode != 0
    assert "serves devnet (global id -662), but this role is configured for testnet" in proxy.stderr
    assert 'set network = "devnet" in the config (or COCOON_PROXY_NETWORK=devnet)' in proxy.stderr
    assert client.returncode == 2 and "configured for mainnet (global id -239)" in client.stderr
    assert "Traceback" not in client.stderr
    assert sidecar.returncode != 0 and "configured for testnet (global id -3)" in sidecar.stderr


def balance_of(config: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "cocoon", "client", "balance", "--config", config, "--json"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def set_inclusion_delay(net: LocalNetwork, ms: int) -> None:
    async def change() -> None:
        assert net.chain is not None
        async with DevnetClient(net.chain.url) as devnet:
            await devnet.set_faults(inclusion_delay_ms=ms)

    asyncio.run(change())


def _cocoon_client(net: LocalNetwork, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "cocoon", "client", *args, "--config", str(net.home / "client.toml")]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=os.environ | {"COLUMNS": "200"})


def test_close_and_withdraw_name_their_proxies_and_refuse_what_the_contract_would(paid: LocalNetwork) -> None:
    """Last in this module: it closes the client's channel. ``close`` and ``withdraw`` take ``--proxy URL|all``
    like ``deposit``, closing twice sends one close, and a withdrawal the contract would refuse (an open channel,
    a close delay not over) is refused first, in one line, without spending gas on it."""
    early = _cocoon_client(paid, "withdraw", "--proxy", "all")
    assert early.returncode == 2
    assert "the channel is open: start closing it with `cocoon client close`" in early.stdout + early.stderr

    closed = _cocoon_client(paid, "close", "--proxy", "all")
    said = closed.stdout + closed.stderr
    assert closed.returncode == 0, said
    assert f"{paid.proxy_url}: closing; `cocoon client withdraw` returns the rest after" in said
    assert re.search(r"UTC \(in \d+ min\)", said)  # the devnet's close delay, from its registry
    close_at = balance_of(str(paid.home / "client.toml"))["close_at"]
    assert close_at > 0

    again = _cocoon_client(paid, "close")
    assert again.returncode == 0 and "closing;" in again.stdout + again.stderr
    assert balance_of(str(paid.home / "client.toml"))["close_at"] == close_at  # no second close

    waiting = _cocoon_client(paid, "withdraw")
    assert waiting.returncode == 2 and "the close delay ends at" in waiting.stdout + waiting.stderr
