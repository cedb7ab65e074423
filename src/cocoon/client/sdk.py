"""The async Python SDK: pick attested workers, seal each request to the best few, post it, retry once.

``stream.py`` reads the answer and checks every frame and receipt; the payer pays only receipts that verified.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import msgpack

from cocoon.attestation import AttestationPolicy, AttestationVerifier
from cocoon.chain.pricing import Cost
from cocoon.client.directory import AttestedWorker, DirectoryCache, _json
from cocoon.client.prefix import prefix_hashes, prompt_text
from cocoon.client.stream import EmbeddingEvent, Exchange, ReceiptRefused, ResponseStream, TextEvent
from cocoon.client.wallet import ChannelPayer
from cocoon.errors import (
    BadRequest,
    CocoonError,
    ModelNotFound,
    NoCapacity,
    PaymentRequired,
    ReceiptInvalid,
    UpstreamFailed,
    UpstreamTimeout,
    map_http_errors,
)
from cocoon.protocol import JobRequest, Receipt, RoutingPrefs, WrappedKeyWire, pack, random_salt, seal_request
from cocoon.protocol.payload import RequestPayload, SealedMessage, SealedParams
from cocoon.protocol.usage import TokenUsage

log = logging.getLogger("cocoon.client")

Kind = Literal["chat", "completion", "embedding"]

__all__ = ["CocoonClient", "Completion", "EmbeddingEvent", "Event", "Kind", "TextEvent"]


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
    """A client of one proxy, safe to share between concurrent requests.

        async with CocoonClient("http://127.0.0.1:8700", policy) as client:
            async for event in client.stream("chat", "gemma-3-270m", messages=[...], params=...):
                ...

    Events are ``TextEvent`` / ``EmbeddingEvent`` as they arrive, then exactly one ``Completion`` once every
    receipt has verified. A receipt that does not verify raises ``ReceiptInvalid``: the client pays nothing
    for it.
    """

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

    def _within_payers_cap(self, routing: RoutingPrefs) -> RoutingPrefs:
        """``routing`` capped at the payer's ``max_coefficient``: sealing to a worker the payer would refuse to
        pay gets it to work for nothing and spends the client's credit limit on the rejection."""
        cap = self.payer.max_coefficient if self.payer is not None else None
        if cap is None or (routing.max_price is not None and routing.max_price <= cap):
            return routing
        return routing.model_copy(update={"max_price": cap})

    async def pick(
        self, kind: Kind, model: str, routing: RoutingPrefs, *, vision: bool = False
    ) -> list[AttestedWorker]:
        """The candidate workers to seal to, best first; ``ModelNotFound`` / ``NoCapacity`` if none, and
        ``BadRequest`` for images when no worker of ``model`` takes them (``vision``)."""
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
        if vision:
            serving = [w for w in serving if model in w.vision]
            if not serving:
                raise BadRequest(
                    f"the model {model!r} takes no images on this network: no worker serving it declares vision; "
                    "send text content only",
                    param="messages",
                )
        allowed = [w for w in serving if routing.admits(w.price_coefficient, w.region) and routing.allows(w.worker_id)]
        if not allowed:
            raise NoCapacity(
                f"{len(serving)} workers serve {model!r} but none within max_price={routing.max_price}, "
                f"region={routing.region!r} and the provider's only/ignore/order"
            )
        allowed.sort(key=lambda w: (routing.order_index(w.worker_id), w.expected_latency_ms))
        return allowed[: max(self.candidates, 2 if routing.hedge else 1)]

    async def stream(
        self,
        kind: Kind,
        model: str,
        *,
        params: SealedParams,
        messages: list[SealedMessage] | None = None,
        prompt: str | None = None,
        prompt_ids: list[int] | None = None,
        inputs: list[str | list[int]] | None = None,
        routing: RoutingPrefs | None = None,
        timeout: float | None = None,
        openai: dict[str, Any] | None = None,
    ) -> AsyncIterator[Event]:
        """Run one request through the network; see the class docstring for the events.

        ``openai`` is the app's OpenAI request (one choice, without routing extras: ``SamplingFields.sealed_body``)
        sealed beside the text view, so the worker honours every field of it; ``prompt_ids`` and token-id
        ``inputs`` are token ids of the served model.

        A failure before the first event (every candidate gone since the directory was fetched) is retried
        once, sealed anew to freshly fetched workers: apps do not see a worker that left a moment ago.
        """
        for round_ in (1, 2):
            started = False
            try:
                payload = RequestPayload(
                    kind=kind,
                    model=model,
                    salt=random_salt(),
                    messages=messages,
                    prompt=prompt,
                    prompt_ids=prompt_ids,
                    input=inputs,
                    params=params,
                    openai=openai,
                )
                async for event in self._stream_once(payload, routing, timeout):
                    started = True
                    yield event
                return
            except (NoCapacity, UpstreamFailed) as exc:
                if started or round_ == 2 or isinstance(exc, UpstreamTimeout):
                    raise
                log.info("retrying on fresh workers model=%s reason=%s", model, exc.code)
                await self.directory.workers(refresh=True)
            except PaymentRequired:
                # Receipts a crashed proxy never delivered hold the channel at 402 until the payer settles them.
                if started or round_ == 2 or self.payer is None or not await self.payer.resync():
                    raise

    async def _stream_once(
        self, payload: RequestPayload, routing: RoutingPrefs | None, timeout: float | None
    ) -> AsyncIterator[Event]:
        model = payload.model
        routing = self._within_payers_cap(routing or RoutingPrefs())
        timeout = timeout or self.timeout
        deadline = time.monotonic() + timeout
        kind: Kind = "embedding" if payload.kind == "embedding" else "chat"  # score jobs are the proxy's
        workers = await self.pick(kind, model, routing, vision=_has_images(payload.openai))
        job, exchange = await self._seal(payload, workers, routing, timeout)
        request_id = job.request_id
        answer = ResponseStream(exchange)
        coefficients = {w.worker_id: w.price_coefficient for w in workers}
        peer = f"the proxy at {self._http.base_url} (request {request_id}, timeout {timeout:g}s)"
        with map_http_errors(peer), self._ends_unpaid(request_id):
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
                try:
                    async for data in response.aiter_raw():
                        for event in answer.feed(data):
                            if isinstance(event, TextEvent | EmbeddingEvent):
                                yield event
                            elif isinstance(event, ReceiptRefused):
                                await self._refuse(event.receipt, event.reason)
                                if event.ends_request:
                                    raise ReceiptInvalid(event.reason)
                        if time.monotonic() > deadline:
                            raise UpstreamTimeout(f"request {request_id} ran past its timeout of {timeout:g}s")
                except CocoonError:
                    if answer.verified and self.payer is not None:  # the verified work of earlier workers
                        await self.payer.pay(answer.verified, coefficients)
                    raise
        result = answer.finish()
        # Only now, with every receipt verified, does the client sign a voucher for them.
        cost = await self.payer.pay(result.receipts, coefficients) if self.payer is not None else None
        yield Completion(
            request_id=request_id,
            model=model,
            finish_reason=result.finish_reason,
            usage=result.usage,
            receipts=result.receipts,
            cost=cost,
        )

    async def _seal(
        self, payload: RequestPayload, workers: list[AttestedWorker], routing: RoutingPrefs, timeout: float
    ) -> tuple[JobRequest, Exchange]:
        """The job to post, sealed to ``workers``, and the exchange its answer will be checked against."""
        plaintext = msgpack.packb(payload.model_dump(mode="python"), use_bin_type=True)
        request_id = "req-" + uuid.uuid4().hex
        sealed, content_key = seal_request(request_id, plaintext, {w.worker_id: w.verified.x25519_pub for w in workers})
        payer = await self.payer.auth(request_id) if self.payer is not None else None
        text = prompt_text(payload)
        affinity = [] if payload.kind == "embedding" else prefix_hashes(self.prefix_salt, payload.model, text)
        job = JobRequest(
            request_id=request_id,
            model=payload.model,
            kind=payload.kind,
            max_tokens=payload.params.max_tokens,
            prompt_tokens=_estimate_tokens(payload),
            keys=[WrappedKeyWire(worker_id=k.worker_id, enc=k.enc, wrapped=k.wrapped) for k in sealed.keys],
            ciphertext=sealed.ciphertext,
            routing=routing,
            prefix_hashes=affinity,
            timeout=timeout,
            payer=payer,
        )
        by_id = {w.worker_id: w for w in workers}
        exchange = Exchange(
            request_id,
            payload.model,
            plaintext,
            payload.salt,
            content_key,
            by_id,
            kind=payload.kind,
            max_tokens=payload.params.max_tokens,
        )
        return job, exchange

    @contextlib.contextmanager
    def _ends_unpaid(self, request_id: str) -> Iterator[None]:
        """A request that fails has no receipt on its way: the payer may reject what the proxy holds for it."""
        try:
            yield
        except BaseException:
            if self.payer is not None:
                self.payer.finished(request_id)
            raise

    async def _refuse(self, receipt: Receipt, reason: str) -> None:
        if self.payer is not None:
            await self.payer.reject(receipt.receipt_id, reason)


def _estimate_tokens(payload: RequestPayload) -> int:
    """A rough count for routing (about 4 characters a token); the worker's receipt has the exact one."""
    chars = len(payload.prompt or "") + sum(len(m.content) for m in payload.messages or [])
    ids = len(payload.prompt_ids or ())
    for item in payload.input or []:
        if isinstance(item, str):
            chars += len(item)
        else:
            ids += len(item)
    return chars // 4 + ids


def _has_images(body: dict[str, Any] | None) -> bool:
    """Whether an OpenAI chat request has image content parts (only workers that declare vision take it)."""
    for message in (body or {}).get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(isinstance(p, dict) and p.get("type") == "image_url" for p in content):
            return True
    return False
