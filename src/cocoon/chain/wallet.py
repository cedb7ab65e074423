"""A standard TON wallet (v4r2) driven by an Ed25519 seed: address, signed transfers, deploy on first use.

Every on-chain action cocoon takes (deploys, deposits, claims, owner ops) is an internal message sent
from one of these wallets; ``transfer`` signs, sends, and waits until the wallet's seqno moves.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pytoniq_core.boc.address import Address
from pytoniq_core.boc.builder import Builder
from pytoniq_core.boc.cell import Cell
from pytoniq_core.tlb.account import StateInit

from cocoon.chain.address import address_text, payable_text
from cocoon.chain.toncenter import ToncenterClient
from cocoon.chain.vouchers import TESTNET_GLOBAL_ID
from cocoon.errors import BadRequest, ChainError, ConfigError

# The well-known wallet v4r2 code (as shipped by @ton/ton); its hash is checked at import.
WALLET_V4R2_CODE_BOC64 = (
    "te6cckECFAEAAtQAART/APSkE/S88sgLAQIBIAIDAgFIBAUE+PKDCNcYINMf0x/THwL4I7vyZO1E0NMf0x/T//QE0VFDuvKhUVG68qIF"
    "+QFUEGT5EPKj+AAkpMjLH1JAyx9SMMv/UhD0AMntVPgPAdMHIcAAn2xRkyDXSpbTB9QC+wDoMOAhwAHjACHAAuMAAcADkTDjDQOkyMsf"
    "Essfy/8QERITAubQAdDTAyFxsJJfBOAi10nBIJJfBOAC0x8hghBwbHVnvSKCEGRzdHK9sJJfBeAD+kAwIPpEAcjKB8v/ydDtRNCBAUDX"
    "IfQEMFyBAQj0Cm+hMbOSXwfgBdM/yCWCEHBsdWe6kjgw4w0DghBkc3RyupJfBuMNBgcCASAICQB4AfoA9AQw+CdvIjBQCqEhvvLgUIIQ"
    "cGx1Z4MesXCAGFAEywUmzxZY+gIZ9ADLaRfLH1Jgyz8gyYBA+wAGAIpQBIEBCPRZMO1E0IEBQNcgyAHPFvQAye1UAXKwjiOCEGRzdHKD"
    "HrFwgBhQBcsFUAPPFiP6AhPLassfyz/JgED7AJJfA+ICASAKCwBZvSQrb2omhAgKBrkPoCGEcNQICEekk30pkQzmkD6f+YN4EoAbeBAU"
    "iYcVnzGEAgFYDA0AEbjJftRNDXCx+AA9sp37UTQgQFA1yH0BDACyMoHy//J0AGBAQj0Cm+hMYAIBIA4PABmtznaiaEAga5Drhf/AABmv"
    "HfaiaEAQa5DrhY/AAG7SB/oA1NQi+QAFyMoHFcv/ydB3dIAYyMsFywIizxZQBfoCFMtrEszMyXP7AMhAFIEBCPRR8qcCAHCBAQjXGPoA"
    "0z/IVCBHgQEI9FHyp4IQbm90ZXB0gBjIywXLAlAGzxZQBPoCFMtqEssfyz/Jc/sAAgBsgQEI1xj6ANM/MFIkgQEI9Fnyp4IQZHN0cnB0"
    "gBjIywXLAlAFzxZQA/oCE8tqyx8Syz/Jc/sAAAr0AMntVGliJeU="
)
WALLET_V4R2_CODE_HASH = "feb5ff6820e2ff0d9483e7e0d62c817d846789fb4ae580c878866d959dabd5c0"
WALLET_V4R2_CODE: Cell = Cell.one_from_boc(WALLET_V4R2_CODE_BOC64)
if WALLET_V4R2_CODE.hash.hex() != WALLET_V4R2_CODE_HASH:  # pragma: no cover - a corrupted constant
    raise ConfigError("embedded wallet v4r2 code does not match its well-known hash")

DEFAULT_SUBWALLET_ID = 698983191  # the standard v3/v4 subwallet id on the basechain; see default_subwallet_id
SEND_MODE_PAY_FEES_SEPARATELY = 1
SEND_MODE_IGNORE_ERRORS = 2
DEFAULT_SEND_MODE = SEND_MODE_PAY_FEES_SEPARATELY | SEND_MODE_IGNORE_ERRORS
MESSAGE_TTL_S = 120
EXPIRY_GRACE_S = 10.0  # after a message's expiry, how long a block that took it may still take to be seen


@dataclass(frozen=True, slots=True)
class InternalTransfer:
    """One internal message a wallet sends: ``amount`` nanoton, optional body and StateInit (a deploy)."""

    destination: Address
    amount: int
    body: Cell | None = None
    state_init: StateInit | None = None
    bounce: bool = True
    send_mode: int = DEFAULT_SEND_MODE

    def to_cell(self) -> Cell:
        """The message as TL-B ``Message X`` (int_msg_info, StateInit and body each in a ref)."""
        if self.amount < 0:
            raise BadRequest(f"cannot send a negative amount ({self.amount} nanoton)")
        message = (
            Builder()
            .store_uint(0, 1)  # int_msg_info$0
            .store_bit(1)  # ihr_disabled
            .store_bit(1 if self.bounce else 0)
            .store_bit(0)  # bounced
            .store_address(None)  # src: filled in by the network
            .store_address(self.destination)
            .store_coins(self.amount)
            .store_bit(0)  # no extra currencies
            .store_coins(0)  # ihr_fee
            .store_coins(0)  # fwd_fee
            .store_uint(0, 64)  # created_lt
            .store_uint(0, 32)  # created_at
        )
        return _with_init_and_body(message, self.state_init, self.body or Builder().end_cell())


def _with_init_and_body(message: Builder, state_init: StateInit | None, body: Cell) -> Cell:
    if state_init is None:
        message = message.store_bit(0)
    else:
        message = message.store_bit(1).store_bit(1).store_ref(state_init.serialize())
    cell: Cell = message.store_bit(1).store_ref(body).end_cell()
    return cell


def default_subwallet_id(workchain: int) -> int:
    """The standard subwallet id of a v4 wallet on ``workchain``: 698983191 + workchain (698983190 on the
    masterchain), as @ton/ton's ``WalletContractV4`` (``this.walletId = 698983191 + workchain``) and tonweb
    derive it, so a key opens the same wallet here as in every other wallet app."""
    return DEFAULT_SUBWALLET_ID + workchain


def wallet_state_init(public_key: bytes, subwallet_id: int = DEFAULT_SUBWALLET_ID) -> StateInit:
    """The StateInit of the v4r2 wallet of ``public_key``: its address needs no secret."""
    data = Builder().store_uint(0, 32).store_uint(subwallet_id, 32).store_bytes(public_key).store_bit(0).end_cell()
    return StateInit(code=WALLET_V4R2_CODE, data=data)


def wallet_address(public_key: bytes, *, workchain: int = 0, subwallet_id: int | None = None) -> Address:
    """The address of the v4r2 wallet owned by the Ed25519 ``public_key`` (standard subwallet by default)."""
    subwallet = default_subwallet_id(workchain) if subwallet_id is None else subwallet_id
    return Address((workchain, wallet_state_init(public_key, subwallet).serialize().hash))


class Wallet:
    """A wallet v4r2 owned by a 32-byte Ed25519 seed; deploys itself with its first transfer.

    ``subwallet_id`` defaults to the standard one of ``workchain`` (``default_subwallet_id``).
    """

    def __init__(self, seed: bytes, *, workchain: int = 0, subwallet_id: int | None = None) -> None:
        if len(seed) != 32:
            raise ConfigError(f"a wallet seed is 32 bytes, got {len(seed)}")
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self.seed = seed
        self.public_key: bytes = self._key.public_key().public_bytes_raw()
        self.subwallet_id = default_subwallet_id(workchain) if subwallet_id is None else subwallet_id
        self.state_init = wallet_state_init(self.public_key, self.subwallet_id)
        self.address = Address((workchain, self.state_init.serialize().hash))
        self._lock = asyncio.Lock()

    @classmethod
    def generate(cls) -> Wallet:
        return cls(os.urandom(32))

    def __repr__(self) -> str:
        return f"Wallet({address_text(self.address)})"

    def external_message(
        self, seqno: int, transfers: Sequence[InternalTransfer], *, valid_until: int, deploy: bool = False
    ) -> Cell:
        """The signed external message carrying up to 4 ``transfers`` (with StateInit when ``deploy``), which the
        wallet accepts only before ``valid_until`` (unix time).

        The first message (seqno 0) expires too. Wallet libraries often sign it valid forever (0xFFFFFFFF), so a
        first transfer that was dropped stays replayable for as long as the wallet is undeployed, by anyone who
        saw it; the v4 code checks the expiry for every seqno, so there is no reason to.
        """
        if not 1 <= len(transfers) <= 4:
            raise BadRequest(f"a v4 wallet sends 1 to 4 messages at once, got {len(transfers)}")
        body = Builder().store_uint(self.subwallet_id, 32)
        body = body.store_uint(valid_until, 32).store_uint(seqno, 32).store_uint(0, 8)
        for transfer in transfers:
            body = body.store_uint(transfer.send_mode, 8).store_ref(transfer.to_cell())
        signing = body.end_cell()
        signature = self._key.sign(signing.hash)
        signed = Builder().store_bytes(signature).store_cell(signing).end_cell()
        # ext_in_msg_info$10 src:addr_none dest import_fee:0
        header = Builder().store_uint(0b10, 2).store_address(None).store_address(self.address).store_coins(0)
        return _with_init_and_body(header, self.state_init if deploy else None, signed)

    async def transfer(
        self, client: ToncenterClient, transfers: Sequence[InternalTransfer], *, timeout: float = 60.0
    ) -> int:
        """Sign and send ``transfers`` in one external message and wait until it is applied.

        Returns the wallet's new seqno. Raises ChainError when the wallet cannot cover the amounts or
        the chain refuses the message, UpstreamTimeout when it is not applied within ``timeout`` seconds nor
        before it expired (``MESSAGE_TTL_S``): only then is it certainly dropped.
        """
        async with self._lock:
            state = await client.get_address_information(self.address)
            needed = sum(t.amount for t in transfers)
            if state.balance <= needed:
                testnet = await client.global_id() == TESTNET_GLOBAL_ID
                shown = payable_text(self.address, deployed=state.active, testnet=testnet)
                raise ChainError(
                    f"wallet {shown} holds {state.balance} nanoton but this transfer "
                    f"sends {needed} plus fees; fund the wallet first"
                )
            seqno = await client.get_wallet_seqno(self.address) if state.active else 0
            valid_until = max(state.sync_utime, int(time.time())) + MESSAGE_TTL_S
            message = self.external_message(seqno, transfers, valid_until=valid_until, deploy=not state.active)
            await client.send_boc(message)
            # A message not applied yet may still be until it expires: reporting it dropped any earlier invites
            # a retry that would send the money twice.
            until_expiry = valid_until - time.time() + EXPIRY_GRACE_S
            return await client.wait_for_seqno(self.address, seqno, timeout=max(timeout, until_expiry))

    async def send(
        self,
        client: ToncenterClient,
        destination: Address,
        amount: int,
        *,
        body: Cell | None = None,
        state_init: StateInit | None = None,
        bounce: bool = True,
        timeout: float = 60.0,
    ) -> int:
        """Send one internal message; see ``transfer``."""
        transfer = InternalTransfer(destination, amount, body=body, state_init=state_init, bounce=bounce)
        return await self.transfer(client, [transfer], timeout=timeout)
