"""Relaying one job: pick a worker, wait for its first byte (failing over before it), then stream.

The proxy moves sealed chunks it cannot read. If the worker dies after streaming began, the job resumes
on the next candidate, which receives the sealed chunks emitted so far and continues after them; the client
sees one stream. Every frame sent to the client is length-prefixed msgpack.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgpack

from cocoon.crypto import receipt_signature_valid
from cocoon.errors import CocoonError, NoCapacity, UpstreamFailed, UpstreamTimeout
from cocoon.protocol import (
    Cancel,
    ErrorBody,
    Job,
    JobEnd,
    JobError,
    JobRequest,
    JobStart,
    ResumeChunks,
    frame,
    pack,
)
from cocoon.proxy.directory import WorkerEntry, WorkerLost

log = logging.getLogger("cocoon.proxy")

Frame = dict[str, Any]


@dataclass(slots=True)
class Attempt:
    worker: WorkerEntry
    job_id: str
    queue: asyncio.Queue[Frame | WorkerLost]
    started: float = field(default_factory=time.monotonic)
    chunks: list[bytes] = field(default_factory=list)


class JobRelay:
    """Carries one ``JobRequest`` through its candidates until a receipt or a final error."""

    def __init__(
        self,
        request: JobRequest,
        candidates: list[WorkerEntry],
        first_byte_timeout: float,
        chunk_timeout: float,
    ) -> None:
        self.request = request
        self.candidates = list(candidates)
        self.first_byte_timeout = min(first_byte_timeout, request.timeout)
        self.chunk_timeout = chunk_timeout
        self.keys = {k.worker_id: k for k in request.keys}
        self.attempts: list[Attempt] = []
        self.receipts: list[JobEnd] = []
        self.last_error: CocoonError | None = None

    async def first_frame(self) -> tuple[Attempt, Frame]:
        """Dispatch to candidates in order until one answers with a chunk or a receipt.

        Raises the last worker error (or ``NoCapacity``) when every candidate failed before its first byte.
        """
        while self.candidates:
            attempt = await self._dispatch(self.candidates.pop(0), resume=[])
            try:
                first = await self._next(attempt, self.first_byte_timeout)
            except CocoonError as exc:
                self._finish(attempt, ok=False)
                self.last_error = exc
                if exc.status < 500 or not self.request.routing.allow_fallbacks:
                    raise
                log.info(
                    "failover before first byte job=%s worker=%s reason=%s",
                    attempt.job_id,
                    attempt.worker.worker_id,
                    exc.code,
                )
                continue
            return attempt, first
        raise self.last_error or NoCapacity(
            f"none of the {len(self.keys)} workers this request was sealed to is connected; "
            "refresh the directory and retry"
        )

    async def stream(self, attempt: Attempt, first: Frame) -> AsyncIterator[bytes]:
        """The response stream: start frame, chunks, receipt; resumes on another worker if one dies."""
        try:
            yield frame(pack(JobStart(worker_id=attempt.worker.worker_id, job_id=attempt.job_id)))
            current: Frame | None = first
            while True:
                if current is None:
                    try:
                        current = await self._next(attempt, self.chunk_timeout)
                    except CocoonError as exc:
                        resumed = await self._resume(attempt, exc)
                        if resumed is None:
                            yield frame(pack(_error_frame(exc)))
                            return
                        attempt, current = resumed
                        yield frame(
                            pack(
                                JobStart(
                                    worker_id=attempt.worker.worker_id,
                                    job_id=attempt.job_id,
                                    attempt=len(self.attempts) - 1,
                                )
                            )
                        )
                        continue
                kind = current.get("t")
                if kind == "chunk":
                    attempt.chunks.append(current["data"])
                    current["worker_id"] = attempt.worker.worker_id
                    current["job_id"] = ""
                    yield frame(msgpack.packb(current, use_bin_type=True))
                elif kind == "end":
                    end = JobEnd.model_validate(current)
                    self._finish(attempt, ok=self._receipt_ok(attempt, end))
                    self.receipts.append(end)
                    yield frame(pack(end.model_copy(update={"job_id": ""})))
                    return
                current = None
        finally:
            for running in self.attempts:
                if running.worker.jobs.pop(running.job_id, None) is not None:
                    running.worker.inflight -= 1
                    await _send_quietly(running.worker, pack(Cancel(job_id=running.job_id, reason="closed")))

    async def _dispatch(self, worker: WorkerEntry, resume: list[ResumeChunks]) -> Attempt:
        key = self.keys[worker.worker_id]
        attempt = Attempt(worker, "job-" + uuid.uuid4().hex[:16], asyncio.Queue())
        worker.jobs[attempt.job_id] = attempt.queue
        worker.inflight += 1
        self.attempts.append(attempt)
        job = Job(
            job_id=attempt.job_id,
            request_id=self.request.request_id,
            model=self.request.model,
            kind=self.request.kind,
            max_tokens=self.request.max_tokens,
            enc=key.enc,
            wrapped_key=key.wrapped,
            ciphertext=self.request.ciphertext,
            resume_from=resume,
        )
        try:
            await worker.send(pack(job))
        except Exception as exc:  # the socket died under us: treat as a lost worker, the loop fails over
            attempt.queue.put_nowait(WorkerLost(f"send failed: {type(exc).__name__}"))
        return attempt

    async def _next(self, attempt: Attempt, timeout: float) -> Frame:
        """The worker's next frame; worker errors and losses become ``CocoonError``s."""
        try:
            item = await asyncio.wait_for(attempt.queue.get(), timeout)
        except TimeoutError:
            raise UpstreamTimeout(
                f"worker {attempt.worker.worker_id} sent nothing for {timeout:g}s"
            ) from None
        if isinstance(item, WorkerLost):
            raise UpstreamFailed(f"worker {attempt.worker.worker_id} went away: {item.reason}")
        if item.get("t") == "error":
            err = JobError.model_validate(item)
            raise CocoonError.from_openai(err.status, {"error": err.error.model_dump()})
        return item

    async def _resume(self, failed: Attempt, exc: CocoonError) -> tuple[Attempt, Frame] | None:
        """Continue on the next candidate after ``failed`` died mid-stream; ``None`` when none is left."""
        self._finish(failed, ok=False)
        if exc.status < 500 or not self.request.routing.allow_fallbacks:
            return None
        resume = [
            ResumeChunks(worker_id=a.worker.worker_id, chunks=a.chunks) for a in self.attempts if a.chunks
        ]
        while self.candidates:
            attempt = await self._dispatch(self.candidates.pop(0), resume)
            try:
                first = await self._next(attempt, self.first_byte_timeout)
            except CocoonError:
                self._finish(attempt, ok=False)
                continue
            log.info(
                "resumed mid-stream request=%s on worker=%s",
                self.request.request_id,
                attempt.worker.worker_id,
            )
            return attempt, first
        return None

    def _finish(self, attempt: Attempt, ok: bool) -> None:
        if attempt.worker.jobs.pop(attempt.job_id, None) is not None:
            attempt.worker.inflight -= 1
        attempt.worker.record_job(time.monotonic() - attempt.started, None, ok)

    def _receipt_ok(self, attempt: Attempt, end: JobEnd) -> bool:
        r = end.receipt
        valid = (
            r.worker_id == attempt.worker.worker_id
            and r.request_id == self.request.request_id
            and receipt_signature_valid(attempt.worker.register.ed25519_pub, r, end.signature)
        )
        if not valid:
            log.warning("bad receipt job=%s worker=%s", attempt.job_id, attempt.worker.worker_id)
        return valid


def _error_frame(exc: CocoonError) -> JobError:
    return JobError(status=exc.status, error=ErrorBody(message=exc.message, type=exc.type, code=exc.code))


async def _send_quietly(worker: WorkerEntry, data: bytes) -> None:
    try:
        await worker.send(data)
    except Exception:  # the worker is gone already; nothing is left to cancel
        log.debug("cancel not delivered worker=%s", worker.worker_id)
