"""The async Python SDK: pick a proxy and attested workers, seal each request to the best few, post it, fail over.

``stream.py`` reads the answer and checks every frame and receipt; the payer pays only receipts that verified.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import msgpack

from cocoon.attestation import AttestationPolicy, AttestationVerifier
from cocoon.chain.pricing import Cost, max_cost
from cocoon.client.directory import AttestedWorker, DirectoryCache, _json
from cocoon.client.meter import NOTHING_HELD, Hold, Meter
from cocoon.client.metrics import RequestCount
from cocoon.client.prefix import cache_scope, prefix_hashes, prompt_text
from cocoon.client.proxies import ProxyConnection, ProxyPool, configured_proxy_urls, registry_proxy_urls
from cocoon.client.stream import EmbeddingEvent, Exchange, ReceiptRefused, ResponseStream, TextEvent
from cocoon.client.wallet import ChannelBook, ChannelPayer, sidecar_payer
from cocoon.config import ClientSettings
from cocoon.crypto.keys import SALT_BYTES, load_or_create_salt
from cocoon.errors import (
    BadRequest,
    BudgetExhausted,
    CocoonError,
    ConfigError,
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
from cocoon.protocol.replay import new_request_id
from cocoon.protocol.tls import trust_context
from cocoon.protocol.usage import TokenUsage

log = logging.getLogger("cocoon.client")
PREFIX_SALT_FILE = "prefix-salt.json"  # in the sidecar's data_dir

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
    """A client of one or more proxies, safe to share between concurrent requests.

        async with CocoonClient(["http://proxy-a:8700", "http://proxy-b:8700"], policy) as client:
            async for event in client.stream("chat", "gemma-3-270m", messages=[...], params=...):
                ...

    Events are ``TextEvent`` / ``EmbeddingEvent`` as they arrive, then exactly one ``Completion`` once every
    receipt has verified. A receipt that does not verify raises ``ReceiptInvalid``: the client pays nothing
    for it.

    Each request goes to the healthiest proxy (``proxies.py``). A failure before the first event (the proxy
    unreachable or broken off, a 5xx, no capacity there) moves the request to the next proxy, sealed anew to
    that proxy's directory workers; with one proxy it is retried once there on a fresh directory. A stream
    whose proxy dies after its first event fails with ``UpstreamFailed`` naming the proxy and the request:
    the app has text already, and a second proxy cannot continue a job it never relayed (the proxy's own
    resume works between workers behind one proxy). Verified receipts of that request are still paid.
    """

    def __init__(
        self,
        proxy_url: str | Sequence[str],
        policy: AttestationPolicy,
        *,
        candidates: int = 3,
        timeout: float = 120.0,
        http: httpx.AsyncClient | Mapping[str, httpx.AsyncClient] | None = None,
        prefix_salt: bytes | None = None,
        payer: ChannelPayer | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        urls = [proxy_url] if isinstance(proxy_url, str) else list(proxy_url)
        given = {urls[0]: http} if isinstance(http, httpx.AsyncClient) else http
        self.proxies = ProxyPool(urls, AttestationVerifier(policy), timeout=timeout, http=given, tls=tls)
        if payer is not None:
            self.payer = payer
        self.candidates = candidates
        self._new_payer: Callable[[str], ChannelPayer] | None = None  # a payer for a proxy added later
        # Keys the prefix hashes sent for cache affinity and the sealed cache scope; it never leaves this client
        # (see client/prefix.py).
        self.prefix_salt = prefix_salt or os.urandom(SALT_BYTES)
        self.timeout = timeout

    @classmethod
    def for_settings(cls, settings: ClientSettings, proxy_urls: Sequence[str] | None = None) -> CocoonClient:
        """The sidecar's SDK: ``proxy_urls`` (default: the settings' ``proxy_urls``, else ``proxy_url``), and with
        ``chain_url`` set a payer per proxy, each paying through the client's own channel with that proxy."""
        urls = list(proxy_urls or configured_proxy_urls(settings))
        tls = trust_context(settings.tls_ca_file)
        # The salt of its prefix hashes and prompt-cache scope outlives a restart: workers' cached prompts (and
        # the proxy's affinity to them) still serve this sidecar's apps after a deploy.
        salt: bytes | None = None
        try:
            salt = load_or_create_salt(settings.data_dir / PREFIX_SALT_FILE, "prefix_salt")
        except OSError as exc:  # a read-only data_dir: a salt of this run's own, as before there was a file
            log.warning("prefix salt not saved, one for this run only dir=%s error=%s", settings.data_dir, exc)
        client = cls(
            urls, settings.policy, candidates=settings.candidates, timeout=settings.timeout, tls=tls, prefix_salt=salt
        )
        if settings.chain_url:
            books: dict[str, ChannelBook] = {}  # replicas of one proxy (one channel) share its book
            client._new_payer = lambda url: sidecar_payer(settings, url, books)
            for proxy in client.proxies.proxies:
                proxy.payer, proxy.owns_payer = client._new_payer(proxy.url), True
        return client

    async def use_proxies(self, urls: Sequence[str]) -> None:
        """Hold exactly ``urls`` from now on (``follow_registry``): new proxies are connected, with a payer
        when this client pays (``for_settings``); dropped ones take no new request."""
        added, dropped = await self.proxies.retarget(urls)
        for proxy in added:
            if self._new_payer is not None:
                proxy.payer, proxy.owns_payer = self._new_payer(proxy.url), True
            log.info("proxy added url=%s", proxy.url)
        for proxy in dropped:
            log.info("proxy dropped url=%s", proxy.url)

    async def follow_registry(self, settings: ClientSettings) -> None:
        """Re-read the registry's proxies every ``proxy_refresh_s`` and hold those (until cancelled). A read
        that fails, or finds none listed, keeps the proxies held: a sidecar never drops to none."""
        while True:
            await asyncio.sleep(settings.proxy_refresh_s)
            try:
                urls = await registry_proxy_urls(settings, held=[p.url for p in self.proxies.proxies])
                await self.use_proxies(urls)
            except ConfigError as exc:
                log.warning("registry proxies not re-read, keeping %d error=%s", len(self.proxies.proxies), exc)
            except Exception:  # a chain answer nobody foresaw: the sidecar must still follow the registry later
                log.exception("registry proxies not re-read, keeping %d", len(self.proxies.proxies))

    @property
    def payer(self) -> ChannelPayer | None:
        """The first proxy's payer (each proxy has its own channel: ``proxies.proxies[i].payer``)."""
        return self.proxies.proxies[0].payer

    @payer.setter
    def payer(self, payer: ChannelPayer | None) -> None:
        self.proxies.proxies[0].payer = payer

    @property
    def directory(self) -> DirectoryCache:
        """The healthiest proxy's worker directory (every proxy's shares one verifier)."""
        return self.proxies.ranked()[0].directory

    async def __aenter__(self) -> CocoonClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.proxies.aclose()

    async def models(self) -> dict[str, list[AttestedWorker]]:
        """Model name -> attested workers serving it, over every proxy that answers (each worker once);
        the error of the healthiest proxy when none answers."""
        out: dict[str, list[AttestedWorker]] = {}
        seen: set[str] = set()
        failure: CocoonError | None = None
        for proxy in self.proxies.ranked():
            try:
                workers = await proxy.directory.workers()
            except UpstreamFailed as exc:
                self._proxy_failed(proxy, exc)
                failure = failure or exc
                continue
            for worker in workers:
                if worker.worker_id in seen:
                    continue
                seen.add(worker.worker_id)
                for model in worker.models:
                    out.setdefault(model, []).append(worker)
        if not seen and failure is not None:
            raise failure
        return out

    def _within_payers_cap(self, routing: RoutingPrefs, payer: ChannelPayer | None) -> RoutingPrefs:
        """``routing`` capped at the payer's ``max_coefficient``: sealing to a worker the payer would refuse to
        pay gets it to work for nothing and spends the client's credit limit on the rejection."""
        cap = payer.max_coefficient if payer is not None else None
        if cap is None or (routing.max_price is not None and routing.max_price <= cap):
            return routing
        return routing.model_copy(update={"max_price": cap})

    async def pick(
        self,
        kind: Kind,
        model: str,
        routing: RoutingPrefs,
        *,
        vision: bool = False,
        proxy: ProxyConnection | None = None,
    ) -> list[AttestedWorker]:
        """The candidate workers of ``proxy``'s directory (default: the healthiest proxy's) to seal to, best
        first; ``ModelNotFound`` / ``NoCapacity`` if none, and ``BadRequest`` for images when no worker of
        ``model`` takes them (``vision``)."""
        directory = (proxy or self.proxies.ranked()[0]).directory
        workers = await directory.workers()
        serving = [w for w in workers if model in w.models]
        if not serving:
            workers = await directory.workers(refresh=True)
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
        meter: Meter | None = None,
    ) -> AsyncIterator[Event]:
        """Run one request through the network; see the class docstring for the events.

        ``openai`` is the app's OpenAI request (one choice, without routing extras: ``SamplingFields.sealed_body``)
        sealed beside the text view, so the worker honours every field of it; ``prompt_ids`` and token-id
        ``inputs`` are token ids of the served model. ``meter`` (the sidecar's API-key budget) holds each
        attempt's maximum cost before it is posted and hears what it paid; its refusal is raised, never retried.

        A failure before the first event is retried, sealed anew: on the next healthiest proxy while one is
        left untried, else once more on a fresh directory (apps do not see a worker that left a moment ago, nor
        a proxy that died). A timeout is not retried; a failure after the first event is raised as it is.
        """
        tried: list[ProxyConnection] = []
        tries = max(2, len(self.proxies.proxies))
        count = RequestCount(model)
        scope = cache_scope(self.prefix_salt, meter.cache_partition if meter is not None else "")
        for round_ in range(1, tries + 1):
            proxy = self.proxies.next_for(tried)
            again = any(p is proxy for p in tried)  # every proxy tried: this one once more, on a fresh directory
            tried.append(proxy)
            last = round_ == tries
            started = False
            try:
                if again:
                    await proxy.directory.workers(refresh=True)
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
                    cache_scope=scope,
                )
                async for event in self._stream_once(proxy, payload, routing, timeout, meter):
                    started = True
                    count.saw(event.usage if isinstance(event, Completion) else None)
                    yield event
                count.ended("ok")  # a request that ended without a Completion still ended
                return
            except (NoCapacity, UpstreamFailed, ModelNotFound) as exc:
                single = len(self.proxies.proxies) == 1
                if started or last or isinstance(exc, UpstreamTimeout) or (single and isinstance(exc, ModelNotFound)):
                    count.ended(exc.code)
                    raise
                count.failed_over()
                log.info("retrying before the first byte model=%s proxy=%s reason=%s", model, proxy.url, exc.code)
            except BudgetExhausted as exc:  # the app's own limit: another proxy or a resync changes nothing
                count.ended(exc.code)
                raise
            except PaymentRequired as exc:
                # Receipts a crashed proxy never delivered hold the channel at 402 until the payer settles them;
                # another proxy bills another channel. This one rests, as one that could not be reached does: a
                # proxy the client never funded would otherwise keep a new proxy's score and be asked first by
                # every request.
                proxy.health.failed(time.monotonic(), unreachable=True)
                untried = any(all(p is not t for t in tried) for p in self.proxies.proxies)
                if started or last or (proxy.payer is None and not untried):
                    count.ended(exc.code)
                    raise
                if proxy.payer is not None and not await proxy.payer.resync() and not untried:
                    count.ended(exc.code)
                    raise
                count.failed_over()
            except CocoonError as exc:
                count.ended(exc.code)
                raise
            except (asyncio.CancelledError, GeneratorExit):
                count.ended("cancelled")
                raise

    async def _stream_once(
        self,
        proxy: ProxyConnection,
        payload: RequestPayload,
        routing: RoutingPrefs | None,
        timeout: float | None,
        meter: Meter | None,
    ) -> AsyncIterator[Event]:
        model = payload.model
        payer = proxy.payer
        routing = self._within_payers_cap(routing or RoutingPrefs(), payer)
        timeout = timeout or self.timeout
        deadline = time.monotonic() + timeout
        kind: Kind = "embedding" if payload.kind == "embedding" else "chat"  # score jobs are the proxy's
        try:
            workers = await self.pick(kind, model, routing, vision=_has_images(payload.openai), proxy=proxy)
        except UpstreamFailed as exc:  # its directory could not be fetched
            self._proxy_failed(proxy, exc)
            raise
        job, exchange = await self._seal(payload, workers, routing, timeout, payer)
        request_id = job.request_id
        answer = ResponseStream(exchange)
        coefficients = {w.worker_id: w.price_coefficient for w in workers}
        peer = f"the proxy at {proxy.url} (request {request_id}, timeout {timeout:g}s)"
        hold = NOTHING_HELD
        if meter is not None:
            with _ends_unpaid(payer, request_id):
                # What the proxy will hold against the channel for this job: no more can be paid for it.
                hold = await meter.hold(request_id, model, await _max_cost(payer, job, workers))
        try:
            # Closed with this generator: an app that hangs up ends the request to the proxy now.
            posted = self._post(proxy, job, answer, coefficients, peer, timeout, deadline, hold)
            async with contextlib.aclosing(posted):
                async for event in posted:
                    yield event
            result = answer.finish()
            # Only now, with every receipt verified, does the client sign a voucher for them.
            cost = await _paid(payer, result.receipts, coefficients, hold)
        finally:
            await hold.release()
        yield Completion(
            request_id=request_id,
            model=model,
            finish_reason=result.finish_reason,
            usage=result.usage,
            receipts=result.receipts,
            cost=cost,
        )

    async def _post(
        self,
        proxy: ProxyConnection,
        job: JobRequest,
        answer: ResponseStream,
        coefficients: Mapping[str, int],
        peer: str,
        timeout: float,
        deadline: float,
        hold: Hold,
    ) -> AsyncGenerator[TextEvent | EmbeddingEvent, None]:
        """Post ``job`` to ``proxy`` and feed its answer to ``answer``, yielding the text as it verifies; a
        failure after some receipts verified pays those first."""
        payer, request_id = proxy.payer, job.request_id
        sent = time.monotonic()
        with map_http_errors(peer), _ends_unpaid(payer, request_id):
            try:
                async with proxy.http.stream(
                    "POST",
                    "/v1/jobs",
                    content=pack(job),
                    headers={"content-type": "application/msgpack"},
                    timeout=httpx.Timeout(timeout, connect=5.0),
                ) as response:
                    if response.status_code != 200:
                        await response.aread()
                        error = CocoonError.from_openai(response.status_code, _json(response))
                        if response.status_code >= 500:
                            proxy.health.failed(time.monotonic(), unreachable=False)
                        raise error
                    proxy.health.succeeded(time.monotonic() - sent)
                    try:
                        async for data in response.aiter_raw():
                            for event in answer.feed(data):
                                if isinstance(event, TextEvent | EmbeddingEvent):
                                    yield event
                                elif isinstance(event, ReceiptRefused):
                                    await _refuse(payer, event.receipt, event.reason)
                                    if event.ends_request:
                                        raise ReceiptInvalid(event.reason)
                            if time.monotonic() > deadline:
                                raise UpstreamTimeout(f"request {request_id} ran past its timeout of {timeout:g}s")
                    except CocoonError:
                        if answer.verified:  # the verified work of earlier workers
                            await _paid(payer, answer.verified, coefficients, hold)
                        raise
            except httpx.TransportError as exc:
                proxy.health.failed(time.monotonic(), unreachable=_unreachable(exc))
                raise

    def _proxy_failed(self, proxy: ProxyConnection, exc: UpstreamFailed) -> None:
        """A proxy whose directory could not be read: resting unless it only timed out."""
        proxy.health.failed(time.monotonic(), unreachable=not isinstance(exc, UpstreamTimeout))
        log.warning("proxy failed url=%s error=%s", proxy.url, exc.message)

    async def _seal(
        self,
        payload: RequestPayload,
        workers: list[AttestedWorker],
        routing: RoutingPrefs,
        timeout: float,
        payer: ChannelPayer | None,
    ) -> tuple[JobRequest, Exchange]:
        """The job to post, sealed to ``workers``, and the exchange its answer will be checked against."""
        plaintext = msgpack.packb(payload.model_dump(mode="python"), use_bin_type=True)
        request_id = new_request_id()
        sealed, content_key = seal_request(request_id, plaintext, {w.worker_id: w.verified.x25519_pub for w in workers})
        auth = await payer.auth(request_id) if payer is not None else None
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
            payer=auth,
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
def _ends_unpaid(payer: ChannelPayer | None, request_id: str) -> Iterator[None]:
    """A request that fails has no receipt on its way: the payer may reject what the proxy holds for it."""
    try:
        yield
    except BaseException:
        if payer is not None:
            payer.finished(request_id)
        raise


async def _max_cost(payer: ChannelPayer | None, job: JobRequest, workers: Sequence[AttestedWorker]) -> int:
    """The most ``job`` can cost, bounded as the proxy bounds it at admission (every sealed byte a prompt token,
    every ``max_tokens`` used, at the dearest worker it is sealed to); 0 on a free proxy."""
    if payer is None or not payer.enabled:
        return 0
    coefficient = max(w.price_coefficient for w in workers)
    return max_cost(len(job.ciphertext), job.max_tokens, await payer.prices(job.model), coefficient)


async def _paid(
    payer: ChannelPayer | None, receipts: Sequence[Receipt], coefficients: Mapping[str, int], hold: Hold
) -> Cost | None:
    """Pay ``receipts`` (``None`` without a payer) and tell ``hold`` what that cost."""
    if payer is None:
        return None
    cost = await payer.pay(receipts, coefficients)
    if cost is not None:
        await hold.paid(cost.total)
    return cost


async def _refuse(payer: ChannelPayer | None, receipt: Receipt, reason: str) -> None:
    if payer is not None:
        await payer.reject(receipt.receipt_id, reason)


def _unreachable(exc: httpx.TransportError) -> bool:
    """Whether a transport error means the proxy is gone (refused, reset, closed mid-answer), not just slow."""
    return isinstance(exc, httpx.NetworkError | httpx.ConnectTimeout | httpx.RemoteProtocolError)


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
