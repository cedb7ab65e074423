"""The liteserver read path, checked offline: what a live liteserver is not needed for.

pytoniq's objects convert to cocoon's types; tampered proofs and broken hash chains are refused;
connection failures and a missing package surface as cocoon's errors. The get-methods it runs locally are
tested in ``test_local_tvm``.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import struct
import sys
from typing import Any

import pytest
from bitarray import bitarray
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pytoniq_core.boc.address import Address
from pytoniq_core.boc.builder import Builder
from pytoniq_core.boc.cell import Cell
from pytoniq_core.boc.hashmap.hashmap import HashMap
from pytoniq_core.boc.slice import Slice
from pytoniq_core.proof.check_proof import ProofError, check_proof
from pytoniq_core.tlb.account import (
    Account,
    AccountStorage,
    StateInit,
    StorageExtraInfo,
    StorageInfo,
    StorageUsed,
)
from pytoniq_core.tlb.account import (
    AccountState as TlbAccountState,
)
from pytoniq_core.tlb.transaction import CurrencyCollection

from cocoon.chain import RegistryParams, contract_code
from cocoon.chain.liteserver import (
    LiteserverClient,
    account_state,
    chained_transactions,
    config_from_proof,
    load_global_config,
    map_liteserver_errors,
    open_chain,
)
from cocoon.chain.registry import registry_init_data
from cocoon.chain.toncenter import ToncenterClient
from cocoon.chain.vouchers import MAINNET_GLOBAL_ID
from cocoon.errors import ChainError, ConfigError, UpstreamTimeout

OWNER = Address("0:" + "11" * 32)


def chain_config(global_id: int = MAINNET_GLOBAL_ID) -> Cell:
    """A config dictionary holding param 19 (the global id), the one a proof here carries."""
    config = HashMap(32, value_serializer=lambda value, dest: dest.store_ref(value))
    config.map = {19: Builder().store_int(global_id, 32).end_cell()}
    root: Cell = config.serialize()
    return root


def _account(kind: str, balance: int, code: Cell | None = None, data: Cell | None = None) -> Account:
    if kind == "account_active":
        state = TlbAccountState(kind, state_init=StateInit(code=code, data=data))
    elif kind == "account_frozen":
        state = TlbAccountState(kind, state_hash="ab" * 32)
    else:
        state = TlbAccountState(kind)
    storage = AccountStorage(last_trans_lt=99, balance=CurrencyCollection(balance), state=state)
    info = StorageInfo(StorageUsed(1, 100), StorageExtraInfo("storage_extra_none"), 1_700_000_000, None)
    account = Account(OWNER, info, storage)
    # Through a real cell and pytoniq_core's parse, as the liteserver path reads it.
    parsed: Account = Account.deserialize(Slice.from_cell(account.serialize()))
    return parsed


def test_pytoniq_accounts_convert_to_account_state() -> None:
    code, data = contract_code("registry"), registry_init_data(OWNER, RegistryParams())
    active = account_state(OWNER, _account("account_active", 5 * 10**9, code, data), 1234, 1_700_000_001)
    assert (active.status, active.balance, active.last_lt, active.sync_utime) == (
        "active",
        5 * 10**9,
        1234,
        1_700_000_001,
    )
    assert active.code == code and active.data == data and active.active

    frozen = account_state(OWNER, _account("account_frozen", 3), 1, 2)
    assert (frozen.status, frozen.balance, frozen.code, frozen.data) == ("frozen", 3, None, None)
    uninit = account_state(OWNER, _account("account_uninit", 8), 1, 2)
    assert (uninit.status, uninit.balance, uninit.code) == ("uninitialized", 8, None)
    nothing = account_state(OWNER, None, 0, 2)
    assert (nothing.status, nothing.balance, nothing.active) == ("uninitialized", 0, False)


def _merkle_proof(child: Cell) -> Cell:
    bits = bitarray()
    bits.frombytes(b"\x03" + child.get_hash(0) + child.get_depth(0).to_bytes(2, "big"))
    return Cell(bits, [child], 3)


def test_a_tampered_merkle_proof_is_refused() -> None:
    state = Builder().store_uint(1, 8).store_ref(contract_code("registry")).end_cell()
    proof = _merkle_proof(state)
    check_proof(proof, state.hash)  # the genuine one verifies

    forged_child = Builder().store_uint(2, 8).store_ref(contract_code("registry")).end_cell()
    claims_old_hash = Cell(proof.bits.copy(), [forged_child], 3)
    with pytest.raises(ProofError):
        check_proof(claims_old_hash, state.hash)
    with pytest.raises(ProofError):
        check_proof(_merkle_proof(forged_child), state.hash)


def test_a_config_not_of_the_proven_state_is_refused() -> None:
    config = chain_config()
    extra = Builder().store_ref(Cell.empty()).store_ref(config).end_cell()
    shard_state = Builder().store_ref(Cell.empty()).store_ref(Cell.empty()).store_ref(Cell.empty()).store_ref(extra)
    proof = Builder().store_ref(shard_state.end_cell()).end_cell()

    assert config_from_proof(proof, config.hash) == config
    with pytest.raises(ProofError):
        config_from_proof(proof, chain_config(-3).hash)


def test_a_transaction_list_off_its_hash_chain_is_refused() -> None:
    not_the_anchor = Builder().store_uint(7, 32).end_cell()
    with pytest.raises(ProofError, match="hashes to"):
        chained_transactions([not_the_anchor], (10, b"\x00" * 32))
    assert chained_transactions([], (10, b"\x00" * 32)) == ([], (10, b"\x00" * 32))


def test_liteserver_errors_map_to_chain_errors() -> None:
    from pytoniq.liteclient.client import LiteClientError, LiteServerError

    with pytest.raises(ChainError, match="error 651: cannot load block"), map_liteserver_errors("reading x"):
        raise LiteServerError(651, "cannot load block")
    with pytest.raises(ChainError, match="proof does not verify"), map_liteserver_errors("reading x"):
        raise ProofError("state hashes mismatch")
    with pytest.raises(ChainError, match="Connection is closed"), map_liteserver_errors("reading x"):
        raise LiteClientError("Connection is closed")
    with pytest.raises(UpstreamTimeout), map_liteserver_errors("reading x"):
        raise TimeoutError


SERVER_KEY = base64.b64encode(
    Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
).decode()


def _global_config(port: int) -> dict[str, Any]:
    ip = struct.unpack(">i", socket.inet_aton("127.0.0.1"))[0]
    return {
        "liteservers": [{"ip": ip, "port": port, "id": {"@type": "pub.ed25519", "key": SERVER_KEY}}],
        "validator": {
            "init_block": {"workchain": -1, "shard": -(2**63), "seqno": 0, "root_hash": "A" * 44, "file_hash": "A" * 44}
        },
    }


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_an_unreachable_liteserver_is_a_chain_error() -> None:
    async with LiteserverClient(_global_config(_closed_port()), http_url="http://127.0.0.1:1", trust_level=1) as chain:
        with pytest.raises(ChainError, match="none of the 1 liteservers"):
            await chain.get_address_information(OWNER)


async def test_a_silent_liteserver_is_an_upstream_timeout() -> None:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers the handshake
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = _global_config(port)
    try:
        async with LiteserverClient(config, http_url="http://127.0.0.1:1", trust_level=1, connect_timeout=0.5) as chain:
            with pytest.raises(UpstreamTimeout, match="none of the 1 liteservers"):
                await chain.global_id()
    finally:
        server.close()
        await server.wait_closed()


async def test_open_chain_reads_over_http_unless_told_otherwise(tmp_path: Any) -> None:
    http = open_chain("http://127.0.0.1:1")
    assert type(http) is ToncenterClient
    await http.aclose()
    path = tmp_path / "global.config.json"
    path.write_text(__import__("json").dumps(_global_config(1)))
    lite = open_chain("http://127.0.0.1:1", reads="liteserver", liteserver_config=path)
    assert isinstance(lite, LiteserverClient) and lite.trust_level == 0
    await lite.aclose()
    with pytest.raises(ConfigError, match="global config"):
        open_chain("http://127.0.0.1:1", reads="liteserver")


async def test_on_mainnet_reads_are_proof_checked_unless_told_to_trust_http(tmp_path: Any) -> None:
    path = tmp_path / "global.config.json"
    path.write_text(__import__("json").dumps(_global_config(1)))
    for network in ("devnet", "testnet"):
        client = open_chain("https://toncenter.com", network=network)
        assert type(client) is ToncenterClient
        await client.aclose()
    with pytest.raises(ConfigError, match=r"the default on mainnet.*set liteserver_config"):
        open_chain("https://toncenter.com", network="mainnet")
    lite = open_chain("https://toncenter.com", network="mainnet", liteserver_config=path)
    assert isinstance(lite, LiteserverClient)
    await lite.aclose()
    trusting = open_chain("https://toncenter.com", network="mainnet", reads="http")
    assert type(trusting) is ToncenterClient
    await trusting.aclose()


def test_a_file_that_is_no_global_config_is_a_config_error(tmp_path: Any) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"liteservers": []}')
    with pytest.raises(ConfigError, match="not a TON global config"):
        load_global_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_global_config(tmp_path / "missing.json")


def test_missing_pytoniq_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pytoniq.liteclient.client", None)
    with pytest.raises(ConfigError, match=r"pip install 'cocoon\[liteserver\]'"):
        open_chain("http://127.0.0.1:1", reads="liteserver", liteserver_config=_global_config(1))
