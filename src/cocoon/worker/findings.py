"""A finding of ``cocoon worker doctor`` (one line of its answer) and what its checks share: reading a JSON
answer that may not be JSON, the TLS trust of the worker, sizes for people."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from cocoon.config import WorkerSettings
from cocoon.protocol.tls import trust_context

Status = Literal["ok", "warn", "fail"]
HTTP_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of the doctor's answer: what was checked, how it stands, and what to do when it is not ok."""

    check: str
    status: Status
    message: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return {"check": self.check, "status": self.status, "message": self.message, "fix": self.fix}


def can_earn(findings: list[Finding]) -> bool:
    """Whether nothing the doctor found stops this worker from serving and being paid."""
    return all(f.status != "fail" for f in findings)


def verify(settings: WorkerSettings) -> ssl.SSLContext:
    """Whom the worker trusts over HTTPS: the system's roots and its ``tls_ca_file``."""
    return trust_context(settings.tls_ca_file)


def json_body(response: httpx.Response | None) -> dict[str, Any]:
    """The JSON object ``response`` holds; empty when there is none (a doctor reads strangers' answers)."""
    if response is None:
        return {}
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def size_text(n: int) -> str:
    """``n`` bytes for a person: ``241.2 MiB``, ``23.0 GiB``."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
