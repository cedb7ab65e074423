"""The toncenter client reads the chain's global id (config param 19) in the shape real toncenter answers it,
once per client: every voucher names it, so a client must know which chain it is on before it signs one."""

from __future__ import annotations

import base64

import httpx
import pytest
from pytoniq_core.boc.builder import Builder

from cocoon.chain import MAINNET_GLOBAL_ID, TESTNET_GLOBAL_ID, ToncenterClient
from cocoon.errors import ChainError

# blockpi's documented answer to getConfigParam?config_id=1 (the elector address 0x3333…): toncenter hands back
# the parameter's own cell, not the dictionary entry around it.
REAL_PARAM_1 = "te6cckEBAQEAIgAAQDMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzwqnziA=="


def config_answer(bytes_b64: str) -> dict[str, object]:
    return {
        "ok": True,
        "result": {"@type": "configInfo", "config": {"@type": "tvm.cell", "bytes": bytes_b64}},
    }


def param_19(global_id: int) -> str:
    cell = Builder().store_int(global_id, 32).end_cell()
    return base64.b64encode(cell.to_boc()).decode()  # type: ignore[no-untyped-call]


def toncenter(answers: dict[int, dict[str, object]], calls: list[int]) -> ToncenterClient:
    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v2/getConfigParam"
        config_id = int(request.url.params["config_id"])
        calls.append(config_id)
        return httpx.Response(200, json=answers[config_id])

    return ToncenterClient(
        "https://testnet.toncenter.com",
        api_key="test-key",
        rps=10_000,
        retry_backoff=0.001,
        transport=httpx.MockTransport(handle),
    )


async def test_a_config_param_is_the_cell_toncenter_sends() -> None:
    async with toncenter({1: config_answer(REAL_PARAM_1)}, []) as chain:
        cell = await chain.get_config_param(1)
    assert cell.begin_parse().load_bytes(32) == b"\x33" * 32


@pytest.mark.parametrize("global_id", [TESTNET_GLOBAL_ID, MAINNET_GLOBAL_ID])
async def test_the_global_id_is_read_from_param_19_once(global_id: int) -> None:
    calls: list[int] = []
    async with toncenter({19: config_answer(param_19(global_id))}, calls) as chain:
        assert await chain.global_id() == global_id
        assert await chain.global_id() == global_id
    assert calls == [19]


async def test_an_answer_without_a_cell_is_a_chain_error() -> None:
    async with toncenter({19: {"ok": True, "result": {"@type": "configInfo"}}}, []) as chain:
        with pytest.raises(ChainError, match="getConfigParam 19"):
            await chain.global_id()


async def test_a_param_19_too_short_for_an_int32_is_a_chain_error() -> None:
    short = base64.b64encode(Builder().store_uint(1, 8).end_cell().to_boc()).decode()  # type: ignore[no-untyped-call]
    async with toncenter({19: config_answer(short)}, []) as chain:
        with pytest.raises(ChainError, match="not an int32"):
            await chain.global_id()
