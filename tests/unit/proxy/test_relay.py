"""The relay, without sockets: fail over before the first byte, resume after it, hedge, and pay only what
the client could verify, telling the cashier about every receipt before the client sees it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest

from cocoon.errors import ContextLengthExceeded, NoCapacity
from cocoon.protocol import FrameReader, JobRequest
from cocoon.proxy.attempt import Attempt
from cocoon.proxy.money.cashier import Reservation
from cocoon.proxy.money.mock import MockCashier
from cocoon.proxy.relay import JobRelay
from cocoon.proxy.routing.affinity import PrefixAffinity
from cocoon.proxy.routing.breaker import Breakers
from cocoon.proxy.routing.directory import Directory
from cocoon.proxy.routing.evidence import EvidenceLog
from cocoon.proxy.routing.rank import RoutingBook
from cocoon.proxy.routing.reputation import ReputationBook
from tests.unit.proxy.fakes import KEY_NONCE, FakeWorker, request

Frame = dict[str, Any]


class Proxy:
    """The parts of a proxy a relay needs: a directory of fake workers, routing's books and a cashier."""

    def __init__(self, *names: str) -> None:
        self.workers = {name: FakeWorker(name) for name in names}
        self.directory = Directory()
        for worker in self.workers.values():
            self.directory.add(worker.entry)
        self.book = RoutingBook(ReputationBook(), Breakers(), PrefixAffinity())
        self.cashier = MockCashier()

    async def relay(self, job: JobRequest, *, first_byte_timeout: float = 5.0) -> tuple[JobRelay, Reservation]:
        candidates = [self.workers[k.worker_id].entry for k in job.keys]
        reservation = await self.cashier.admit(job, [w.register for w in candidates])
        relay = JobRelay(
            job,
            candidates,
            self.cashier,
            reservation,
            first_byte_timeout=first_byte_timeout,
            chunk_timeout=5.0,
            evidence=EvidenceLog(self.book),
        )
        return relay, reservation

    def evidence(self, name: str) -> dict[str, Any]:
        return self.book.reputation.view(name)

    async def hedged(self, *, a_finishes: bool = False) -> tuple[JobRelay, Frame, Frame, Attempt, Frame]:
        """A hedged job on workers ``a`` and ``b`` that ``a`` wins with its chunk 0 (and its receipt right after,
        when ``a_finishes``): the relay, both jobs as sent, and the winning attempt with its first frame."""
        a, b = self.workers["a"], self.workers["b"]
        relay, _ = await self.relay(request(a, b, hedge=True))
        opening = asyncio.create_task(relay.first_frame())
        job_a, job_b = await a.next_sent("job"), await b.next_sent("job")
        a.feed(job_a["job_id"], a.chunk(0, b"sealed-0"), *([a.end(job_a)] if a_finishes else []))
        attempt, first = await opening
        return relay, job_a, job_b, attempt, first


async def client_frames(pieces: AsyncIterator[bytes]) -> list[Frame]:
    """Every frame of the client's response stream, decoded."""
    reader, frames = FrameReader(), list[Frame]()
    async for data in pieces:
        frames.extend(msgpack.unpackb(payload, raw=False) for payload in reader.feed(data))
    return frames


def kinds(frames: list[Frame]) -> list[str]:
    """``kind:worker`` for each frame (a receipt names its worker inside it)."""
    return [f"{f['t']}:{f['receipt']['worker_id'] if f['t'] == 'end' else f['worker_id']}" for f in frames]


async def test_a_worker_that_errs_before_its_first_byte_is_passed_over_and_marked() -> None:
    proxy = Proxy("a", "b")
    a, b = proxy.workers["a"], proxy.workers["b"]
    relay, _ = await proxy.relay(request(a, b))

    opening = asyncio.create_task(relay.first_frame())
    a.feed((await a.next_sent("job"))["job_id"], a.error(500))
    job_b = await b.next_sent("job")
    b.feed(job_b["job_id"], b.chunk(0, b"sealed-0"), b.end(job_b))
    attempt, first = await opening
    frames = await client_frames(relay.stream(attempt, first))

    assert kinds(frames) == ["start:b", "chunk:b", "end:b"]
    assert frames[0]["attempt"] == 0
    assert proxy.evidence("a")["error"] == 1 and a.entry.failed == 1
    assert proxy.evidence("b")["ok"] == 1 and b.entry.completed == 1
    assert [r.worker_id for r in proxy.cashier.receipts] == ["b"]


async def test_a_worker_silent_past_the_first_byte_timeout_is_passed_over_and_marked() -> None:
    proxy = Proxy("slow", "quick")
    slow, quick = proxy.workers["slow"], proxy.workers["quick"]
    relay, _ = await proxy.relay(request(slow, quick), first_byte_timeout=0.05)

    opening = asyncio.create_task(relay.first_frame())
    await slow.next_sent("job")  # and never answers
    job = await quick.next_sent("job")
    quick.feed(job["job_id"], quick.chunk(0, b"sealed-0"), quick.end(job))
    attempt, first = await opening

    assert attempt.worker is quick.entry
    assert proxy.evidence("slow")["timeout"] == 1
    assert kinds(await client_frames(relay.stream(attempt, first))) == ["start:quick", "chunk:quick", "end:quick"]


async def test_a_worker_that_cannot_be_sent_the_job_is_passed_over() -> None:
    proxy = Proxy("gone", "b")
    gone, b = proxy.workers["gone"], proxy.workers["b"]
    gone.unreachable = True
    relay, _ = await proxy.relay(request(gone, b))

    opening = asyncio.create_task(relay.first_frame())
    job = await b.next_sent("job")
    b.feed(job["job_id"], b.chunk(0, b"sealed-0"))
    attempt, _ = await opening

    assert attempt.worker is b.entry
    assert proxy.evidence("gone")["jobs"] == 0  # the job never reached it: no evidence either way


async def test_when_every_candidate_fails_before_the_first_byte_the_last_error_is_raised_and_nothing_is_held() -> None:
    proxy = Proxy("a", "b")
    a, b = proxy.workers["a"], proxy.workers["b"]
    relay, reservation = await proxy.relay(request(a, b))

    opening = asyncio.create_task(relay.first_frame())
    a.feed((await a.next_sent("job"))["job_id"], a.error(500))
    b.feed((await b.next_sent("job"))["job_id"], b.error(503, "no_capacity"))
    with pytest.raises(NoCapacity, match="b failed"):
        await opening
    assert proxy.cashier.released == [reservation] and proxy.cashier.receipts == []
    assert a.entry.jobs == {} and b.entry.jobs == {}


async def test_a_client_error_from_the_first_worker_is_not_tried_elsewhere() -> None:
    proxy = Proxy("a", "b")
    a, b = proxy.workers["a"], proxy.workers["b"]
    relay, _ = await proxy.relay(request(a, b))

    opening = asyncio.create_task(relay.first_frame())
    a.feed((await a.next_sent("job"))["job_id"], a.error(400, "context_length_exceeded"))
    with pytest.raises(ContextLengthExceeded):
        await opening
    assert b.sent.empty()
    assert proxy.evidence("a")["jobs"] == 0  # the client's fault says nothing about the worker


async def test_a_worker_lost_mid_stream_hands_its_chunks_to_the_next_candidate() -> None:
    proxy = Proxy("a", "b")
    a, b = proxy.workers["a"], proxy.workers["b"]
    relay, reservation = await proxy.relay(request(a, b))

    opening = asyncio.create_task(relay.first_frame())
    job_a = await a.next_sent("job")
    a.feed(job_a["job_id"], a.chunk(0, b"sealed-0"), a.chunk(1, b"sealed-1"))
    attempt, first = await opening
    proxy.directory.remove(a.entry, "disconnected")  # its socket closes after two chunks
    reading = asyncio.create_task(client_frames(relay.stream(attempt, first)))

    job_b = await b.next_sent("job")
    assert job_b["resume_from"] == [{"worker_id": "a", "key_nonce": KEY_NONCE, "chunks": [b"sealed-0", b"sealed-1"]}]
    assert job_b["request_id"] == job_a["request_id"] and job_b["job_id"] != job_a["job_id"]
    b.feed(job_b["job_id"], b.chunk(0, b"sealed-2"), b.end(job_b))
    frames = await reading

    assert kinds(frames) == ["start:a", "chunk:a", "chunk:a", "start:b", "chunk:b", "end:b"]
    assert [f["data"] for f in frames if f["t"] == "chunk"] == [b"sealed-0", b"sealed-1", b"sealed-2"]
    assert frames[3]["attempt"] == 1
    assert proxy.evidence("a")["dropped"] == 1
    # The lost worker signed nothing and is paid nothing; the one that finished is paid its receipt.
    assert [r.worker_id for r in proxy.cashier.receipts] == ["b"]
    assert proxy.cashier.released == [reservation]


async def test_a_hedge_loser_is_cancelled_and_paid_for_its_prefill_only() -> None:
    proxy = Proxy("a", "b")
    a, b = proxy.workers["a"], proxy.workers["b"]
    relay, job_a, job_b, attempt, first = await proxy.hedged()
    assert attempt.worker is a.entry
    cancel = await b.next_sent("cancel")
    assert (cancel["job_id"], cancel["reason"]) == (job_b["job_id"], "hedge")

    b.feed(job_b["job_id"], b.end(job_b, prompt_tokens=5, completion_tokens=0))
    a.feed(job_a["job_id"], a.end(job_a))
    frames = await client_frames(relay.stream(attempt, first))

    assert kinds(frames) == ["start:a", "chunk:a", "end:a", "start:b", "end:b"]
    assert frames[3]["hedged_out"] is True
    paid = [(r.worker_id, r.end.receipt.completion_tokens, r.valid) for r in proxy.cashier.receipts]
    assert paid == [("a", 3, True), ("b", 0, True)]
    assert proxy.evidence("b")["jobs"] == 0  # losing a hedge is no evidence against it


async def test_a_hedge_loser_claiming_completion_tokens_is_not_paid_and_marked() -> None:
    proxy = Proxy("a", "b")
    a, b = proxy.workers["a"], proxy.workers["b"]
    relay, job_a, job_b, attempt, first = await proxy.hedged()
    b.feed(job_b["job_id"], b.chunk(0, b"never-shown"), b.end(job_b, completion_tokens=7))
    a.feed(job_a["job_id"], a.end(job_a))
    frames = await client_frames(relay.stream(attempt, first))

    assert kinds(frames) == ["start:a", "chunk:a", "end:a"]
    assert [r.worker_id for r in proxy.cashier.receipts] == ["a"]
    assert proxy.evidence("b")["bad_receipt"] == 1


async def test_the_cashier_has_each_receipt_before_the_client_sees_it() -> None:
    proxy = Proxy("a", "b")
    b = proxy.workers["b"]
    relay, _, job_b, attempt, first = await proxy.hedged(a_finishes=True)
    b.feed(job_b["job_id"], b.end(job_b, completion_tokens=0))

    reader, seen = FrameReader(), list[str]()
    async for data in relay.stream(attempt, first):
        charged = {r.end.receipt.receipt_id for r in proxy.cashier.receipts}
        for payload in reader.feed(data):
            frame = msgpack.unpackb(payload, raw=False)
            if frame["t"] == "end":
                assert frame["receipt"]["receipt_id"] in charged
                seen.append(frame["receipt"]["worker_id"])
    assert seen == ["a", "b"]


async def test_a_receipt_with_a_bad_signature_is_forwarded_but_reported_invalid() -> None:
    proxy = Proxy("a")
    a = proxy.workers["a"]
    relay, _ = await proxy.relay(request(a))

    opening = asyncio.create_task(relay.first_frame())
    job = await a.next_sent("job")
    forged = a.end(job) | {"signature": b"\0" * 64}
    a.feed(job["job_id"], a.chunk(0, b"sealed-0"), forged)
    attempt, first = await opening
    frames = await client_frames(relay.stream(attempt, first))

    assert kinds(frames)[-1] == "end:a"
    assert [(r.worker_id, r.valid) for r in proxy.cashier.receipts] == [("a", False)]
    assert proxy.evidence("a")["bad_receipt"] == 1


async def test_a_client_that_hangs_up_cancels_the_job_and_releases_its_reservation() -> None:
    proxy = Proxy("a")
    a = proxy.workers["a"]
    relay, reservation = await proxy.relay(request(a))

    opening = asyncio.create_task(relay.first_frame())
    job = await a.next_sent("job")
    a.feed(job["job_id"], a.chunk(0, b"sealed-0"))
    attempt, first = await opening
    stream = relay.stream(attempt, first)
    await anext(stream)  # the start frame and the first chunk reach the client, which then leaves
    await stream.aclose()

    assert (await a.next_sent("cancel"))["reason"] == "closed"
    assert a.entry.jobs == {} and a.entry.inflight == 0
    assert proxy.cashier.released == [reservation]


async def test_a_worker_streaming_past_its_jobs_caps_is_cut_off_and_the_stream_resumes_elsewhere() -> None:
    proxy = Proxy("a", "b")
    a, b = proxy.workers["a"], proxy.workers["b"]
    relay, _ = await proxy.relay(request(a, b).model_copy(update={"max_tokens": 2}))  # 4 chunks at most

    opening = asyncio.create_task(relay.first_frame())
    job_a = await a.next_sent("job")
    a.feed(job_a["job_id"], *(a.chunk(seq, b"x" * 100) for seq in range(1000)))
    attempt, first = await opening
    assert attempt.queue.qsize() <= 5  # the surplus was never queued
    reading = asyncio.create_task(client_frames(relay.stream(attempt, first)))

    assert (await a.next_sent("cancel"))["reason"] == "overflow"
    job_b = await b.next_sent("job")
    assert len(job_b["resume_from"][0]["chunks"]) == 4
    b.feed(job_b["job_id"], b.chunk(0, b"sealed"), b.end(job_b))
    frames = await reading
    assert kinds(frames) == ["start:a", *["chunk:a"] * 4, "start:b", "chunk:b", "end:b"]
    assert proxy.evidence("a")["bad_receipt"] == 1


async def test_a_burst_of_chunks_joins_one_write_but_the_first_piece_and_the_receipt_are_never_held() -> None:
    proxy = Proxy("a")
    a = proxy.workers["a"]
    relay, _ = await proxy.relay(request(a))
    relay.flush_s = 0.5  # long enough that only the hold, not the machine's speed, can join the chunks

    opening = asyncio.create_task(relay.first_frame())
    job = await a.next_sent("job")
    a.feed(job["job_id"], a.chunk(0, b"sealed-0"))
    attempt, first = await opening
    pieces = relay.stream(attempt, first)
    started = asyncio.get_running_loop().time()
    assert kinds(await client_frames(_first_of(pieces))) == ["start:a", "chunk:a"]  # at once, not after the hold

    async def burst() -> None:
        for seq in (1, 2, 3):
            a.feed(job["job_id"], a.chunk(seq, f"sealed-{seq}".encode()))
            await asyncio.sleep(0.01)
        a.feed(job["job_id"], a.end(job))

    feeding = asyncio.create_task(burst())
    rest = [piece async for piece in pieces]
    await feeding

    assert len(rest) == 1  # three chunks and the receipt: one write
    assert kinds(await client_frames(_iterate(rest))) == ["chunk:a", "chunk:a", "chunk:a", "end:a"]
    assert asyncio.get_running_loop().time() - started < 0.4  # the receipt ended the hold early
    assert [r.worker_id for r in proxy.cashier.receipts] == ["a"]


async def _first_of(pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield await anext(pieces)


async def _iterate(pieces: list[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece
