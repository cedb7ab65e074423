"""Payment-channel vouchers: the cumulative IOU a payer signs off chain and a payee claims on chain.

The cell layout is the contract's, byte for byte (contracts/ABI.md §2): ``0x636f766f`` tag, channel
address, cumulative nanoton as Coins; the payer signs the cell's representation hash with Ed25519.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pytoniq_core.boc.address import Address
from pytoniq_core.boc.builder import Builder
from pytoniq_core.boc.cell import Cell

from cocoon.chain.address import parse_address
from cocoon.errors import BadRequest

VOUCHER_TAG = 0x636F766F
MAX_COINS = (1 << 120) - 1


def voucher_cell(channel: Address | str, cumulative: int) -> Cell:
    """The voucher cell for ``channel`` owing ``cumulative`` nanoton in total; BadRequest if out of range."""
    if not 0 <= cumulative <= MAX_COINS:
        raise BadRequest(f"voucher amount {cumulative} is outside 0..2^120-1 nanoton")
    cell: Cell = (
        Builder().store_uint(VOUCHER_TAG, 32).store_address(parse_address(channel)).store_coins(cumulative).end_cell()
    )
    return cell


def voucher_hash(channel: Address | str, cumulative: int) -> bytes:
    """The 32-byte hash the payer signs (what the contract's ``get_voucher_hash`` returns)."""
    digest: bytes = voucher_cell(channel, cumulative).hash
    return digest


def sign_voucher(private_key: Ed25519PrivateKey | bytes, channel: Address | str, cumulative: int) -> bytes:
    """The payer's 64-byte Ed25519 signature of the voucher; ``private_key`` may be a raw 32-byte seed."""
    key = (
        private_key if isinstance(private_key, Ed25519PrivateKey) else Ed25519PrivateKey.from_private_bytes(private_key)
    )
    return key.sign(voucher_hash(channel, cumulative))


def verify_voucher(
    public_key: Ed25519PublicKey | bytes, channel: Address | str, cumulative: int, signature: bytes
) -> bool:
    """True when ``signature`` is the payer's signature of this exact voucher; False on any mismatch."""
    try:
        key = public_key if isinstance(public_key, Ed25519PublicKey) else Ed25519PublicKey.from_public_bytes(public_key)
        key.verify(signature, voucher_hash(channel, cumulative))
    except (InvalidSignature, ValueError, BadRequest):
        return False
    return True
