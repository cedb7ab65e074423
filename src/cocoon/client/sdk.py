"""The async Python SDK: verify workers, seal each request to the best few, stream, verify the receipt.

    async with CocoonClient("http://127.0.0.1:8700", policy) as client:
        async for event in client.stream("chat", "gemma-3-270m", messages=[...], params=...):
            ...

Events are ``TextEvent`` / ``EmbeddingEvent`` as they arrive, then exactly one ``Completion`` once every
receipt has verified. A receipt that does not verify raises ``ReceiptInvalid``: the client pays nothing.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

import httpx
import msgpack
from pydantic import ValidationError

from cocoon.attestation import AttestationPolicy, AttestationVerifier
from cocoon.chain.pricing import Cost
from cocoon.client.directory import AttestedWorker, DirectoryCache, _json
from cocoon.client.prefix import prefix_hashes, prompt_text
from cocoon.client.wallet import ChannelPayer
from cocoon.crypto import ResponseDigest, receipt_signature_valid, request_digest
from cocoon.protocol.usage import TokenUsage
from cocoon.errors import (
    CocoonError,
    ModelNotFound,
    NoCapacity,
    ReceiptInvalid,
    UpstreamFailed,
    UpstreamTimeout,
)
from cocoon.protocol import (
    STREAM_FRAME,
    FrameReader,
    JobEnd,
    JobError,
    JobRequest,
    JobStart,
    Receipt,
    ResponseSealer,
    RoutingPrefs,
    WrappedKeyWire,
    pack,
    random_salt,
    seal_request,
    unpack_raw,
)
from cocoon.protocol.payload import ChunkPayload, RequestPayload, SealedMessage, SealedParams

log = logging.getLogger("cocoon.client")

Kind = Literal["chat", "completion", "embedding"]


@dataclass(frozen=True, slots=True)
class TextEvent:
    text: str
    tokens: int
    worker_id: str


@dataclass(frozen=True, slots=True)
class EmbeddingEvent:
    vectors: list[list[float]]


@dataclass(frozen=True, slots=True)
class Completion:
    """The end of a request: summed usage over every worker that served it, and their verified receipts."""

    request_id: str
    model: str
    finish_reason: str
    usage: TokenUsage
    receipts: tuple[Receipt, ...]
    cost: Cost | None = None  # what the client's voucher paid for these receipts; None on a free proxy


Event = TextEvent | EmbeddingEvent | Completion


class CocoonClient:
    def __init__(
        self,
        proxy_url: str,
        policy: AttestationPolicy,
        *,
        candidates: int = 3,
        timeout: float = 120.0,
        http: httpx.AsyncClient | None = None,
        prefix_salt: bytes | None = None,
        payer: ChannelPayer | None = None,
    ) -> None:
        self.payer = payer
        self.candidates = candidates
        # Keys the prefix hashes sent for cache affinity; it never leaves this client (see client/prefix.py).
        self.prefix_salt = prefix_salt or os.urandom(32)
        self.timeout = timeout
        self._http = http or httpx.AsyncClient(
            base_url=proxy_url,
            timeout=httpx.Timeout(timeout, connect=5.0),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )
        self.directory = DirectoryCache(self._http, AttestationVerifier(policy))

    async def __aenter__(self) -> CocoonClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def models(self) -> dict[str, list[AttestedWorker]]:
        """Model name -> attested workers serving it."""
        out: dict[str, list[AttestedWorker]] = {}
        for worker in await self.directory.workers():
            for model in worker.models:
                out.setdefault(model, []).append(worker)
        return out

    async def pick(self, kind: Kind, model: str, routing: RoutingPrefs) -> list[AttestedWorker]:
        """The candidate workers to seal to, best first; ``ModelNotFound`` / ``NoCapacity`` if none."""
        workers = await self.directory.workers()
        serving = [w for w in workers if model in w.models]
        if not serving:
            workers = await self.directory.workers(refresh=True)
            serving = [w for w in workers if model in w.models]
        if not serving:
            known = sorted({m for w in workers for m in w.models})
            raise ModelNotFound(
                f"the model {model!r} does not exist on this network; available: {', '.join(known) or 'none'}",
                param="model",
            )
        if kind == "embedding":
            serving = [w for w in serving if model in w.embeddings]
            if not serving:
                raise NoCapacity(f"no connected worker serves embeddings for {model!r}")
        allowed = [w for w in serving if routing.admits(w.price_coefficient, w.region)]
        if not allowed:
            raise NoCapacity(
                f"{len(serving)} workers serve {model!r} but none within max_price={routing.max_price} "
                f"and region={routing.region!r}"
            )
        allowed.sort(key=lambda w: w.expected_latency_ms)
        return allowed[: max(self.candidates, 2 if routing.hedge else 1)]

    async def stream(
        self,
        kind: Kind,
        model: str,
        *,
        params: SealedParams,
        messages: list[SealedMessage] | None = None,
        prompt: str | None = None,
        inputs: list[str] | None = None,
        routing: RoutingPrefs | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[Event]:
        """Run one request through the network; see the module docstring for the events.

        A failure before the first event (every candidate gone since the directory was fetched) is retried
        once, sealed anew to freshly fetched workers: apps do not see a worker that left a moment ago.
        """
        for round_ in (1, 2):
            started = False
            try:
                async for event in self._stream_once(kind, model, params, messages, prompt, inputs, routing, timeout):
                    started = True
                    yield event
                return
            except (NoCapacity, UpstreamFailed) as exc:
                if started or round_ == 2 or isinstance(exc, UpstreamTimeout):
                    raise
                log.info("retrying on fresh workers model=%s reason=%s", model, exc.code)
                await self.directory.workers(refresh=True)

    async def _stream_once(
        self,
        kind: Kind,
        model: str,
        params: SealedParams,
        messages: list[SealedMessage] | None,
        prompt: str | None,
        inputs: list[str] | None,
        routing: RoutingPrefs | None,
        timeout: float | None,
    ) -> AsyncIterator[Event]:
        routing = routing or RoutingPrefs()
        timeout = timeout or self.timeout
        deadline = time.monotonic() + timeout
        workers = await self.pick(kind, model, routing)
        by_id = {w.worker_id: w for w in workers}
        salt = random_salt()
        payload = RequestPayload(
            kind=kind, model=model, salt=salt, messages=messages, prompt=prompt, input=inputs, params=params
        )
        plaintext = msgpack.packb(payload.model_dump(mode="python"), use_bin_type=True)
        request_id = "req-" + uuid.uuid4().hex
        sealed, content_key = seal_request(request_id, plaintext, {w.worker_id: w.verified.x25519_pub for w in workers})
        payer = await self.payer.auth(request_id) if self.payer is not None else None
        job = JobRequest(
            request_id=request_id,
            model=model,
            kind=kind,
            max_tokens=params.max_tokens,
            prompt_tokens=_estimate_tokens(payload),
            keys=[WrappedKeyWire(worker_id=k.worker_id, enc=k.enc, wrapped=k.wrapped) for k in sealed.keys],
            ciphertext=sealed.ciphertext,
            routing=routing,
            prefix_hashes=[] if kind == "embedding" else prefix_hashes(self.prefix_salt, model, prompt_text(payload)),
            timeout=timeout,
            payer=payer,
        )
        receipts: list[Receipt] = []
        finish_reason = "stop"
        streamed_tokens = 0
        try:
            async with self._http.stream(
                "POST",
                "/v1/jobs",
                content=pack(job),
                headers={"content-type": "application/msgpack"},
                timeout=httpx.Timeout(timeout, connect=5.0),
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise CocoonError.from_openai(response.status_code, _json(response))
                reader = FrameReader()
                worker: AttestedWorker | None = None
                sealer: ResponseSealer | None = None
                digest: ResponseDigest | None = None
                seq = 0
                hedged_out = False
                async for data in response.aiter_raw():
                    for raw in reader.feed(data):
                        fields = unpack_raw(raw)
                        if fields.get("t") == "chunk":  # the hot path: one per token, kept free of models
                            if worker is None or sealer is None or digest is None:
                                raise UpstreamFailed("proxy sent a chunk before naming its worker")
                            if fields.get("worker_id") != worker.worker_id or fields.get("seq") != seq:
                                raise UpstreamFailed("proxy reordered or mixed response chunks")
                            opened = sealer.open(seq, fields["data"])
                            seq += 1
                            digest.update(opened)
                            chunk = _chunk_payload(opened)
                            if chunk.finish_reason:
                                finish_reason = chunk.finish_reason
                            if chunk.embeddings is not None:
                                yield EmbeddingEvent(chunk.embeddings)
                            elif chunk.text:
                                streamed_tokens += chunk.tokens
                                yield TextEvent(chunk.text, chunk.tokens, worker.worker_id)
                            continue
                        message = STREAM_FRAME.validate_python(fields)
                        if isinstance(message, JobStart):
                            worker = by_id.get(message.worker_id)
                            if worker is None:
                                raise UpstreamFailed(f"proxy started an unknown worker {message.worker_id}")
                            sealer = ResponseSealer(content_key, request_id, worker.worker_id)
                            digest = ResponseDigest(salt)
                            seq = 0
                            hedged_out = message.hedged_out
                        elif isinstance(message, JobEnd):
                            if worker is None or digest is None:
                                raise UpstreamFailed("proxy sent a receipt before naming its worker")
                            if hedged_out:  # the slower twin of a hedged job: it may claim its prefill only
                                if _hedge_receipt_ok(message, worker, model, request_id, plaintext, digest):
                                    receipts.append(message.receipt)
                                else:
                                    await self._refuse(message.receipt, "hedged receipt did not verify")
                                continue
                            try:
                                _check_receipt(message, worker, model, request_id, plaintext, digest)
                            except ReceiptInvalid as exc:
                                await self._refuse(message.receipt, exc.message)
                                if receipts and self.payer is not None:  # earlier workers' verified work
                                    await self.payer.pay(receipts, {w.worker_id: w.price_coefficient for w in workers})
                                raise
                            receipts.append(message.receipt)
                        elif isinstance(message, JobError):
                            raise CocoonError.from_openai(message.status, {"error": message.error.model_dump()})
                    if time.monotonic() > deadline:
                        raise UpstreamTimeout(f"request {request_id} ran past its timeout of {timeout:g}s")
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(f"request {request_id} ran past its timeout of {timeout:g}s") from exc
        except httpx.HTTPError as exc:
            raise UpstreamFailed(f"connection to the proxy failed: {exc!r}") from exc
        except ValidationError as exc:
            raise UpstreamFailed(f"malformed response from the network: {exc.errors()[0]['msg']}") from exc
        if not receipts:
            raise UpstreamFailed(f"the stream of {request_id} ended before the worker's receipt")
        # Only now, with every receipt verified, does the client sign a voucher for them.
        coefficients = {w.worker_id: w.price_coefficient for w in workers}
        cost = await self.payer.pay(receipts, coefficients) if self.payer is not None else None
        yield Completion(
            request_id=request_id,
            model=model,
            finish_reason=finish_reason,
            # After a mid-stream resume, a later receipt's prompt includes the earlier text, and a worker
            # that died before its receipt is not paid: usage tells the app what it got, receipts what it
            # pays for.
            usage=TokenUsage(
                prompt_tokens=min(r.prompt_tokens for r in receipts),
                completion_tokens=max(streamed_tokens, sum(r.completion_tokens for r in receipts)),
                cached_tokens=receipts[0].cached_tokens,
                reasoning_tokens=sum(r.reasoning_tokens for r in receipts),
            ),
            receipts=tuple(receipts),
            cost=cost,
        )

    async def _refuse(self, receipt: Receipt, reason: str) -> None:
        if self.payer is not None:
            await self.payer.reject(receipt.receipt_id, reason)


def _check_receipt(
    end: JobEnd, worker: AttestedWorker, model: str, request_id: str, plaintext: bytes, digest: ResponseDigest
) -> None:
    """Raise ``ReceiptInvalid`` unless the receipt is the attested worker's word on exactly this exchange."""
    r = end.receipt
    problems = []
    if r.worker_id != worker.worker_id:
        problems.append("it names another worker")
    if not receipt_signature_valid(worker.verified.ed25519_pub, r, end.signature):
        problems.append("its signature is not the attested worker key's")
    if r.request_id != request_id:
        problems.append("it is for another request")
    if r.model != model or r.model_hash != worker.models.get(model):
        problems.append("it names other weights than the attested ones")
    if r.request_sha256 != request_digest(plaintext):
        problems.append("its request digest differs from what was sent")
    if r.response_sha256 != digest.hexdigest():
        problems.append("its response digest differs from what was received")
    if problems:
        raise ReceiptInvalid(f"receipt {r.receipt_id} rejected: " + "; ".join(problems) + ". Nothing is paid.")


def _hedge_receipt_ok(
    end: JobEnd, worker: AttestedWorker, model: str, request_id: str, plaintext: bytes, digest: ResponseDigest
) -> bool:
    """A hedge loser's receipt is paid only if it verifies and claims no completion; else it is dropped."""
    try:
        _check_receipt(end, worker, model, request_id, plaintext, digest)
    except ReceiptInvalid as exc:
        log.warning("hedge receipt dropped worker=%s reason=%s", worker.worker_id, exc.message)
        return False
    return end.receipt.completion_tokens == 0


def _estimate_tokens(payload: RequestPayload) -> int:
    """A rough count for routing (about 4 characters a token); the worker's receipt has the exact one."""
    chars = len(payload.prompt or "") + sum(len(m.content) for m in payload.messages or [])
    chars += sum(len(text) for text in payload.input or [])
    return chars // 4


def _chunk_payload(opened: bytes) -> ChunkPayload:
    """A chunk's plaintext, read without validation overhead; anything malformed is ``UpstreamFailed``."""
    try:
        fields = msgpack.unpackb(opened, raw=False)
        return ChunkPayload.model_construct(
            text=str(fields.get("text", "")),
            tokens=int(fields.get("tokens", 0)),
            embeddings=fields.get("embeddings"),
            finish_reason=fields.get("finish_reason"),
        )
    except (ValueError, TypeError, AttributeError, msgpack.ExtraData) as exc:
        raise UpstreamFailed(f"a response chunk is malformed: {exc}") from exc
