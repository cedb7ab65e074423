"""Init data, addresses and message bodies built in Python equal the contracts' own (@ton/core) build.

Vectors: contracts/test-vectors.json, written by `npm run build` in contracts/ and checked there against
the sandbox; comparing cell hashes here pins every bit of every layout in contracts/ABI.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pytoniq_core.boc.address import Address
from pytoniq_core.boc.cell import Cell

from cocoon.chain import ChannelConfig, ChannelRole, ModelEntry, ProxyEntry, RegistryParams, contract_code
from cocoon.chain.address import raw_address
from cocoon.chain.channel import claim_body, deposit_body, start_close_body, withdraw_body
from cocoon.chain.contracts import address_of, state_init_for
from cocoon.chain.registry import (
    add_measurement_body,
    change_owner_body,
    measurement_key,
    model_name_hash,
    registry_init_data,
    remove_measurement_body,
    remove_model_body,
    remove_proxy_body,
    set_params_body,
    upsert_model_body,
    upsert_proxy_body,
)
from cocoon.chain.wallet import WALLET_V4R2_CODE, WALLET_V4R2_CODE_HASH, InternalTransfer, Wallet

VECTORS = Path(__file__).resolve().parents[3] / "contracts" / "test-vectors.json"
Q = 42


@pytest.fixture(scope="module")
def vectors() -> dict[str, Any]:
    if not VECTORS.exists():
        pytest.skip("contracts/test-vectors.json is not built yet (cd contracts && npm run build)")
    return dict(json.loads(VECTORS.read_text()))


def int_bytes(decimal: str) -> bytes:
    return int(decimal).to_bytes(32, "big")


def test_registry_init_data_and_address_match(vectors: dict[str, Any]) -> None:
    reg = vectors["registry"]
    cfg = reg["config"]
    params = RegistryParams(
        cfg["proxyFeeBps"], int(cfg["minClientDeposit"]), int(cfg["minWorkerDeposit"]), cfg["closeDelay"]
    )

    data = registry_init_data(Address(cfg["owner"]), params)

    assert data.hash.hex() == reg["dataHashHex"]
    assert raw_address(address_of(state_init_for(contract_code("registry"), data))) == reg["address"]


def test_registry_bodies_match(vectors: dict[str, Any]) -> None:
    reg = vectors["registry"]
    bp = reg["bodyParams"]
    cfg = reg["config"]
    m = bp["model"]
    model = ModelEntry(
        m["name"],
        int_bytes(m["weightsHash"]),
        int(m["pricePrompt"]),
        int(m["priceCached"]),
        int(m["priceCompletion"]),
    )
    p = bp["proxy"]
    proxy = ProxyEntry(int(p["id"]), Address(p["addr"]), int_bytes(p["pubkey"]), p["endpoint"])
    key = measurement_key(bytes.fromhex(reg["measurementHex"]))
    params = RegistryParams(
        bp["setParamsProxyFeeBps"],
        int(cfg["minClientDeposit"]),
        int(cfg["minWorkerDeposit"]),
        cfg["closeDelay"],
    )

    built: dict[str, Cell] = {
        "set_params": set_params_body(params, Q),
        "upsert_model": upsert_model_body(model, Q),
        "remove_model": remove_model_body(reg["modelName"], Q),
        "add_measurement": add_measurement_body(key, Q),
        "remove_measurement": remove_measurement_body(key, Q),
        "upsert_proxy": upsert_proxy_body(proxy, Q),
        "remove_proxy": remove_proxy_body(proxy.id, Q),
        "change_owner": change_owner_body(Address(bp["changeOwnerTo"]), Q),
    }

    assert int.from_bytes(model_name_hash(reg["modelName"]), "big") == int(reg["modelKey"])
    assert int.from_bytes(key, "big") == int(reg["measurementKey"])
    assert {name: cell.hash.hex() for name, cell in built.items()} == {
        name: body["hashHex"] for name, body in reg["bodies"].items()
    }


def test_channel_init_data_addresses_and_bodies_match(vectors: dict[str, Any]) -> None:
    ch = vectors["channel"]
    cfg = ch["config"]
    config = ChannelConfig(
        Address(cfg["payer"]),
        Address(cfg["payee"]),
        bytes.fromhex(cfg["payerKeyHex"]),
        ChannelRole(cfg["role"]),
        int(cfg["channelId"]),
        cfg["closeDelay"],
    )
    worker = ChannelConfig(*[getattr(config, f) for f in ("payer", "payee", "payer_key")], ChannelRole.WORKER, 7, 3600)
    code = contract_code("payment_channel")
    signature = bytes.fromhex(ch["voucher"]["signatureHex"])

    assert config.init_data().hash.hex() == ch["dataHashHex"]
    assert raw_address(address_of(state_init_for(code, config.init_data()))) == ch["address"]
    assert raw_address(address_of(state_init_for(code, worker.init_data()))) == ch["workerRole1Address"]
    assert {
        "deposit": deposit_body(int(ch["bodyParams"]["depositAmount"]), Q).hash.hex(),
        "claim": claim_body(int(ch["voucher"]["cumulative"]), signature, Q).hash.hex(),
        "start_close": start_close_body(Q).hash.hex(),
        "withdraw": withdraw_body(Q).hash.hex(),
    } == {name: body["hashHex"] for name, body in ch["bodies"].items()}


def test_wallet_is_the_standard_v4r2() -> None:
    wallet = Wallet(bytes(32))

    assert WALLET_V4R2_CODE.hash.hex() == WALLET_V4R2_CODE_HASH
    assert address_of(wallet.state_init) == wallet.address
    message = wallet.external_message(0, [InternalTransfer(wallet.address, 1)], valid_until=0, deploy=True)
    body = message.begin_parse()
    assert body.load_uint(2) == 0b10  # ext_in_msg_info
