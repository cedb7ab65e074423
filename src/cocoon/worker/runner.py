"""Runs one sealed job on an engine: open the request, generate, seal each chunk, sign the receipt.

The runner never sends anything in clear except sizes, token counts and digests (the receipt). Each job's
chunks are sealed under a response key with a fresh nonce, and a request id is run once: a replayed job is
refused, so nobody between client and worker ever gets one keystream twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

import msgpack
from pydantic import ValidationError

from cocoon.crypto import NodeKeys, ResponseDigest, request_digest, sign_receipt
from cocoon.engines.base import (
    ChatMessage,
    Engine,
    Finished,
    SamplingParams,
    ScoreRequest,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
)
from cocoon.errors import BadRequest, CocoonError, EngineError, ModelNotFound, RequestExpired, RequestReplayed
from cocoon.metrics import FAILOVERS, record_request
from cocoon.protocol import (
    Chunk,
    ErrorBody,
    Job,
    JobEnd,
    JobError,
    Receipt,
    ResponseSealer,
    WrappedKey,
    new_key_nonce,
    open_request,
    unwrap_content_key,
)
from cocoon.protocol.payload import ChunkPayload, RequestPayload
from cocoon.protocol.replay import REQUEST_MAX_AGE_S, RUNNING_MAX_S, ReplayRecord
from cocoon.protocol.usage import TokenUsage
from cocoon.worker.capacity import FirstTokenMeter, SlotBoard, ThroughputMeter
from cocoon.worker.chaos import spoil
from cocoon.worker.pacing import coalesced
from cocoon.worker.requests import generation_request

log = logging.getLogger("cocoon.worker")

Send = Callable[[Chunk | JobEnd | JobError], Awaitable[None]]


class JobRunner:
    """Executes jobs on the worker's engines, at most ``slots`` at once."""

    def __init__(self, keys: NodeKeys, engines: dict[str, Engine], slots: int, max_queue: int) -> None:
        self.keys = keys
        self.engines = engines
        self.board = SlotBoard(slots)
        self.meter = ThroughputMeter()
        self.first_tokens = FirstTokenMeter()
        self.max_queue = max_queue
        # Jobs the proxy cancelled (job id -> the ``Cancel`` reason), which end with a receipt instead of vanishing
        # unpaid: a hedge loser's covers its prefill only (see DESIGN.md, Routing), any other the prefill and the
        # tokens its chunks carried before the cancel (the client hung up, or streamed past its caps).
        self.cancelled: dict[str, str] = {}
        self.chaos_bad_receipts = ""
        # No start rule: a stream resumed on a worker restarted meanwhile keeps the id minted before.
        self.seen_requests = ReplayRecord(max_age_s=REQUEST_MAX_AGE_S + RUNNING_MAX_S, who="worker")
        # Chunk plaintexts are padded to multiples of this many bytes, and text after the first is coalesced
        # over this window: the sealed stream shows neither token lengths nor (with a window) token timing.
        self.pad_bytes = 128
        self.coalesce_s = 0.0
        self._slots = asyncio.Semaphore(slots)

    async def run(self, job: Job, send: Send) -> None:
        """Run ``job`` to its end, sending chunks and a receipt (or one error) through ``send``."""
        err: CocoonError | None = None
        if (stale := self.seen_requests.expired(job.request_id)) is not None:
            err = RequestExpired(stale)
        elif not self.seen_requests.first_time(job.request_id):
            err = RequestReplayed(f"request {job.request_id} already ran on this worker; a replay is never run")
        if err is not None:
            log.warning("job refused job_id=%s code=%s", job.job_id, err.code)
            record_request("worker", job.model, err.code)
            await send(_error(job.job_id, err.status, err.code, err.message, type_=err.type))
            return
        if self.board.waiting >= self.max_queue and self.board.free == 0:
            record_request("worker", job.model, "no_capacity")
            await send(_error(job.job_id, 503, "no_capacity", "worker queue is full", retryable=True))
            return
        self.board.waiting += 1
        try:
            await self._slots.acquire()
        except asyncio.CancelledError:
            reason = self.cancelled.pop(job.job_id, None)
            if reason is None:
                raise
            _uncancel()  # nothing was computed, nothing to bill: say so, so the proxy stops waiting
            record_request("worker", job.model, "cancelled")
            if reason == "hedge":
                await send(_error(job.job_id, 409, "hedge_cancelled", "a hedged twin answered before this job started"))
            else:
                await send(
                    _error(job.job_id, 409, "cancelled", f"cancelled ({reason or 'no reason'}) before it started")
                )
            return
        finally:
            self.board.waiting -= 1
        self.board.running += 1
        last: JobEnd | JobError
        try:
            last = await self._run(job, send)
        except CocoonError as exc:
            log.info("job failed job_id=%s code=%s", job.job_id, exc.code)
            last = _error(job.job_id, exc.status, exc.code, exc.message, type_=exc.type)
        finally:
            self.board.running -= 1
            self._slots.release()
        _count(job, last)
        # Counted out before its last frame goes: a heartbeat sent after the receipt never shows the job as
        # running, so the proxy (which counts it out on the receipt) does not see it busy again. Shielded: a cancel
        # arriving now (the job is done) must not cut off its receipt.
        await asyncio.shield(send(last))

    async def _run(self, job: Job, send: Send) -> JobEnd:
        """Stream ``job``'s sealed chunks through ``send`` and return its signed receipt (sent by ``run``)."""
        started_at = time.time()
        t0 = time.monotonic()
        engine = self.engines.get(job.model)
        if engine is None:
            raise ModelNotFound(f"this worker does not serve {job.model!r}")
        worker_id = self.keys.node_id
        content_key = unwrap_content_key(
            job.request_id, WrappedKey(worker_id, job.enc, job.wrapped_key), self.keys.sealing.private
        )
        plaintext = open_request(job.request_id, job.ciphertext, content_key)
        try:
            payload = RequestPayload.model_validate(msgpack.unpackb(plaintext, raw=False))
        except (ValidationError, ValueError) as exc:
            raise BadRequest(f"sealed request payload is invalid: {exc}") from exc
        if payload.model != job.model or payload.kind != job.kind:
            raise BadRequest("sealed request does not match its clear metadata (model or kind)")
        if payload.params.max_tokens != job.max_tokens:
            # The proxy reserves (and bills) by the clear value: a job that would run to another is refused.
            raise BadRequest(
                f"sealed max_tokens {payload.params.max_tokens} differs from the clear {job.max_tokens}",
                param="max_tokens",
            )

        # The engine's prompt cache is shared only within the client's scope; a request without one shares nothing.
        scope = payload.cache_scope or f"request:{job.request_id}"
        key_nonce = new_key_nonce()
        sealer = ResponseSealer(content_key, job.request_id, worker_id, key_nonce)
        digest = ResponseDigest(payload.salt)
        seq = carried = 0  # chunks sent; completion tokens they carried (what a cancelled job's receipt claims)
        ttft_ms = 0.0

        async def emit(chunk: ChunkPayload) -> None:
            nonlocal seq, carried, ttft_ms
            data = chunk.encode(self.pad_bytes)
            digest.update(data)
            if seq == 0:
                ttft_ms = (time.monotonic() - t0) * 1000
            nonce = key_nonce if seq == 0 else b""
            await send(Chunk(job_id=job.job_id, seq=seq, data=sealer.seal(seq, data), key_nonce=nonce))
            seq += 1
            carried += chunk.tokens

        if payload.kind == "embedding":
            result = await engine.embed(payload.input or [])
            await emit(ChunkPayload(embeddings=result.vectors))
            usage = TokenUsage(prompt_tokens=result.prompt_tokens, completion_tokens=0)
            finish_reason = "stop"
        elif payload.kind == "score":
            scores = await engine.score(_score_request(payload, scope))
            await emit(ChunkPayload(logprobs=list(scores.logprobs), greedy=list(scores.greedy), finish_reason="stop"))
            # Teacher forcing reads the completion as prompt: all of it is prefill, nothing is generated.
            usage = TokenUsage(prompt_tokens=scores.prompt_tokens + len(scores.logprobs), completion_tokens=0)
            finish_reason = "stop"
        else:
            continuation, emitted = _continuation(job, content_key)
            try:
                usage, finish_reason = await self._generate(engine, payload, scope, continuation, emitted, emit)
            except asyncio.CancelledError:
                reason = self.cancelled.get(job.job_id)
                if reason is None:  # the link dropped: nobody is left to take a receipt
                    raise
                _uncancel()
                prompt_tokens = await _prompt_tokens(engine, payload, continuation)
                if reason == "hedge":
                    # The client received none of this worker's chunks: the receipt covers the prefill only.
                    usage = TokenUsage(prompt_tokens, completion_tokens=0)
                    digest = ResponseDigest(payload.salt)
                else:
                    # Generation stopped at the cancel: the receipt claims the tokens sent, and its digest
                    # covers exactly the chunks sent, so it verifies against what left this worker.
                    usage = TokenUsage(prompt_tokens, completion_tokens=carried)
                finish_reason = "cancelled"
                log.info("job cancelled job_id=%s reason=%s tokens=%d", job.job_id, reason, carried)
            finally:
                self.cancelled.pop(job.job_id, None)
            if seq and finish_reason != "cancelled":
                self.first_tokens.add(ttft_ms / 1000, usage.prompt_tokens)
        receipt = Receipt(
            receipt_id="rcpt-" + uuid.uuid4().hex,
            request_id=job.request_id,
            job_id=job.job_id,
            worker_id=worker_id,
            model=job.model,
            model_hash=engine.info.model_hash,
            prompt_tokens=usage.prompt_tokens,
            cached_tokens=usage.cached_tokens,
            completion_tokens=usage.completion_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            request_sha256=request_digest(plaintext),
            response_sha256=digest.hexdigest(),
            finish_reason=finish_reason,
            started_at=started_at,
            ttft_ms=ttft_ms,
            duration_ms=(time.monotonic() - t0) * 1000,
        )
        signature = sign_receipt(self.keys.signing, receipt)
        if self.chaos_bad_receipts:  # test/chaos knob only, see worker/chaos.py
            receipt, signature = spoil(self.chaos_bad_receipts, receipt, signature, self.keys.signing)
        return JobEnd(job_id=job.job_id, receipt=receipt, signature=signature)

    async def _generate(
        self,
        engine: Engine,
        payload: RequestPayload,
        scope: str,
        continuation: str,
        emitted: int,
        emit: Callable[[ChunkPayload], Awaitable[None]],
    ) -> tuple[TokenUsage, str]:
        remaining = payload.params.max_tokens - emitted
        if remaining <= 0:  # an earlier worker already produced every token asked for
            await emit(ChunkPayload(finish_reason="length"))
            return TokenUsage(prompt_tokens=0, completion_tokens=0), "length"
        params = SamplingParams(
            max_tokens=remaining,
            temperature=payload.params.temperature,
            top_p=payload.params.top_p,
            stop=tuple(payload.params.stop),
            seed=payload.params.seed,
            frequency_penalty=payload.params.frequency_penalty,
            presence_penalty=payload.params.presence_penalty,
            logit_bias=tuple(sorted(payload.params.logit_bias)),
        )
        request = dataclasses.replace(generation_request(payload, params, continuation), cache_scope=scope)
        stream = coalesced(engine.generate(request), self.coalesce_s)
        reported = pending = 0  # tokens the chunks carried so far; tokens of deltas without text, not yet carried
        try:
            async for event in stream:
                if isinstance(event, TextDelta):
                    self.meter.add(event.tokens)
                    pending += event.tokens
                    if event.text or event.logprobs:
                        logprobs = [_logprob(entry) for entry in event.logprobs] or None
                        await emit(ChunkPayload(text=event.text, tokens=pending, token_logprobs=logprobs))
                        reported, pending = reported + pending, 0
                elif isinstance(event, ToolCallDelta):
                    self.meter.add(event.tokens)
                    pending += event.tokens
                    await emit(ChunkPayload(tool_calls=[_tool_call(event)], tokens=pending))
                    reported, pending = reported + pending, 0
                elif isinstance(event, Finished):
                    # The client pays no more completion tokens than its chunks carried: the last one carries
                    # the tokens no text showed (a stop string's, an upstream's uncounted deltas).
                    unshown = max(0, event.usage.completion_tokens - reported)
                    await emit(ChunkPayload(finish_reason=event.finish_reason, tokens=unshown))
                    return event.usage, event.finish_reason
        finally:
            await stream.aclose()
        raise EngineError(f"engine for {payload.model!r} ended without a Finished event")


def _count(job: Job, last: JobEnd | JobError) -> None:
    """``job``'s end in the shared metrics: its receipt's tokens and first-token time, or its error code."""
    if job.resume_from:
        FAILOVERS.labels("worker").inc()  # this worker took over a stream another one started
    if isinstance(last, JobError):
        record_request("worker", job.model, last.error.code)
        return
    r = last.receipt
    outcome = "cancelled" if r.finish_reason == "cancelled" else "ok"
    ttft_s = r.ttft_ms / 1000 if r.ttft_ms else None
    record_request(
        "worker",
        job.model,
        outcome,
        prompt_tokens=r.prompt_tokens,
        completion_tokens=r.completion_tokens,
        ttft_s=ttft_s,
    )


def _logprob(entry: TokenLogprob) -> dict[str, object]:
    """A token's log-probability in OpenAI's shape (``ChoiceLogprobs.content`` entries)."""
    top = [{"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes or ())} for t in entry.top]
    return {"token": entry.token, "logprob": entry.logprob, "bytes": list(entry.bytes or ()), "top_logprobs": top}


def _tool_call(delta: ToolCallDelta) -> dict[str, object]:
    """A tool-call piece in OpenAI's stream shape (``ChatDelta.tool_calls`` entries)."""
    function: dict[str, str] = {"arguments": delta.arguments}
    if delta.name is not None:
        function["name"] = delta.name
    piece: dict[str, object] = {"index": delta.index, "function": function}
    if delta.id is not None:
        piece |= {"id": delta.id, "type": "function"}
    return piece


def _score_request(payload: RequestPayload, scope: str) -> ScoreRequest:
    if payload.completion is None:
        raise BadRequest("a score job needs the completion to score", param="completion")
    if payload.messages is not None:
        messages = tuple(ChatMessage(m.role, m.content) for m in payload.messages)
        return ScoreRequest(payload.completion, messages=messages, cache_scope=scope)
    if payload.prompt is None:
        raise BadRequest("a score job needs messages or a prompt before its completion", param="messages")
    return ScoreRequest(payload.completion, prompt=payload.prompt, cache_scope=scope)


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


async def _prompt_tokens(engine: Engine, payload: RequestPayload, continuation: str) -> int:
    """Prompt tokens of a job cut short before its engine reported usage (the chat template not counted)."""
    if payload.prompt_ids is not None:
        return len(payload.prompt_ids) + await engine.count_tokens(continuation)
    text = payload.prompt or "\n".join(m.content for m in payload.messages or [])
    return await engine.count_tokens(text + continuation)


def _continuation(job: Job, content_key: bytes) -> tuple[str, int]:
    """Text and token count earlier workers streamed for this request (mid-stream resume)."""
    parts: list[str] = []
    tokens = 0
    for earlier in job.resume_from:
        opener = ResponseSealer(content_key, job.request_id, earlier.worker_id, earlier.key_nonce)
        for seq, sealed in enumerate(earlier.chunks):
            chunk = ChunkPayload.model_validate(msgpack.unpackb(opener.open(seq, sealed), raw=False))
            parts.append(chunk.text)
            tokens += chunk.tokens
    return "".join(parts), tokens


def _error(
    job_id: str, status: int, code: str, message: str, *, type_: str = "api_error", retryable: bool = False
) -> JobError:
    return JobError(
        job_id=job_id,
        status=status,
        error=ErrorBody(message=message, type=type_, code=code),
        retryable=retryable,
    )
