"""The payer's group payment: receipts that arrive while a voucher is on its way share the next voucher, and
one receipt the proxy refuses fails only its own request. The proxy's voucher endpoint is played by an httpx
transport that checks each voucher's signature and cumulative amount as the proxy's journal does."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from cocoon.chain import MAINNET_GLOBAL_ID, verify_voucher
from cocoon.chain.pricing import Cost, Prices
from cocoon.client.wallet import ChannelBook, ChannelPayer
from cocoon.crypto import SigningKey
from cocoon.errors import CocoonError
from cocoon.protocol import Receipt

CHANNEL = "0:" + "11" * 32
PRICES = Prices(prompt=1_000_000, cached=0, completion=2_000_000)  # 1 and 2 nanoton a token at 1000


class Book:
    """What the proxy keeps of one channel: the last cumulative voucher, and the receipts it owes."""

    def __init__(self, key: SigningKey) -> None:
        self.key = key
        self.vouchered = 0
        self.vouchers: list[list[str]] = []
        self.first_arrived = asyncio.Event()
        self.release_first = asyncio.Event()

    async def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if not self.vouchers and not self.first_arrived.is_set():
            self.first_arrived.set()
            await self.release_first.wait()  # the first voucher is slow: the others queue behind it
        ok = verify_voucher(self.key.public, CHANNEL, body["cumulative"], bytes.fromhex(body["signature"]),
                            global_id=MAINNET_GLOBAL_ID)  # fmt: skip
        due = sum(3 for _ in body["receipt_ids"])  # every receipt here: 1 prompt + 1 completion token
        if (
            not ok
            or any(r.startswith("bad") for r in body["receipt_ids"])
            or body["cumulative"] != self.vouchered + due
        ):
            error = {"message": "receipts not owed", "type": "invalid_request_error", "code": "bad_request"}
            return httpx.Response(400, json={"error": error})
        self.vouchered = body["cumulative"]
        self.vouchers.append(body["receipt_ids"])
        return httpx.Response(200, json={"channel": CHANNEL, "vouchered": self.vouchered})


class FixedPrices:
    async def prices(self, model: str) -> Prices:
        return PRICES


def receipt(receipt_id: str) -> Receipt:
    return Receipt(
        receipt_id=receipt_id, request_id=f"req-{receipt_id}", job_id="j", worker_id="w", model="m",
        model_hash="h", prompt_tokens=1, cached_tokens=0, completion_tokens=1, reasoning_tokens=0,
        request_sha256="", response_sha256="", finish_reason="stop", started_at=0, ttft_ms=1, duration_ms=1,
    )  # fmt: skip


def payer(book: Book) -> ChannelPayer:
    http = httpx.AsyncClient(transport=httpx.MockTransport(book.handle), base_url="http://proxy")
    paying = ChannelPayer(http, None, book.key)  # type: ignore[arg-type]  # never reads the chain here
    paying.channel, paying.global_id, paying._ready = CHANNEL, MAINNET_GLOBAL_ID, True
    paying._prices = FixedPrices()  # type: ignore[assignment]
    return paying


async def pay_behind_a_slow_first(book: Book, paying: ChannelPayer, names: list[str]) -> list[object]:
    """Pay ``r0``, then each of ``names`` in its own call while the proxy holds ``r0``'s voucher; the results."""
    first = asyncio.create_task(paying.pay([receipt("r0")], {"w": 1000}))
    await book.first_arrived.wait()
    rest = [asyncio.create_task(paying.pay([receipt(name)], {"w": 1000})) for name in names]
    await asyncio.sleep(0.05)
    book.release_first.set()
    return await asyncio.gather(first, *rest, return_exceptions=True)


async def test_receipts_arriving_while_a_voucher_is_on_its_way_share_the_next() -> None:
    book = Book(SigningKey.generate())
    paying = payer(book)
    costs = await pay_behind_a_slow_first(book, paying, [f"r{i}" for i in range(1, 6)])

    assert [c.total for c in costs if isinstance(c, Cost)] == [3] * 6
    assert book.vouchers == [["r0"], ["r1", "r2", "r3", "r4", "r5"]]  # two vouchers for six receipts
    assert paying.vouchered == book.vouchered == 18


async def test_a_refused_receipt_in_a_shared_voucher_fails_only_its_own_request() -> None:
    book = Book(SigningKey.generate())
    paying = payer(book)
    results = await pay_behind_a_slow_first(book, paying, ["r1", "bad", "r2"])

    assert isinstance(results[2], CocoonError) and "not owed" in results[2].message
    assert all(not isinstance(r, BaseException) for i, r in enumerate(results) if i != 2)
    assert book.vouchers == [["r0"], ["r1"], ["r2"]]  # the shared voucher was refused, then each went alone
    assert paying.vouchered == book.vouchered == 9


async def test_an_app_hanging_up_does_not_stop_its_payment() -> None:
    book = Book(SigningKey.generate())
    paying = payer(book)
    first = asyncio.create_task(paying.pay([receipt("r0")], {"w": 1000}))
    await book.first_arrived.wait()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    book.release_first.set()
    assert await paying.pay([receipt("r1")], {"w": 1000}) is not None
    assert book.vouchers == [["r0"], ["r1"]] and paying.vouchered == 6


def dying_proxy(key: SigningKey, *, down_after_dying: bool) -> tuple[ChannelPayer, dict[str, object]]:
    """A payer of a proxy that commits its first voucher and dies before answering; with ``down_after_dying``
    the payer's first question after that finds it still down. Returns the payer and the proxy's copy."""
    taken: dict[str, object] = {"vouchered": 0, "signature": ""}
    posts, down = 0, int(down_after_dying)

    async def proxy(request: httpx.Request) -> httpx.Response:
        nonlocal posts, down
        if request.method == "GET":  # the proxy's copy of the channel's last voucher
            if posts == 1 and down:
                down -= 1
                raise httpx.ConnectError("All connection attempts failed")
            return httpx.Response(200, json={"channel": CHANNEL} | taken)
        posts += 1
        body = json.loads(request.content)
        if body["cumulative"] != int(str(taken["vouchered"])) + 3:
            return httpx.Response(400, json={"error": {"message": "wrong cumulative", "type": "x", "code": "x"}})
        taken.update(vouchered=body["cumulative"], signature=body["signature"])
        if posts == 1:  # taken and committed, then the proxy died before it answered
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return httpx.Response(200, json={"channel": CHANNEL, "vouchered": body["cumulative"]})

    paying = payer(Book(key))
    paying.http = httpx.AsyncClient(transport=httpx.MockTransport(proxy), base_url="http://proxy")
    return paying, taken


async def test_a_voucher_the_proxy_took_before_its_answer_was_lost_is_paid() -> None:
    paying, taken = dying_proxy(SigningKey.generate(), down_after_dying=False)
    cost = await paying.pay([receipt("r0")], {"w": 1000})  # the payer asked the proxy's copy: it was taken
    assert cost is not None and cost.total == 3
    assert await paying.pay([receipt("r1")], {"w": 1000}) is not None
    assert paying.vouchered == taken["vouchered"] == 6


async def test_after_a_voucher_with_no_answer_at_all_the_payer_goes_on_from_the_proxys_copy() -> None:
    paying, taken = dying_proxy(SigningKey.generate(), down_after_dying=True)
    with pytest.raises(httpx.RemoteProtocolError):  # nobody could say whether it was taken
        await paying.pay([receipt("r0")], {"w": 1000})
    assert await paying.pay([receipt("r1")], {"w": 1000}) is not None  # 3 + 3, not a second 3
    assert paying.vouchered == taken["vouchered"] == 6


async def test_payers_of_two_replicas_share_one_channel_book_and_post_to_the_replica_that_served() -> None:
    book = Book(SigningKey.generate())  # the replicas' shared books: one channel
    seen: list[str] = []

    def replica(name: str) -> ChannelPayer:
        async def handle(request: httpx.Request) -> httpx.Response:
            seen.append(name)
            return await book.handle(request)

        paying = payer(book)
        paying.http = httpx.AsyncClient(transport=httpx.MockTransport(handle), base_url=f"http://{name}")
        return paying

    books: dict[str, ChannelBook] = {}
    first, second = replica("a"), replica("b")
    for paying in (first, second):  # what _start does once it knows the channel
        paying._books = books
        paying.book = books.setdefault(CHANNEL, paying.book)
    book.release_first.set()
    for i in range(6):  # receipts served by either replica, alternately
        assert await (first if i % 2 else second).pay([receipt(f"r{i}")], {"w": 1000}) is not None
    assert book.vouchers == [[f"r{i}"] for i in range(6)]  # every voucher taken: one cumulative sequence
    assert first.vouchered == second.vouchered == book.vouchered == 18
    assert seen == ["b", "a"] * 3
