"""The sidecar's door for API keys: whether keys are needed, which key a request carries, and its meter.

Keys are needed on every OpenAI endpoint when ``require_keys`` is set, when the sidecar listens beyond loopback,
or once any key was ever made in its store: revoking every key never opens the door again. A request's
``KeyMeter`` holds each of its jobs' maximum cost against the key (``KeySpending.reserve``) and books what it
paid. Holds carry this sidecar's owner id and an expiry: on start, and every ``SWEEP_S``, the holds of a
sidecar that died (its process gone from this host) or that outlived their expiry are released.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import uuid
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from cocoon.client.keys.spending import KeySpending
from cocoon.client.keys.store import SECRET_PREFIX, SEND_KEY, ApiKey, KeyStore
from cocoon.client.meter import NOTHING_HELD, Hold
from cocoon.config import ClientSettings
from cocoon.errors import ConfigError, Unauthorized
from cocoon.store import utcnow

log = logging.getLogger("cocoon.client.keys")
T = TypeVar("T")

SWEEP_S = 30.0
HOLD_GRACE_S = 120.0  # a hold outlives its request's timeout by this much: paying the last receipt takes time


def loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name other than localhost may resolve anywhere
        return False


async def check_exposure(settings: ClientSettings, store: KeyStore) -> None:
    """``ConfigError`` when the sidecar would listen beyond loopback without a live key, or has keys beside the
    shared ``api_key`` (which they replace)."""
    if settings.api_key and await store.any_key():
        raise ConfigError(
            "the sidecar has API keys (`cocoon client keys list`) and api_key is set: the keys replace the shared "
            "api_key; unset it"
        )
    if loopback(settings.host):
        return
    now = utcnow()
    if not any(key.state(now) == "live" for key in await store.keys()):
        raise ConfigError(
            f"the sidecar would listen on {settings.host}, beyond this machine, with no live API key, so anyone "
            "reaching it could spend the deposit: make one with `cocoon client keys create --name NAME --budget "
            "TON`, or listen on 127.0.0.1"
        )


def owner_id() -> str:
    """This sidecar process among all that share a store: host, pid, and a nonce of this start."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class KeyGate:
    """The sidecar's keys: one per app, shared by its requests. ``start``/``close`` in its lifespan."""

    def __init__(self, settings: ClientSettings, store: KeyStore) -> None:
        self.settings = settings
        self.store = store
        self.spending = KeySpending(store)
        self.owner = owner_id()
        self._required = settings.require_keys or not loopback(settings.host)
        self._sweeper: asyncio.Task[None] | None = None
        self._finishing: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        """Refuse to serve an exposed sidecar without keys; release what dead sidecars held; sweep from now on."""
        await check_exposure(self.settings, self.store)
        await self.spending.sweep(self._dead)
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await asyncio.gather(*self._finishing, return_exceptions=True)
        await self.store.close()

    async def required(self) -> bool:
        """Whether requests need a key now; once they do, they always will in this process."""
        if not self._required and await self.store.any_key():
            self._required = True
        return self._required

    async def caller(self, authorization: str | None) -> ApiKey | None:
        """The live key of an ``Authorization: Bearer ck-...`` header when keys are needed (else ``None``);
        ``Unauthorized`` for none or an unknown or revoked one, ``Forbidden`` for an expired one."""
        if not await self.required():
            return None
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token.startswith(SECRET_PREFIX):
            raise Unauthorized(f"this sidecar needs an API key: {SEND_KEY}")
        return await self.spending.authenticate(token)

    async def meter(self, key: ApiKey, model: str | None, timeout: float | None = None) -> KeyMeter:
        """Admit one request of ``key`` for ``model`` (``None``: no model, a listing) within its rpm; the meter
        its jobs are held by."""
        await self.spending.admit(key.id, model)
        return KeyMeter(self, key, timeout or self.settings.timeout)

    async def finish(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` to its end even if the caller is cancelled (an app hanging up mid-stream must not leave
        a payment unbooked); ``close`` waits for what is still running."""
        task = asyncio.ensure_future(work)
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)
        return await asyncio.shield(task)

    def _dead(self, owner: str) -> bool:
        """Whether the sidecar ``owner`` is gone: only a process on this host can be seen to be."""
        if owner == self.owner:
            return False
        host, pid, _nonce = [*owner.rsplit(":", 2), "", ""][:3]
        if host != socket.gethostname() or not pid.isdigit():
            return False  # its holds expire
        if int(pid) == os.getpid():
            return True  # an earlier start of a process that had this pid
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # someone else's process: alive
            return False
        return False

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            try:
                await self.spending.sweep(self._dead)
            except (SQLAlchemyError, OSError) as exc:  # the next sweep tries again
                log.warning("sweeping key reservations failed: %s", exc)


class KeyMeter:
    """One request's ``Meter``: each job's maximum cost held against ``key`` until the job ends."""

    def __init__(self, gate: KeyGate, key: ApiKey, timeout: float) -> None:
        self.gate = gate
        self.key = key
        self.timeout = timeout
        self.cache_partition = key.id

    async def hold(self, request_id: str, model: str, amount: int) -> Hold:
        if amount == 0:  # a free proxy: nothing is paid, nothing to hold
            return NOTHING_HELD
        expires_at = utcnow() + timedelta(seconds=self.timeout + HOLD_GRACE_S)
        reservation = await self.gate.spending.reserve(
            self.key.id, request_id, model, amount, owner=self.gate.owner, expires_at=expires_at
        )
        return KeyHold(self.gate, self.key.id, reservation, request_id, model)


class KeyHold:
    """A job's reservation against its key: payments come out of it, ``release`` gives back the rest once."""

    def __init__(self, gate: KeyGate, key_id: str, reservation: str, request_id: str, model: str) -> None:
        self.gate = gate
        self.key_id = key_id
        self.reservation = reservation
        self.request_id = request_id
        self.model = model
        self._released = False

    async def paid(self, cost: int) -> None:
        if cost:
            spend = self.gate.spending.spend(self.key_id, self.reservation, self.request_id, self.model, cost)
            await self.gate.finish(spend)

    async def release(self) -> None:
        if not self._released:
            self._released = True
            await self.gate.finish(self.gate.spending.release(self.key_id, self.reservation))
