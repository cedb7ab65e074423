"""The one exception tree of cocoon.

Every error that can reach an app carries its OpenAI error ``type``, ``code`` and HTTP status, so the
boundary that catches it (the client gateway, the proxy app) turns it into the OpenAI JSON shape unchanged,
and ``CocoonError.from_openai`` rebuilds the same class on the far side of a process boundary.

    CocoonError (500 internal_error)
    ├── BadRequest (400 invalid_request)
    │   ├── InvalidJSON (400 invalid_json)
    │   ├── ContextLengthExceeded (400 context_length_exceeded)
    │   ├── UnsupportedVersion (400 unsupported_version)
    │   ├── SealError (400 seal_failed)
    │   ├── RequestTimeout (408 request_timeout)
    │   ├── RequestReplayed (409 request_replayed)
    │   ├── RequestExpired (400 request_expired)
    │   ├── PayloadTooLarge (413 request_too_large)
    │   └── UnsupportedMediaType (415 unsupported_media_type)
    ├── Unauthorized (401 invalid_api_key)
    │   └── InitDataInvalid (401 init_data_invalid)
    ├── Forbidden (403 forbidden)
    ├── PaymentRequired (402 insufficient_funds)
    │   └── BudgetExhausted (402 budget_exhausted)
    ├── RateLimited (429 rate_limit_exceeded)
    ├── ModelNotFound (404 model_not_found)
    ├── NotFound (404 not_found)
    ├── NoCapacity (503 no_capacity)
    ├── AttestationFailed (502 attestation_failed)
    ├── ReceiptInvalid (502 receipt_invalid)
    ├── UpstreamFailed (502 upstream_failed)
    │   ├── WorkerGone (502 worker_gone)
    │   ├── UpstreamTimeout (504 upstream_timeout)
    │   └── ChainError (502 chain_error)
    │       ├── ChainUnavailable (503 chain_unavailable)
    │       └── TransactionFailed (502 transaction_failed)
    ├── EngineError (500 engine_error)
    ├── RegistrationRefused (500 registration_refused)
    ├── ConfigError (500 config_error)
    ├── ChildDied (500 child_died)
    └── ChainSetupFailed (500 chain_setup_failed)

Foreign errors are mapped in one place: ``map_http_errors()`` turns httpx's transport errors into
``UpstreamTimeout`` / ``UpstreamFailed`` (or a subclass the caller names) with a message naming the peer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar

import httpx
from pydantic import ValidationError


class CocoonError(Exception):
    """Base of every cocoon error; ``str(err)`` is a message that tells the user what to do."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "api_error"
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI error body: ``{"error": {"message", "type", "param", "code"}}``."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        """HTTP headers the error's response carries besides its body (``Retry-After`` of a 429)."""
        return {}

    @classmethod
    def from_openai(cls, status: int, body: dict[str, Any]) -> CocoonError:
        """Rebuild the most specific error from an OpenAI-shaped body received over the wire."""
        err = body.get("error", {}) if isinstance(body, dict) else {}
        code = str(err.get("code") or "")
        message = str(err.get("message") or f"upstream answered HTTP {status}")
        for sub in _all_subclasses(CocoonError):
            if sub.code == code and sub.status == status:
                return sub(message, param=err.get("param"))
        generic = next((s for s in _all_subclasses(CocoonError) if s.status == status), UpstreamFailed)
        return generic(message, param=err.get("param"))


def first_problem(exc: ValidationError) -> tuple[str, str]:
    """``(where, what)`` of a validation error's first problem: a dotted field path and the message."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return where, first["msg"].removeprefix("Value error, ")


def _all_subclasses(cls: type[CocoonError]) -> list[type[CocoonError]]:
    out: list[type[CocoonError]] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


class BadRequest(CocoonError):
    """The request is malformed or asks for something impossible; the caller must change it."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class InvalidJSON(BadRequest):
    """A body that should be JSON (or msgpack) does not parse."""

    code = "invalid_json"


class ContextLengthExceeded(BadRequest):
    """The prompt plus ``max_tokens`` does not fit the model's context window."""

    code = "context_length_exceeded"


class UnsupportedVersion(BadRequest):
    """A message carries a protocol version this build does not speak."""

    code = "unsupported_version"


class SealError(BadRequest):
    """A sealed blob could not be opened: wrong key, tampered bytes or a mix-up of ids."""

    code = "seal_failed"


class RequestTimeout(BadRequest):
    """The caller took longer than the deadline to send its request body."""

    status = 408
    code = "request_timeout"


class RequestReplayed(BadRequest):
    """A request id was seen before: a replayed request is never run (or billed) twice; seal it anew."""

    status = 409
    code = "request_replayed"


class RequestExpired(BadRequest):
    """A request id minted outside the window a proxy or worker accepts (too old, ahead of its clock, or before
    it started; ``cocoon.protocol.replay``): seal it anew, and check the client's clock."""

    code = "request_expired"


class UnsupportedMediaType(BadRequest):
    """The body is not of a content type this endpoint reads (the sidecar reads application/json only)."""

    status = 415
    code = "unsupported_media_type"


class Forbidden(CocoonError):
    """The caller is known but not allowed, e.g. a web page of a foreign origin calling the sidecar."""

    status = 403
    type = "permission_error"
    code = "forbidden"


class Unauthorized(CocoonError):
    """The caller did not prove who it is (a missing or wrong signature, a non-local settle call)."""

    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class InitDataInvalid(Unauthorized):
    """A Telegram Mini App's ``initData`` failed a check; ``check`` names which (``"hash_mismatch"``, ...).

    The message starts with the same name, so it survives a trip over the wire, where ``check`` does not.
    """

    code = "init_data_invalid"

    def __init__(self, message: str, *, check: str = "unknown", param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.check = check


class PaymentRequired(CocoonError):
    """A paid proxy cannot charge this request: no channel, too little deposit, or unpaid receipts."""

    status = 402
    type = "insufficient_quota"
    code = "insufficient_funds"


class BudgetExhausted(PaymentRequired):
    """The sidecar's API key has too little of its budget left for this request's maximum cost."""

    code = "budget_exhausted"


class RateLimited(CocoonError):
    """The caller sent more requests a minute than it may (an API key's ``rpm``); ``Retry-After`` says when
    the next one is let through."""

    status = 429
    type = "requests"  # OpenAI's type for a requests-per-minute limit
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, param: str | None = None, retry_after_s: int = 1) -> None:
        super().__init__(message, param=param)
        self.retry_after_s = max(1, retry_after_s)

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(self.retry_after_s)}


class ModelNotFound(CocoonError):
    """No worker (or no registry price) exists for the requested model."""

    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class NotFound(CocoonError):
    """The path or the object it names (a channel, a route on a free proxy) does not exist."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


class PayloadTooLarge(BadRequest):
    """A body exceeds the edge's size limit."""

    status = 413
    code = "request_too_large"


class NoCapacity(CocoonError):
    """Workers exist for the model, but none that this request may use can take it now."""

    status = 503
    type = "service_unavailable"
    code = "no_capacity"


class AttestationFailed(CocoonError):
    """A worker's attestation does not verify, or the policy does not admit what it attests."""

    status = 502
    type = "api_error"
    code = "attestation_failed"


class ReceiptInvalid(CocoonError):
    """A worker's receipt is not its attested word on exactly this exchange; nothing is paid for it."""

    status = 502
    type = "api_error"
    code = "receipt_invalid"


class UpstreamFailed(CocoonError):
    """A peer (the proxy, a worker, an engine's server, the chain) failed or could not be reached."""

    status = 502
    type = "api_error"
    code = "upstream_failed"


class WorkerGone(UpstreamFailed):
    """The worker serving a job disconnected or stopped heartbeating; the proxy moves the job elsewhere."""

    code = "worker_gone"


class UpstreamTimeout(UpstreamFailed):
    """A peer did not answer within its deadline."""

    status = 504
    code = "upstream_timeout"


class ChainError(UpstreamFailed):
    """The chain (toncenter or the devnet) refused or failed a request."""

    code = "chain_error"


class ChainUnavailable(ChainError):
    """The chain API kept failing transiently (rate limit, 5xx, lost connection) after its retries."""

    status = 503
    code = "chain_unavailable"


class TransactionFailed(ChainError):
    """A transaction ran but the contract rejected the message (non-zero exit code); see ``exit_code``."""

    code = "transaction_failed"

    def __init__(self, message: str, *, exit_code: int | None = None, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.exit_code = exit_code


class EngineError(CocoonError):
    """An inference engine failed or was used before it started."""

    status = 500
    type = "api_error"
    code = "engine_error"


class ConfigError(CocoonError):
    """A configuration file or option is wrong; raised before anything starts."""

    status = 500
    code = "config_error"


class RegistrationRefused(CocoonError):
    """The proxy refused this worker (attestation, protocol version); retrying will not help soon."""

    code = "registration_refused"


class ChildDied(CocoonError):
    """A process of a local network (``cocoon up``, tests) exited; the message names it and its log."""

    code = "child_died"


class ChainSetupFailed(CocoonError):
    """Deploying or funding the local devnet's contracts failed."""

    code = "chain_setup_failed"


@contextlib.contextmanager
def map_http_errors(
    peer: str,
    *,
    hint: str = "is it running?",
    error: type[UpstreamFailed] = UpstreamFailed,
    timeout: type[UpstreamFailed] = UpstreamTimeout,
) -> Iterator[None]:
    """Turn httpx's transport errors inside the block into cocoon's, naming ``peer`` (``"the proxy at URL"``).

    A timeout becomes ``timeout`` (``UpstreamTimeout``); a refused connection ``error("cannot reach PEER: ...; HINT")``;
    a connection broken mid-exchange ``error("PEER broke off: ...; HINT")``. HTTP status codes are not
    errors here: callers read ``response.status_code`` themselves.
    """
    try:
        yield
    except httpx.TimeoutException as exc:
        raise timeout(f"{peer} timed out ({type(exc).__name__}); is it overloaded?") from exc
    except (httpx.ConnectError, httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        raise error(f"cannot reach {peer}: {exc!r}; {hint}") from exc
    except httpx.HTTPError as exc:
        raise error(f"{peer} broke off: {exc!r}; {hint}") from exc
