"""The chain client reads every answer shape both toncenter servers produce, written from their own sources.

- The Python ``ton-http-api`` renders tonlib's stack with ``tvm_valuetypes.serialize_tvm_element``: a number as
  ``["num", hex]``, a cell *and a slice* as ``["cell", {"bytes": <BOC>, "object": <cell as JSON>}]``, tuples and
  lists as ``["tuple"|"list", {"@type": ..., "elements": [tonlib typed entries]}]``.
- The C++ server behind toncenter.com keeps that API; a slice is still ``"cell"``, and a TVM null (which tonlib has
  no entry for) is an empty ``["list", {"elements": []}]``, the "toncenter.com missbehaviour" ``@ton/ton``'s
  ``TonClient.parseStack`` reads as null.
- Errors come as ``{"ok": false, "error": "...", "code": N}``; a 429 has been seen with its text in ``result``.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from typing import Any, cast

import httpx
import pytest
from pytoniq_core.boc.address import Address
from pytoniq_core.boc.builder import Builder
from pytoniq_core.boc.cell import Cell
from pytoniq_core.boc.slice import Slice

from cocoon.chain import ChannelRole, ClientChannel, Registry, ToncenterClient
from cocoon.chain.contracts import read_address
from cocoon.chain.ratelimit import limiter_for
from cocoon.chain.toncenter import _ATTEMPTS as ATTEMPTS
from cocoon.chain.toncenter import StackValue, boc_bytes
from cocoon.errors import ChainError

PAYER = Address("0:" + "11" * 32)
PAYEE = Address("0:" + "22" * 32)
CONTRACT = Address("0:" + "33" * 32)


def cell_object(cell: Cell) -> dict[str, Any]:
    """``tvm_valuetypes``' ``Cell.serialize_to_object``: the cell's bits and refs beside its BOC."""
    return {
        "data": {"b64": base64.b64encode(cell.bits.tobytes()).decode(), "len": len(cell.bits)},
        "refs": [cell_object(ref) for ref in cell.refs],
        "special": False,
    }


def python_server_cell(cell: Cell) -> list[Any]:
    boc = base64.b64encode(boc_bytes(cell)).decode()
    return ["cell", {"bytes": boc, "object": cell_object(cell)}]


def cpp_server_cell(cell: Cell) -> list[Any]:
    return ["cell", {"bytes": base64.b64encode(boc_bytes(cell)).decode()}]


def address_cell(address: Address) -> Cell:
    cell: Cell = Builder().store_address(address).end_cell()
    return cell


@pytest.fixture(autouse=True)
def no_retry_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retried statuses (429, 504) back off for seconds; these tests only look at what is finally reported."""

    async def no_wait(_seconds: float) -> None:
        return None

    monkeypatch.setattr("cocoon.chain.toncenter.asyncio.sleep", no_wait)


NULL_AS_LIST: list[Any] = ["list", {"@type": "tvm.list", "elements": []}]
CELL_SHAPES = [pytest.param(python_server_cell, id="python-server"), pytest.param(cpp_server_cell, id="cpp-server")]


def run_result(stack: list[Any], exit_code: int = 0) -> dict[str, Any]:
    return {
        "ok": True,
        "result": {"@type": "smc.runResult", "gas_used": 1234, "stack": stack, "exit_code": exit_code, "@extra": "x"},
    }


def toncenter(answer: Callable[[httpx.Request], httpx.Response]) -> ToncenterClient:
    return ToncenterClient(
        "https://testnet.toncenter.com",
        api_key="test-key",
        rps=10_000,
        retry_backoff=0.001,
        transport=httpx.MockTransport(answer),
    )


def answering(status: int, body: dict[str, Any], seen: list[httpx.Request] | None = None) -> ToncenterClient:
    def handle(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(status, json=body)

    return toncenter(handle)


@pytest.mark.parametrize("shape", CELL_SHAPES)
async def test_an_address_slice_arrives_as_a_cell_and_reads_as_the_address(shape: Callable[[Cell], Any]) -> None:
    async with answering(200, run_result([shape(address_cell(PAYER))])) as chain:
        owner = await Registry(chain, CONTRACT).get_owner()
    assert owner == PAYER


@pytest.mark.parametrize("shape", CELL_SHAPES)
async def test_a_channel_reads_from_toncenters_stack_shapes(shape: Callable[[Cell], Any]) -> None:
    key = int.from_bytes(b"k" * 32, "big")
    stack = [
        shape(address_cell(PAYER)),
        shape(address_cell(PAYEE)),
        ["num", hex(key)],
        ["num", "0x0"],
        ["num", hex(5 * 10**9)],
        ["num", hex(10**9)],
        ["num", "0x0"],
        ["num", "0x0"],
    ]
    async with answering(200, run_result(stack)) as chain:
        state = await ClientChannel(chain, CONTRACT).get_channel()
    assert (state.payer, state.payee, state.role) == (PAYER, PAYEE, ChannelRole.CLIENT)
    assert (state.deposit, state.claimed, state.closed) == (5 * 10**9, 10**9, False)
    assert state.payer_key == b"k" * 32


@pytest.mark.parametrize("null", [NULL_AS_LIST, ["list", {"elements": []}], ["null", None]])
async def test_a_tvm_null_reads_as_none_in_every_shape(null: list[Any]) -> None:
    async with answering(200, run_result([null, ["num", "-0x2a"]])) as chain:
        assert await chain.run_get_method(CONTRACT, "get") == [None, -42]


async def test_a_proxy_the_registry_does_not_have_is_none_when_its_nulls_are_empty_lists() -> None:
    async with answering(200, run_result([["num", "0x0"], NULL_AS_LIST, ["num", "0x0"], NULL_AS_LIST])) as chain:
        registry = Registry(chain, CONTRACT)
        assert await registry.get_proxy(7) is None
    async with answering(200, run_result([NULL_AS_LIST])) as chain:
        assert await Registry(chain, CONTRACT).get_models() == []


async def test_a_tuple_holds_tonlibs_typed_entries_and_an_empty_list_inside_is_null() -> None:
    cell = address_cell(PAYER)
    boc = base64.b64encode(boc_bytes(cell)).decode()
    tuple_entry = [
        "tuple",
        {
            "@type": "tvm.tuple",
            "elements": [
                {"@type": "tvm.stackEntryNumber", "number": {"@type": "tvm.numberDecimal", "number": "7"}},
                {"@type": "tvm.stackEntrySlice", "slice": {"@type": "tvm.slice", "bytes": boc}},
                {"@type": "tvm.stackEntryCell", "cell": {"@type": "tvm.cell", "bytes": boc}},
                {"@type": "tvm.stackEntryList", "list": {"@type": "tvm.list", "elements": []}},
            ],
        },
    ]
    async with answering(200, run_result([tuple_entry])) as chain:
        (entry,) = await chain.run_get_method(CONTRACT, "get")
    number, a_slice, a_cell, null = cast(list[StackValue], entry)
    assert number == 7 and null is None
    assert read_address(a_slice) == read_address(a_cell) == PAYER


def test_read_address_takes_a_cell_or_a_slice_and_refuses_anything_else() -> None:
    cell = address_cell(PAYER)
    assert read_address(cell) == PAYER
    assert read_address(Slice.from_cell(cell)) == PAYER
    assert read_address(cell) == PAYER  # reading a Cell consumes nothing
    junk: tuple[object, ...] = (None, 5, [], Builder().store_uint(0, 8).end_cell())
    for value in junk:
        with pytest.raises(ChainError, match="expected an address"):
            read_address(value)


async def test_an_unreadable_stack_entry_is_a_chain_error_not_a_crash() -> None:
    async with answering(200, run_result([["cell", {"object": {}}]])) as chain:
        with pytest.raises(ChainError, match="unreadable get-method result entry"):
            await chain.run_get_method(CONTRACT, "get")


@pytest.mark.parametrize(
    ("status", "text"),
    [
        (416, "LITE_SERVER_UNKNOWN: cannot load block"),
        (422, "lt and hash must be given together"),
        (500, "LITE_SERVER_NETWORK timeout"),
        (504, "gateway timeout"),
        (542, "failed to unpack account state"),
    ],
)
async def test_the_error_envelope_is_a_chain_error_with_its_text_and_code(status: int, text: str) -> None:
    async with answering(status, {"ok": False, "error": text, "code": status}) as chain:
        with pytest.raises(ChainError) as failure:
            await chain.get_balance(CONTRACT)
    assert text in failure.value.message and str(status) in failure.value.message


async def test_a_429_whose_text_is_in_result_is_retried_then_reported() -> None:
    seen: list[httpx.Request] = []
    async with answering(429, {"ok": False, "result": "Ratelimit exceed", "code": 429}, seen) as chain:
        with pytest.raises(ChainError, match="Ratelimit exceed"):
            await chain.get_balance(CONTRACT)
    assert len(seen) == ATTEMPTS


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504, 542])
async def test_a_read_is_retried_through_transient_failures(status: int) -> None:
    answers = [httpx.Response(status, json={"ok": False, "error": "LITE_SERVER_NETWORK", "code": status})] * 2
    answers.append(httpx.Response(200, json={"ok": True, "result": {"balance": "7", "state": "active"}}))
    async with toncenter(lambda _request: answers.pop(0)) as chain:
        assert await chain.get_balance(CONTRACT) == 7
    assert answers == []


async def test_a_lost_connection_is_retried_for_reads_and_sends() -> None:
    failures = {"/api/v2/getAddressInformation": 2, "/api/v2/sendBoc": 2}

    def flaky(request: httpx.Request) -> httpx.Response:
        if failures[request.url.path] > 0:
            failures[request.url.path] -= 1
            raise httpx.ConnectError("connection reset by peer", request=request)
        if request.url.path == "/api/v2/sendBoc":
            return httpx.Response(200, json={"ok": True, "result": {"@type": "ok"}})
        return httpx.Response(200, json={"ok": True, "result": {"balance": "3", "state": "active"}})

    async with toncenter(flaky) as chain:
        assert await chain.get_balance(CONTRACT) == 3
        await chain.send_boc(b"\x00")
    assert failures == {"/api/v2/getAddressInformation": 0, "/api/v2/sendBoc": 0}


async def test_a_send_the_liteserver_refused_is_not_sent_again() -> None:
    """A 500 to sendBoc is the liteserver refusing the message: sending it again would only be refused again."""
    seen: list[httpx.Request] = []
    refusal = {"ok": False, "error": "LITE_SERVER_UNKNOWN: cannot apply external message", "code": 500}
    async with answering(500, refusal, seen) as chain:
        with pytest.raises(ChainError, match="cannot apply external message"):
            await chain.send_boc(b"\x00")
    assert len(seen) == 1


async def test_keyless_clients_of_one_public_endpoint_share_one_request_a_second() -> None:
    seen: list[float] = []

    def handle(_request: httpx.Request) -> httpx.Response:
        seen.append(time.monotonic())
        return httpx.Response(200, json={"ok": True, "result": {"balance": "1", "state": "active"}})

    first = ToncenterClient("https://ratelimit.example", transport=httpx.MockTransport(handle))
    second = ToncenterClient("https://ratelimit.example", transport=httpx.MockTransport(handle))
    async with first, second:
        await asyncio.gather(first.get_balance(CONTRACT), second.get_balance(CONTRACT), first.get_balance(CONTRACT))
    assert seen[2] - seen[0] >= 1.9  # a burst of one, then one a second, across both clients


async def test_a_local_devnet_without_a_key_is_not_rate_limited() -> None:
    assert limiter_for("http://127.0.0.1:8790", None) is None
    assert limiter_for("https://toncenter.com", "key") is not None


async def test_transactions_start_from_an_lt_only_with_its_hash() -> None:
    """A start point is one transaction's id, ``(lt, hash)``: the client has no way to send a lone lt."""
    seen: list[httpx.Request] = []
    async with answering(200, {"ok": True, "result": []}, seen) as chain:
        assert await chain.get_transactions(CONTRACT, start_at=(5, b"\x01" * 32)) == []
    (request,) = seen
    assert request.url.params["lt"] == "5"
    assert bytes.fromhex(request.url.params["hash"]) == b"\x01" * 32


async def test_no_builder_argument_can_be_sent() -> None:
    # toncenter refuses a tvm.Builder argument; only numbers, cells and slices go out.
    seen: list[httpx.Request] = []
    async with answering(200, run_result([]), seen) as chain:
        cell = address_cell(PAYER)
        await chain.run_get_method(CONTRACT, "get", [1, cell, Slice.from_cell(cell)])
    kinds = [entry[0] for entry in httpx.Response(200, content=seen[0].content).json()["stack"]]
    assert kinds == ["num", "tvm.Cell", "tvm.Slice"]
