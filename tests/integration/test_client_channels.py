"""The client's channel commands as a user runs them on a paid devnet: ``close`` and ``withdraw`` take ``--proxy
URL|all`` like ``deposit``, closing twice sends one close, and a withdrawal the contract would refuse (an open
channel, a close delay not over) is refused first, in one line, without spending gas on it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from cocoon.local import LocalNetwork
from tests.helpers.money import start_paid_network


@pytest.fixture(scope="module")
def paid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    net = start_paid_network(tmp_path_factory.mktemp("channels"), workers=1)
    yield net
    net.stop()


def cocoon_client(net: LocalNetwork, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "cocoon", "client", *args, "--config", str(net.home / "client.toml")]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=os.environ | {"COLUMNS": "200"})


def test_close_and_withdraw_name_their_proxies_and_refuse_what_the_contract_would(paid: LocalNetwork) -> None:
    early = cocoon_client(paid, "withdraw", "--proxy", "all")
    assert early.returncode == 2 and "the channel is open: start closing it with `cocoon client close`" in (
        early.stdout + early.stderr
    )

    closed = cocoon_client(paid, "close", "--proxy", "all")
    said = closed.stdout + closed.stderr
    assert closed.returncode == 0, said
    assert f"{paid.proxy_url}: closing; `cocoon client withdraw` returns the rest after" in said
    assert re.search(r"UTC \(in \d+ min\)", said)  # the devnet's close delay, from its registry
    balance = cocoon_client(paid, "balance", "--proxy", paid.proxy_url, "--json")
    close_at = json.loads(balance.stdout)["close_at"]
    assert close_at > 0

    again = cocoon_client(paid, "close")
    assert again.returncode == 0 and "closing;" in again.stdout + again.stderr
    assert json.loads(cocoon_client(paid, "balance", "--json").stdout)["close_at"] == close_at  # no second close

    waiting = cocoon_client(paid, "withdraw")
    assert waiting.returncode == 2
    assert "the close delay ends at" in waiting.stdout + waiting.stderr
