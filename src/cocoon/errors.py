"""The one exception tree of cocoon.

Every error that can reach an app carries its OpenAI error ``type``, ``code`` and HTTP status, so the
boundary that catches it (the client gateway, the proxy app) turns it into the OpenAI JSON shape unchanged.
"""

from __future__ import annotations

from typing import Any, ClassVar

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
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class InvalidJSON(BadRequest):
    code = "invalid_json"


class ContextLengthExceeded(BadRequest):
    code = "context_length_exceeded"


class UnsupportedVersion(BadRequest):
    code = "unsupported_version"


class Unauthorized(CocoonError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PaymentRequired(CocoonError):
    status = 402
    type = "insufficient_quota"
    code = "insufficient_funds"


class ModelNotFound(CocoonError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class NotFound(CocoonError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class PayloadTooLarge(BadRequest):
    status = 413
    code = "request_too_large"


class NoCapacity(CocoonError):
    status = 503
    type = "service_unavailable"
    code = "no_capacity"


class AttestationFailed(CocoonError):
    status = 502
    type = "api_error"
    code = "attestation_failed"


class ReceiptInvalid(CocoonError):
    status = 502
    type = "api_error"
    code = "receipt_invalid"


class UpstreamFailed(CocoonError):
    status = 502
    type = "api_error"
    code = "upstream_failed"


class WorkerGone(UpstreamFailed):
    """The worker serving a job disconnected or stopped heartbeating; the proxy moves the job elsewhere."""

    code = "worker_gone"


class UpstreamTimeout(UpstreamFailed):
    status = 504
    code = "upstream_timeout"


class EngineError(CocoonError):
    status = 500
    type = "api_error"
    code = "engine_error"


class ConfigError(CocoonError):
    """A configuration file or option is wrong; raised before anything starts."""

    status = 500
    code = "config_error"
