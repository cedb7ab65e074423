"""The worker WebSocket, ``WS /v1/worker/connect``: a worker registers (attestation checked against the policy),
then streams heartbeats, pongs and its jobs' frames; it leaves the directory when the socket closes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from cocoon.attestation import AttestationBundle
from cocoon.crypto import node_id_for
from cocoon.errors import AttestationFailed, BadRequest, CocoonError, first_problem
from cocoon.protocol import ErrorBody, Heartbeat, JobError, Pong, Register, Registered, pack, unpack_as, unpack_raw
from cocoon.proxy.routing.directory import Sender, SendFailed, WorkerEntry
from cocoon.proxy.state import ProxyState

log = logging.getLogger("cocoon.proxy")

M = TypeVar("M", bound=BaseModel)
REGISTER_TIMEOUT_S = 10.0
HEARTBEAT_INTERVAL_S = 0.5  # told to the worker in ``Registered``
REFUSED, SILENT = 4003, 4008  # close codes: registration refused; dropped for missed heartbeats


async def worker_connect(ws: WebSocket) -> None:
    state: ProxyState = ws.app.state.proxy
    await ws.accept()
    send = _sender(ws)
    try:
        register = unpack_as(await asyncio.wait_for(_receive_frame(ws), REGISTER_TIMEOUT_S), Register)
        entry = _verified_entry(state, register, send)
        state.cashier.check_worker(register)
    except TimeoutError:
        await _refuse(ws, send, BadRequest(f"registration failed: no register message in {REGISTER_TIMEOUT_S:g}s"))
        return
    except ValidationError as exc:
        await _refuse(ws, send, BadRequest(f"registration failed: {exc}"))
        return
    except CocoonError as exc:
        await _refuse(ws, send, exc)
        return
    except WebSocketDisconnect as exc:
        log.debug("worker hung up before registering code=%s", exc.code)
        return
    replaced = state.directory.add(entry)
    if replaced is not None:
        state.directory.remove(replaced, "worker reconnected")
    try:
        await send(pack(Registered(proxy_id=state.proxy_id, heartbeat_interval=HEARTBEAT_INTERVAL_S)))
        log.info("worker joined worker=%s models=%s", entry.worker_id, [m.model for m in register.models])
        while not entry.gone:
            _on_frame(state, entry, await _receive_frame(ws))
        # Dropped for silence while we waited: close, so it re-registers if it ever wakes up.
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
    data: bytes | None = message.get("bytes")
    if data is None:
        raise BadRequest("the worker sent a text frame; cocoon frames are binary msgpack")
    return data


def _on_frame(state: ProxyState, entry: WorkerEntry, data: bytes) -> None:
    """Apply one frame from a registered worker; ``BadRequest`` when it is malformed."""
    raw = unpack_raw(data)
    kind = raw.get("t")
    if kind in ("chunk", "end", "error"):
        queue = entry.jobs.get(raw.get("job_id", ""))
        if queue is not None:  # else the job already ended here (cancelled, failed over): nobody waits for it
            queue.put_nowait(raw)
    elif kind == "heartbeat":
        entry.apply(_validated(raw, Heartbeat))
    elif kind == "pong":
        state.liveness.pong(entry, _validated(raw, Pong).nonce)
    # Other kinds carry nothing the proxy acts on once a worker is in (a repeated register, a newer worker's additions).


def _validated(raw: dict[str, Any], model: type[M]) -> M:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        where, message = first_problem(exc)
        raise BadRequest(f"invalid {model.__name__}: {where}: {message}") from exc


def _verified_entry(state: ProxyState, register: Register, send: Sender) -> WorkerEntry:
    """Verify a worker's registration against the policy; ``AttestationFailed`` says why not."""
    try:
        bundle = AttestationBundle.model_validate(register.attestation)
    except ValidationError as exc:
        raise AttestationFailed(f"attestation bundle is malformed: {exc.errors()[0]['msg']}") from exc
    verified = state.verifier.verify(bundle)
    if verified.x25519_pub != register.x25519_pub or verified.ed25519_pub != register.ed25519_pub:
        raise AttestationFailed("registered keys differ from the attested ones")
    if register.worker_id != node_id_for(register.ed25519_pub):
        raise AttestationFailed("worker id does not derive from its signing key")
    unattested = [o.model for o in register.models if o.model_hash not in verified.model_hashes]
    if unattested:
        raise AttestationFailed(f"models {unattested} are not covered by the attestation")
    return WorkerEntry(register.worker_id, register, verified, send)


async def _refuse(ws: WebSocket, send: Sender, err: CocoonError) -> None:
    """Tell a worker why it may not join, then close; a worker already gone needs neither."""
    log.warning("worker refused reason=%s", err.message)
    body = ErrorBody(message=err.message, type=err.type, code=err.code)
    try:
        await send(pack(JobError(status=err.status, error=body)))
    except SendFailed:
        log.debug("refusal not delivered: the worker hung up")
        return
    await _close(ws, REFUSED)


async def _close(ws: WebSocket, code: int) -> None:
    try:
        await ws.close(code=code)
    except (WebSocketDisconnect, WebSocketDisconnected):  # closed already, by the worker or by a failed write
        log.debug("worker socket already closed code=%s", code)
