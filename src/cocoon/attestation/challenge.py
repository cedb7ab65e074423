"""The registration challenge: a worker proves it holds its attested signing key, now, for this proxy.

A bundle is public (``GET /v1/directory`` shows it), so presenting one proves nothing. The proxy sends a fresh
random nonce first; the worker signs it, domain-separated and bound to the proxy's id, with the Ed25519 key the
quote commits to. A replayed registration cannot answer a nonce it has never seen.
"""

from __future__ import annotations

from cocoon.crypto import SigningKey, verify_signature

_DOMAIN = b"cocoon/v1 register challenge\x00"
NONCE_BYTES = 32


def challenge_message(proxy_id: str, nonce: bytes) -> bytes:
    """What a worker signs to answer ``nonce`` from the proxy ``proxy_id``."""
    return _DOMAIN + proxy_id.encode() + b"\x00" + nonce


def answer_challenge(key: SigningKey, proxy_id: str, nonce: bytes) -> bytes:
    """The worker's signature over the challenge."""
    return key.sign(challenge_message(proxy_id, nonce))


def challenge_answered(ed25519_pub: bytes, proxy_id: str, nonce: bytes, signature: bytes) -> bool:
    """Whether ``signature`` answers this proxy's ``nonce`` with the key ``ed25519_pub``."""
    return verify_signature(ed25519_pub, challenge_message(proxy_id, nonce), signature)
