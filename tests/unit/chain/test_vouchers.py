"""Vouchers: the cell layout the payment-channel contract rebuilds, and Ed25519 signatures over it.

The fixed vectors come from the contracts' own build (contracts/test-vectors.json, made with @ton/core),
so a match here means the contract accepts what Python signs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pytoniq_core.boc.address import Address

from cocoon.chain import sign_voucher, verify_voucher, voucher_cell, voucher_hash
from cocoon.chain.vouchers import VOUCHER_TAG
from cocoon.errors import BadRequest

VECTORS = Path(__file__).resolve().parents[3] / "contracts" / "test-vectors.json"
CHANNEL = Address("0:43aba7441f37145512276e37a977bbca9451067ce9c77d9014324efef4b65afc")


@pytest.fixture(scope="module")
def vectors() -> dict[str, Any]:
    if not VECTORS.exists():
        pytest.skip("contracts/test-vectors.json is not built yet (cd contracts && npm run build)")
    return dict(json.loads(VECTORS.read_text()))


def test_voucher_cell_is_tag_then_channel_then_cumulative() -> None:
    body = voucher_cell(CHANNEL, 1_500_000_000).begin_parse()

    assert body.load_uint(32) == VOUCHER_TAG == 0x636F766F
    assert body.load_address() == CHANNEL
    assert body.load_coins() == 1_500_000_000
    assert body.remaining_bits == 0 and body.remaining_refs == 0


def test_voucher_matches_the_contract_build_byte_for_byte(vectors: dict[str, Any]) -> None:
    channel = vectors["channel"]
    voucher = channel["voucher"]
    seed = bytes.fromhex(vectors["key"]["seedHex"])
    cumulative = int(voucher["cumulative"])

    assert channel["address"] == f"0:{CHANNEL.hash_part.hex()}"
    assert voucher_hash(CHANNEL, cumulative).hex() == voucher["cellHashHex"]
    assert sign_voucher(seed, CHANNEL, cumulative).hex() == voucher["signatureHex"]
    assert verify_voucher(
        bytes.fromhex(vectors["key"]["publicKeyHex"]),
        CHANNEL,
        cumulative,
        bytes.fromhex(voucher["signatureHex"]),
    )


def test_signature_round_trips_and_binds_channel_and_amount() -> None:
    seed = os.urandom(32)
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    signature = sign_voucher(seed, CHANNEL, 42)
    other_channel = Address((0, bytes(32)))

    assert verify_voucher(public, CHANNEL, 42, signature)
    assert verify_voucher(public, CHANNEL.to_str(), 42, signature)
    assert not verify_voucher(public, CHANNEL, 43, signature)
    assert not verify_voucher(public, other_channel, 42, signature)
    assert not verify_voucher(os.urandom(32), CHANNEL, 42, signature)
    assert not verify_voucher(public, CHANNEL, 42, signature[:63])


def test_amount_outside_coins_range_is_refused() -> None:
    with pytest.raises(BadRequest):
        voucher_cell(CHANNEL, -1)
    with pytest.raises(BadRequest):
        voucher_cell(CHANNEL, 1 << 120)
    voucher_cell(CHANNEL, (1 << 120) - 1)
