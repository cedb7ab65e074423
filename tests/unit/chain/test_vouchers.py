"""Vouchers: the cell layout the payment-channel contract rebuilds, and Ed25519 signatures over it.

The fixed vectors come from the contracts' own build (contracts/test-vectors.json, made with @ton/core),
so a match here means the contract accepts what Python signs.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pytoniq_core.boc.address import Address

from cocoon.chain import (
    MAINNET_GLOBAL_ID,
    TESTNET_GLOBAL_ID,
    sign_voucher,
    verify_voucher,
    voucher_cell,
    voucher_hash,
)
from cocoon.chain.vouchers import MAX_COINS, VOUCHER_TAG
from cocoon.crypto import SigningKey
from cocoon.errors import BadRequest

VECTORS = Path(__file__).resolve().parents[3] / "contracts" / "test-vectors.json"
CHANNEL = Address("0:79d1870277478058558daf475cf709a91b96b0ae7ea422fea0e5f6bd55564976")


@pytest.fixture(scope="module")
def vectors() -> dict[str, Any]:
    if not VECTORS.exists():
        pytest.skip("contracts/test-vectors.json is not built yet (cd contracts && npm run build)")
    return dict(json.loads(VECTORS.read_text()))


def test_voucher_cell_is_tag_then_global_id_then_channel_then_cumulative() -> None:
    body = voucher_cell(CHANNEL, 1_500_000_000, global_id=TESTNET_GLOBAL_ID).begin_parse()

    assert body.load_uint(32) == VOUCHER_TAG == 0x636F766F
    assert body.load_int(32) == TESTNET_GLOBAL_ID == -3
    assert body.load_address() == CHANNEL
    assert body.load_coins() == 1_500_000_000
    assert body.remaining_bits == 0 and body.remaining_refs == 0


def test_voucher_matches_the_contract_build_byte_for_byte(vectors: dict[str, Any]) -> None:
    channel = vectors["channel"]
    voucher = channel["voucher"]
    seed = bytes.fromhex(vectors["key"]["seedHex"])
    cumulative = int(voucher["cumulative"])

    global_id = int(voucher["globalId"])

    assert global_id == MAINNET_GLOBAL_ID == -239
    assert channel["address"] == f"0:{CHANNEL.hash_part.hex()}"
    assert voucher_hash(CHANNEL, cumulative, global_id=global_id).hex() == voucher["cellHashHex"]
    assert sign_voucher(seed, CHANNEL, cumulative, global_id=global_id).hex() == voucher["signatureHex"]
    assert sign_voucher(SigningKey(seed), CHANNEL, cumulative, global_id=global_id).hex() == voucher["signatureHex"]
    assert verify_voucher(
        bytes.fromhex(vectors["key"]["publicKeyHex"]),
        CHANNEL,
        cumulative,
        bytes.fromhex(voucher["signatureHex"]),
        global_id=global_id,
    )


def test_signature_round_trips_and_binds_channel_and_amount() -> None:
    seed = os.urandom(32)
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    main = MAINNET_GLOBAL_ID
    signature = sign_voucher(seed, CHANNEL, 42, global_id=main)
    other_channel = Address((0, bytes(32)))

    assert verify_voucher(public, CHANNEL, 42, signature, global_id=main)
    assert verify_voucher(public, CHANNEL.to_str(), 42, signature, global_id=main)
    assert not verify_voucher(public, CHANNEL, 43, signature, global_id=main)
    assert not verify_voucher(public, other_channel, 42, signature, global_id=main)
    assert not verify_voucher(os.urandom(32), CHANNEL, 42, signature, global_id=main)
    assert not verify_voucher(public, CHANNEL, 42, signature[:63], global_id=main)


def test_a_testnet_voucher_does_not_verify_for_the_mainnet_channel_at_the_same_address() -> None:
    seed = os.urandom(32)
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    on_testnet = sign_voucher(seed, CHANNEL, 42, global_id=TESTNET_GLOBAL_ID)

    assert verify_voucher(public, CHANNEL, 42, on_testnet, global_id=TESTNET_GLOBAL_ID)
    assert not verify_voucher(public, CHANNEL, 42, on_testnet, global_id=MAINNET_GLOBAL_ID)
    assert voucher_hash(CHANNEL, 42, global_id=TESTNET_GLOBAL_ID) != voucher_hash(
        CHANNEL, 42, global_id=MAINNET_GLOBAL_ID
    )


def test_the_global_id_has_no_default() -> None:
    with pytest.raises(TypeError):
        sign_voucher(os.urandom(32), CHANNEL, 42)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        voucher_hash(CHANNEL, 42)  # type: ignore[call-arg]


def test_amount_outside_coins_range_or_global_id_outside_int32_is_refused() -> None:
    with pytest.raises(BadRequest):
        voucher_cell(CHANNEL, -1, global_id=MAINNET_GLOBAL_ID)
    with pytest.raises(BadRequest):
        voucher_cell(CHANNEL, 1 << 120, global_id=MAINNET_GLOBAL_ID)
    with pytest.raises(BadRequest):
        voucher_cell(CHANNEL, 1, global_id=1 << 31)
    voucher_cell(CHANNEL, (1 << 120) - 1, global_id=MAINNET_GLOBAL_ID)


def test_the_voucher_hash_computed_from_bits_is_the_cells_hash() -> None:
    rng = random.Random(7)
    amounts = [0, 1, 255, 256, 65_535, 65_536, MAX_COINS, *(rng.getrandbits(rng.randrange(1, 121)) for _ in range(300))]
    for cumulative in amounts:
        workchain = rng.choice([0, -1])
        channel = Address((workchain, rng.randbytes(32)))
        global_id = rng.choice([MAINNET_GLOBAL_ID, TESTNET_GLOBAL_ID, -(1 << 31), (1 << 31) - 1, 0])
        expected = voucher_cell(channel, cumulative, global_id=global_id).hash
        for form in (channel, channel.to_str(is_bounceable=True), f"{channel.wc}:{channel.hash_part.hex()}"):
            assert voucher_hash(form, cumulative, global_id=global_id) == expected, (form, cumulative, global_id)
    with pytest.raises(BadRequest, match="not a TON address"):
        voucher_hash("0:nothex", 1, global_id=MAINNET_GLOBAL_ID)
    with pytest.raises(BadRequest, match="outside"):
        voucher_hash(CHANNEL, MAX_COINS + 1, global_id=MAINNET_GLOBAL_ID)
