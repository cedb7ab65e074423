"""Attestation: bundles workers present, providers that make and check quotes, and the network policy."""

from cocoon.attestation.bundle import AttestationBundle, report_data
from cocoon.attestation.policy import AttestationPolicy, AttestationVerifier, VerifiedWorker
from cocoon.attestation.simulated import DEV_MEASUREMENT, make_simulated_quote

__all__ = [
    "DEV_MEASUREMENT",
    "AttestationBundle",
    "AttestationPolicy",
    "AttestationVerifier",
    "VerifiedWorker",
    "make_simulated_quote",
    "report_data",
]
