"""Reading request bodies at the HTTP edges (client sidecar, proxy): size-capped, then parsed into models.

Both roles answer oversize bodies with 413 and malformed ones with an OpenAI-shaped 400 naming the field.
"""

from __future__ import annotations

import json
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from cocoon.errors import BadRequest, InvalidJSON, PayloadTooLarge, first_problem

M = TypeVar("M", bound=BaseModel)


async def read_body(request: Request, limit: int, what: str = "request body") -> bytes:
    """The whole body, refused with ``PayloadTooLarge`` as soon as it is known to exceed ``limit`` bytes."""
    declared = int(request.headers.get("content-length") or 0)
    if declared > limit:
        raise PayloadTooLarge(f"{what} of {declared} bytes exceeds the limit of {limit} bytes")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise PayloadTooLarge(f"{what} exceeds the limit of {limit} bytes")
    return bytes(body)


def parse_json(body: bytes, model: type[M]) -> M:
    """``body`` as ``model``; ``InvalidJSON`` or a ``BadRequest`` whose ``param`` names the bad field."""
    try:
        raw = json.loads(body)
    except ValueError as exc:
        raise InvalidJSON(f"request body is not valid JSON: {exc}") from exc
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        where, message = first_problem(exc)
        raise BadRequest(f"{where}: {message}" if where else message, param=where or None) from exc
