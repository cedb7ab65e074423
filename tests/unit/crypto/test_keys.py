"""Key pairs and key files: what a key signs verifies under its public key, secrets stay out of reprs, and a
key file holding no valid key is one clear error naming it."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cocoon.crypto.keys import (
    SALT_BYTES,
    SealingKey,
    SigningKey,
    load_or_create_node_keys,
    load_or_create_salt,
    load_or_create_signing_key,
    verify_signature,
)
from cocoon.errors import ConfigError


def test_a_signing_key_signs_what_its_public_key_verifies_and_nothing_else() -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    assert key.public == Ed25519PrivateKey.from_private_bytes(key.seed).public_key().public_bytes_raw()
    signature = key.sign(b"receipt")
    assert signature == Ed25519PrivateKey.from_private_bytes(key.seed).sign(b"receipt")  # deterministic: OpenSSL's
    assert verify_signature(key.public, b"receipt", signature)
    assert not verify_signature(key.public, b"receipt!", signature)
    assert not verify_signature(other.public, b"receipt", signature)
    assert not verify_signature(b"\x00" * 31, b"receipt", signature)  # not a key at all
    assert SigningKey(key.seed) == key and hash(SigningKey(key.seed)) == hash(key)
    assert pickle.loads(pickle.dumps(key)) == key


def test_a_signature_is_checked_strictly_a_degenerate_key_signs_nothing() -> None:
    """The identity point as a public key, with R the identity and S = 0, "signs" every message under RFC 8032's
    bare equation (OpenSSL accepts it): a payer or worker that registered it would have every voucher or receipt
    anyone made up pass as theirs. Small-order keys and points, and S not below the group order, are refused."""
    identity = bytes([1]) + bytes(31)
    message = b"a voucher nobody signed"
    assert not verify_signature(identity, message, identity + bytes(32))
    key = SigningKey.generate()
    signature = key.sign(message)
    order = 2**252 + 27742317777372353535851937790883648493  # S + L verifies the same equation; refused
    s = int.from_bytes(signature[32:], "little") + order
    assert not verify_signature(key.public, message, signature[:32] + s.to_bytes(32, "little"))
    assert not verify_signature(key.public, message, signature[:63])
    assert not verify_signature(key.public, message, signature + b"\x00")
    assert verify_signature(bytearray(key.public), memoryview(message), bytes(signature))  # any bytes-like


def test_a_sealing_key_knows_its_public_key() -> None:
    key = SealingKey.generate()
    assert key.public == X25519PrivateKey.from_private_bytes(key.private).public_key().public_bytes_raw()
    assert SealingKey(key.private) == key


def test_secrets_stay_out_of_reprs() -> None:
    signing, sealing = SigningKey.generate(), SealingKey.generate()
    assert signing.seed.hex() not in repr(signing) and repr(signing.seed) not in repr(signing)
    assert repr(sealing.private) not in repr(sealing)


def test_a_key_file_holding_a_seed_of_the_wrong_size_is_one_clear_error(tmp_path: Path) -> None:
    wallet = tmp_path / "wallet.json"
    wallet.write_text(json.dumps({"ed25519_seed": "ab" * 31}))
    with pytest.raises(ConfigError, match=r"wallet.json holds no valid key .*delete it"):
        load_or_create_signing_key(wallet)
    node = tmp_path / "node.json"
    node.write_text(json.dumps({"ed25519_seed": "ab" * 32, "x25519_private": "cd" * 16}))
    with pytest.raises(ConfigError, match=r"node.json holds no valid key"):
        load_or_create_node_keys(node)
    assert load_or_create_signing_key(tmp_path / "new.json") == load_or_create_signing_key(tmp_path / "new.json")


def test_a_salt_is_made_once_kept_secret_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "client" / "prefix-salt.json"
    salt = load_or_create_salt(path, "prefix_salt")
    assert len(salt) == SALT_BYTES and load_or_create_salt(path, "prefix_salt") == salt
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_salt(tmp_path / "other.json", "prefix_salt") != salt
    path.write_text(json.dumps({"prefix_salt": "ab" * 16}))
    with pytest.raises(ConfigError, match=r"prefix-salt.json holds a prefix_salt of 16 bytes, not 32; delete it"):
        load_or_create_salt(path, "prefix_salt")
    path.write_text("{")
    with pytest.raises(ConfigError, match=r"prefix-salt.json is unreadable"):
        load_or_create_salt(path, "prefix_salt")
