"""Reading one request's answer without I/O: the bytes ``POST /v1/jobs`` streams go in, events come out.

``ResponseStream`` owns every check on the way: frame order, each sealed chunk opened and digested, each
receipt verified. It tells the SDK which receipts verified (to pay) and which to refuse; it never pays.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
from pydantic import ValidationError

from cocoon.client.directory import AttestedWorker
from cocoon.client.receipts import ReceiptBounds, check_receipt, hedge_receipt_ok
from cocoon.crypto import ResponseDigest
from cocoon.errors import CocoonError, ReceiptInvalid, UpstreamFailed
from cocoon.protocol import (
    KEY_NONCE_BYTES,
    STREAM_FRAME,
    FrameReader,
    JobEnd,
    JobError,
    JobStart,
    Receipt,
    ResponseSealer,
    job_caps,
    unpack_raw,
)
from cocoon.protocol.payload import ChunkPayload
from cocoon.protocol.usage import TokenUsage


@dataclass(frozen=True, slots=True)
class TextEvent:
    """Generated text, as ``worker_id`` sealed it, with what the request asked for beside it: pieces of tool
    calls and each token's log-probabilities, in OpenAI's shapes (``ChatDelta.tool_calls``, ``TokenLogprob``)."""

    text: str
    tokens: int
    worker_id: str
    tool_calls: tuple[dict[str, Any], ...] = ()
    logprobs: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class EmbeddingEvent:
    vectors: list[list[float]]


@dataclass(frozen=True, slots=True)
class ReceiptVerified:
    """A receipt that passed every check of ``receipts.py``: the only kind the client may pay."""

    receipt: Receipt


@dataclass(frozen=True, slots=True)
class ReceiptRefused:
    """A receipt that did not verify: the client tells the proxy it will never pay it.

    ``ends_request``: it was the serving worker's own receipt, so the answer is not what was paid for and the
    request fails with ``ReceiptInvalid(reason)`` (after paying the receipts that did verify). A hedge
    loser's bad receipt is only dropped.
    """

    receipt: Receipt
    reason: str
    ends_request: bool


StreamEvent = TextEvent | EmbeddingEvent | ReceiptVerified | ReceiptRefused


@dataclass(frozen=True, slots=True)
class Exchange:
    """What the client sealed, which every frame of the answer is checked against."""

    request_id: str
    model: str
    plaintext: bytes  # the sealed request's plaintext: receipts commit to its digest
    salt: bytes  # from the plaintext: keys each worker's response digest
    content_key: bytes  # opens the chunks, with the id of the worker that sealed them
    workers: Mapping[str, AttestedWorker]  # the candidates it was sealed to, by worker id
    kind: str  # chat, completion or embedding: with max_tokens, what the answer may hold
    max_tokens: int  # the sealed max_tokens: no receipts together claim more completion tokens


@dataclass(frozen=True, slots=True)
class StreamResult:
    """A stream that ended well: how it finished, what the app got, and the verified receipts to pay."""

    finish_reason: str
    usage: TokenUsage
    receipts: tuple[Receipt, ...]


class ResponseStream:
    """The client's reader of one response: ``feed`` it bytes as they arrive, ``finish`` it at the end.

    The stream names a worker (``start``), then carries that worker's sealed chunks numbered from 0 (chunk 0
    with the nonce of its response key) and its signed receipt (``end``). After a failover a second ``start``
    names the worker that resumes the text; a ``start`` with ``hedged_out`` names a hedge loser, whose receipt
    may claim its prefill only. Each worker starts once and signs at most one receipt; after the serving
    worker's receipt only a hedge loser may follow, and no worker resumes one that sent its finish. A frame out
    of order, from a worker not sealed to, past the job's caps (``job_caps``), or that does not open raises
    ``UpstreamFailed`` (or ``SealError``); an ``error`` frame raises the ``CocoonError`` it carries. Receipts
    claiming more tokens than ``max_tokens`` allows over all workers, than their chunks carried, or than the
    request can hold are refused.
    """

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.finish_reason = "stop"
        self.streamed_tokens = 0
        self._verified: list[Receipt] = []
        self._hedge_losers: set[str] = set()  # receipt ids of hedged-out twins: paid, but not what the app got
        self._frames = FrameReader()
        self._worker: AttestedWorker | None = None
        self._sealer: ResponseSealer | None = None
        self._digest: ResponseDigest | None = None
        self._seq = 0
        self._hedged_out = False
        self._started: set[str] = set()
        self._receipted: set[str] = set()
        self._serving_ended = False  # the serving worker's receipt came: only a hedge loser may follow
        self._finished = False  # the current worker sent its finish: nobody resumes after it
        self._worker_tokens = 0  # tokens the current worker's chunks carried
        self._worker_bytes = 0
        self._text_bytes = 0  # utf-8 bytes of text shown so far, over all workers
        self._prior_bytes = 0  # ... of that before the current worker started (its prefilled continuation)
        self._chunk_cap, self._byte_cap = job_caps(exchange.kind, exchange.max_tokens)
        self._budget = len(exchange.workers) * (self._byte_cap + 256 * self._chunk_cap) + 64 * 1024
        self._received = 0

    @property
    def verified(self) -> tuple[Receipt, ...]:
        """The receipts that verified so far, in the order they came."""
        return tuple(self._verified)

    def feed(self, data: bytes) -> Iterator[StreamEvent]:
        """The events in ``data``, the next bytes of the response body (split anywhere), as each frame is read."""
        self._received += len(data)
        if self._received > self._budget:
            raise UpstreamFailed(
                f"the answer to {self.exchange.request_id} ran past {self._budget} bytes, more than "
                f"max_tokens={self.exchange.max_tokens} can need; it was cut off"
            )
        for raw in self._frames.feed(data):
            event = self.feed_frame(unpack_raw(raw))
            if event is not None:
                yield event

    def feed_frame(self, fields: Mapping[str, Any]) -> StreamEvent | None:
        """The event one decoded frame makes, if any (a ``start`` makes none)."""
        if fields.get("t") == "chunk":  # the hot path: one per token, kept free of models
            return self._chunk(fields)
        try:
            message = STREAM_FRAME.validate_python(fields)
        except ValidationError as exc:
            raise UpstreamFailed(f"malformed response from the network: {exc.errors()[0]['msg']}") from exc
        if isinstance(message, JobStart):
            self._start(message)
            return None
        if isinstance(message, JobEnd):
            return self._end(message)
        assert isinstance(message, JobError)
        raise CocoonError.from_openai(message.status, {"error": message.error.model_dump()})

    def finish(self) -> StreamResult:
        """The result once the body has ended; ``UpstreamFailed`` if no receipt verified."""
        receipts = self._verified
        if not receipts:
            raise UpstreamFailed(f"the stream of {self.exchange.request_id} ended before the worker's receipt")
        # After a mid-stream resume, a later receipt's prompt includes the earlier text, and a worker that died
        # before its receipt is not paid: usage tells the app what it got, receipts what it pays for.
        # A hedged twin's receipt covers the prefill it did before losing: the app's prompt is the winner's.
        serving = [r for r in receipts if r.receipt_id not in self._hedge_losers] or receipts
        usage = TokenUsage(
            prompt_tokens=min(r.prompt_tokens for r in serving),
            completion_tokens=max(self.streamed_tokens, sum(r.completion_tokens for r in receipts)),
            cached_tokens=serving[0].cached_tokens,
            reasoning_tokens=sum(r.reasoning_tokens for r in receipts),
        )
        return StreamResult(self.finish_reason, usage, tuple(receipts))

    def _start(self, start: JobStart) -> None:
        worker = self.exchange.workers.get(start.worker_id)
        if worker is None:
            raise UpstreamFailed(f"proxy started an unknown worker {start.worker_id}")
        if start.worker_id in self._started:
            raise UpstreamFailed(f"proxy started worker {start.worker_id} twice for one request")
        if start.hedged_out != self._serving_ended:
            raise UpstreamFailed(
                "proxy started another worker after the answer's receipt"
                if self._serving_ended
                else "proxy named a hedge loser before the answer's receipt"
            )
        if self._worker is not None and not self._serving_ended and self._finished:
            raise UpstreamFailed("proxy resumed an answer whose worker had already finished it")
        self._started.add(start.worker_id)
        self._worker = worker
        self._sealer = None  # keyed by the nonce chunk 0 brings
        self._digest = ResponseDigest(self.exchange.salt)
        self._seq = 0
        self._hedged_out = start.hedged_out
        self._finished = False
        self._worker_tokens = self._worker_bytes = 0
        self._prior_bytes = self._text_bytes

    def _chunk(self, fields: Mapping[str, Any]) -> TextEvent | EmbeddingEvent | None:
        worker, digest = self._worker, self._digest
        if worker is None or digest is None:
            raise UpstreamFailed("proxy sent a chunk before naming its worker")
        if self._serving_ended:
            raise UpstreamFailed("proxy sent a chunk after the answer's receipt")
        if fields.get("worker_id") != worker.worker_id or fields.get("seq") != self._seq:
            raise UpstreamFailed("proxy reordered or mixed response chunks")
        data = fields.get("data")
        if not isinstance(data, bytes):
            raise UpstreamFailed("a response chunk carries no sealed bytes")
        self._worker_bytes += len(data)
        if self._seq >= self._chunk_cap or self._worker_bytes > self._byte_cap:
            raise UpstreamFailed(
                f"worker {worker.worker_id} streamed past the caps of max_tokens={self.exchange.max_tokens}"
            )
        sealer = self._sealer
        if sealer is None:
            ex = self.exchange
            sealer = self._sealer = ResponseSealer(ex.content_key, ex.request_id, worker.worker_id, _nonce(fields))
        opened = sealer.open(self._seq, data)
        self._seq += 1
        digest.update(opened)
        chunk = _chunk_payload(opened)
        self._worker_tokens += max(0, chunk.tokens)
        self.streamed_tokens += max(0, chunk.tokens)
        if chunk.finish_reason:
            self.finish_reason = chunk.finish_reason
            self._finished = True
        if chunk.embeddings is not None:
            return EmbeddingEvent(chunk.embeddings)
        if chunk.text or chunk.tool_calls or chunk.token_logprobs:
            self._text_bytes += len(chunk.text.encode())
            return TextEvent(
                chunk.text,
                chunk.tokens,
                worker.worker_id,
                tool_calls=tuple(chunk.tool_calls or ()),
                logprobs=tuple(chunk.token_logprobs or ()),
            )
        return None

    def _end(self, end: JobEnd) -> ReceiptVerified | ReceiptRefused:
        worker, digest = self._worker, self._digest
        if worker is None or digest is None:
            raise UpstreamFailed("proxy sent a receipt before naming its worker")
        if worker.worker_id in self._receipted:
            raise UpstreamFailed(f"proxy sent a second receipt of worker {worker.worker_id}")
        self._receipted.add(worker.worker_id)
        ex = self.exchange
        paid = sum(r.completion_tokens for r in self._verified)
        bounds = ReceiptBounds(
            completion=max(0, ex.max_tokens - paid),
            received=self._worker_tokens,
            prompt=ReceiptBounds.prompt_bound(ex.plaintext, self._prior_bytes),
        )
        if self._hedged_out:  # the slower twin of a hedged job: it may claim its prefill only
            if not hedge_receipt_ok(end, worker, ex.model, ex.request_id, ex.plaintext, digest, bounds):
                return ReceiptRefused(end.receipt, "hedged receipt did not verify", ends_request=False)
            self._hedge_losers.add(end.receipt.receipt_id)
        else:
            self._serving_ended = True
            try:
                check_receipt(end, worker, ex.model, ex.request_id, ex.plaintext, digest, bounds)
            except ReceiptInvalid as exc:
                return ReceiptRefused(end.receipt, exc.message, ends_request=True)
        self._verified.append(end.receipt)
        return ReceiptVerified(end.receipt)


def _nonce(fields: Mapping[str, Any]) -> bytes:
    nonce = fields.get("key_nonce")
    if not isinstance(nonce, bytes) or len(nonce) != KEY_NONCE_BYTES:
        raise UpstreamFailed("a worker's first response chunk lacks the nonce of its response key")
    return nonce


def _chunk_payload(opened: bytes) -> ChunkPayload:
    """A chunk's plaintext, read without validation overhead; anything malformed is ``UpstreamFailed``."""
    try:
        fields = msgpack.unpackb(opened, raw=False)
        return ChunkPayload.model_construct(
            text=str(fields.get("text", "")),
            tokens=int(fields.get("tokens", 0)),
            embeddings=fields.get("embeddings"),
            tool_calls=_dicts(fields.get("tool_calls")),
            token_logprobs=_dicts(fields.get("token_logprobs")),
            finish_reason=fields.get("finish_reason"),
        )
    except (ValueError, TypeError, AttributeError, msgpack.ExtraData) as exc:
        raise UpstreamFailed(f"a response chunk is malformed: {exc}") from exc


def _dicts(value: Any) -> list[dict[str, Any]] | None:
    """A chunk's list of OpenAI-shaped objects; the sidecar validates their fields before an app sees them."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise TypeError("a chunk's tool_calls or token_logprobs is not a list of objects")
    return value
