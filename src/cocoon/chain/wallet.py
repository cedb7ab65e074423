"""A standard TON wallet (v4r2) driven by an Ed25519 seed: address, signed transfers, deploy on first use.

Every on-chain action cocoon takes (deploys, deposits, claims, owner ops) is an internal message sent
from one of these wallets; ``transfer`` signs, sends, waits until the wallet's seqno moves and finds the
wallet's transaction for the message; with an ``Outbox`` a retried transfer never sends twice.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pytoniq_core.boc.address import Address
from pytoniq_core.boc.builder import Builder
from pytoniq_core.boc.cell import Cell
from pytoniq_core.boc.slice import Slice
from pytoniq_core.tlb.account import StateInit

from cocoon.chain.address import address_text, payable_text, raw_address
from cocoon.chain.outbox import Outbox, PendingMessage
from cocoon.chain.toncenter import ToncenterClient, Transaction, boc_bytes
from cocoon.chain.vouchers import TESTNET_GLOBAL_ID
from cocoon.crypto.keys import SigningKey
from cocoon.errors import BadRequest, ChainError, ChainUnavailable, ConfigError, UpstreamTimeout

log = logging.getLogger(__name__)

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

    ``subwallet_id`` defaults to the standard one of ``workchain`` (``default_subwallet_id``). With an
    ``outbox`` (the key's file beside it, see ``outbox``), a transfer interrupted before its outcome was known
    is resumed by the next one instead of being sent twice.
    """

    def __init__(
        self,
        seed: bytes,
        *,
        workchain: int = 0,
        subwallet_id: int | None = None,
        outbox: Outbox | None = None,
        message_ttl: int = MESSAGE_TTL_S,
    ) -> None:
        if len(seed) != 32:
            raise ConfigError(f"a wallet seed is 32 bytes, got {len(seed)}")
        self.signing = SigningKey(seed)  # signs its messages, and a proxy's vouchers to workers
        self.seed = seed
        self.public_key: bytes = self.signing.public
        self.subwallet_id = default_subwallet_id(workchain) if subwallet_id is None else subwallet_id
        self.state_init = wallet_state_init(self.public_key, self.subwallet_id)
        self.address = Address((workchain, self.state_init.serialize().hash))
        self.outbox = outbox
        self.message_ttl = message_ttl  # seconds each message stays valid (and may still land)
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
        return self._wrap(self.signed_body(seqno, transfers, valid_until=valid_until), deploy=deploy)

    def signed_body(self, seqno: int, transfers: Sequence[InternalTransfer], *, valid_until: int) -> Cell:
        """The body of the external message: signature, subwallet id, expiry, seqno, op 0 and the transfers."""
        if not 1 <= len(transfers) <= 4:
            raise BadRequest(f"a v4 wallet sends 1 to 4 messages at once, got {len(transfers)}")
        body = Builder().store_uint(self.subwallet_id, 32)
        body = body.store_uint(valid_until, 32).store_uint(seqno, 32).store_uint(0, 8)
        for transfer in transfers:
            body = body.store_uint(transfer.send_mode, 8).store_ref(transfer.to_cell())
        signing = body.end_cell()
        signature = self.signing.sign(signing.hash)
        signed: Cell = Builder().store_bytes(signature).store_cell(signing).end_cell()
        return signed

    def _wrap(self, signed: Cell, *, deploy: bool) -> Cell:
        # ext_in_msg_info$10 src:addr_none dest import_fee:0
        header = Builder().store_uint(0b10, 2).store_address(None).store_address(self.address).store_coins(0)
        return _with_init_and_body(header, self.state_init if deploy else None, signed)

    async def transfer(
        self, client: ToncenterClient, transfers: Sequence[InternalTransfer], *, timeout: float = 60.0
    ) -> Sent:
        """Sign and send ``transfers`` in one external message, wait until it is applied, and return the
        wallet's transaction for it (found by the message's own hash among the wallet's transactions).

        Raises ChainError when the wallet cannot cover the amounts or the chain refuses the message,
        UpstreamTimeout when it is not applied within ``timeout`` seconds nor before it expired
        (``MESSAGE_TTL_S``): only then is it certainly dropped. With an outbox, a message whose outcome an
        earlier call never learnt is settled first (see ``outbox``): the same transfer is not sent twice.
        """
        intent = transfer_intent(transfers)
        async with self._lock, self._outbox_held():
            earlier = await self._settle_pending(client, intent, timeout)
            if earlier is not None:
                return earlier
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
            valid_until = max(state.sync_utime, int(time.time())) + self.message_ttl
            body = self.signed_body(seqno, transfers, valid_until=valid_until)
            pending = PendingMessage(
                intent=intent,
                seqno=seqno,
                valid_until=valid_until,
                boc=base64.b64encode(boc_bytes(self._wrap(body, deploy=not state.active))).decode(),
                body_hash=body.hash.hex(),
                wallet_lt=state.last_lt,
                description=describe(transfers),
            )
            if self.outbox is not None:
                self.outbox.record(pending)  # before sending: from here on the outcome is unknown
            return await self._see_through(client, pending, timeout, resumed=False)

    async def _see_through(
        self, client: ToncenterClient, pending: PendingMessage, timeout: float, *, resumed: bool
    ) -> Sent:
        """Send ``pending`` (again, if resumed: the chain applies one seqno once) and wait for its outcome."""
        try:
            await client.send_boc(base64.b64decode(pending.boc))
        except ChainUnavailable:
            raise  # it may have arrived all the same: the outbox keeps it for the next try
        except ChainError:
            if not resumed:
                self._forget()  # refused outright: it can never be applied
                raise
            # A resent message the wallet already took is refused (its seqno moved on); the wait tells.
        # A message not applied yet may still be until it expires: reporting it dropped any earlier invites
        # a retry that would send the money twice.
        until_expiry = pending.valid_until - time.time() + EXPIRY_GRACE_S
        try:
            seqno = await client.wait_for_seqno(self.address, pending.seqno, timeout=max(timeout, until_expiry))
        except UpstreamTimeout as exc:
            self._forget()
            raise UpstreamTimeout(
                f"the wallet never applied the message ({pending.description}) and it has expired: nothing "
                f"was sent; run the command again. ({exc})"
            ) from exc
        transaction = await self._transaction_of(client, pending, timeout)
        self._forget()
        if transaction is None:
            raise ChainError(
                f"wallet {address_text(self.address)} moved past seqno {pending.seqno} with another message than "
                f"ours ({pending.description}); is the same key used elsewhere?"
            )
        return Sent(seqno, transaction, resumed)

    async def _transaction_of(
        self, client: ToncenterClient, pending: PendingMessage, timeout: float
    ) -> Transaction | None:
        def ours(tx: Transaction) -> bool:
            return tx.in_msg is not None and tx.in_msg.source is None and tx.in_msg.body.hash.hex() == pending.body_hash

        try:
            return await client.wait_for_transaction(
                self.address, after_lt=pending.wallet_lt, match=ours, timeout=timeout
            )
        except UpstreamTimeout:
            return None

    async def _settle_pending(self, client: ToncenterClient, intent: str, timeout: float) -> Sent | None:
        """Resolve a message an earlier transfer left in the outbox; its ``Sent`` when it did what ``intent``
        asks, so the caller sends nothing."""
        pending = self.outbox.pending() if self.outbox is not None else None
        if pending is None:
            return None
        if await client.get_wallet_seqno(self.address) > pending.seqno:
            transaction = await self._transaction_of(client, pending, timeout)
            self._forget()
            if transaction is not None and pending.intent == intent:
                log.warning("the %s sent earlier has landed; it is not sent again", pending.description)
                return Sent(pending.seqno + 1, transaction, resumed=True)
            return None
        if time.time() > pending.valid_until + EXPIRY_GRACE_S:
            log.info("the %s sent earlier expired unapplied; it can no longer land", pending.description)
            self._forget()
            return None
        if pending.intent == intent:
            log.warning("resuming the %s sent earlier, whose outcome was not known", pending.description)
            return await self._see_through(client, pending, timeout, resumed=True)
        log.warning("waiting for the %s sent earlier to land or expire before sending another", pending.description)
        with contextlib.suppress(UpstreamTimeout):
            await self._see_through(client, pending, timeout, resumed=True)
        return None

    def _outbox_held(self) -> contextlib.AbstractAsyncContextManager[None]:
        return self.outbox.locked() if self.outbox is not None else contextlib.nullcontext()

    def _forget(self) -> None:
        if self.outbox is not None:
            self.outbox.clear()

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
    ) -> Sent:
        """Send one internal message; see ``transfer``."""
        transfer = InternalTransfer(destination, amount, body=body, state_init=state_init, bounce=bounce)
        return await self.transfer(client, [transfer], timeout=timeout)


@dataclass(frozen=True, slots=True)
class Sent:
    """A transfer's outcome: the wallet's seqno after it and the wallet's transaction that sent it;
    ``resumed`` when the message was one an earlier, interrupted call had signed."""

    seqno: int
    transaction: Transaction
    resumed: bool = False


def transfer_intent(transfers: Sequence[InternalTransfer]) -> str:
    """What ``transfers`` do, as a hex digest: destinations, amounts, flags, StateInits and bodies, with each
    body's ``query_id`` (the 64 bits after its op) left out, since every new message gets a fresh one."""
    digest = hashlib.sha256()
    for t in transfers:
        digest.update(f"{raw_address(t.destination)}|{t.amount}|{t.bounce}|{t.send_mode}|".encode())
        digest.update(t.state_init.serialize().hash if t.state_init is not None else b"-")
        digest.update(_body_less_query_id(t.body).hash if t.body is not None else b"-")
    return digest.hexdigest()


def describe(transfers: Sequence[InternalTransfer]) -> str:
    return "; ".join(f"{t.amount} nanoton to {address_text(t.destination)}" for t in transfers)


def _body_less_query_id(body: Cell) -> Cell:
    reader = Slice.from_cell(body)
    if reader.remaining_bits < 96:
        return body
    op = reader.load_uint(32)
    reader.skip_bits(64)
    cell: Cell = Builder().store_uint(op, 32).store_slice(reader).end_cell()
    return cell
