"""Relaying one job from the client to a worker and the sealed stream back, through failures.

The problem. A request is sealed to several workers; the proxy can read neither it nor the answer, and any
worker may be slow, err, or vanish: before it sends its first byte, or in the middle of the stream. The client
must see one stream, and pay exactly for work it could verify: each worker's signed receipt, nothing else.

The naive answer: send the job to the best worker; if that fails, send it again to the next one.

Why it fails. Before the first byte it is right, and is what this code does. After it, a fresh retry starts the
answer over: the client has already shown half an answer to its user, would get a different one glued after
it, and would pay for the prompt twice. Waiting on one worker for the first byte also makes a request as slow
as its slowest candidate; racing two naively would make the client pay for two whole answers.

What this code does:

- Before the first byte (``first_frame``): candidates in rank order, each given ``first_byte_timeout``. A timeout,
  a 5xx or a lost socket is evidence against that worker (``EvidenceLog``) and the next candidate is tried, if the
  request allows fallbacks; a 4xx is the client's fault and ends the request. No receipt exists: nobody is paid.
- After the first byte (``stream``): sealed chunks go to the client as they come, and the proxy keeps them. If the
  worker is lost, stalls past ``chunk_timeout`` or errs, the next candidate gets the job with ``resume_from`` (every
  chunk sent so far), continues after them, and the client reads a new start frame (``attempt`` n) and then the
  continuation. The lost worker signed no receipt and is paid nothing; the one that finishes is paid its receipt
  (it prefilled the earlier chunks as part of its prompt).
- Hedged (``routing.hedge``): the job starts on the two best candidates (``hedge.race``); the first frame wins the
  stream and the other is cancelled with reason ``hedge``. After the winner's receipt, the loser's receipt follows
  behind a ``hedged_out`` start frame if it verifies and claims no completion tokens: the client pays the winner's
  answer and the loser's prefill. A loser claiming completion tokens the client never got is paid nothing.

- Abandoned (the client hung up, or its timeout closed the request, before or after the first byte): every
  attempt still running gets ``Cancel`` with reason ``closed``; its worker stops at the next token and signs a
  receipt for the prefill and the tokens its chunks carried, which the proxy books (``on_receipt``) within
  ``CANCELLED_RECEIPT_S`` though nobody is left to forward it to. The worker is paid for the work it did; the
  client, which never got that receipt, settles it as it settles any receipt it never got (``wallet.resync``).

- Bounded: a worker may stream at most ``chunk_cap`` chunks and ``byte_cap`` bytes for one job, both derived from
  its ``max_tokens`` (one chunk per token at most, plus its finish). One that streams more is cut off (cancelled, its
  surplus never queued), counted as bad evidence, and the stream resumes on the next candidate, as for a lost one.

Every receipt the client gets is given to the ``Cashier`` first (``on_receipt``), so its charge is stored before
the client can pay it; the relay owns the request's ``Reservation`` and releases it when the job ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator

import msgpack

from cocoon.crypto import receipt_signature_valid
from cocoon.errors import CocoonError, NoCapacity, UpstreamFailed, UpstreamTimeout, WorkerGone
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
from cocoon.protocol.framing import job_caps
from cocoon.proxy.attempt import Attempt, CappedQueue, Frame
from cocoon.proxy.money.cashier import Cashier, Reservation
from cocoon.proxy.routing.directory import SendFailed, WorkerEntry, WorkerLost
from cocoon.proxy.routing.evidence import EvidenceLog, outcome_of
from cocoon.proxy.routing.hedge import race
from cocoon.proxy.routing.reputation import Outcome

log = logging.getLogger("cocoon.proxy")

# How long a cancelled attempt's receipt is waited for: a worker stops at its next token, so this is a round trip.
CANCELLED_RECEIPT_S = 2.0
# After a write to the client, frames arriving within this long join the next write: a burst of chunks costs a few
# socket writes, not one each. The first piece and the receipt are never held; a chunk waits at most this long.
FLUSH_S = 0.004


class JobRelay:
    """Carries one ``JobRequest`` through its candidates until a receipt or a final error.

    ``reservation`` is what ``cashier.admit`` gave for this request; from here on the relay owns it: receipts are
    charged against it and it is released when ``first_frame`` fails or ``stream`` ends.
    """

    def __init__(
        self,
        request: JobRequest,
        candidates: list[WorkerEntry],
        cashier: Cashier,
        reservation: Reservation,
        *,
        first_byte_timeout: float,
        chunk_timeout: float,
        dispatch_timeout: float = 5.0,
        evidence: EvidenceLog | None = None,
        flush_s: float = FLUSH_S,
    ) -> None:
        self.request = request
        self.cashier = cashier
        self.reservation = reservation
        self.candidates = list(candidates)
        self.first_byte_timeout = min(first_byte_timeout, request.timeout)
        self.chunk_timeout = chunk_timeout
        self.dispatch_timeout = dispatch_timeout
        self.flush_s = flush_s
        self.evidence = evidence
        self.caps = job_caps(request.kind, request.max_tokens)
        self.keys = {k.worker_id: k for k in request.keys}
        self.attempts: list[Attempt] = []
        self.hedge_losers: list[Attempt] = []
        self.finished = False  # the piece ``stream`` yields last has been produced (the response may end with it)
        self.receipts: list[JobEnd] = []
        self.last_error: CocoonError | None = None

    async def first_frame(self) -> tuple[Attempt, Frame]:
        """Dispatch to candidates in order until one answers with a chunk or a receipt.

        Raises the last worker error (or ``NoCapacity``) when every candidate failed before its first byte; the
        reservation is released then, as the job is over.
        """
        try:
            return await self._first_answer()
        except asyncio.CancelledError:  # the client left before the first byte: stop (and book) what runs
            await self.abandon()
            raise
        except BaseException:
            self.cashier.release(self.reservation)
            raise

    async def _first_answer(self) -> tuple[Attempt, Frame]:
        while self.candidates:
            hedged = self.request.routing.hedge and not self.attempts and len(self.candidates) >= 2
            if hedged:
                batch = [await self._dispatch(self.candidates.pop(0), resume=[]) for _ in range(2)]
                try:
                    attempt, first, losers = await race(batch, self._first, self._failed_first)
                except CocoonError as exc:
                    if exc.status < 500 or not self.request.routing.allow_fallbacks:
                        raise
                    continue
                for loser in losers:
                    await self._cancel_hedge(loser)
                return attempt, first
            attempt = await self._dispatch(self.candidates.pop(0), resume=[])
            try:
                first = await self._first(attempt)
            except CocoonError as exc:
                self._failed_first(attempt, exc)
                if exc.status < 500 or not self.request.routing.allow_fallbacks:
                    raise
                continue
            return attempt, first
        raise self.last_error or NoCapacity(
            f"none of the {len(self.keys)} workers this request was sealed to is connected; "
            "refresh the directory and retry"
        )

    async def stream(self, attempt: Attempt, first: Frame) -> AsyncGenerator[bytes, None]:
        """The response stream: start frame, chunks, receipt; resumes on another worker if one dies.

        Frames that are already waiting go out in one write, and after a write the frames of the next ``flush_s``
        join the following one (the first piece and the receipt are never held): a socket write per chunk is most
        of a relay's cost.
        """
        out = [frame(pack(JobStart(worker_id=attempt.worker.worker_id, job_id=attempt.job_id)))]
        flushed_at = 0.0  # the first piece goes out at once: time to first token is never held
        try:
            current: Frame | None = first
            while True:
                if current is None:
                    try:
                        if out and attempt.queue.empty():
                            await asyncio.sleep(0)  # one loop turn: frames already read from the socket join this write
                        if out and attempt.queue.empty():
                            hold = flushed_at + self.flush_s - time.monotonic()
                            current = await self._poll(attempt, hold) if hold > 0 else None
                            if current is None:
                                yield b"".join(out)
                                out.clear()
                                flushed_at = time.monotonic()
                        if current is None:
                            current = await self._next(attempt, self.chunk_timeout)
                    except CocoonError as exc:
                        resumed = await self._resume(attempt, exc)
                        if resumed is None:
                            out.append(frame(pack(_error_frame(exc))))
                            self.finished = True
                            yield b"".join(out)
                            return
                        attempt, current = resumed
                        start = JobStart(
                            worker_id=attempt.worker.worker_id, job_id=attempt.job_id, attempt=len(self.attempts) - 1
                        )
                        out.append(frame(pack(start)))
                        continue
                kind = current.get("t")
                if kind == "chunk":
                    if not attempt.chunks:
                        attempt.key_nonce = current.get("key_nonce") or b""
                    attempt.chunks.append(current["data"])
                    current["worker_id"] = attempt.worker.worker_id
                    del current["job_id"]  # the start frame named the job; the client reads none from a chunk
                    out.append(frame(msgpack.packb(current, use_bin_type=True)))
                elif kind == "end":
                    end = JobEnd.model_validate(current)
                    receipt_ok = self._receipt_ok(attempt, end)
                    self._finish(attempt, "ok" if receipt_ok else "bad_receipt", end)
                    await self.cashier.on_receipt(self.reservation, attempt.worker.register, end, receipt_ok)
                    self.receipts.append(end)
                    current["job_id"] = ""
                    out.append(frame(msgpack.packb(current, use_bin_type=True)))
                    self.finished = not self.hedge_losers
                    yield b"".join(out)
                    for loser in self.hedge_losers:
                        async for data in self._loser_receipt(loser):
                            yield data
                    return
                current = None
        finally:
            await self.abandon()

    async def abandon(self) -> None:
        """End the request where it stands: cancel every attempt still running, book the receipts they end with
        (within ``CANCELLED_RECEIPT_S``), release the reservation. Idempotent; after a whole answer nothing runs."""
        running = [a for a in self.attempts if a.job_id in a.worker.jobs]
        for attempt in running:
            if attempt not in self.hedge_losers:  # a loser was told already; it answers that cancel
                await _send_quietly(attempt.worker, pack(Cancel(job_id=attempt.job_id, reason="closed")))
        try:
            await asyncio.gather(*(self._cancelled_receipt(a) for a in running))
        finally:
            for attempt in running:  # no receipt came: counted out, as no evidence either way
                if attempt.worker.jobs.pop(attempt.job_id, None) is not None:
                    attempt.worker.release()
            self.cashier.release(self.reservation)

    async def _cancelled_receipt(self, attempt: Attempt) -> None:
        """Book the receipt a cancelled attempt ends with: the work it did before the cancel, nobody to forward
        it to. A hedge loser's must claim no completion, as when it is forwarded."""
        deadline = time.monotonic() + CANCELLED_RECEIPT_S
        while (left := deadline - time.monotonic()) > 0:
            try:
                item = await self._next(attempt, left)
            except CocoonError:  # an error (cancelled before it started), a timeout, a lost worker: no receipt
                return
            if item.get("t") != "end":
                continue  # chunks sealed before the cancel arrived: the client is gone
            end = JobEnd.model_validate(item)
            ok = self._receipt_ok(attempt, end)
            if attempt in self.hedge_losers and end.receipt.completion_tokens:
                ok = False
            self._finish(attempt, None if ok else "bad_receipt", end)
            await self.cashier.on_receipt(self.reservation, attempt.worker.register, end, ok)
            log.info(
                "cancelled job booked job=%s worker=%s completion_tokens=%d",
                attempt.job_id,
                attempt.worker.worker_id,
                end.receipt.completion_tokens,
            )
            return

    async def _dispatch(self, worker: WorkerEntry, resume: list[ResumeChunks]) -> Attempt:
        key = self.keys[worker.worker_id]
        attempt = Attempt(worker, "job-" + uuid.uuid4().hex[:16], CappedQueue(*self.caps))
        if self.evidence is not None:
            self.evidence.dispatched(worker)
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
        if worker.gone:  # left the directory since the request was ranked
            attempt.queue.put_nowait(WorkerLost("left the directory"))
            return attempt
        try:
            async with asyncio.timeout(self.dispatch_timeout):
                await worker.send(pack(job))
            attempt.sent = True
        except (SendFailed, TimeoutError) as exc:  # the socket died or stalled: a lost worker, the loop fails over
            attempt.queue.put_nowait(WorkerLost(f"send failed: {type(exc).__name__}"))
        return attempt

    async def _first(self, attempt: Attempt) -> Frame:
        """The attempt's first frame, within the first-byte timeout; times it against the worker's promise.

        A worker past the timeout is told to stop (``Cancel`` reason ``timeout``): nobody waits for its answer.
        """
        try:
            item = await self._next(attempt, self.first_byte_timeout)
        except UpstreamTimeout:
            await _send_quietly(attempt.worker, pack(Cancel(job_id=attempt.job_id, reason="timeout")))
            raise
        attempt.first_at = time.monotonic()
        if self.evidence is not None:
            self.evidence.first_token(attempt.worker, attempt.first_at - attempt.started, attempt.queue_s)
        return item

    def _failed_first(self, attempt: Attempt, exc: CocoonError) -> None:
        self._finish(attempt, _outcome(attempt, exc))
        self.last_error = exc
        log.info(
            "failover before first byte job=%s worker=%s reason=%s",
            attempt.job_id,
            attempt.worker.worker_id,
            exc.code,
        )

    async def _cancel_hedge(self, loser: Attempt) -> None:
        """Stop the slower twin of a hedged job; it keeps its queue to deliver its prefill-only receipt."""
        self.hedge_losers.append(loser)
        await _send_quietly(loser.worker, pack(Cancel(job_id=loser.job_id, reason="hedge")))

    async def _loser_receipt(self, loser: Attempt) -> AsyncIterator[bytes]:
        """Frames for a hedge loser's receipt, if it comes within a second and claims no completion."""
        deadline = time.monotonic() + 1.0
        while (left := deadline - time.monotonic()) > 0:
            try:
                item = await self._next(loser, left)
            except CocoonError:
                break
            if item.get("t") != "end":
                continue  # chunks it sealed before the cancel arrived: the client never gets them
            end = JobEnd.model_validate(item)
            honest = self._receipt_ok(loser, end) and end.receipt.completion_tokens == 0
            self._finish(loser, None if honest else "bad_receipt")
            if honest:
                await self.cashier.on_receipt(self.reservation, loser.worker.register, end, True)
                self.receipts.append(end)
                start = JobStart(worker_id=loser.worker.worker_id, job_id=loser.job_id, hedged_out=True)
                yield frame(pack(start))
                yield frame(pack(end.model_copy(update={"job_id": ""})))
            return
        self._finish(loser, None)

    async def _next(self, attempt: Attempt, timeout: float) -> Frame:
        """The worker's next frame; worker errors and losses become ``CocoonError``s, silence ``UpstreamTimeout``."""
        item = await self._poll(attempt, timeout)
        if item is None:
            raise UpstreamTimeout(f"worker {attempt.worker.worker_id} sent nothing for {timeout:g}s")
        return item

    async def _poll(self, attempt: Attempt, timeout: float) -> Frame | None:
        """As ``_next``, but ``None`` when nothing came within ``timeout``."""
        queue = attempt.queue
        if queue.empty():
            try:
                async with asyncio.timeout(timeout):
                    item = await queue.get()
            except TimeoutError:
                return None
        else:
            item = queue.get_nowait()
        if isinstance(item, WorkerLost) and queue.overflowed:
            await _send_quietly(attempt.worker, pack(Cancel(job_id=attempt.job_id, reason="overflow")))
            chunks, size = self.caps
            raise UpstreamFailed(
                f"worker {attempt.worker.worker_id} streamed past this job's caps ({chunks} chunks, {size} bytes "
                f"for max_tokens={self.request.max_tokens}); it was cut off"
            )
        if isinstance(item, WorkerLost):
            raise WorkerGone(f"worker {attempt.worker.worker_id} went away: {item.reason}")
        if item.get("t") == "error":
            err = JobError.model_validate(item)
            raise CocoonError.from_openai(err.status, {"error": err.error.model_dump()})
        return item

    async def _resume(self, failed: Attempt, exc: CocoonError) -> tuple[Attempt, Frame] | None:
        """Continue on the next candidate after ``failed`` died mid-stream; ``None`` when none is left."""
        self._finish(failed, _outcome(failed, exc))
        if exc.status < 500 or not self.request.routing.allow_fallbacks:
            return None
        resume = [
            ResumeChunks(worker_id=a.worker.worker_id, key_nonce=a.key_nonce, chunks=a.chunks)
            for a in self.attempts
            if a.chunks
        ]
        while self.candidates:
            attempt = await self._dispatch(self.candidates.pop(0), resume)
            try:
                first = await self._first(attempt)
            except CocoonError as next_exc:
                self._finish(attempt, _outcome(attempt, next_exc))
                continue
            log.info(
                "resumed mid-stream request=%s on worker=%s",
                self.request.request_id,
                attempt.worker.worker_id,
            )
            return attempt, first
        return None

    def _finish(self, attempt: Attempt, outcome: Outcome | None, end: JobEnd | None = None) -> None:
        if attempt.worker.jobs.pop(attempt.job_id, None) is not None:
            attempt.worker.release()
        if self.evidence is not None:
            receipt = end.receipt if end is not None else None
            outcome = outcome if attempt.sent else None
            first_s = attempt.first_at - attempt.started if attempt.first_at else None
            self.evidence.finished(attempt.worker, outcome, time.monotonic() - attempt.started, receipt, first_s)

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


def _outcome(attempt: Attempt, exc: CocoonError) -> Outcome | None:
    """The evidence an attempt's failure is: streaming past the caps weighs as a forged receipt does."""
    return "bad_receipt" if attempt.queue.overflowed else outcome_of(exc)


def _error_frame(exc: CocoonError) -> JobError:
    return JobError(status=exc.status, error=ErrorBody(message=exc.message, type=exc.type, code=exc.code))


async def _send_quietly(worker: WorkerEntry, data: bytes) -> None:
    try:
        await worker.send(data)
    except SendFailed:  # the worker is gone already; nothing is left to cancel
        log.debug("cancel not delivered worker=%s", worker.worker_id)
