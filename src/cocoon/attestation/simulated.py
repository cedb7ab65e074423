"""The ``simulated`` attestation provider: a quote signed by a local dev authority key.

It stands in for TDX/SEV-SNP hardware on laptops and in tests. Only a policy with ``allow_simulated`` and
the authority's public key listed accepts these quotes; production policies refuse them. The authority key
lives only in the process that runs the devnet (``cocoon.local.authority``), never in a worker; quotes carry
the time they were issued, and a proxy refuses one older than the policy's ``max_quote_age_s``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import msgpack

from cocoon.crypto.keys import SigningKey, verify_signature
from cocoon.errors import AttestationFailed

_DOMAIN = b"cocoon/v1 simulated quote\x00"
DEV_MEASUREMENT = "c0c00000" + "00" * 44  # the measurement a simulated guest reports (48 bytes, hex)


@dataclass(frozen=True, slots=True)
class SimulatedQuote:
    measurement: str
    report_data: bytes
    issued_at: float
    authority: str


def make_simulated_quote(
    authority: SigningKey, report_data: bytes, measurement: str = DEV_MEASUREMENT, issued_at: float | None = None
) -> bytes:
    """A quote signed by ``authority`` that commits to ``report_data``, issued now (or at ``issued_at``)."""
    stamp = time.time() if issued_at is None else issued_at
    body = msgpack.packb([measurement, report_data, stamp, authority.public.hex()], use_bin_type=True)
    return msgpack.packb([body, authority.sign(_DOMAIN + body)], use_bin_type=True)


def verify_simulated_quote(quote: bytes, trusted_authorities: list[str]) -> SimulatedQuote:
    """The quote's contents once its authority is trusted and its signature checks; ``AttestationFailed`` if not."""
    try:
        body, signature = msgpack.unpackb(quote, raw=False)
        measurement, data, issued_at, authority = msgpack.unpackb(body, raw=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise AttestationFailed(f"simulated quote is malformed: {exc}") from exc
    typed = (
        isinstance(signature, bytes)
        and isinstance(measurement, str)
        and isinstance(data, bytes)
        and isinstance(issued_at, int | float)
        and isinstance(authority, str)
    )
    if not typed or not math.isfinite(issued_at):
        raise AttestationFailed("simulated quote is malformed: a field has the wrong type")
    if authority not in trusted_authorities:
        raise AttestationFailed(
            f"simulated quote is signed by dev authority {authority[:16]}…, which this policy does not trust"
        )
    if not verify_signature(bytes.fromhex(authority), _DOMAIN + body, signature):
        raise AttestationFailed("simulated quote signature is invalid")
    return SimulatedQuote(measurement, data, float(issued_at), authority)
