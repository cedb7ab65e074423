"""End-to-end sealing of requests and responses (HPKE, RFC 9180: X25519 / HKDF-SHA256 / ChaCha20-Poly1305).

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
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pyhpke import AEADId, CipherSuite, KDFId, KEMId, KEMKeyInterface

from cocoon.errors import BadRequest, SealError

_SUITE = CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.CHACHA20_POLY1305)
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
        enc, ctx = _SUITE.create_sender_context(_recipient_public(bytes(public)), info=_INFO)
        wrapped.append(WrappedKey(worker_id, enc, ctx.seal(content_key, aad=_aad(request_id, worker_id))))
    return SealedRequest(request_id, tuple(wrapped), ciphertext), content_key


def unwrap_content_key(request_id: str, key: WrappedKey, x25519_private: bytes) -> bytes:
    """Open the content key addressed to this worker; ``SealError`` when it is not ours or was altered."""
    try:
        ctx = _SUITE.create_recipient_context(key.enc, _recipient_private(bytes(x25519_private)), info=_INFO)
        return bytes(ctx.open(key.wrapped, aad=_aad(request_id, key.worker_id)))
    except Exception as exc:  # pyhpke raises its own OpenError/DecodeError hierarchy
        raise SealError(f"cannot unwrap the request key for {key.worker_id}: {exc}") from exc


# Loading an X25519 key is a scalar multiplication (its public half), about a fifth of an HPKE open: the keys
# a client seals to and the one a worker opens with are loaded once.
@functools.lru_cache(maxsize=4096)
def _recipient_public(public: bytes) -> KEMKeyInterface:
    return _SUITE.kem.deserialize_public_key(public)


@functools.lru_cache(maxsize=16)
def _recipient_private(private: bytes) -> KEMKeyInterface:
    return _SUITE.kem.deserialize_private_key(private)


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
