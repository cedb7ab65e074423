"""The network's attestation policy lives in its registry: a paid network's proxy reads the allowed images and
models there, evicts the workers of an image the owner removes, admits them again once it is re-allowed, and
anyone can read every change with its transaction."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytoniq_core.boc.address import Address

from cocoon.attestation.simulated import DEV_MEASUREMENT
from cocoon.chain import Outbox, Registry, ToncenterClient, Wallet, measurement_key
from cocoon.crypto import load_or_create_signing_key
from cocoon.local import LocalNetwork
from tests.helpers.chain import TEST_API_KEY
from tests.helpers.money import start_paid_network
from tests.helpers.network import directory, wait_for

DEV_IMAGE = measurement_key(bytes.fromhex(DEV_MEASUREMENT))


@pytest.fixture
def net(tmp_path: Path) -> Iterator[LocalNetwork]:
    network = start_paid_network(tmp_path, proxy_options={"policy_refresh_s": 1}, reconnect_max_backoff=1)
    yield network
    network.stop()


def owner_does(net: LocalNetwork, what: str) -> None:
    """The network owner adds or removes the dev image in the registry, as `cocoon chain registry` does."""

    async def act() -> None:
        assert net.chain is not None
        key_file = net.home / "chain-owner.json"
        owner = Wallet(load_or_create_signing_key(key_file).seed, outbox=Outbox.beside(key_file))
        async with ToncenterClient(net.chain.url, TEST_API_KEY) as chain:
            registry = Registry(chain, Address(net.chain.registry))
            if what == "remove":
                await registry.remove_measurement(owner, DEV_IMAGE)
            else:
                await registry.add_measurement(owner, DEV_IMAGE)

    asyncio.run(act())


def test_a_removed_image_is_evicted_readmitted_when_allowed_again_and_both_changes_are_on_record(
    net: LocalNetwork,
) -> None:
    assert net.chain is not None
    wait_for(lambda: len(directory(net)) == 2, 30, "both workers to join")

    owner_does(net, "remove")
    wait_for(lambda: directory(net) == [], 15, "the proxy to evict the workers of the removed image")
    proxy_log = (net.home / "logs" / "proxy.log").read_text()
    assert "worker evicted" in proxy_log and "not allowed by the network's registry" in proxy_log
    worker_log = net.home / "logs" / "worker-1.log"
    wait_for(lambda: "not allowed by the network's registry" in worker_log.read_text(), 10, "the worker to be told why")

    owner_does(net, "add")
    wait_for(lambda: len(directory(net)) == 2, 30, "the workers to be admitted again")

    shown = subprocess.run(
        [sys.executable, "-m", "cocoon", "chain", "policy", "--registry", net.chain.registry, "--history", "--json",
         "--chain-url", net.chain.url, "--api-key", TEST_API_KEY],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    ours = [(c["op"], c["subject"]) for c in report["history"] if c["subject"] == DEV_IMAGE.hex()]
    assert ours == [("allow-measurement", DEV_IMAGE.hex()), ("remove-measurement", DEV_IMAGE.hex()),
                    ("allow-measurement", DEV_IMAGE.hex())]  # fmt: skip
    assert all(len(c["transaction"].split(":")[1]) == 64 for c in report["history"])
    assert DEV_IMAGE.hex() in report["measurement_digests"]
    assert any(c["op"] == "set-model" for c in report["history"])
