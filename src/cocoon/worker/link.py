"""One worker's WebSocket to one proxy: answer its challenge, register, heartbeat, take jobs, reconnect with backoff.

The worker dials out, so it needs no public address. Each session starts with the proxy's challenge, which the
registration signs with the attested key (a fresh registration per session, so its quote is fresh too). Jobs of a
link are cancelled when the link drops: the proxy has already moved them elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable

import websockets
from websockets.asyncio.client import ClientConnection, connect

from cocoon.attestation import answer_challenge
from cocoon.crypto import SigningKey
from cocoon.errors import CocoonError, RegistrationRefused
from cocoon.protocol import (
    PROXY_TO_WORKER,
    Cancel,
    Chunk,
    Heartbeat,
    Job,
    JobEnd,
    JobError,
    Ping,
    Pong,
    Register,
    Registered,
    pack,
    unpack,
    unpack_as,
)
from cocoon.protocol.messages import Challenge
from cocoon.worker.runner import JobRunner

log = logging.getLogger("cocoon.worker")

Registration = Callable[[], Awaitable[Register]]
"""Makes this worker's registration for a new session (with a fresh attestation quote)."""


class RegistrationDeferred(Exception):
    """The proxy will admit this worker soon but not now (its previous session is still live there)."""


class ProxyLink:
    def __init__(
        self,
        url: str,
        registration: Registration,
        signing_key: SigningKey,
        runner: JobRunner,
        heartbeat_interval: float,
        max_backoff: float,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.url = url
        self.tls = tls if url.startswith("wss://") else None  # whom a wss:// proxy's certificate must chain to
        self.registration = registration
        self.signing_key = signing_key
        self.runner = runner
        self.heartbeat_interval = heartbeat_interval
        self.max_backoff = max_backoff
        self.connected = asyncio.Event()
        self._down_since: float | None = time.monotonic()  # None while registered with the proxy
        self._jobs: dict[str, asyncio.Task[None]] = {}

    def down_for(self, now: float | None = None) -> float | None:
        """Seconds since this link was last registered (or was made); ``None`` while it is."""
        if self._down_since is None:
            return None
        return (time.monotonic() if now is None else now) - self._down_since

    async def run_forever(self) -> None:
        """Stay connected until cancelled; back off exponentially (with jitter) between attempts."""
        backoff = 0.2
        while True:
            try:
                async with connect(self.url, max_size=2**26, ping_interval=None, compression=None, ssl=self.tls) as ws:
                    backoff = 0.2
                    await self._session(ws)
            except RegistrationRefused as exc:
                log.error("proxy refused registration url=%s reason=%s", self.url, exc.message)
                backoff = self.max_backoff
            except CocoonError as exc:  # no attestation to present, or a proxy speaking something else
                log.error("could not register url=%s error=%s", self.url, exc.message)
                backoff = self.max_backoff
            except RegistrationDeferred as exc:
                log.warning("proxy deferred registration url=%s reason=%s", self.url, exc)
            except (OSError, websockets.ConnectionClosed, websockets.InvalidHandshake, TimeoutError) as exc:
                log.warning("proxy link down url=%s error=%s", self.url, type(exc).__name__)
            except Exception:  # a bug must not leave the worker unregistered for good: reconnect after a pause
                log.exception("proxy link crashed url=%s; reconnecting", self.url)
                backoff = self.max_backoff
            finally:
                self.connected.clear()
                if self._down_since is None:
                    self._down_since = time.monotonic()
                await self._cancel_all()
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, self.max_backoff)

    async def _session(self, ws: ClientConnection) -> None:
        async with asyncio.timeout(10):
            challenge = unpack_as(await ws.recv(decode=False), Challenge)
            register = await self.registration()
            signature = answer_challenge(self.signing_key, challenge.proxy_id, challenge.nonce)
            await ws.send(pack(register.model_copy(update={"challenge_signature": signature})))
            reply = await ws.recv(decode=False)
        first = unpack(reply, PROXY_TO_WORKER)
        if isinstance(first, JobError):
            if first.retryable:
                raise RegistrationDeferred(first.error.message)
            raise RegistrationRefused(first.error.message)
        if not isinstance(first, Registered):
            raise RegistrationRefused(f"expected 'registered', proxy sent {first.t!r}")
        self.connected.set()
        self._down_since = None
        log.info("registered url=%s proxy=%s worker=%s", self.url, first.proxy_id, register.worker_id)
        heartbeat = asyncio.create_task(self._heartbeat(ws))
        try:
            async for raw in ws:
                if isinstance(raw, str):
                    continue
                message = unpack(raw, PROXY_TO_WORKER)
                if isinstance(message, Job):
                    self._start_job(ws, message)
                elif isinstance(message, Cancel):
                    task = self._jobs.get(message.job_id)
                    if task is not None and message.job_id not in self.runner.cancelled:  # else: unknown or done
                        self.runner.cancelled[message.job_id] = message.reason
                        task.cancel()
                elif isinstance(message, Ping):
                    await ws.send(pack(Pong(nonce=message.nonce)))
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    def _start_job(self, ws: ClientConnection, job: Job) -> None:
        async def send(frame: Chunk | JobEnd | JobError) -> None:
            await ws.send(pack(frame))

        task = asyncio.create_task(self.runner.run(job, send), name=f"job-{job.job_id}")
        self._jobs[job.job_id] = task
        task.add_done_callback(lambda t: self._job_done(job.job_id, t))

    def _job_done(self, job_id: str, task: asyncio.Task[None]) -> None:
        self._jobs.pop(job_id, None)
        self.runner.cancelled.pop(job_id, None)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if not isinstance(exc, websockets.ConnectionClosed):
                log.error("job crashed job_id=%s", job_id, exc_info=exc)

    async def _heartbeat(self, ws: ClientConnection) -> None:
        """Send a heartbeat every ``heartbeat_interval`` until the link closes; a failing beat is logged, and
        the next one still goes (a dead heartbeat task would get a healthy worker dropped by the proxy)."""
        while True:
            try:
                await ws.send(pack(self._beat()))
            except websockets.ConnectionClosed:
                return
            except Exception:
                log.exception("heartbeat failed url=%s; sending the next one", self.url)
            await asyncio.sleep(self.heartbeat_interval)

    def _beat(self) -> Heartbeat:
        board, meter, first_tokens = self.runner.board, self.runner.meter, self.runner.first_tokens
        return Heartbeat(
            free_slots=board.free,
            queue_depth=board.waiting,
            active_jobs=board.running,
            tokens_per_s=meter.rate(),
            prefill_tokens_per_s=first_tokens.prefill_tokens_per_s,
            ttft_ms=first_tokens.median_ms(),
        )

    async def _cancel_all(self) -> None:
        tasks = list(self._jobs.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
