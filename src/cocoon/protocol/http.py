"""Reading request bodies at the HTTP edges (client sidecar, proxy): size-capped, time-capped, then parsed.

Both roles answer oversize bodies with 413, bodies sent too slowly with 408, and malformed ones (nested past
any sense included) with an OpenAI-shaped 400 naming the field.
"""

from __future__ import annotations

import asyncio
import json
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from cocoon.errors import BadRequest, InvalidJSON, PayloadTooLarge, RequestTimeout, first_problem

M = TypeVar("M", bound=BaseModel)

# A body must arrive within this many seconds, plus a second for every MIN_BODY_RATE bytes it declares (or may
# hold): a client dripping bytes cannot hold a connection, and so a slot of the server, forever.
BODY_DEADLINE_S = 10.0
MIN_BODY_RATE = 256 * 1024


async def read_body(request: Request, limit: int, what: str = "request body") -> bytes:
    """The whole body: ``PayloadTooLarge`` as soon as it is known to exceed ``limit`` bytes, ``RequestTimeout``
    when it has not all arrived by its deadline (``BODY_DEADLINE_S`` plus the time its size needs)."""
    try:
        declared = int(request.headers.get("content-length") or 0)
    except ValueError as exc:
        raise BadRequest("the content-length header is not a number") from exc
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
    """``body`` as ``model``; ``InvalidJSON`` or a ``BadRequest`` whose ``param`` names the bad field."""
    try:
        raw = json.loads(body)
    except ValueError as exc:
        raise InvalidJSON(f"request body is not valid JSON: {exc}") from exc
    except RecursionError:
        raise InvalidJSON("request body nests JSON arrays or objects too deeply") from None
    try:
        return model.model_validate(raw)
    except RecursionError:
        raise InvalidJSON("request body nests JSON arrays or objects too deeply") from None
    except ValidationError as exc:
        where, message = first_problem(exc)
        raise BadRequest(f"{where}: {message}" if where else message, param=where or None) from exc
