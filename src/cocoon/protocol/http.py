"""Reading request bodies at the HTTP edges (client sidecar, proxy): size-capped, time-capped, then parsed.

Both roles answer oversize bodies with 413, bodies sent too slowly with 408, and malformed ones (nested past
any sense, ``NaN``, text no UTF-8 can carry) with an OpenAI-shaped 400 naming the field.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable
from typing import Any, NoReturn, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from cocoon.errors import BadRequest, InvalidJSON, PayloadTooLarge, RequestTimeout, first_problem

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

# A body must arrive within this many seconds, plus a second for every MIN_BODY_RATE bytes it declares (or may
# hold): a client dripping bytes cannot hold a connection, and so a slot of the server, forever.
BODY_DEADLINE_S = 10.0
MIN_BODY_RATE = 256 * 1024

# A lone UTF-16 surrogate (``"\\ud800"``) is legal in a JSON escape but is no character: it cannot be encoded
# as UTF-8, so it could never be sealed, stored or forwarded. json.loads joins valid pairs, so any left is lone.
_SURROGATE = re.compile(r"[\ud800-\udfff]")


class ClientGone(Exception):
    """The HTTP client disconnected before the answer it asked for was ready."""


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """``work``'s result; ``ClientGone`` as soon as ``request``'s client disconnects, ``work`` cancelled then.

    Both edges use it while nothing has been sent yet: the sidecar assembling a whole answer (cancelling it
    closes the SDK's request to the proxy) and the proxy awaiting a job's first frame (cancelling it makes the
    relay cancel the job on its worker), so an answer nobody waits for does not run on to ``max_tokens``.
    """
    task = asyncio.current_task()
    state = {"done": False, "gone": False}

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        if not state["done"] and task is not None:
            state["gone"] = True
            task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        result = await work
        state["done"] = True  # before any await: the watcher cancels nothing from here on
        return result
    except asyncio.CancelledError:
        if not state["gone"] or task is None:
            raise
        task.uncancel()
        raise ClientGone from None
    finally:
        watcher.cancel()


async def read_body(request: Request, limit: int, what: str = "request body") -> bytes:
    """The whole body: ``PayloadTooLarge`` as soon as it is known to exceed ``limit`` bytes, ``RequestTimeout``
    when it has not all arrived by its deadline (``BODY_DEADLINE_S`` plus the time its size needs)."""
    try:
        declared = int(request.headers.get("content-length") or 0)
    except ValueError as exc:
        raise BadRequest("the content-length header is not a number") from exc
    if declared < 0:
        raise BadRequest(f"the content-length header is negative ({declared})")
    if declared > limit:
        raise PayloadTooLarge(f"{what} of {declared} bytes exceeds the limit of {limit} bytes")
    deadline = BODY_DEADLINE_S + (declared or limit) / MIN_BODY_RATE
    body = bytearray()
    try:
        async with asyncio.timeout(deadline):
            async for part in request.stream():
                body += part
                if len(body) > limit:
                    raise PayloadTooLarge(f"{what} exceeds the limit of {limit} bytes")
    except TimeoutError:
        raise RequestTimeout(
            f"{what} did not arrive within {deadline:.0f} s ({len(body)} bytes came); send it whole and faster"
        ) from None
    return bytes(body)


def parse_json(body: bytes, model: type[M]) -> M:
    """``body`` as ``model``; ``InvalidJSON`` or a ``BadRequest`` whose ``param`` names the bad field.

    Strict JSON only: ``NaN``/``Infinity`` literals and numbers too large for a float (``1e999``) are refused,
    as are strings holding a lone surrogate, wherever they are (unknown fields included).
    """
    try:
        raw = json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
    except ValueError as exc:
        raise InvalidJSON(f"request body is not valid JSON: {exc}") from exc
    except RecursionError:
        raise InvalidJSON("request body nests JSON arrays or objects too deeply") from None
    _refuse_lone_surrogates(raw)
    try:
        return model.model_validate(raw)
    except RecursionError:
        raise InvalidJSON("request body nests JSON arrays or objects too deeply") from None
    except ValidationError as exc:
        where, message = first_problem(exc)
        raise BadRequest(f"{where}: {message}" if where else message, param=where or None) from exc


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number; send a finite number or null")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"the number {text[:40]} is too large for a 64-bit float")
    return value


def _refuse_lone_surrogates(raw: Any) -> None:
    """``InvalidJSON`` naming a string (key or value) that holds a lone surrogate; iterative, so a deep
    but parseable document cannot exhaust the stack here."""
    pending: list[tuple[Any, str]] = [(raw, "")]
    while pending:
        value, where = pending.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                raise InvalidJSON(
                    f"{where or 'the body'}: the string holds a lone UTF-16 surrogate, which is not text; "
                    "send valid Unicode",
                    param=where or None,
                )
        elif isinstance(value, dict):
            for key, item in value.items():
                path = f"{where}.{key}" if where else str(key)
                if _SURROGATE.search(key):
                    raise InvalidJSON(
                        f"{where or 'the body'}: a field name holds a lone UTF-16 surrogate; send valid Unicode",
                        param=where or None,
                    )
                pending.append((item, path))
        elif isinstance(value, list):
            pending.extend((item, f"{where}.{i}" if where else str(i)) for i, item in enumerate(value))
