"""Each role is bound to one network: its chain_url must serve that network's global id (config param 19)."""

from __future__ import annotations

import base64

import httpx
import pytest
from pytoniq_core.boc.builder import Builder

from cocoon.chain import MAINNET_GLOBAL_ID, TESTNET_GLOBAL_ID, ToncenterClient
from cocoon.chain.network import DEVNET_GLOBAL_ID, GLOBAL_IDS, check_network, network_of
from cocoon.errors import ConfigError
from tests.helpers.chain import mock_toncenter


def serving(global_id: int) -> ToncenterClient:
    param = base64.b64encode(Builder().store_int(global_id, 32).end_cell().to_boc()).decode()  # type: ignore[no-untyped-call]

    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v2/getConfigParam" and request.url.params["config_id"] == "19"
        return httpx.Response(200, json={"ok": True, "result": {"@type": "configInfo", "config": {"bytes": param}}})

    return mock_toncenter("https://testnet.toncenter.com/api/v2", handle)


def test_the_three_networks_have_three_ids() -> None:
    assert GLOBAL_IDS == {"mainnet": MAINNET_GLOBAL_ID, "testnet": TESTNET_GLOBAL_ID, "devnet": DEVNET_GLOBAL_ID}
    assert len(set(GLOBAL_IDS.values())) == 3
    assert network_of(-3) == "testnet" and network_of(12345) is None


async def test_a_role_on_its_own_network_gets_the_global_id() -> None:
    async with serving(TESTNET_GLOBAL_ID) as chain:
        assert await check_network(chain, "testnet") == TESTNET_GLOBAL_ID


async def test_a_testnet_endpoint_is_refused_to_a_role_set_for_mainnet_with_the_fix_named() -> None:
    async with serving(TESTNET_GLOBAL_ID) as chain:
        with pytest.raises(ConfigError) as refused:
            await check_network(chain, "mainnet", env="COCOON_PROXY_NETWORK")
    message = refused.value.message
    assert "serves testnet (global id -3)" in message and "configured for mainnet (global id -239)" in message
    assert 'set network = "testnet" in the config (or COCOON_PROXY_NETWORK=testnet)' in message


async def test_an_unknown_network_is_refused_to_every_setting() -> None:
    async with serving(777) as chain:
        for network in GLOBAL_IDS:
            with pytest.raises(ConfigError, match="an unknown network \\(global id 777\\)"):
                await check_network(chain, network)
