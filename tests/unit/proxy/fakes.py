"""Workers without sockets for the proxy's unit tests: what the proxy sends them is recorded, and the test
speaks for them by putting frames on their job queues by hand. Receipts are really signed.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import msgpack

from cocoon.attestation import VerifiedWorker
from cocoon.crypto import SigningKey, sign_receipt
from cocoon.protocol import ErrorBody, JobEnd, JobError, JobRequest, ModelOffer, Receipt, Register, WrappedKeyWire, pack
from cocoon.proxy.routing.directory import SendFailed, WorkerEntry

MODEL = "m"
MODEL_HASH = "ab" * 32
KEY_NONCE = b"n" * 32
Frame = dict[str, Any]
_receipts = itertools.count(1)


class FakeWorker:
    """A registered worker whose socket is a queue of the frames the proxy sent it."""

    def __init__(self, name: str, *, price: int = 1000) -> None:
        self.key = SigningKey.generate()
        self.register = Register(
            worker_id=name,
            software="fake",
            models=[ModelOffer(model=MODEL, model_hash=MODEL_HASH, context_length=4096)],
            slots=2,
            price_coefficient=price,
            ed25519_pub=self.key.public,
            x25519_pub=b"x" * 32,
            attestation={"provider": "simulated", "quote": b"q"},
        )
        verified = VerifiedWorker(b"x" * 32, self.key.public, frozenset([MODEL_HASH]), "m", "simulated")
        self.entry = WorkerEntry(name, self.register, verified, self._send)
        self.sent: asyncio.Queue[Frame] = asyncio.Queue()
        self.unreachable = False  # its socket is gone: every send fails

    @property
    def name(self) -> str:
        return self.entry.worker_id

    async def _send(self, data: bytes) -> None:
        if self.unreachable:
            raise SendFailed("socket closed")
        self.sent.put_nowait(msgpack.unpackb(data, raw=False))

    async def next_sent(self, kind: str) -> Frame:
        """The next frame of ``kind`` (``job``, ``cancel``…) the proxy sent here; earlier other kinds are skipped."""
        while True:
            frame = await self.sent.get()
            if frame["t"] == kind:
                return frame

    def feed(self, job_id: str, *frames: Frame) -> None:
        """Frames from this worker for ``job_id``, as its socket reader would queue them."""
        for frame in frames:
            self.entry.jobs[job_id].put_nowait(frame | {"job_id": job_id})

    def chunk(self, seq: int, data: bytes) -> Frame:
        """A sealed chunk as a worker sends it: chunk 0 brings the nonce of its job's response key."""
        return {"t": "chunk", "seq": seq, "data": data} | ({"key_nonce": KEY_NONCE} if seq == 0 else {})

    def error(self, status: int, code: str = "engine_error") -> Frame:
        body = ErrorBody(message=f"{self.name} failed", type="api_error", code=code)
        return _wire(JobError(status=status, error=body))

    def end(self, job: Frame, *, prompt_tokens: int = 5, completion_tokens: int = 3) -> Frame:
        """A receipt for ``job`` (the ``job`` frame this worker was sent), signed with this worker's key."""
        receipt = Receipt(
            receipt_id=f"rcpt-{next(_receipts)}",
            request_id=job["request_id"],
            job_id=job["job_id"],
            worker_id=self.name,
            model=MODEL,
            model_hash=MODEL_HASH,
            prompt_tokens=prompt_tokens,
            cached_tokens=0,
            completion_tokens=completion_tokens,
            reasoning_tokens=0,
            request_sha256="0" * 64,
            response_sha256="0" * 64,
            finish_reason="stop" if completion_tokens else "cancelled",
            started_at=0.0,
            ttft_ms=10.0,
            duration_ms=50.0,
        )
        return _wire(JobEnd(receipt=receipt, signature=sign_receipt(self.key, receipt)))


def request(*workers: FakeWorker, request_id: str = "req-1", **routing: object) -> JobRequest:
    """A sealed request (its ciphertext opaque to the proxy) for ``workers``, in that order."""
    keys = [WrappedKeyWire(worker_id=w.name, enc=b"e", wrapped=b"k") for w in workers]
    return JobRequest.model_validate(
        {
            "request_id": request_id,
            "model": MODEL,
            "kind": "chat",
            "max_tokens": 16,
            "keys": keys,
            "ciphertext": b"sealed",
            "routing": routing,
        }
    )


def _wire(message: JobEnd | JobError) -> Frame:
    """``message`` as the proxy's socket reader hands it on: a msgpack-decoded dict."""
    frame: Frame = msgpack.unpackb(pack(message), raw=False)
    return frame
