"""The ``simulated`` attestation provider: a quote signed by a local dev authority key.

It stands in for TDX/SEV-SNP hardware on laptops and in tests. Only a policy with ``allow_simulated`` and
the authority's public key listed accepts these quotes; production policies refuse them.
"""

from __future__ import annotations

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


def make_simulated_quote(authority: SigningKey, report_data: bytes, measurement: str = DEV_MEASUREMENT) -> bytes:
    body = msgpack.packb([measurement, report_data, time.time(), authority.public.hex()], use_bin_type=True)
    return msgpack.packb([body, authority.sign(_DOMAIN + body)], use_bin_type=True)


def verify_simulated_quote(quote: bytes, trusted_authorities: list[str]) -> SimulatedQuote:
    try:
        body, signature = msgpack.unpackb(quote, raw=False)
        measurement, data, issued_at, authority = msgpack.unpackb(body, raw=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError) as exc:
        raise AttestationFailed(f"simulated quote is malformed: {exc}") from exc
    if authority not in trusted_authorities:
        raise AttestationFailed(
            f"simulated quote is signed by dev authority {authority[:16]}…, which this policy does not trust"
        )
    if not verify_signature(bytes.fromhex(authority), _DOMAIN + body, signature):
        raise AttestationFailed("simulated quote signature is invalid")
    return SimulatedQuote(str(measurement), bytes(data), float(issued_at), str(authority))
