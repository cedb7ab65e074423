"""What the contract wrappers share: the shipped code cells, addresses, strings, and a checked send.

Code cells come from ``cocoon/chain/contracts/<name>.boc`` (compiled from ``contracts/`` in Tolk), each
verified against its ``<name>.json`` hash; a send waits for the contract's own transaction and raises
``TransactionFailed`` with the ABI's meaning of the exit code when the contract rejects the message.
"""

from __future__ import annotations

import functools
import json
import secrets
import time
from collections.abc import Mapping
from importlib import resources

from pytoniq_core.boc.address import Address
from pytoniq_core.boc.builder import Builder
from pytoniq_core.boc.cell import Cell
from pytoniq_core.boc.slice import Slice
from pytoniq_core.tlb.account import StateInit

from cocoon.chain.address import address_text
from cocoon.chain.toncenter import ToncenterClient, Transaction
from cocoon.chain.wallet import InternalTransfer, Wallet
from cocoon.errors import BadRequest, ChainError, ConfigError, TransactionFailed

TON = 1_000_000_000
MAX_STRING_BYTES = 127


@functools.cache
def contract_code(name: str) -> Cell:
    """The compiled code cell of contract ``name`` (``registry``, ``payment_channel``)."""
    folder = resources.files("cocoon.chain").joinpath("contracts")
    try:
        boc = folder.joinpath(f"{name}.boc").read_bytes()
        meta = json.loads(folder.joinpath(f"{name}.json").read_text())
    except FileNotFoundError as exc:
        raise ConfigError(
            f"compiled contract {name!r} is missing from cocoon/chain/contracts; run `npm run build` in contracts/"
        ) from exc
    code: Cell = Cell.one_from_boc(boc)
    if code.hash.hex() != str(meta.get("codeHashHex", "")).lower():
        raise ConfigError(f"contracts/{name}.boc does not match the hash in {name}.json; rebuild the contracts")
    return code


def new_query_id() -> int:
    """A fresh 64-bit ``query_id``: milliseconds since the epoch and 16 random bits, as wallets do, so that
    replies and bounces name the message they answer."""
    return ((time.time_ns() // 1_000_000) << 16 | secrets.randbits(16)) & (2**64 - 1)


def state_init_for(code: Cell, data: Cell) -> StateInit:
    return StateInit(code=code, data=data)


def address_of(state_init: StateInit, workchain: int = 0) -> Address:
    """The address a contract with this StateInit gets (the TON standard: hash of the StateInit cell)."""
    return Address((workchain, state_init.serialize().hash))


def string_cell(text: str) -> Cell:
    """A single-cell UTF-8 string, the layout the contracts use for model names and endpoints."""
    raw = text.encode()
    if not 0 < len(raw) <= MAX_STRING_BYTES:
        raise BadRequest(f"on-chain strings are 1..{MAX_STRING_BYTES} UTF-8 bytes, got {len(raw)}: {text[:40]!r}")
    cell: Cell = Builder().store_bytes(raw).end_cell()
    return cell


def read_string(cell: Cell, errors: str = "strict") -> str:
    """The UTF-8 string of a single cell (``string_cell``); ``errors`` as ``bytes.decode`` takes it."""
    body = Slice.from_cell(cell)
    return bytes(body.load_bytes(body.remaining_bits // 8)).decode(errors=errors)


def read_address(value: object) -> Address:
    """The address at the start of ``value``, a Cell or a Slice; ChainError when it holds none.

    A get-method's slice comes back from toncenter as a ``"cell"`` entry (see ``toncenter``), and a dictionary
    value as a Slice, so both are read; a Slice is consumed past the address, a Cell is left as it was.
    """
    body = Slice.from_cell(value) if isinstance(value, Cell) else value
    if isinstance(body, Slice):
        try:
            address = body.load_address()
        except (ValueError, TypeError, IndexError) as exc:
            raise ChainError(f"expected an address on the stack, got an unreadable {value!r}: {exc}") from exc
        if isinstance(address, Address):
            return address
    raise ChainError(f"expected an address (a cell or slice) on the stack, got {value!r}")


async def send_checked(
    client: ToncenterClient,
    wallet: Wallet,
    destination: Address,
    *,
    body: Cell,
    value: int,
    exit_codes: Mapping[int, str],
    state_init: StateInit | None = None,
    timeout: float = 60.0,
) -> Transaction:
    """Send ``body`` with ``value`` nanoton from ``wallet`` and return the contract's transaction for it.

    A retry of the same call after an interruption resumes the message sent before (see ``Wallet.transfer``);
    give every body a fresh ``query_id`` (``new_query_id``) so that two real sends never look the same.

    Raises TransactionFailed (``exit_code`` set) when the contract rejects the message; the network
    bounces the value back to the wallet minus fees.
    """
    transfer = InternalTransfer(destination, value, body=body, state_init=state_init, bounce=True)
    sent = await wallet.transfer(client, [transfer], timeout=timeout)
    # The wallet's own transaction names the message it sent; the destination's transaction is the one that
    # received exactly that message (same source and created_lt), not whichever recent one looks alike.
    out = next((m for m in sent.transaction.out_msgs if m.destination == destination), None)
    if out is None:
        raise ChainError(
            f"wallet {address_text(wallet.address)} applied the message but sent nothing to "
            f"{address_text(destination)}: its balance did not cover {value} nanoton plus fees"
        )
    tx = await client.locate_result(out, timeout=timeout)
    if not tx.succeeded:
        code = tx.exit_code
        meaning = exit_codes.get(code, "unexpected failure") if code is not None else "the message was not executed"
        raise TransactionFailed(
            f"{address_text(destination)} rejected the message: {meaning} (exit code {code})", exit_code=code
        )
    return tx
