"""A network without processes for the client's unit tests: attested workers that answer sealed jobs.

Real: the simulated attestation (quotes of a test authority, checked by the client's real policy), HPKE
sealing, sealed chunks, signed receipts. Recorded: the proxy's JSON and framing around them, as the proxy
writes them (``GET /v1/directory`` entries, ``start``/``chunk``/``end`` frames of ``POST /v1/jobs``).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgpack

from cocoon.attestation import DEV_MEASUREMENT, AttestationPolicy, VerifiedWorker, make_simulated_quote, report_data
from cocoon.client.directory import AttestedWorker
from cocoon.crypto import NodeKeys, ResponseDigest, SigningKey, request_digest, sign_receipt
from cocoon.engines.config import DEFAULT_MODEL
from cocoon.errors import NotFound
from cocoon.protocol import (
    Chunk,
    JobEnd,
    JobRequest,
    JobStart,
    Receipt,
    ResponseSealer,
    WrappedKey,
    frame,
    new_key_nonce,
    open_request,
    unpack_as,
    unwrap_content_key,
)
from cocoon.protocol.payload import ChunkPayload, RequestPayload

MODEL = DEFAULT_MODEL
MODEL_HASH = "ab" * 32
AUTHORITY = SigningKey.generate()  # the test network's attestation authority


def dev_policy() -> AttestationPolicy:
    """The policy of a dev network whose workers are quoted by ``AUTHORITY`` and run ``MODEL_HASH``."""
    return AttestationPolicy(
        allow_simulated=True,
        simulated_authorities=[AUTHORITY.public.hex()],
        allowed_measurements=[DEV_MEASUREMENT],
        allowed_model_hashes=[MODEL_HASH],
    )


@dataclass(frozen=True, slots=True)
class FakeWorker:
    """A worker's keys and offer, attested by ``AUTHORITY`` for ``MODEL``."""

    keys: NodeKeys = field(default_factory=NodeKeys.generate)
    price_coefficient: int = 1000
    region: str = ""
    vision: bool = False  # declares that its model takes images

    @property
    def worker_id(self) -> str:
        return self.keys.node_id

    def attested(self) -> AttestedWorker:
        """This worker as the client holds it once its directory entry has verified."""
        verified = VerifiedWorker(
            self.keys.sealing.public, self.keys.signing.public, frozenset([MODEL_HASH]), DEV_MEASUREMENT, "simulated"
        )
        return AttestedWorker(
            worker_id=self.worker_id,
            verified=verified,
            models={MODEL: MODEL_HASH},
            embeddings=frozenset([MODEL]),
            context_length={MODEL: 4096},
            price_coefficient=self.price_coefficient,
            region=self.region,
            expected_latency_ms=10.0,
        )

    def directory_entry(self) -> dict[str, Any]:
        """This worker as the proxy lists it at ``GET /v1/directory`` (bytes in base64)."""
        sealing, signing = self.keys.sealing.public, self.keys.signing.public
        quote = make_simulated_quote(AUTHORITY, report_data(sealing, signing, [MODEL_HASH]))
        b64 = base64.b64encode
        return {
            "worker_id": self.worker_id,
            "software": "cocoon-test",
            "models": [
                {
                    "model": MODEL,
                    "model_hash": MODEL_HASH,
                    "context_length": 4096,
                    "supports_embeddings": True,
                    "supports_vision": self.vision,
                }
            ],
            "x25519_pub": b64(sealing).decode(),
            "ed25519_pub": b64(signing).decode(),
            "attestation": {
                "provider": "simulated",
                "quote": b64(quote).decode(),
                "x25519_pub": b64(sealing).decode(),
                "ed25519_pub": b64(signing).decode(),
                "model_hashes": [MODEL_HASH],
                "measurement": DEV_MEASUREMENT,
            },
            "price_coefficient": self.price_coefficient,
            "region": self.region,
            "slots": 4,
            "free_slots": 4,
            "score": {"score_ms": 10.0},
        }

    def turn(
        self, request_id: str, content_key: bytes, plaintext: bytes, salt: bytes, model: str = MODEL
    ) -> WorkerTurn:
        """The frames this worker sends for one request it has opened."""
        return WorkerTurn(self, request_id, content_key, plaintext, model, ResponseDigest(salt))

    def take(self, job: JobRequest) -> tuple[WorkerTurn, RequestPayload]:
        """Open a sealed job the way a worker does: unwrap our key, open the body, read the payload."""
        key = next(k for k in job.keys if k.worker_id == self.worker_id)
        content_key = unwrap_content_key(
            job.request_id, WrappedKey(key.worker_id, key.enc, key.wrapped), self.keys.sealing.private
        )
        plaintext = open_request(job.request_id, job.ciphertext, content_key)
        payload = RequestPayload.model_validate(msgpack.unpackb(plaintext, raw=False))
        return self.turn(job.request_id, content_key, plaintext, payload.salt, job.model), payload


@dataclass(slots=True)
class WorkerTurn:
    """One worker's part of a response stream, frame by frame, as the proxy relays it to the client."""

    worker: FakeWorker
    request_id: str
    content_key: bytes
    plaintext: bytes
    model: str
    digest: ResponseDigest
    seq: int = 0
    completion_tokens: int = 0
    key_nonce: bytes = field(default_factory=new_key_nonce)

    def start(self, *, hedged_out: bool = False, attempt: int = 0) -> dict[str, Any]:
        message = JobStart(worker_id=self.worker.worker_id, job_id="", attempt=attempt, hedged_out=hedged_out)
        return message.model_dump()

    def chunk(self, payload: ChunkPayload, *, seq: int | None = None, worker_id: str | None = None) -> dict[str, Any]:
        """A sealed chunk numbered ``seq`` (the next one unless given), counted into this turn's digest."""
        data = msgpack.packb(payload.model_dump(exclude_defaults=True), use_bin_type=True)
        self.digest.update(data)
        number = self.seq if seq is None else seq
        sealer = ResponseSealer(self.content_key, self.request_id, self.worker.worker_id, self.key_nonce)
        sealed = sealer.seal(number, data)
        self.seq += 1
        self.completion_tokens += payload.tokens
        nonce = self.key_nonce if number == 0 else b""
        return Chunk(
            seq=number, data=sealed, worker_id=worker_id or self.worker.worker_id, key_nonce=nonce
        ).model_dump()

    def text(self, text: str, tokens: int = 1) -> dict[str, Any]:
        return self.chunk(ChunkPayload(text=text, tokens=tokens))

    def receipt(self, **changes: Any) -> Receipt:
        """The true receipt for what this turn sent so far, with ``changes`` (lies) applied."""
        fields: dict[str, Any] = {
            "receipt_id": f"rcpt-{self.worker.worker_id[:8]}-{self.seq}",
            "request_id": self.request_id,
            "job_id": "job-1",
            "worker_id": self.worker.worker_id,
            "model": self.model,
            "model_hash": MODEL_HASH,
            "prompt_tokens": 5,
            "cached_tokens": 0,
            "completion_tokens": self.completion_tokens,
            "reasoning_tokens": 0,
            "request_sha256": request_digest(self.plaintext),
            "response_sha256": self.digest.hexdigest(),
            "finish_reason": "stop",
            "started_at": 0.0,
            "ttft_ms": 1.0,
            "duration_ms": 2.0,
        }
        return Receipt(**(fields | changes))

    def end(self, *, signer: SigningKey | None = None, **changes: Any) -> dict[str, Any]:
        """The receipt frame, signed by this worker (or by ``signer``, a forger)."""
        receipt = self.receipt(**changes)
        signature = sign_receipt(signer or self.worker.keys.signing, receipt)
        return JobEnd(receipt=receipt, signature=signature).model_dump()


def wire(frames: Iterable[dict[str, Any]]) -> bytes:
    """Decoded frames as the bytes of a ``POST /v1/jobs`` response body."""
    return b"".join(frame(msgpack.packb(f, use_bin_type=True)) for f in frames)


def frames_response(frames: Iterable[dict[str, Any]]) -> httpx.Response:
    """A ``POST /v1/jobs`` answer streaming ``frames`` (a stream, as the SDK reads it with ``aiter_raw``)."""
    return httpx.Response(
        200, stream=httpx.ByteStream(wire(frames)), headers={"content-type": "application/x-cocoon-frames"}
    )


Answer = Callable[[JobRequest, Sequence[FakeWorker]], httpx.Response]


def answer_with_text(*pieces: str, finish_reason: str = "stop") -> Answer:
    """A proxy that hands each job to its first candidate, which streams ``pieces`` and signs the receipt;
    an embedding job gets one vector per input."""

    def answer(job: JobRequest, workers: Sequence[FakeWorker]) -> httpx.Response:
        worker = next(w for w in workers if w.worker_id == job.keys[0].worker_id)
        turn, payload = worker.take(job)
        frames = [turn.start()]
        if payload.kind == "embedding":
            vectors = [[float(len(text)), 0.5, -0.25] for text in payload.input or []]
            frames.append(turn.chunk(ChunkPayload(embeddings=vectors)))
        else:
            frames += [turn.text(piece) for piece in pieces]
            frames.append(turn.chunk(ChunkPayload(finish_reason=finish_reason)))
        frames.append(turn.end(finish_reason=finish_reason))
        return frames_response(frames)

    return answer


def recorded_proxy(workers: Sequence[FakeWorker], answer: Answer | None = None) -> httpx.MockTransport:
    """A proxy that lists ``workers`` in its directory and answers ``POST /v1/jobs`` with ``answer``."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/directory":
            entries = [w.directory_entry() for w in workers]
            return httpx.Response(200, json={"object": "directory", "proxy_id": "p-test", "workers": entries})
        if request.url.path == "/v1/jobs" and answer is not None:
            return answer(unpack_as(request.content, JobRequest), workers)
        return httpx.Response(404, json=NotFound(f"{request.url.path} is not recorded").to_openai())

    return httpx.MockTransport(handle)


def answer_with(chunks_for: Callable[[RequestPayload], list[ChunkPayload]], *, seen: list[RequestPayload]) -> Answer:
    """A proxy whose first candidate answers each job with ``chunks_for(payload)`` (the last one carries the
    finish reason) and a true receipt; every payload it opened is appended to ``seen``."""

    def answer(job: JobRequest, workers: Sequence[FakeWorker]) -> httpx.Response:
        worker = next(w for w in workers if w.worker_id == job.keys[0].worker_id)
        turn, payload = worker.take(job)
        seen.append(payload)
        chunks = chunks_for(payload)
        finish = next((c.finish_reason for c in reversed(chunks) if c.finish_reason), "stop")
        frames = [turn.start(), *(turn.chunk(c) for c in chunks), turn.end(finish_reason=finish)]
        return frames_response(frames)

    return answer
