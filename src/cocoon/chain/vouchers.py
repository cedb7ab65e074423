"""Payment-channel vouchers: the cumulative IOU a payer signs off chain and a payee claims on chain.

The cell layout is the contract's, byte for byte (contracts/ABI.md §2): ``0x636f766f`` tag, the chain's
global id (config param 19: ``MAINNET_GLOBAL_ID``, ``TESTNET_GLOBAL_ID``; ``ToncenterClient.global_id()``), channel
address, cumulative nanoton as Coins; the payer signs the cell's representation hash with Ed25519. The global id
has no default: a channel has the same address on every chain, so a voucher must say which chain it pays on.
"""

from __future__ import annotations

import functools
import hashlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pytoniq_core.boc.address import Address
from pytoniq_core.boc.builder import Builder
from pytoniq_core.boc.cell import Cell

from cocoon.chain.address import parse_address
from cocoon.crypto.keys import SigningKey, verify_signature
from cocoon.errors import BadRequest

VOUCHER_TAG = 0x636F766F
MAX_COINS = (1 << 120) - 1
MAINNET_GLOBAL_ID = -239  # also @ton/sandbox's default config, hence the local devnet's
TESTNET_GLOBAL_ID = -3


def voucher_cell(channel: Address | str, cumulative: int, *, global_id: int) -> Cell:
    """The voucher cell for ``channel`` on chain ``global_id`` owing ``cumulative`` nanoton in total.

    BadRequest if the amount is outside Coins or the global id outside int32.
    """
    _check_terms(cumulative, global_id)
    cell: Cell = (
        Builder()
        .store_uint(VOUCHER_TAG, 32)
        .store_int(global_id, 32)
        .store_address(parse_address(channel))
        .store_coins(cumulative)
        .end_cell()
    )
    return cell


def voucher_hash(channel: Address | str, cumulative: int, *, global_id: int) -> bytes:
    """The 32-byte hash the payer signs (what the contract's ``get_voucher_hash`` returns on that chain).

    Computed straight from the bits, without building the cell (a proxy hashes two vouchers per payment, and
    pytoniq's builder cost more than the signature check): the cell is ordinary, level 0, with no references,
    so its representation hash is SHA-256 of its two descriptor bytes and its padded data. The data is tag (32
    bits), global id (32), ``addr_std`` (2 + 1 + 8 + 256 = 267) and Coins (a 4-bit byte length, then the
    bytes): 335 + 8n bits, never whole bytes, so one completion bit makes it exactly 42 + n bytes.
    ``test_vouchers`` checks it against the cell for many amounts and channels.
    """
    _check_terms(cumulative, global_id)
    workchain, account = _channel_parts(channel)
    n = (cumulative.bit_length() + 7) // 8
    bits = (VOUCHER_TAG << 32) | (global_id & 0xFFFFFFFF)
    bits = (bits << 3) | 0b100  # addr_std$10, no anycast
    bits = (bits << 8) | (workchain & 0xFF)
    bits = (((bits << 256) | account) << 4) | n
    bits = (((bits << 8 * n) | cumulative) << 1) | 1  # the completion bit
    descriptors = bytes((0, 2 * (41 + n) + 1))  # refs and level; ceil(bits/8) + floor(bits/8)
    return hashlib.sha256(descriptors + bits.to_bytes(42 + n, "big")).digest()


def _check_terms(cumulative: int, global_id: int) -> None:
    """BadRequest if the amount is outside Coins or the global id outside int32."""
    if not 0 <= cumulative <= MAX_COINS:
        raise BadRequest(f"voucher amount {cumulative} is outside 0..2^120-1 nanoton")
    if not -(1 << 31) <= global_id < 1 << 31:
        raise BadRequest(f"global id {global_id} is not an int32 (mainnet is -239, testnet -3)")


@functools.lru_cache(maxsize=4096)
def _channel_text_parts(channel: str) -> tuple[int, int]:
    return _address_parts(parse_address(channel))


def _address_parts(address: Address) -> tuple[int, int]:
    return address.wc, int.from_bytes(address.hash_part, "big")


def _channel_parts(channel: Address | str) -> tuple[int, int]:
    """The workchain and account id of ``channel`` (texts parsed once: a proxy sees the same few often)."""
    return _channel_text_parts(channel) if isinstance(channel, str) else _address_parts(channel)


def sign_voucher(
    private_key: SigningKey | Ed25519PrivateKey | bytes, channel: Address | str, cumulative: int, *, global_id: int
) -> bytes:
    """The payer's 64-byte Ed25519 signature of the voucher. ``private_key``: a ``SigningKey`` (what the hot
    paths pass: its key is expanded once), an OpenSSL key, or a raw 32-byte seed (expanded for this call)."""
    key = SigningKey(private_key) if isinstance(private_key, bytes) else private_key
    return key.sign(voucher_hash(channel, cumulative, global_id=global_id))


def verify_voucher(
    public_key: Ed25519PublicKey | bytes, channel: Address | str, cumulative: int, signature: bytes, *, global_id: int
) -> bool:
    """True when ``signature`` is the payer's signature of this exact voucher on chain ``global_id``; False on
    any mismatch (another key, channel, amount or chain)."""
    if isinstance(public_key, Ed25519PublicKey):
        public_key = public_key.public_bytes_raw()
    try:
        message = voucher_hash(channel, cumulative, global_id=global_id)
    except (ValueError, BadRequest):
        return False
    return verify_signature(public_key, message, signature)
