"""The proxy as the client of its own canaries: seal one to a worker, read the answer, have a peer re-score it.

Canaries travel the client path: sealed with ``seal_request`` to the worker's attested key, relayed by
``JobRelay`` (so a worker sees an ordinary job), answered in sealed chunks the proxy opens with the content key
it made. They are free: a ``FreeCashier`` admits them, so no client channel is reserved or charged and the books
hold no charge for them. The judging (windows, calibration, flags) is ``cocoon.proxy.routing.canary``'s.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

import msgpack

from cocoon.errors import CocoonError, UpstreamFailed
from cocoon.metrics import CANARY_FAILURES
from cocoon.protocol import (
    JobRequest,
    ResponseSealer,
    RoutingPrefs,
    WrappedKeyWire,
    random_salt,
    seal_request,
    unpack_raw,
)
from cocoon.protocol.framing import FrameReader
from cocoon.protocol.messages import JobKind
from cocoon.protocol.payload import ChunkPayload, RequestPayload, SealedMessage, SealedParams
from cocoon.protocol.replay import new_request_id
from cocoon.proxy.money.cashier import FreeCashier
from cocoon.proxy.relay import JobRelay
from cocoon.proxy.routing.canary import CanaryResult, draw_prompt
from cocoon.proxy.routing.directory import WorkerEntry
from cocoon.proxy.state import ProxyState

log = logging.getLogger("cocoon.proxy.canaries")
TICK_S = 1.0  # how often workers are looked over for a periodic canary


class CanarySender:
    """Sends, checks and judges canaries for one proxy; ``run_forever`` is its periodic loop."""

    def __init__(self, state: ProxyState, rng: random.Random | None = None) -> None:
        self.state = state
        self.book = state.routing.canaries
        self.rng = rng or random.Random()
        # Its requests carry a cache scope of their own, as every client's do (one without would stand out).
        self.cache_scope = f"{self.rng.getrandbits(128):032x}"
        self.client_jobs = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def run_forever(self) -> None:
        """Every second, send a canary to each worker that is owed its periodic one; cancelled at shutdown."""
        if self.book.policy.min_interval_s <= 0:
            return
        try:
            while True:
                await asyncio.sleep(min(TICK_S, self.book.policy.min_interval_s / 4))
                for worker in list(self.state.directory.workers.values()):
                    if self._judged(worker) and self.book.due(worker.worker_id):
                        self.launch(worker)
        finally:
            for task in list(self._tasks):
                task.cancel()

    def after_client_job(self, model: str) -> None:
        """A client request for ``model`` was routed: with probability ``rate``, canary a worker serving it."""
        self.client_jobs += 1
        if self.book.policy.rate <= 0 or self.rng.random() >= self.book.policy.rate:
            return
        workers = [w for w in self.state.directory.serving(model) if self._judged(w)]
        if workers:
            self.launch(self.rng.choice(workers))

    def launch(self, worker: WorkerEntry) -> None:
        if not self.book.sending(worker.worker_id):
            return
        task = asyncio.create_task(self._canary(worker))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _payload(self, **fields: Any) -> RequestPayload:
        """A canary's sealed request: a fresh salt, and the cache scope every request of this sender carries."""
        return RequestPayload(salt=random_salt(), cache_scope=self.cache_scope, **fields)

    def _judged(self, worker: WorkerEntry) -> bool:
        return not worker.gone and worker.worker_id not in self.book.flags and bool(worker.register.models)

    def peers(self, worker: WorkerEntry, model: str) -> list[WorkerEntry]:
        """Connected, unflagged workers other than ``worker`` attesting the same weights for ``model``."""
        claimed = _model_hash(worker, model)
        return [
            w
            for w in self.state.directory.serving(model)
            if w.worker_id != worker.worker_id and _model_hash(w, model) == claimed and self._judged(w)
        ]

    async def _canary(self, worker: WorkerEntry) -> None:
        model = worker.register.models[0].model
        try:
            peers = self.peers(worker, model)
            if not peers:
                return  # nobody can check it; the directory says so
            prompt = draw_prompt(self.rng)
            messages = [SealedMessage(role=role, content=content) for role, content in prompt.messages]
            params = SealedParams(max_tokens=prompt.max_tokens, temperature=prompt.temperature)
            ask = self._payload(kind="chat", model=model, messages=messages, params=params)
            answer = "".join(c.text for c in await self.ask(worker, ask))
            peers = self.peers(worker, model)  # again: one may have been flagged while the answer came
            if not peers:
                return
            checker = self.rng.choice(peers)
            rescore = self._payload(
                kind="score", model=model, messages=messages, completion=answer, params=SealedParams(max_tokens=0)
            )
            chunks = await self.ask(checker, rescore)
            logprobs = [lp for c in chunks for lp in c.logprobs or []]
            greedy = [g for c in chunks for g in c.greedy or []]
            if not logprobs:
                return  # an empty answer says nothing about the model
            result = CanaryResult(
                worker_id=worker.worker_id,
                checker_id=checker.worker_id,
                gap=-sum(logprobs) / len(logprobs),
                greedy_rate=sum(greedy) / len(greedy) if greedy else 0.0,
                tokens=len(logprobs),
                at=time.monotonic(),
            )
            log.info(
                "canary checked worker=%s checker=%s gap=%.3f greedy=%.2f tokens=%d",
                worker.worker_id,
                checker.worker_id,
                result.gap,
                result.greedy_rate,
                result.tokens,
            )
            flag = self.book.record(result)
            if flag is not None:
                CANARY_FAILURES.labels("proxy").inc()
                log.warning("worker flagged by canaries worker=%s reason=%s", worker.worker_id, flag.reason)
                self.state.routing.reputation.condemn(worker.worker_id, flag.reason)
                await self.state.cashier.withhold(worker.register, flag.since, flag.reason)
        except CocoonError as exc:
            # A canary that failed is already evidence (the relay reported the attempt); it is not a check.
            self.book.failed += 1
            CANARY_FAILURES.labels("proxy").inc()
            log.info("canary got no checkable answer worker=%s code=%s", worker.worker_id, exc.code)
        finally:
            self.book.done(worker.worker_id)

    async def ask(self, worker: WorkerEntry, payload: RequestPayload) -> list[ChunkPayload]:
        """Seal ``payload`` to ``worker`` as a client would, relay it for free, and open the answer's chunks.

        Raises the worker's ``CocoonError`` when it fails, ``UpstreamFailed`` when its answer cannot be opened.
        """
        settings = self.state.settings
        plaintext = msgpack.packb(payload.model_dump(mode="python"), use_bin_type=True)
        request_id = new_request_id()
        sealed, content_key = seal_request(request_id, plaintext, {worker.worker_id: worker.verified.x25519_pub})
        kind: JobKind = payload.kind
        text = "".join(m.content for m in payload.messages or []) + (payload.completion or "")
        job = JobRequest(
            request_id=request_id,
            model=payload.model,
            kind=kind,
            max_tokens=payload.params.max_tokens,
            prompt_tokens=len(text) // 4,
            keys=[WrappedKeyWire(worker_id=k.worker_id, enc=k.enc, wrapped=k.wrapped) for k in sealed.keys],
            ciphertext=sealed.ciphertext,
            routing=RoutingPrefs(allow_fallbacks=False),
        )
        cashier = FreeCashier()  # canaries are the proxy's own: nobody is reserved, charged or paid for them
        relay = JobRelay(
            job,
            [worker],
            cashier,
            await cashier.admit(job, [worker.register]),
            first_byte_timeout=settings.first_byte_timeout,
            chunk_timeout=settings.chunk_timeout,
            dispatch_timeout=settings.dispatch_timeout,
            evidence=self.state.evidence,
        )
        attempt, first = await relay.first_frame()
        reader = FrameReader()
        nonce, chunks = b"", []
        async for data in relay.stream(attempt, first):
            for raw in reader.feed(data):
                frame = unpack_raw(raw)
                if frame.get("t") == "error":
                    error = frame.get("error") or {}
                    raise CocoonError.from_openai(int(frame.get("status") or 502), {"error": error})
                if frame.get("t") != "chunk" or frame.get("worker_id") != worker.worker_id:
                    continue
                if frame["seq"] == 0:
                    nonce = frame.get("key_nonce") or b""
                chunks.append((int(frame["seq"]), bytes(frame["data"])))
        if not relay.receipts:
            raise UpstreamFailed(f"worker {worker.worker_id} ended a canary without a receipt")
        opener = ResponseSealer(content_key, request_id, worker.worker_id, nonce)
        try:
            return [
                ChunkPayload.model_validate(msgpack.unpackb(opener.open(seq, data), raw=False)) for seq, data in chunks
            ]
        except (ValueError, TypeError) as exc:
            raise UpstreamFailed(f"worker {worker.worker_id} sealed a canary answer that does not open: {exc}") from exc


def _model_hash(worker: WorkerEntry, model: str) -> str:
    return next((o.model_hash for o in worker.register.models if o.model == model), "")
