"""What a sidecar endpoint does with a request before it reads the body: refuses callers that are not the app
(a foreign web page, a missing or unknown API key, a body that is not JSON), then reads the body within its
limits and parses it; the prompt-size bound, checked before anything is sealed; and the admission of the
request's API key (its models, its rpm) with the meter its jobs are held to. Every sidecar endpoint
(``gateway``, ``responses``) reads its request through here.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel
from starlette.requests import Request

from cocoon.client.keys import ApiKey, KeyGate, KeyMeter
from cocoon.client.sdk import CocoonClient
from cocoon.config import ClientSettings
from cocoon.errors import Forbidden, PayloadTooLarge, Unauthorized, UnsupportedMediaType
from cocoon.protocol.http import parse_json, read_body

R = TypeVar("R", bound=BaseModel)


def settings_of(request: Request) -> ClientSettings:
    settings: ClientSettings = request.app.state.settings
    return settings


def sdk_of(request: Request) -> CocoonClient:
    sdk: CocoonClient = request.app.state.sdk
    return sdk


def gate_of(request: Request) -> KeyGate:
    gate: KeyGate = request.app.state.keys
    return gate


async def caller_of(request: Request) -> ApiKey | None:
    """The API key the request carries when the sidecar needs keys (``Unauthorized`` without a usable one,
    ``Forbidden`` for an expired one); otherwise ``None``, once the shared ``api_key`` (when set) matched."""
    if hasattr(request.state, "api_key"):
        key: ApiKey | None = request.state.api_key
        return key
    authorization = request.headers.get("authorization")
    key = await gate_of(request).caller(authorization)
    api_key = settings_of(request).api_key
    if key is None and api_key and authorization != f"Bearer {api_key}":
        raise Unauthorized("missing or wrong API key: send 'Authorization: Bearer <key>'")
    request.state.api_key = key
    return key


async def admitted(request: Request, model: str | None, timeout: float | None = None) -> KeyMeter | None:
    """The meter of the request's API key, once the key may use ``model`` (``Forbidden``) and has room in its
    rpm (``RateLimited``); ``None`` when the sidecar needs no keys. Every OpenAI endpoint calls it once."""
    key = await caller_of(request)
    return None if key is None else await gate_of(request).meter(key, model, timeout)


async def parsed_body(request: Request, model: type[R]) -> R:
    """The JSON body as ``model``, from a caller holding an API key (when keys are needed, see ``caller_of``) and
    not a foreign web page.

    A browser sends a page's cross-site ``text/plain`` or form post without asking first (no CORS preflight), with
    its ``Origin``: refusing other content types and origins not in ``allowed_origins`` keeps any web page the user
    opens from spending the deposit through the sidecar (403, 415). Apps and SDKs send no ``Origin``.
    """
    settings = settings_of(request)
    origin = request.headers.get("origin")
    if origin is not None and origin not in settings.allowed_origins:
        raise Forbidden(
            f"requests from the web origin {origin!r} are refused; add it to the sidecar's allowed_origins to allow it"
        )
    await caller_of(request)
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise UnsupportedMediaType(
            f"the body must be JSON sent as 'content-type: application/json', not {media_type or 'no content type'!r}"
        )
    return parse_json(await read_body(request, settings.max_request_bytes), model)


def within_prompt_limit(request: Request, chars: int, param: str) -> None:
    """``PayloadTooLarge`` for a prompt over ``max_prompt_chars``, before anything is looked up or sealed."""
    limit = settings_of(request).max_prompt_chars
    if chars > limit:
        raise PayloadTooLarge(
            f"the prompt has {chars} characters, over this sidecar's limit of {limit} (max_prompt_chars)", param=param
        )
