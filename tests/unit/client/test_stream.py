"""The client's reader of a response stream: text comes out, and only a receipt that verifies is ever paid.

Every frame is built as the network builds it: chunks sealed with ``ResponseSealer`` under the request's
content key, receipts signed with the worker's attested key (see ``fakes.py``); no process, no I/O.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import pytest

from cocoon.client.stream import (
    EmbeddingEvent,
    Exchange,
    ReceiptRefused,
    ReceiptVerified,
    ResponseStream,
    StreamEvent,
    TextEvent,
)
from cocoon.crypto import SigningKey
from cocoon.errors import CocoonError, SealError, UpstreamFailed, WorkerGone
from cocoon.protocol import ErrorBody, JobError
from cocoon.protocol.payload import ChunkPayload
from tests.unit.client.fakes import MODEL, FakeWorker, WorkerTurn, wire

PLAINTEXT = b"the sealed request's plaintext"
SALT = b"s" * 16


class Network:
    """One request sealed to two attested workers, and a reader for its answer."""

    def __init__(self) -> None:
        self.first, self.second = FakeWorker(), FakeWorker()
        self.content_key = os.urandom(32)
        workers = {w.worker_id: w.attested() for w in (self.first, self.second)}
        self.stream = ResponseStream(
            Exchange("req-1", MODEL, PLAINTEXT, SALT, self.content_key, workers, kind="chat", max_tokens=64)
        )

    def turn(self, worker: FakeWorker) -> WorkerTurn:
        return worker.turn("req-1", self.content_key, PLAINTEXT, SALT)

    def read(self, frames: Iterable[dict[str, Any]]) -> list[StreamEvent]:
        return list(self.stream.feed(wire(frames)))


@pytest.fixture
def net() -> Network:
    return Network()


def texts(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextEvent))


def test_a_good_stream_yields_its_text_then_a_verified_receipt(net: Network) -> None:
    turn = net.turn(net.first)
    events = net.read([turn.start(), turn.text("Red"), turn.text(", green"), turn.end()])
    assert events[:2] == [TextEvent("Red", 1, net.first.worker_id), TextEvent(", green", 1, net.first.worker_id)]
    assert isinstance(events[2], ReceiptVerified) and events[2].receipt.worker_id == net.first.worker_id
    result = net.stream.finish()
    assert result.receipts == (events[2].receipt,)
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (5, 2)


def test_bytes_split_anywhere_give_the_same_events(net: Network) -> None:
    turn = net.turn(net.first)
    body = wire([turn.start(), turn.text("Red"), turn.chunk(ChunkPayload(finish_reason="length")), turn.end()])
    events = [event for i in range(len(body)) for event in net.stream.feed(body[i : i + 1])]
    assert texts(events) == "Red" and isinstance(events[-1], ReceiptVerified)
    assert net.stream.finish().finish_reason == "length"


def test_embeddings_come_out_as_vectors(net: Network) -> None:
    turn = net.turn(net.first)
    events = net.read([turn.start(), turn.chunk(ChunkPayload(embeddings=[[0.5, -1.0]])), turn.end()])
    assert events[0] == EmbeddingEvent([[0.5, -1.0]])


def test_a_forged_receipt_is_refused_and_nothing_is_verified(net: Network) -> None:
    turn = net.turn(net.first)
    events = net.read([turn.start(), turn.text("Red"), turn.end(signer=SigningKey.generate())])
    refused = events[-1]
    assert isinstance(refused, ReceiptRefused)
    assert refused.ends_request and "signature" in refused.reason
    assert net.stream.verified == ()
    with pytest.raises(UpstreamFailed, match="ended before the worker's receipt"):
        net.stream.finish()


def test_a_receipt_for_a_response_other_than_the_one_received_is_refused(net: Network) -> None:
    turn = net.turn(net.first)
    events = net.read([turn.start(), turn.text("Red"), turn.end(response_sha256="00" * 32)])
    assert isinstance(events[-1], ReceiptRefused) and "response digest" in events[-1].reason


def test_a_chunk_out_of_order_is_an_upstream_failure(net: Network) -> None:
    turn = net.turn(net.first)
    with pytest.raises(UpstreamFailed, match="reordered"):
        net.read([turn.start(), turn.chunk(ChunkPayload(text="later", tokens=1), seq=1)])


def test_a_chunk_relayed_as_another_workers_is_an_upstream_failure(net: Network) -> None:
    turn = net.turn(net.first)
    with pytest.raises(UpstreamFailed, match="mixed"):
        net.read([turn.start(), turn.chunk(ChunkPayload(text="Red", tokens=1), worker_id=net.second.worker_id)])


def test_a_tampered_chunk_does_not_open(net: Network) -> None:
    turn = net.turn(net.first)
    chunk = turn.text("Red")
    with pytest.raises(SealError):
        net.read([turn.start(), chunk | {"data": bytes(len(chunk["data"]))}])


def test_a_chunk_before_any_start_frame_is_an_upstream_failure(net: Network) -> None:
    turn = net.turn(net.first)
    with pytest.raises(UpstreamFailed, match="before naming its worker"):
        net.read([turn.text("Red")])


def test_a_receipt_before_any_start_frame_is_an_upstream_failure(net: Network) -> None:
    turn = net.turn(net.first)
    with pytest.raises(UpstreamFailed, match="receipt before naming its worker"):
        net.read([turn.end()])


def test_a_worker_the_request_was_not_sealed_to_is_an_upstream_failure(net: Network) -> None:
    stranger = net.turn(FakeWorker())
    with pytest.raises(UpstreamFailed, match="unknown worker"):
        net.read([stranger.start()])


def test_a_malformed_frame_is_an_upstream_failure(net: Network) -> None:
    with pytest.raises(UpstreamFailed, match="malformed response"):
        net.stream.feed_frame({"t": "start"})


def test_a_hedge_loser_claiming_completion_tokens_is_refused(net: Network) -> None:
    winner, loser = net.turn(net.first), net.turn(net.second)
    events = net.read([winner.start(), winner.text("Red"), winner.end()])
    events += net.read([loser.start(hedged_out=True), loser.end(completion_tokens=3)])
    refused = events[-1]
    assert isinstance(refused, ReceiptRefused) and not refused.ends_request
    assert [r.worker_id for r in net.stream.verified] == [net.first.worker_id]


def test_a_hedge_loser_claiming_its_prefill_only_is_accepted(net: Network) -> None:
    winner, loser = net.turn(net.first), net.turn(net.second)
    net.read([winner.start(), winner.text("Red"), winner.end()])
    # The loser was cancelled part-way through its prefill: it bills what it computed, but the app's prompt is
    # the winner's whole prompt.
    events = net.read([loser.start(hedged_out=True), loser.end(completion_tokens=0, prompt_tokens=2)])
    assert isinstance(events[-1], ReceiptVerified)
    result = net.stream.finish()
    assert [r.worker_id for r in result.receipts] == [net.first.worker_id, net.second.worker_id]
    assert result.usage.completion_tokens == 1
    assert result.usage.prompt_tokens == 5


def test_an_error_frame_becomes_the_cocoon_error_it_carries(net: Network) -> None:
    turn = net.turn(net.first)
    gone = JobError(status=502, error=ErrorBody(message="worker left", type="api_error", code="worker_gone"))
    with pytest.raises(CocoonError) as info:
        net.read([turn.start(), turn.text("Red"), gone.model_dump()])
    assert type(info.value) is WorkerGone and info.value.message == "worker left"


def test_a_resumed_stream_continues_the_text_on_the_next_worker(net: Network) -> None:
    died, resumed = net.turn(net.first), net.turn(net.second)
    events = net.read([died.start(), died.text("Red"), died.text(", green")])  # then the first worker died
    events += net.read([resumed.start(attempt=1), resumed.text(" and blue", tokens=2), resumed.end()])
    assert texts(events) == "Red, green and blue"
    assert [e.worker_id for e in events if isinstance(e, TextEvent)] == [net.first.worker_id] * 2 + [
        net.second.worker_id
    ]
    result = net.stream.finish()
    assert [r.worker_id for r in result.receipts] == [net.second.worker_id]  # a worker that died is not paid
    assert result.usage.completion_tokens == 4  # but the app is told every token it got


# ---- F2, F9, F11: the stream's own bounds ----------------------------------------------------------


def test_a_receipt_claiming_more_completion_than_its_chunks_carried_is_refused(net: Network) -> None:
    turn = net.turn(net.first)
    events = net.read([turn.start(), turn.text("Red"), turn.end(completion_tokens=2)])
    assert isinstance(events[-1], ReceiptRefused) and "its chunks carried" in events[-1].reason


def test_a_resuming_worker_is_paid_only_its_own_tokens_and_never_past_max_tokens(net: Network) -> None:
    first, second = net.turn(net.first), net.turn(net.second)
    net.read([first.start(), first.text("a", tokens=40), second.start(attempt=1), second.text("b", tokens=30)])
    events = net.read([second.end(completion_tokens=70)])  # claims the dead worker's tokens too
    assert isinstance(events[-1], ReceiptRefused) and "its chunks carried" in events[-1].reason


def test_a_receipt_past_max_tokens_is_refused_even_if_its_chunks_claimed_as_much(net: Network) -> None:
    turn = net.turn(net.first)
    events = net.read([turn.start(), turn.text("a", tokens=60), turn.text("b", tokens=10), turn.end()])
    assert isinstance(events[-1], ReceiptRefused) and "left of max_tokens" in events[-1].reason


def test_a_second_answer_after_the_receipt_is_an_upstream_failure(net: Network) -> None:
    turn = net.turn(net.first)
    answer = [turn.start(), turn.text("Red"), turn.end()]
    net.read(answer)
    with pytest.raises(UpstreamFailed, match=r"twice|after the answer's receipt"):
        net.read([turn.start(attempt=1)])
    with pytest.raises(UpstreamFailed, match="after the answer's receipt"):
        net.read([net.turn(net.second).start(attempt=1)])


def test_a_failover_after_the_worker_finished_is_an_upstream_failure(net: Network) -> None:
    turn = net.turn(net.first)
    net.read([turn.start(), turn.text("Red"), turn.chunk(ChunkPayload(finish_reason="stop"))])
    with pytest.raises(UpstreamFailed, match="already finished"):
        net.read([net.turn(net.second).start(attempt=1)])


def test_a_hedge_loser_named_before_the_answer_is_an_upstream_failure(net: Network) -> None:
    with pytest.raises(UpstreamFailed, match="hedge loser before"):
        net.read([net.turn(net.second).start(hedged_out=True)])


def test_more_chunks_than_max_tokens_allows_are_an_upstream_failure(net: Network) -> None:
    turn = net.turn(net.first)
    with pytest.raises(UpstreamFailed, match="past the caps"):
        net.read([turn.start(), *(turn.text("w") for _ in range(67))])


def test_a_first_chunk_without_its_key_nonce_is_an_upstream_failure(net: Network) -> None:
    turn = net.turn(net.first)
    with pytest.raises(UpstreamFailed, match="nonce"):
        net.read([turn.start(), turn.text("Red") | {"key_nonce": b""}])


def test_an_answer_past_the_byte_budget_is_cut_off_before_it_is_buffered(net: Network) -> None:
    turn = net.turn(net.first)
    with pytest.raises(UpstreamFailed, match="cut off"):
        list(net.stream.feed(wire([turn.start()]) + b"\x03\x00\x00\x00" + bytes(1024 * 1024)))
