"""Payment channels: escrow a payer funds and a payee draws from with the payer's signed vouchers.

One contract code (contracts/ABI.md §2) serves both kinds: ``ClientChannel`` (client pays proxy) and
``WorkerChannel`` (proxy pays worker). Amounts are int nanoton; a claim pays only the cumulative increase.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Self, cast

from pytoniq_core.boc.address import Address
from pytoniq_core.boc.builder import Builder
from pytoniq_core.boc.cell import Cell
from pytoniq_core.tlb.account import StateInit

from cocoon.chain.address import address_text
from cocoon.chain.contracts import (
    TON,
    address_of,
    contract_code,
    new_query_id,
    read_address,
    send_checked,
    state_init_for,
)
from cocoon.chain.toncenter import ToncenterClient, Transaction
from cocoon.chain.wallet import Wallet
from cocoon.errors import BadRequest, PaymentRequired

OP_DEPOSIT = 0x43480001
OP_CLAIM = 0x43480002
OP_START_CLOSE = 0x43480003
OP_WITHDRAW = 0x43480004
OP_PAYOUT = 0x43480011
OP_WITHDRAWN = 0x43480012

EXIT_CODES = {
    200: "only the payer may close or withdraw",
    201: "stale voucher: this cumulative amount was already claimed",
    202: "voucher exceeds the channel's deposit",
    203: "invalid voucher signature",
    204: "the channel is closed",
    205: "the close delay is over: claims are no longer accepted",
    206: "the channel is closing",
    207: "no close was started",
    208: "the close delay is not over yet",
    209: "not enough value attached for gas",
    0xFFFF: "unknown op",
}
# Gas the contract requires: deposit needs amount + 0.01 TON, a claim 0.01 TON; we attach a margin.
DEPOSIT_GAS = 2 * TON // 100
CALL_GAS = 2 * TON // 100


class ChannelRole(IntEnum):
    CLIENT = 0
    WORKER = 1


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    """The immutable half of a channel; it fixes the channel's address."""

    payer: Address
    payee: Address
    payer_key: bytes
    role: ChannelRole
    channel_id: int = 0
    close_delay: int = 3600

    def init_data(self) -> Cell:
        config = (
            Builder()
            .store_address(self.payer)
            .store_address(self.payee)
            .store_bytes(self.payer_key)
            .store_uint(int(self.role), 8)
            .store_uint(self.channel_id, 64)
            .store_uint(self.close_delay, 32)
            .end_cell()
        )
        data: Cell = Builder().store_coins(0).store_coins(0).store_uint(0, 32).store_bit(0).store_ref(config).end_cell()
        return data


@dataclass(frozen=True, slots=True)
class ChannelState:
    """What ``get_channel`` reports; ``close_at`` is a unix time, 0 while the channel is open."""

    payer: Address
    payee: Address
    payer_key: bytes
    role: ChannelRole
    deposit: int
    claimed: int
    close_at: int
    closed: bool

    @property
    def unclaimed(self) -> int:
        return self.deposit - self.claimed


def _body(op: int, query_id: int | None) -> Builder:
    """op and query_id: a fresh query_id unless one is given."""
    body: Builder = Builder().store_uint(op, 32).store_uint(new_query_id() if query_id is None else query_id, 64)
    return body


def deposit_body(amount: int, query_id: int | None = None) -> Cell:
    body: Cell = _body(OP_DEPOSIT, query_id).store_coins(amount).end_cell()
    return body


def claim_body(cumulative: int, signature: bytes, query_id: int | None = None) -> Cell:
    if len(signature) != 64:
        raise BadRequest(f"a voucher signature is 64 bytes, got {len(signature)}")
    body: Cell = _body(OP_CLAIM, query_id).store_coins(cumulative).store_bytes(signature).end_cell()
    return body


def start_close_body(query_id: int | None = None) -> Cell:
    body: Cell = _body(OP_START_CLOSE, query_id).end_cell()
    return body


def withdraw_body(query_id: int | None = None) -> Cell:
    body: Cell = _body(OP_WITHDRAW, query_id).end_cell()
    return body


class PaymentChannel:
    """A payment channel at ``address``; ``for_deploy`` computes the address of a new one."""

    role: ClassVar[ChannelRole | None] = None

    def __init__(self, client: ToncenterClient, address: Address, config: ChannelConfig | None = None) -> None:
        self.client = client
        self.address = address
        self.config = config
        self.state_init: StateInit | None = (
            state_init_for(contract_code("payment_channel"), config.init_data()) if config else None
        )

    @classmethod
    def for_deploy(
        cls,
        client: ToncenterClient,
        *,
        payer: Address,
        payee: Address,
        payer_key: bytes,
        close_delay: int,
        channel_id: int = 0,
        role: ChannelRole | None = None,
    ) -> Self:
        """The channel these parties get; ``role`` defaults to the subclass's (client or worker)."""
        chosen = role if role is not None else cls.role
        if chosen is None:
            raise BadRequest("a PaymentChannel needs a role; use ClientChannel or WorkerChannel")
        if len(payer_key) != 32:
            raise BadRequest(f"payer_key is a 32-byte Ed25519 public key, got {len(payer_key)} bytes")
        config = ChannelConfig(payer, payee, payer_key, chosen, channel_id, close_delay)
        state_init = state_init_for(contract_code("payment_channel"), config.init_data())
        return cls(client, address_of(state_init), config)

    async def deploy(self, wallet: Wallet, amount: int) -> Transaction:
        """Create the channel with a first deposit of ``amount`` nanoton (plus gas) from ``wallet``."""
        if self.state_init is None:
            raise BadRequest("this channel was opened by address; use for_deploy to create one")
        return await self._deposit(wallet, amount, state_init=self.state_init)

    async def top_up(self, wallet: Wallet, amount: int) -> Transaction:
        """Add ``amount`` nanoton to the deposit; anyone may, until a close starts."""
        return await self._deposit(wallet, amount)

    async def claim(self, wallet: Wallet, cumulative: int, signature: bytes) -> Transaction:
        """Submit the payer's voucher; the contract pays ``cumulative - claimed`` to the payee."""
        return await self._send(wallet, claim_body(cumulative, signature), CALL_GAS)

    async def start_close(self, payer: Wallet) -> Transaction:
        """Start the close delay; the payee may still claim until it ends."""
        return await self._send(payer, start_close_body(), CALL_GAS)

    async def withdraw(self, payer: Wallet) -> Transaction:
        """After the close delay, return the whole remaining balance to the payer."""
        return await self._send(payer, withdraw_body(), CALL_GAS)

    async def get_channel(self) -> ChannelState:
        payer, payee, key, role, deposit, claimed, close_at, closed = await self.client.run_get_method(
            self.address, "get_channel"
        )
        return ChannelState(
            payer=read_address(payer),
            payee=read_address(payee),
            payer_key=cast(int, key).to_bytes(32, "big"),
            role=ChannelRole(cast(int, role)),
            deposit=cast(int, deposit),
            claimed=cast(int, claimed),
            close_at=cast(int, close_at),
            closed=bool(closed),
        )

    async def get_channel_config(self) -> tuple[int, int]:
        """``(channel_id, close_delay)`` as the contract stores them."""
        channel_id, close_delay = await self.client.run_get_method(self.address, "get_channel_config")
        return cast(int, channel_id), cast(int, close_delay)

    async def read_genuine(self, *, payee: Address, min_close_delay: int) -> ChannelState:
        """The channel's state, once it is proven to be the shipped contract with canonical init data.

        A contract's address is the hash of its code and initial data, so recomputing it from the shipped code,
        the config the chain reports (payer, payer key, channel id, close delay), ``payee`` and this class's
        role, with deposit and claimed at 0, and finding the same address proves that every nanoton of its
        deposit came in through real deposits. Raises ``PaymentRequired`` (saying what to do) when the address
        differs, the close delay is under ``min_close_delay`` seconds, or an open channel's balance does not
        cover what is unclaimed.
        """
        shown = address_text(self.address)
        state = await self.get_channel()
        channel_id, close_delay = await self.get_channel_config()
        role = self.role if self.role is not None else state.role
        genuine = type(self).for_deploy(
            self.client,
            payer=state.payer,
            payee=payee,
            payer_key=state.payer_key,
            close_delay=close_delay,
            channel_id=channel_id,
            role=role,
        )
        if genuine.address != self.address:
            raise PaymentRequired(
                f"{shown} is not a genuine cocoon payment channel paying {address_text(payee)} (its address does "
                "not follow from the shipped contract code and canonical init data); open one with "
                "`cocoon client deposit`"
            )
        if close_delay < min_close_delay:
            raise PaymentRequired(
                f"channel {shown} has a close delay of {close_delay}s but this network requires at least "
                f"{min_close_delay}s; open a new channel with `cocoon client deposit`"
            )
        if state.close_at or state.closed:
            return state  # a closing channel is refused for that; its balance may already be withdrawn
        balance = await self.client.get_balance(self.address)
        if balance < state.unclaimed:
            raise PaymentRequired(
                f"channel {shown} reports {state.unclaimed} nanoton unclaimed but holds only {balance}; "
                "open a new channel with `cocoon client deposit`"
            )
        return state

    async def get_voucher_hash(self, cumulative: int) -> bytes:
        """The hash the contract expects the payer to sign for ``cumulative``."""
        (digest,) = await self.client.run_get_method(self.address, "get_voucher_hash", [cumulative])
        return cast(int, digest).to_bytes(32, "big")

    async def _deposit(self, wallet: Wallet, amount: int, *, state_init: StateInit | None = None) -> Transaction:
        if amount <= 0:
            raise BadRequest(f"a deposit must be positive, got {amount} nanoton")
        return await self._send(wallet, deposit_body(amount), amount + DEPOSIT_GAS, state_init=state_init)

    async def _send(
        self, wallet: Wallet, body: Cell, value: int, *, state_init: StateInit | None = None
    ) -> Transaction:
        return await send_checked(
            self.client,
            wallet,
            self.address,
            body=body,
            value=value,
            exit_codes=EXIT_CODES,
            state_init=state_init,
        )


class ClientChannel(PaymentChannel):
    """A client's escrow with a proxy: payer = client, payee = proxy."""

    role = ChannelRole.CLIENT


class WorkerChannel(PaymentChannel):
    """A proxy's payout channel to a worker: payer = proxy, payee = worker."""

    role = ChannelRole.WORKER
