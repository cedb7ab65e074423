"""The worker WebSocket, ``WS /v1/worker/connect``: the proxy sends a challenge, the worker registers (attestation
checked against the policy, the challenge signed with the attested key), then streams heartbeats, pongs and its
jobs' frames; it leaves the directory when the socket closes.

Until a worker is admitted it is a stranger: its frames are held to ``PRE_REGISTRATION_MAX_BYTES`` and it has
``REGISTER_TIMEOUT_S`` to register. Every frame is validated before anything acts on it; a malformed one drops
the worker (its jobs fail over), it never raises out of the handler.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from cocoon.attestation import NONCE_BYTES, AttestationBundle, challenge_answered
from cocoon.crypto import node_id_for
from cocoon.errors import AttestationFailed, BadRequest, CocoonError, Forbidden, PayloadTooLarge, first_problem
from cocoon.protocol import (
    ErrorBody,
    Heartbeat,
    JobEnd,
    JobError,
    Pong,
    Register,
    Registered,
    pack,
    unpack_as,
    unpack_raw,
)
from cocoon.protocol.messages import Challenge
from cocoon.proxy import policy
from cocoon.proxy.routing.directory import Sender, SendFailed, WorkerEntry
from cocoon.proxy.state import ProxyState

log = logging.getLogger("cocoon.proxy")

M = TypeVar("M", bound=BaseModel)
REGISTER_TIMEOUT_S = 10.0
HEARTBEAT_INTERVAL_S = 0.5  # told to the worker in ``Registered``
# The largest bundle (a 32 KiB quote, 64 KiB of collateral, 8 GPUs with 24 KiB each) fits; a stranger gets no
# more of the proxy's memory.
PRE_REGISTRATION_MAX_BYTES = 384 * 1024
# A worker heard from this recently keeps its session; a second registration under its id is refused.
LIVE_WITHIN_S = 2 * HEARTBEAT_INTERVAL_S
REFUSED, TOO_BIG, SILENT = 4003, 1009, 4008  # close codes: refused; frame too large; dropped for silence


async def worker_connect(ws: WebSocket) -> None:
    state: ProxyState = ws.app.state.proxy
    await ws.accept()
    registered_cap = _cap_incoming(ws, PRE_REGISTRATION_MAX_BYTES)
    send = _sender(ws)
    nonce = secrets.token_bytes(NONCE_BYTES)
    try:
        async with asyncio.timeout(REGISTER_TIMEOUT_S):
            await send(pack(Challenge(proxy_id=state.proxy_id, nonce=nonce)))
            data = await _receive_frame(ws)
        if len(data) > PRE_REGISTRATION_MAX_BYTES:
            raise PayloadTooLarge(f"registration is {len(data)} bytes; at most {PRE_REGISTRATION_MAX_BYTES} allowed")
        register = unpack_as(data, Register)
        await policy.before_admission(state)
        entry = _verified_entry(state, register, nonce, send)
        state.cashier.check_worker(register)
        if state.directory.live_session(entry.worker_id, LIVE_WITHIN_S) is not None:
            raise Forbidden(
                f"worker {entry.worker_id} already has a live session at this proxy; a second one is refused "
                "(retry once the first has closed)"
            )
    except TimeoutError:
        await _refuse(ws, send, BadRequest(f"registration failed: no register message in {REGISTER_TIMEOUT_S:g}s"))
        return
    except PayloadTooLarge as exc:
        log.warning("worker refused reason=%s", exc.message)
        await _close(ws, TOO_BIG)
        return
    except Forbidden as exc:
        await _refuse(ws, send, exc, retryable=True)
        return
    except CocoonError as exc:
        await _refuse(ws, send, exc)
        return
    except (WebSocketDisconnect, SendFailed) as exc:
        log.debug("worker hung up before registering error=%s", exc)
        return
    _cap_incoming(ws, registered_cap)
    replaced = state.directory.add(entry)
    if replaced is not None:  # its session fell silent: the socket died without a close
        state.directory.remove(replaced, "worker reconnected")
    try:
        await send(pack(Registered(proxy_id=state.proxy_id, heartbeat_interval=HEARTBEAT_INTERVAL_S)))
        log.info("worker joined worker=%s models=%s", entry.worker_id, [m.model for m in register.models])
        while not entry.gone:
            _on_frame(state, entry, await _receive_frame(ws))
        if entry.evicted:  # the registry's policy no longer admits it: say why; it may retry once re-allowed
            await _refuse(ws, send, AttestationFailed(entry.evicted), retryable=True)
        else:  # dropped for silence while we waited: close, so it re-registers if it ever wakes up
            await _close(ws, SILENT)
    except WebSocketDisconnect as exc:
        log.debug("worker hung up worker=%s code=%s", entry.worker_id, exc.code)
    except (SendFailed, WebSocketDisconnected):  # a write to it failed (relay, pings): the socket is closed
        log.debug("worker socket closed under its reader worker=%s", entry.worker_id)
    except BadRequest as exc:
        log.warning("worker sent a bad frame worker=%s error=%s", entry.worker_id, exc.message)
    finally:
        state.directory.remove(entry, "disconnected")
        log.info("worker left worker=%s", entry.worker_id)


def _cap_incoming(ws: WebSocket, max_bytes: int | None) -> int | None:
    """Set the largest message the server will read from ``ws``; returns the cap it replaces.

    The cap is the server protocol's (uvicorn's ``websockets-sansio``, which ``cocoon proxy`` serves with), so
    an oversized frame is refused as it arrives, before it is buffered. Under a server that gives no handle on
    it this does nothing and returns ``None``; the length checks in the handler still hold.
    """
    protocol = getattr(ws._receive, "__self__", None)
    conn = getattr(protocol, "conn", None)
    previous = getattr(conn, "max_message_size", None)
    if isinstance(previous, int) and max_bytes is not None:
        conn.max_message_size = max_bytes  # type: ignore[union-attr]
        return previous
    return None


def _sender(ws: WebSocket) -> Sender:
    """Writes to ``ws`` one frame at a time (the relay, pings and registration all write to it)."""
    lock = asyncio.Lock()

    async def send(data: bytes) -> None:
        async with lock:
            try:
                await ws.send_bytes(data)
            except (WebSocketDisconnect, WebSocketDisconnected) as exc:
                raise SendFailed(f"worker socket closed ({type(exc).__name__})") from exc

    return send


async def _receive_frame(ws: WebSocket) -> bytes:
    """The next binary frame; ``WebSocketDisconnect`` when the worker hung up, ``BadRequest`` for a text frame."""
    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000), message.get("reason"))
    data = message.get("bytes")
    if not isinstance(data, bytes):
        raise BadRequest("the worker sent a text frame; cocoon frames are binary msgpack")
    return data


def _on_frame(state: ProxyState, entry: WorkerEntry, data: bytes) -> None:
    """Apply one frame from a registered worker; ``BadRequest`` when it is malformed."""
    raw = unpack_raw(data)
    kind = raw.get("t")
    if kind in ("chunk", "end", "error"):
        job_id = raw.get("job_id")
        queue = entry.jobs.get(job_id) if isinstance(job_id, str) else None
        if queue is not None:  # else the job already ended here (cancelled, failed over): nobody waits for it
            _check_job_frame(kind, raw)
            queue.put_nowait(raw)
    elif kind == "heartbeat":
        beat = _validated(raw, Heartbeat)
        if beat.free_slots > entry.register.slots:
            raise BadRequest(f"heartbeat claims {beat.free_slots} free slots of {entry.register.slots} registered")
        entry.apply(beat)
    elif kind == "pong":
        state.liveness.pong(entry, _validated(raw, Pong).nonce)
    # Other kinds carry nothing the proxy acts on once a worker is in (a repeated register, a newer worker's additions).


def _check_job_frame(kind: str, raw: dict[str, Any]) -> None:
    """A job's frame is well formed before the relay reads it: ``BadRequest`` otherwise.

    Chunks (one per token) get a type check; ends and errors (one per job) a full validation.
    """
    if kind == "chunk":
        seq = raw.get("seq")
        if not isinstance(raw.get("data"), bytes) or not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise BadRequest("invalid chunk: data must be bytes and seq a non-negative integer")
    else:
        _validated(raw, JobEnd if kind == "end" else JobError)


def _validated(raw: dict[str, Any], model: type[M]) -> M:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        where, message = first_problem(exc)
        raise BadRequest(f"invalid {model.__name__}: {where}: {message}") from exc


def _verified_entry(state: ProxyState, register: Register, nonce: bytes, send: Sender) -> WorkerEntry:
    """Verify a worker's registration: its attestation against the policy (a quote fresh enough), and that it
    holds the attested signing key now (it signed this session's challenge); ``AttestationFailed`` says why not."""
    try:
        bundle = AttestationBundle.model_validate(register.attestation)
    except ValidationError as exc:
        where, message = first_problem(exc)
        raise AttestationFailed(f"attestation bundle is malformed: {where}: {message}") from exc
    verified = state.verifier.verify(bundle, fresh_at=time.time())
    if verified.x25519_pub != register.x25519_pub or verified.ed25519_pub != register.ed25519_pub:
        raise AttestationFailed("registered keys differ from the attested ones")
    if register.worker_id != node_id_for(register.ed25519_pub):
        raise AttestationFailed("worker id does not derive from its signing key")
    if not challenge_answered(register.ed25519_pub, state.proxy_id, nonce, register.challenge_signature):
        raise AttestationFailed(
            "registration does not answer this session's challenge with the attested key: a replayed "
            "registration, or a worker older than this proxy (upgrade it)"
        )
    unattested = [o.model for o in register.models if o.model_hash not in verified.model_hashes]
    if unattested:
        raise AttestationFailed(f"models {unattested} are not covered by the attestation")
    return WorkerEntry(register.worker_id, register, verified, send)


async def _refuse(ws: WebSocket, send: Sender, err: CocoonError, retryable: bool = False) -> None:
    """Tell a worker why it may not join (``retryable``: soon it may), then close; one already gone needs neither."""
    log.warning("worker refused reason=%s", err.message)
    body = ErrorBody(message=err.message, type=err.type, code=err.code)
    try:
        await send(pack(JobError(status=err.status, error=body, retryable=retryable)))
    except SendFailed:
        log.debug("refusal not delivered: the worker hung up")
        return
    await _close(ws, REFUSED)


async def _close(ws: WebSocket, code: int) -> None:
    try:
        await ws.close(code=code)
    except (WebSocketDisconnect, WebSocketDisconnected):  # closed already, by the worker or by a failed write
        log.debug("worker socket already closed code=%s", code)
