"""What every sidecar response carries whatever its endpoint: an ``x-request-id``, and CORS for allowed web origins.

Two ASGI middlewares around the app (errors and streams included): ``RequestIds`` outermost, then
``BrowserAccess``, installed only when ``allowed_origins`` names an origin. The endpoints still refuse
requests from any other origin (``gateway._parse``); this only lets the allowed pages read the answers.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID = "x-request-id"
# What a caller's id may be to be echoed back as is: a token, safe in a header and a log line.
_SANE_ID = re.compile(r"[A-Za-z0-9._:+=/-]{1,128}")
# What a preflight may ask to send: a comma-separated list of header names.
_HEADER_LIST = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+(\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*")

CORS_METHODS = "GET, POST, OPTIONS"
CORS_HEADERS = "authorization, content-type, x-request-id"  # when a preflight names none
CORS_MAX_AGE_S = 600


def request_id_for(given: str | None) -> str:
    """The caller's ``x-request-id`` when it is a sane token of at most 128 characters, else a new ``req_…``."""
    if given is not None and _SANE_ID.fullmatch(given):
        return given
    return "req_" + uuid.uuid4().hex


class RequestIds:
    """Gives each HTTP request an id (``request.state.request_id``) and writes it on the response's headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_for(Headers(scope=scope).get(REQUEST_ID))
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)


class BrowserAccess:
    """CORS for the pages of ``origins``: a preflight ``OPTIONS`` from one is answered here (204 with the
    ``Access-Control-Allow-*`` headers), and every response to one carries ``Access-Control-Allow-Origin``.
    Requests from other origins pass through untouched and get no CORS headers, so browsers keep their pages
    from reading anything; a preflight from one meets the router's 405."""

    def __init__(self, app: ASGIApp, origins: Sequence[str]) -> None:
        self.app = app
        self.origins = frozenset(origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is None or origin not in self.origins:
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            await self._preflight(origin, headers)(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                out["access-control-allow-origin"] = origin
                out["access-control-expose-headers"] = REQUEST_ID
                out.add_vary_header("origin")
            await send(message)

        await self.app(scope, receive, send_with_cors)

    @staticmethod
    def _preflight(origin: str, headers: Headers) -> Response:
        # Browser SDKs (openai-node's x-stainless-* among them) send headers of their own: allow what the
        # allowed page asks for, when it is a list of header names.
        asked = headers.get("access-control-request-headers", "").strip()
        allow_headers = asked if _HEADER_LIST.fullmatch(asked) else CORS_HEADERS
        return Response(
            status_code=204,
            headers={
                "access-control-allow-origin": origin,
                "access-control-allow-methods": CORS_METHODS,
                "access-control-allow-headers": allow_headers,
                "access-control-max-age": str(CORS_MAX_AGE_S),
                "vary": "origin",
            },
        )
