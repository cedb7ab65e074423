"""API keys on a real paid network: keys made with the real ``cocoon client keys`` against the devnet deposit,
a real sidecar holding every job to its key's budget, and 20 concurrent requests that cannot overspend a key
whose budget covers only a few: the rest get 402, and what the key spent is exactly what the app was billed
(on PostgreSQL the same holds are tested concurrently in ``tests/unit/client/test_keys.py``, without a second
network). Then 401, 403 and 429 as apps see them, and ``GET /v1/models`` needing the key.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from cocoon.chain import TON
from cocoon.engines.config import DEFAULT_MODEL
from cocoon.local import LocalNetwork
from tests.helpers.money import books, start_paid_network
from tests.helpers.network import wait_for

CHAT = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "Count to three"}], "max_tokens": 12}


@pytest.fixture(scope="module")
def paid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    net = start_paid_network(tmp_path_factory.mktemp("keys"))
    yield net
    net.stop()


def cli(net: LocalNetwork, *args: str) -> subprocess.CompletedProcess[str]:
    """``cocoon client keys ARGS`` on ``net``'s sidecar, as a user runs it."""
    command = [sys.executable, "-m", "cocoon", "client", "keys", *args, "--config", str(net.home / "client.toml")]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=os.environ | {"COLUMNS": "200"})


def make_key(net: LocalNetwork, name: str, budget_nanoton: int, *options: str) -> str:
    done = cli(net, "create", "--name", name, "--budget", f"{Decimal(budget_nanoton) / TON:f}", "--json", *options)
    assert done.returncode == 0, done.stderr
    secret: str = json.loads(done.stdout)["key"]
    return secret


def key_record(net: LocalNetwork, name: str) -> dict[str, Any]:
    done = cli(net, "list", "--json")
    assert done.returncode == 0, done.stderr
    record: dict[str, Any] = next(k for k in json.loads(done.stdout) if k["name"] == name)
    return record


def chat(net: LocalNetwork, key: str | None, body: dict[str, Any] = CHAT) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{net.base_url}/chat/completions", json=body, headers=headers, timeout=60)


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def one_request_holds(net: LocalNetwork) -> int:
    """What the sidecar holds against a key for one ``CHAT``, read from the 402 of a key that cannot pay it."""
    probe = make_key(net, f"probe-{os.urandom(3).hex()}", 1)
    message = error_of(chat(net, probe), 402)["message"]
    found = re.search(r"may cost up to (\d+) nanoton", message)
    assert found, message
    cli(net, "revoke", message.split("'")[1])
    return int(found.group(1))


def overspend_attempt(net: LocalNetwork) -> None:
    """Fire 20 concurrent requests at a key whose budget holds three and a half of them, and check the books."""
    hold = one_request_holds(net)
    budget = hold * 7 // 2
    name = f"few-{os.urandom(3).hex()}"
    secret = make_key(net, name, budget)
    before = books(net)["client_debits"]

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60, headers={"authorization": f"Bearer {secret}"}) as http:
            calls = [http.post(f"{net.base_url}/chat/completions", json=CHAT) for _ in range(20)]
            return await asyncio.gather(*calls)

    answers = asyncio.run(fire())
    served = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code != 200]
    assert 1 <= len(served) < 20 and len(refused) >= 10, [a.status_code for a in answers]
    for answer in refused:
        assert error_of(answer, 402)["code"] == "budget_exhausted"
    record = key_record(net, name)
    billed = sum(a.json()["usage"]["total_cost"] for a in served)
    assert record["spent"] == billed <= record["budget"] == budget
    assert record["reserved"] == 0  # every request ended: nothing stays held
    assert books(net)["client_debits"] - before == billed  # the key's books are the deposit's


def test_models_need_the_key_once_a_key_exists(paid: LocalNetwork) -> None:
    assert httpx.get(f"{paid.base_url}/models", timeout=10).status_code == 200  # no key yet: an open sidecar
    secret = make_key(paid, "lister", TON // 100)
    error = error_of(httpx.get(f"{paid.base_url}/models", timeout=10), 401)
    assert "Authorization: Bearer ck-..." in error["message"]
    listed = httpx.get(f"{paid.base_url}/models", headers={"authorization": f"Bearer {secret}"}, timeout=10)
    assert [m["id"] for m in listed.json()["data"]] == [DEFAULT_MODEL]


def test_twenty_concurrent_requests_cannot_overspend_a_key(paid: LocalNetwork) -> None:
    overspend_attempt(paid)
    usage = cli(paid, "usage", "--json")
    assert usage.returncode == 0, usage.stderr
    assert any(u["model"] == DEFAULT_MODEL and u["cost"] > 0 for u in json.loads(usage.stdout))


def test_a_key_is_refused_as_apps_expect_401_403_429(paid: LocalNetwork) -> None:
    assert "Authorization: Bearer ck-..." in error_of(chat(paid, None), 401)["message"]
    assert error_of(chat(paid, "ck-" + "x" * 43), 401)["code"] == "invalid_api_key"

    revoked = make_key(paid, "revoked", TON // 100)
    assert chat(paid, revoked).status_code == 200
    assert cli(paid, "revoke", "revoked").returncode == 0
    assert "'revoked' was revoked" in error_of(chat(paid, revoked), 401)["message"]

    narrow = make_key(paid, "narrow", TON // 100, "--models", "some-other-model")
    error = error_of(chat(paid, narrow), 403)
    assert (error["type"], error["param"]) == ("permission_error", "model")

    brief = make_key(paid, "brief", TON // 100, "--expires", "0.00003")  # about 2.6 s
    wait_for(lambda: chat(paid, brief).status_code == 403, 30, "the key to expire")
    assert "'brief' expired" in error_of(chat(paid, brief), 403)["message"]

    slow = make_key(paid, "slow", TON // 100, "--rpm", "2")
    assert [chat(paid, slow).status_code for _ in range(2)] == [200, 200]
    limited = chat(paid, slow)
    assert error_of(limited, 429)["code"] == "rate_limit_exceeded"
    assert 1 <= int(limited.headers["retry-after"]) <= 60


def test_budgets_past_the_deposit_are_refused_saying_what_is_left(paid: LocalNetwork) -> None:
    done = cli(paid, "create", "--name", "greedy", "--budget", "1000")
    assert done.returncode == 2
    said = " ".join(done.stderr.split())
    assert "the deposit has" in said and "this key's budget can take" in said, said
    assert all(k["name"] != "greedy" for k in json.loads(cli(paid, "list", "--json").stdout))
