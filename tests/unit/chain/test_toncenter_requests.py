"""What the toncenter client asks for: the paths a pasted ``chain_url`` leads to, and ``getTransactions``
within both toncenter servers' rules (``limit`` at most 100, ``lt`` only together with ``hash``)."""

from __future__ import annotations

import base64

import httpx
import pytest
from pytoniq_core.boc.builder import Builder
from pytoniq_core.boc.cell import Cell

from cocoon.chain import ToncenterClient
from cocoon.chain.toncenter import TRANSACTIONS_PAGE
from cocoon.errors import BadRequest

ACCOUNT = "0:" + "ab" * 32


@pytest.mark.parametrize(
    "chain_url",
    [
        "https://testnet.toncenter.com",
        "https://testnet.toncenter.com/",
        "https://testnet.toncenter.com/api/v2",  # as toncenter's docs print the endpoint
        "https://testnet.toncenter.com/api/v2/",
    ],
)
async def test_a_chain_url_with_or_without_api_v2_calls_the_same_endpoint(chain_url: str) -> None:
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url.copy_with(query=None)))
        return httpx.Response(200, json={"ok": True, "result": {"balance": "7", "state": "active"}})

    async with ToncenterClient(
        chain_url, api_key="test-key", rps=10_000, retry_backoff=0.001, transport=httpx.MockTransport(handle)
    ) as chain:
        assert await chain.get_balance(ACCOUNT) == 7
    assert seen == ["https://testnet.toncenter.com/api/v2/getAddressInformation"]


async def test_a_chain_url_under_a_prefix_keeps_its_prefix() -> None:
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, json={"ok": True, "result": {"balance": "0"}})

    async with ToncenterClient(
        "https://rpc.example/ton/api/v2",
        api_key="test-key",
        rps=10_000,
        retry_backoff=0.001,
        transport=httpx.MockTransport(handle),
    ) as chain:
        await chain.get_balance(ACCOUNT)
    assert seen == ["/ton/api/v2/getAddressInformation"]


def transaction_cell(lt: int) -> Cell:
    """A minimal ``Transaction`` (TL-B ``transaction$0111``, a storage-only ``trans_storage$0001``) at ``lt``."""
    messages = Builder().store_bit(0).store_bit(0).end_cell()  # no in_msg, no out_msgs
    update = Builder().store_uint(0x72, 8).store_bytes(bytes(32)).store_bytes(bytes(32)).end_cell()
    description = Builder().store_uint(0b0001, 4).store_coins(0).store_bit(0).store_uint(0, 1).end_cell()
    cell: Cell = (
        Builder()
        .store_uint(0b0111, 4)
        .store_bytes(bytes.fromhex("ab" * 32))
        .store_uint(lt, 64)
        .store_bytes(bytes(32))
        .store_uint(lt - 1, 64)
        .store_uint(1_700_000_000, 32)
        .store_uint(0, 15)
        .store_uint(0b10, 2)  # acc_state_active
        .store_uint(0b10, 2)
        .store_ref(messages)
        .store_coins(1000)
        .store_bit(0)
        .store_ref(update)
        .store_ref(description)
        .end_cell()
    )
    return cell


class History:
    """One account's transactions answered as toncenter's getTransactions does, with its validation: a page
    starts at (lt, hash) inclusive (the latest without them), stops above to_lt, and holds at most 100."""

    def __init__(self, count: int) -> None:
        self.cells = [transaction_cell(lt) for lt in range(1000 + count, 1000, -1)]  # newest first
        self.requests: list[dict[str, str]] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        self.requests.append(params)
        limit = int(params.get("limit", "10"))
        if not 0 < limit <= 100:
            return httpx.Response(422, json={"ok": False, "error": "limit should be less or equal 100", "code": 422})
        if ("lt" in params) != ("hash" in params):
            return httpx.Response(422, json={"ok": False, "error": "lt and hash should be used together", "code": 422})
        cells = self.cells
        if "lt" in params:
            start = next(i for i, c in enumerate(cells) if c.hash.hex() == params["hash"])
            assert self.lt(cells[start]) == int(params["lt"])
            cells = cells[start:]
        to_lt = int(params.get("to_lt", "0"))
        page = [c for c in cells if self.lt(c) > to_lt][:limit]
        items = [{"data": base64.b64encode(c.to_boc()).decode(), "fee": "1000"} for c in page]  # type: ignore[no-untyped-call]
        return httpx.Response(200, json={"ok": True, "result": items})

    @staticmethod
    def lt(cell: Cell) -> int:
        body = cell.begin_parse()
        body.skip_bits(4 + 256)
        return int(body.load_uint(64))


async def read(history: History, **kwargs: int) -> list[int]:
    async with ToncenterClient(
        "https://toncenter.com",
        api_key="test-key",
        rps=10_000,
        retry_backoff=0.001,
        transport=httpx.MockTransport(history.handle),
    ) as chain:
        return [tx.lt for tx in await chain.get_transactions(ACCOUNT, **kwargs)]


async def test_250_transactions_come_in_pages_of_at_most_100_without_a_gap_or_a_repeat() -> None:
    history = History(300)
    lts = await read(history, limit=250)
    assert lts == list(range(1300, 1050, -1))
    assert all(int(r["limit"]) <= TRANSACTIONS_PAGE for r in history.requests)
    assert len(history.requests) == 3


async def test_every_page_after_the_first_starts_at_an_lt_with_its_hash() -> None:
    history = History(150)
    await read(history, limit=150)
    first, second = history.requests
    assert "lt" not in first and "hash" not in first
    assert second["lt"] == "1051"  # the oldest of the first page, repeated and dropped and len(second["hash"]) == 64


async def test_paging_stops_where_the_history_ends() -> None:
    history = History(130)
    assert await read(history, limit=500) == list(range(1130, 1000, -1))
    assert len(history.requests) == 2


async def test_paging_stops_at_to_lt() -> None:
    history = History(300)
    assert await read(history, limit=300, to_lt=1150) == list(range(1300, 1150, -1))


async def test_a_single_page_is_one_request() -> None:
    history = History(30)
    assert await read(history, limit=20) == list(range(1030, 1010, -1))
    assert history.requests == [{"address": ACCOUNT, "limit": "20"}]


async def test_a_start_names_both_lt_and_hash() -> None:
    history = History(30)
    start = history.cells[5]
    async with ToncenterClient(
        "https://toncenter.com",
        api_key="test-key",
        rps=10_000,
        retry_backoff=0.001,
        transport=httpx.MockTransport(history.handle),
    ) as chain:
        txs = await chain.get_transactions(ACCOUNT, limit=3, start_at=(History.lt(start), start.hash))
    assert [tx.lt for tx in txs] == [1025, 1024, 1023]
    assert history.requests[0]["hash"] == start.hash.hex()


async def test_asking_for_no_transactions_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="at least one"):
        await read(History(1), limit=0)
