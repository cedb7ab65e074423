"""Get-methods run here, in the TVM (``pytvm``), on an account state the caller has proven.

``LiteserverClient`` proves an account's code and data against a block, then asks this module for the
get-method's result instead of trusting a server's answer. The result stack is converted into cocoon's own
``StackValue`` exactly as ``ToncenterClient`` decodes toncenter's, so the contract wrappers read one shape:
ints, a Cell for a cell, slice or builder, ``None`` for null (and, as tonlib renders it, for an empty tuple),
lists for tuples. ``pytvm`` ships with the ``liteserver`` extra and is imported only when a method runs.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from pytoniq_core.boc.address import Address
from pytoniq_core.boc.builder import Builder
from pytoniq_core.boc.cell import Cell
from pytoniq_core.boc.slice import Slice

from cocoon.chain.address import address_text
from cocoon.chain.toncenter import StackArg, StackValue
from cocoon.errors import ChainError, ConfigError

INSTALL_HINT = "pip install 'cocoon[liteserver]'"
GAS_LIMIT = 1_000_000  # a get-method of ours uses a few thousand; this stops a runaway one


@dataclass(frozen=True, slots=True)
class ContractState:
    """What a get-method runs on: the account's code, data and balance, the block's time and config.

    ``config`` is the root of the masterchain config dictionary (``Hashmap 32 ^Cell``); a getter reads
    e.g. config param 19 (the global id) from it. ``libraries`` is the ``HashmapE 256`` of library cells the
    code references, if any.
    """

    address: Address
    code: Cell
    data: Cell
    balance: int
    unixtime: int
    config: Cell
    libraries: Cell | None = None


def run_get_method(state: ContractState, method: str, stack: Sequence[StackArg] = ()) -> list[StackValue]:
    """Run ``method`` on ``state`` and return its result stack, bottom first (as ``ToncenterClient`` does).

    Blocking (the emulator runs in C++; call it through ``asyncio.to_thread``). ChainError on an exit code
    other than 0 or 1; ConfigError when ``pytvm`` is not installed.
    """
    emulator_class, engine = _tvm()
    emulator = emulator_class(code=state.code, data=state.data, engine=engine)
    emulator.set_gas_limit(GAS_LIMIT)
    emulator.set_c7(
        address=address_text(state.address),
        unixtime=state.unixtime,
        balance=state.balance,
        rand_seed_hex=secrets.token_hex(32),
        config=state.config,
    )
    if state.libraries is not None:
        emulator.set_libraries(state.libraries)
    result = emulator.run_get_method(method, [to_vm_arg(arg) for arg in stack])
    exit_code = int(result.get("vm_exit_code", -1))
    if exit_code not in (0, 1):
        raise ChainError(
            f"get-method {method} on {address_text(state.address)} failed with exit code {exit_code} "
            "(run locally on the proven state)"
        )
    return [from_vm_value(value) for value in result["stack"]]


def to_vm_arg(arg: StackArg) -> int | Cell | Slice:
    """An argument as pytoniq's ``VmStack`` takes it; a bool is TVM's -1/0, as ``ToncenterClient`` sends it."""
    if isinstance(arg, bool):
        return -1 if arg else 0
    return arg


def from_vm_value(value: Any) -> StackValue:
    """One of pytoniq's ``VmStack`` values as cocoon's ``StackValue``; ChainError for a continuation."""
    from pytoniq_core.tlb.vm_stack import VmTuple

    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, Cell):
        return value
    if isinstance(value, Slice):
        # toncenter renders a slice as the cell of its remaining bits and refs; so does this.
        cell: Cell = Builder().store_slice(value).end_cell()
        return cell
    if isinstance(value, Builder):
        built: Cell = value.end_cell()
        return built
    if isinstance(value, VmTuple | list):
        items = list(value.list if isinstance(value, VmTuple) else value)
        # tonlib, hence toncenter, cannot tell an empty tuple from null; reading both as None keeps the paths alike.
        return [from_vm_value(item) for item in items] if items else None
    raise ChainError(f"unsupported get-method result value {value!r} (continuations are not read)")


@functools.cache
def _tvm() -> tuple[Any, Any]:
    """pytvm's emulator class and its engine, loaded once.

    pytvm finds its shared library through ``pkg_resources``, which setuptools 81 removed; the library sits
    beside ``pytvm.engine``, so it is loaded from there.
    """
    try:
        from pytvm.engine import EmulatorEngineC
        from pytvm.tvm_emulator import TvmEmulator
    except ImportError as exc:
        raise ConfigError(f"running get-methods locally needs the TVM emulator (pytvm); {INSTALL_HINT}") from exc
    folder = resources.files("pytvm.engine")
    found = sorted(str(entry) for entry in folder.iterdir() if entry.name.startswith("libemulator"))
    if not found:
        raise ConfigError(f"pytvm has no emulator library for this platform in {folder}; reinstall it from source")
    engine = EmulatorEngineC(found[0])
    engine.emulator_set_verbosity_level(0)
    return TvmEmulator, engine
