"""Sealing: only the addressed workers open a request; any altered byte is detected."""

from __future__ import annotations

import pytest

from cocoon.crypto import NodeKeys
from cocoon.errors import SealError
from cocoon.protocol import (
    ResponseSealer,
    WrappedKey,
    envelope,
    new_key_nonce,
    open_request,
    seal_request,
    unwrap_content_key,
)
from cocoon.protocol.replay import ReplayRecord


def test_every_candidate_opens_the_same_request() -> None:
    workers = [NodeKeys.generate() for _ in range(3)]
    sealed, key = seal_request("r1", b"prompt", {w.node_id: w.sealing.public for w in workers})
    for worker, wrapped in zip(workers, sealed.keys, strict=True):
        content_key = unwrap_content_key("r1", wrapped, worker.sealing.private)
        assert content_key == key
        assert open_request("r1", sealed.ciphertext, content_key) == b"prompt"
    assert b"prompt" not in sealed.ciphertext


def test_the_hpke_here_is_rfc_9180s_as_an_independent_implementation_reads_it() -> None:
    """pyhpke (tested against RFC 9180's vectors) opens what this module seals and seals what it opens: same
    suite, same info, same AAD."""
    from pyhpke import AEADId, CipherSuite, KDFId, KEMId

    suite = CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.CHACHA20_POLY1305)
    worker = NodeKeys.generate()
    sealed, key = seal_request("r1", b"prompt", {worker.node_id: worker.sealing.public})
    wrapped = sealed.keys[0]
    private = suite.kem.deserialize_private_key(worker.sealing.private)
    theirs = suite.create_recipient_context(wrapped.enc, private, info=envelope._INFO)
    assert theirs.open(wrapped.wrapped, aad=f"r1|{worker.node_id}".encode()) == key

    public = suite.kem.deserialize_public_key(worker.sealing.public)
    enc, context = suite.create_sender_context(public, info=envelope._INFO)
    mine = WrappedKey(worker.node_id, enc, context.seal(b"k" * 32, aad=f"r2|{worker.node_id}".encode()))
    assert unwrap_content_key("r2", mine, worker.sealing.private) == b"k" * 32


@pytest.mark.parametrize("enc", [bytes(32), b"\x01" + bytes(31), b"short"])
def test_an_encapsulated_key_of_low_order_or_the_wrong_size_is_refused(enc: bytes) -> None:
    worker = NodeKeys.generate()
    sealed, _ = seal_request("r1", b"prompt", {worker.node_id: worker.sealing.public})
    bad = WrappedKey(worker.node_id, enc, sealed.keys[0].wrapped)
    with pytest.raises(SealError):
        unwrap_content_key("r1", bad, worker.sealing.private)
    with pytest.raises(ValueError):
        seal_request("r1", b"prompt", {"w": enc})


def test_a_worker_cannot_open_a_key_wrapped_for_another() -> None:
    alice, bob = NodeKeys.generate(), NodeKeys.generate()
    sealed, _ = seal_request("r1", b"prompt", {alice.node_id: alice.sealing.public})
    with pytest.raises(SealError):
        unwrap_content_key("r1", sealed.keys[0], bob.sealing.private)


def test_relabelled_key_or_request_id_is_detected() -> None:
    alice, bob = NodeKeys.generate(), NodeKeys.generate()
    sealed, key = seal_request("r1", b"prompt", {alice.node_id: alice.sealing.public})
    relabelled = WrappedKey(bob.node_id, sealed.keys[0].enc, sealed.keys[0].wrapped)
    with pytest.raises(SealError):
        unwrap_content_key("r1", relabelled, alice.sealing.private)
    with pytest.raises(SealError):
        open_request("r2", sealed.ciphertext, key)


def test_tampered_ciphertext_is_detected() -> None:
    alice = NodeKeys.generate()
    sealed, key = seal_request("r1", b"prompt", {alice.node_id: alice.sealing.public})
    tampered = bytes([sealed.ciphertext[0] ^ 1]) + sealed.ciphertext[1:]
    with pytest.raises(SealError):
        open_request("r1", tampered, key)


def test_response_chunks_open_only_in_order_and_for_their_worker() -> None:
    key, nonce = b"k" * 32, new_key_nonce()
    sealer = ResponseSealer(key, "r1", "w-a", nonce)
    first, second = sealer.seal(0, b"hello"), sealer.seal(1, b"world")
    reader = ResponseSealer(key, "r1", "w-a", nonce)
    assert reader.open(0, first) == b"hello"
    assert reader.open(1, second) == b"world"
    with pytest.raises(SealError):
        reader.open(0, second)  # reordered
    with pytest.raises(SealError):
        ResponseSealer(key, "r1", "w-b", nonce).open(0, first)  # claimed by another worker


def test_each_job_of_one_request_seals_under_a_fresh_key() -> None:
    key = b"k" * 32
    runs = [ResponseSealer(key, "r1", "w-a", new_key_nonce()).seal(0, b"same text") for _ in range(2)]
    assert runs[0] != runs[1]  # no keystream is ever used twice, even for one request on one worker
    with pytest.raises(SealError):
        ResponseSealer(key, "r1", "w-a", new_key_nonce()).open(0, runs[0])
    with pytest.raises(SealError):
        ResponseSealer(key, "r1", "w-a", b"short")


def test_a_request_id_is_seen_once_until_it_expires_or_is_pushed_out() -> None:
    record = ReplayRecord(capacity=2, ttl_s=10)
    assert record.first_time("a", now=0) and not record.first_time("a", now=5)
    assert record.first_time("a", now=11)  # expired
    assert record.first_time("b", now=11) and record.first_time("c", now=11)
    assert len(record) == 2
