"""The owner's commands on a devnet in real-toncenter mode, as they would run on testnet: fund the owner
wallet, deploy the registry, list a model, allow a measurement, and refuse a chain of another network."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from pytoniq_core.boc.address import Address

from cocoon.chain import TON
from tests.helpers.chain import TEST_API_KEY, devnet_chain

WEIGHTS = "ab" * 32
MEASUREMENT = "cd" * 48


def cocoon(
    *args: str, chain_url: str, key: Path | None = None, network: str = "devnet"
) -> subprocess.CompletedProcess[str]:
    where = ["--chain-url", chain_url, "--network", network, "--api-key", TEST_API_KEY]
    owner = ["--owner-key", str(key)] if key is not None else []
    return subprocess.run(
        [sys.executable, "-m", "cocoon", "chain", *args, *where, *owner],
        capture_output=True,
        text=True,
        timeout=180,
    )


async def test_an_owner_brings_up_a_registry_from_the_command_line(tmp_path: Path) -> None:
    key = tmp_path / "owner-key.json"
    async with devnet_chain(tmp_path) as chain:
        url = chain.process.base_url

        empty = cocoon("wallet", "--json", chain_url=url, key=key)
        assert empty.returncode == 0, empty.stderr
        wallet = json.loads(empty.stdout)
        assert wallet["balance"] == 0 and wallet["address"].startswith("UQ")  # non-bounceable while undeployed
        await chain.devnet.fund(Address(wallet["address"]), 5 * TON)
        # As docs/chain.md says: run `cocoon chain wallet` again until the balance shows (toncenter caches reads
        # for a second, so the first look after funding may still see none).
        for _ in range(20):
            if json.loads(cocoon("wallet", "--json", chain_url=url, key=key).stdout)["balance"] > 0:
                break
            await asyncio.sleep(0.5)

        deployed = cocoon("registry", "deploy", "--proxy-fee", "300", "--close-delay", "600", chain_url=url, key=key)
        assert deployed.returncode == 0, deployed.stderr
        registry = deployed.stderr.split("registry deployed at ")[1].split(";")[0]
        again = cocoon("registry", "deploy", "--proxy-fee", "300", "--close-delay", "600", chain_url=url, key=key)
        assert again.returncode == 0 and "is deployed already" in again.stderr

        listed = cocoon(
            "registry", "set-model", "gemma-3-270m", "--weights-hash", WEIGHTS, "--prompt", "100",
            "--completion", "300", "--registry", registry, chain_url=url, key=key,
        )  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        allowed = cocoon("registry", "allow-measurement", MEASUREMENT, "--registry", registry, chain_url=url, key=key)
        assert allowed.returncode == 0, allowed.stderr

        shown = cocoon("registry", "show", "--registry", registry, "--json", chain_url=url)
        assert shown.returncode == 0, shown.stderr
        report = json.loads(shown.stdout)
        assert (report["proxy_fee_bps"], report["close_delay"]) == (300, 600)
        assert report["models"] == [{"model": "gemma-3-270m", "prompt": 100, "cached": 100, "completion": 300}]
        assert len(report["measurements"]) == 1
        assert not (tmp_path / "owner-key.json.outbox.json").exists()  # every send's outcome is known


async def test_the_owner_commands_refuse_a_chain_of_another_network(tmp_path: Path) -> None:
    async with devnet_chain(tmp_path) as chain:
        refused = cocoon("wallet", chain_url=chain.process.base_url, key=tmp_path / "k.json", network="testnet")
    said = " ".join(refused.stderr.split())
    assert refused.returncode == 2
    assert "serves devnet (global id -662), but this role is configured for testnet" in said
    assert "pass --network devnet (or COCOON_NETWORK=devnet)" in said and "Traceback" not in said
