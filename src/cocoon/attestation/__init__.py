"""Attestation: bundles workers present, providers that make and check quotes, and the network policy."""

from cocoon.attestation.bundle import AttestationBundle, report_data
from cocoon.attestation.challenge import NONCE_BYTES, answer_challenge, challenge_answered, challenge_message
from cocoon.attestation.policy import AttestationPolicy, AttestationVerifier, VerifiedWorker
from cocoon.attestation.simulated import DEV_MEASUREMENT, make_simulated_quote

__all__ = [
    "DEV_MEASUREMENT",
    "NONCE_BYTES",
    "AttestationBundle",
    "AttestationPolicy",
    "AttestationVerifier",
    "VerifiedWorker",
    "answer_challenge",
    "challenge_answered",
    "challenge_message",
    "make_simulated_quote",
    "report_data",
]
