"""End-to-end sealing of requests and responses (HPKE, RFC 9180: X25519 / HKDF-SHA256 / ChaCha20-Poly1305).

HPKE here is RFC 9180's base mode, single shot (one message per context, sequence number 0), written out on
``cryptography``'s X25519 and ChaCha20-Poly1305 and the standard library's HMAC: a general HPKE library
(pyhpke, which this used) spent about 50 µs in Python around the X25519 operations of each seal and each open
(a request sealed to one worker: 171 -> 122 µs; its key opened: 113 -> 63 µs).
``tests/unit/protocol/test_envelope.py`` holds it to pyhpke both ways (each opens what the other sealed).

The client seals the request body once under a fresh content key and wraps that key with HPKE for each
candidate worker, so the proxy can fail over without a round trip and never holds a key. Response chunks
are sealed under a key derived from the content key, the serving worker's id and a fresh nonce that worker
draws for each job (its ``key_nonce``, sent with chunk 0): a relay that replays one sealed request, to the
same worker or another, gets every run sealed under a different key, never one keystream twice. (DESIGN.md
says "exported from the HPKE context"; deriving from the content key instead lets a failover candidate read
the sealed chunks emitted so far, given their worker's key nonce, and resume the stream, while the proxy
still sees only ciphertext.)
"""

from __future__ import annotations

import functools
import hmac
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cocoon.errors import BadRequest, SealError

_ZERO_NONCE = bytes(12)
_INFO = b"cocoon/v1 request key"


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """The content key wrapped for one worker: HPKE encapsulated key plus the sealed content key."""

    worker_id: str
    enc: bytes
    wrapped: bytes


@dataclass(frozen=True, slots=True)
class SealedRequest:
    request_id: str
    keys: tuple[WrappedKey, ...]
    ciphertext: bytes


def seal_request(request_id: str, body: bytes, recipients: dict[str, bytes]) -> tuple[SealedRequest, bytes]:
    """Seal ``body`` for every worker in ``recipients`` (worker id -> X25519 public key).

    Returns the sealed request and the content key, which the caller keeps to open the response.
    """
    if not recipients:
        raise BadRequest("a sealed request needs at least one recipient worker")
    content_key = ChaCha20Poly1305.generate_key()
    ciphertext = ChaCha20Poly1305(content_key).encrypt(_ZERO_NONCE, body, request_id.encode())
    wrapped = []
    for worker_id, public in recipients.items():
        enc, wrapped_key = hpke_seal(bytes(public), content_key, _aad(request_id, worker_id))
        wrapped.append(WrappedKey(worker_id, enc, wrapped_key))
    return SealedRequest(request_id, tuple(wrapped), ciphertext), content_key


def unwrap_content_key(request_id: str, key: WrappedKey, x25519_private: bytes) -> bytes:
    """Open the content key addressed to this worker; ``SealError`` when it is not ours or was altered."""
    try:
        return hpke_open(bytes(x25519_private), key.enc, key.wrapped, _aad(request_id, key.worker_id))
    except (InvalidTag, ValueError) as exc:  # ValueError: an enc that is no X25519 key, or a low-order one
        raise SealError(f"cannot unwrap the request key for {key.worker_id}: {exc or 'it does not open'}") from exc


# ---- HPKE, RFC 9180: mode_base, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20Poly1305 --------------------

_KEM_SUITE = b"KEM\x00\x20"
_HPKE_SUITE = b"HPKE\x00\x20\x00\x01\x00\x03"


def _extract(suite: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    """LabeledExtract: HKDF-Extract, whose empty salt is HMAC's empty (= zero) key."""
    return hmac.digest(salt, b"HPKE-v1" + suite + label + ikm, "sha256")


def _expand(suite: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    """LabeledExpand of at most one hash length: HKDF-Expand's first block."""
    return hmac.digest(prk, length.to_bytes(2, "big") + b"HPKE-v1" + suite + label + info + b"\x01", "sha256")[:length]


# The key schedule's context for this module's fixed info and no PSK: the same for every message.
_SCHEDULE = b"\x00" + _extract(_HPKE_SUITE, b"", b"psk_id_hash", b"") + _extract(_HPKE_SUITE, b"", b"info_hash", _INFO)


def _key_and_nonce(dh: bytes, enc: bytes, recipient: bytes) -> tuple[ChaCha20Poly1305, bytes]:
    """The AEAD and base nonce that DHKEM's shared secret (of ``dh``, ``enc`` and the recipient's public key)
    schedules."""
    shared = _expand(_KEM_SUITE, _extract(_KEM_SUITE, b"", b"eae_prk", dh), b"shared_secret", enc + recipient, 32)
    secret = _extract(_HPKE_SUITE, shared, b"secret", b"")
    key = _expand(_HPKE_SUITE, secret, b"key", _SCHEDULE, 32)
    return ChaCha20Poly1305(key), _expand(_HPKE_SUITE, secret, b"base_nonce", _SCHEDULE, 12)


def hpke_seal(recipient: bytes, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
    """HPKE single-shot seal to the X25519 public key ``recipient``: ``(enc, ciphertext)``. ``ValueError`` for a
    key that is not 32 bytes or whose shared secret would be all zero (a low-order point)."""
    ephemeral = X25519PrivateKey.generate()
    dh = ephemeral.exchange(_public_key(recipient))
    enc = ephemeral.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    aead, nonce = _key_and_nonce(dh, enc, recipient)
    return enc, aead.encrypt(nonce, plaintext, aad)


def hpke_open(private: bytes, enc: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    """Open what ``hpke_seal`` sealed to the public half of ``private``; ``InvalidTag`` if it was altered or is
    not ours, ``ValueError`` for an ``enc`` that is no usable X25519 key."""
    key, public = _private_key(private)
    aead, nonce = _key_and_nonce(key.exchange(_public_key(enc)), enc, public)
    return aead.decrypt(nonce, ciphertext, aad)


# Loading a private key computes its public half (a scalar multiplication, about a fifth of an open): a worker's
# one key is loaded once. Public keys load without arithmetic.
@functools.lru_cache(maxsize=16)
def _private_key(private: bytes) -> tuple[X25519PrivateKey, bytes]:
    key = X25519PrivateKey.from_private_bytes(private)
    return key, key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _public_key(public: bytes) -> X25519PublicKey:
    return X25519PublicKey.from_public_bytes(public)


def open_request(request_id: str, ciphertext: bytes, content_key: bytes) -> bytes:
    try:
        return ChaCha20Poly1305(content_key).decrypt(_ZERO_NONCE, ciphertext, request_id.encode())
    except InvalidTag as exc:
        raise SealError("the sealed request body does not match its key or id") from exc


def _aad(request_id: str, worker_id: str) -> bytes:
    return f"{request_id}|{worker_id}".encode()


KEY_NONCE_BYTES = 32


def new_key_nonce() -> bytes:
    """A fresh response-key nonce: one per job a worker runs, never reused."""
    return os.urandom(KEY_NONCE_BYTES)


class ResponseSealer:
    """Seals (or opens) the response chunks one worker emits for one job, numbered from 0.

    The key is ``HKDF-SHA256(ikm=content key, salt=key_nonce, info="cocoon/v1 response|" + worker id)``. The
    nonce needs no secrecy (it is HKDF's salt; the content key is the secret), only freshness: the worker draws
    it per job, so the chunk number can serve as the AEAD nonce. ``SealError`` for a nonce of the wrong size.
    """

    __slots__ = ("_aad", "_aead")

    def __init__(self, content_key: bytes, request_id: str, worker_id: str, key_nonce: bytes) -> None:
        if len(key_nonce) != KEY_NONCE_BYTES:
            raise SealError(f"a response key nonce has {KEY_NONCE_BYTES} bytes, this one {len(key_nonce)}")
        key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=key_nonce, info=b"cocoon/v1 response|" + worker_id.encode()
        ).derive(content_key)
        self._aead = ChaCha20Poly1305(key)
        self._aad = request_id.encode()

    def seal(self, seq: int, plaintext: bytes) -> bytes:
        return self._aead.encrypt(seq.to_bytes(12, "big"), plaintext, self._aad)

    def open(self, seq: int, sealed: bytes) -> bytes:
        try:
            return self._aead.decrypt(seq.to_bytes(12, "big"), sealed, self._aad)
        except InvalidTag as exc:
            raise SealError(f"response chunk {seq} was altered or sealed under another key") from exc


def random_salt() -> bytes:
    return os.urandom(16)
