"""The proxy's cashier: reserve a request's maximum cost before routing, charge each receipt, take vouchers.

Client debits = worker credits + proxy fees holds by construction: a charge's cost splits into the worker's
share and the fee (``cocoon.chain.pricing.split``) and both move only when the client's voucher pays it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import Histogram
from pytoniq_core.boc.address import Address
from sqlalchemy import Select, bindparam, func, select

from cocoon.chain import ClientChannel
from cocoon.chain.address import raw_address
from cocoon.chain.pricing import Prices, cost_of, max_cost, split
from cocoon.crypto import verify_signature
from cocoon.errors import BadRequest, ChainError, ModelNotFound, NotFound, PaymentRequired, Unauthorized
from cocoon.protocol import JobEnd, JobRequest, Register, pack
from cocoon.protocol.money import ReceiptRejection, VoucherSubmission, payer_message, rejection_message
from cocoon.proxy.money.cashier import Reservation
from cocoon.proxy.money.chain_handle import ChainHandle
from cocoon.proxy.money.journal import ChargeEntry, Journal, VoucherEntry
from cocoon.proxy.money.ledger import (
    INVALID,
    OWED,
    PAID,
    REJECTED,
    Charge,
    ClientAccount,
    WorkerHold,
    as_utc,
)
from cocoon.proxy.money.statements import account_json
from cocoon.proxy.store import Store
from cocoon.store import table_of

log = logging.getLogger("cocoon.proxy.billing")

VOUCHER_SECONDS = Histogram("cocoon_proxy_voucher_seconds", "time to verify, store and commit one client voucher")
DEPOSIT_RECHECK_S = 1.0


class Billing:
    """Reservations in memory, everything that moves money in the store, committed before it is acknowledged."""

    def __init__(
        self,
        store: Store,
        chain: ChainHandle,
        *,
        unpaid_grace_s: float,
        credit_limit: int,
        channel_recheck_s: float = 30.0,
    ) -> None:
        self.store = store
        self.chain = chain
        self.unpaid_grace_s = unpaid_grace_s
        self.credit_limit = credit_limit
        self.channel_recheck_s = channel_recheck_s
        self._reservations: dict[str, set[Reservation]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.journal = Journal(store, chain)

    def lock(self, channel: str) -> asyncio.Lock:
        """This proxy's lock on ``channel``: one admission or money movement on it at a time."""
        return self._locks.setdefault(channel, asyncio.Lock())

    async def prices(self, model: str) -> Prices:
        """The registry's prices for ``model`` (cached for 30 s); ModelNotFound when it has none."""
        return await self.chain.prices.prices(model)

    async def admit(self, job: JobRequest, candidates: Sequence[Register]) -> Reservation:
        """Check who pays and reserve the request's maximum cost; PaymentRequired says how to fix a refusal."""
        if job.payer is None:
            raise PaymentRequired(
                "this proxy bills in TON: requests must name a client channel; open one with "
                "`cocoon client deposit` and run the sidecar with chain_url set"
            )
        channel = raw_address(job.payer.channel)
        prices = await self.prices(job.model)
        coefficient = max(w.price_coefficient for w in candidates)
        # The sealed request bounds its own prompt: a token is at least one byte of plaintext.
        amount = max_cost(len(job.ciphertext), job.max_tokens, prices, coefficient)
        async with self.lock(channel):
            # Reservations are read before the owed charges: a request ends by committing its charge and only
            # then giving back its reservation, so a request finishing meanwhile is counted at least once. Read
            # the other way round, it could end in between and be counted nowhere (the credit limit overshot).
            reserved = self.reserved(channel)
            account, owed, unpaid = await self._standing(channel)
            if not verify_signature(account.payer_key, payer_message(channel, job.request_id), job.payer.signature):
                raise Unauthorized(f"the request is not signed by the payer key of channel {channel}")
            if account.closing:
                raise PaymentRequired(f"channel {channel} is closing; open a new one with `cocoon client deposit`")
            if unpaid:
                raise PaymentRequired(
                    f"channel {channel} has {unpaid} receipts unpaid for over {self.unpaid_grace_s:g}s; the "
                    "client must pay them with a voucher (POST /v1/vouchers) or reject them before new requests"
                )
            free = self._free(account)
            age = time.time() - as_utc(account.checked_at).timestamp()
            # Re-read the chain when short (a top-up), and now and then anyway (a close or withdrawal).
            if (free < amount and age > DEPOSIT_RECHECK_S) or age > self.channel_recheck_s:
                account = await self._refresh_deposit(channel)
                if account.closing:
                    raise PaymentRequired(f"channel {channel} is closing; open a new one with `cocoon client deposit`")
                free = self._free(account)
            if free < amount:
                raise PaymentRequired(
                    f"channel {channel} has {free} nanoton free of its {account.deposit} nanoton deposit "
                    f"({max(account.charged, account.vouchered)} spent, {self.reserved(channel)} reserved) "
                    f"but this request may cost up to {amount} nanoton; top up with "
                    f"`cocoon client deposit --amount <TON>` or lower max_tokens"
                )
            at_risk = reserved + owed + account.rejected
            if at_risk + amount > self.credit_limit:
                raise PaymentRequired(
                    f"channel {channel} would have {at_risk + amount} nanoton at risk with this request "
                    f"({reserved} reserved, {owed} owed, {account.rejected} in receipts it rejected) "
                    f"but this proxy's credit limit is {self.credit_limit}; pay owed receipts, wait for requests "
                    "in flight, lower max_tokens, or open a new channel with `cocoon client deposit`"
                )
            reservation = Reservation(channel, amount, time.monotonic() + job.timeout + 60)
            self._reservations.setdefault(channel, set()).add(reservation)
        return reservation

    def reserved(self, channel: str) -> int:
        """Nanoton held by this channel's requests in flight."""
        held = self._reservations.get(channel)
        if not held:
            return 0
        now = time.monotonic()
        for lost in [r for r in held if r.expires < now]:
            held.discard(lost)
        return sum(r.amount for r in held)

    def release(self, reservation: Reservation) -> None:
        """Give back what ``reservation`` held; idempotent."""
        held = self._reservations.get(reservation.channel)
        if held is not None:
            held.discard(reservation)
            if not held:
                del self._reservations[reservation.channel]

    async def on_receipt(self, reservation: Reservation, worker: Register, end: JobEnd, valid: bool) -> None:
        """Store the receipt and its charge (owed by the client) before the client sees the receipt."""
        r = end.receipt
        try:
            prices = await self.prices(r.model)
        except ModelNotFound:  # a receipt for a model nobody priced cannot be charged
            prices, valid = Prices(0, 0, 0), False
        coefficient = worker.price_coefficient
        cost = cost_of(r.prompt_tokens, r.cached_tokens, r.completion_tokens, prices, coefficient)
        reason = "" if valid else "the proxy found the receipt's signature invalid"
        if valid and reservation.charged + cost.total > reservation.amount:
            # No honest receipt exceeds what admission reserved: the worker claims more work than was asked.
            valid = False
            reason = (
                f"the receipt costs {cost.total} nanoton but the request could cost at most {reservation.amount} "
                f"({reservation.charged} already charged): the worker overstated its token counts"
            )
            log.warning("receipt above its reservation receipt=%s worker=%s", r.receipt_id, worker.worker_id)
        share, fee = split(cost.total, self.chain.params.proxy_fee_bps)
        payout = raw_address(worker.payout_address)
        charge = Charge(
            receipt_id=r.receipt_id,
            request_id=r.request_id,
            client_channel=reservation.channel,
            worker_channel=self.chain.worker_channel(payout),
            worker_payout=payout,
            worker_id=worker.worker_id,
            model=r.model,
            coefficient=coefficient,
            prompt_cost=cost.prompt,
            cached_cost=cost.cached,
            completion_cost=cost.completion,
            cost=cost.total,
            worker_share=share,
            fee=fee,
            status=OWED if valid else INVALID,
            reason=reason,
            receipt=pack(end),
        )
        await self.journal.write(ChargeEntry(charge))
        reservation.receipts.append(r.receipt_id)
        if valid:
            reservation.charged += cost.total

    async def accept_voucher(self, sub: VoucherSubmission) -> dict[str, object]:
        """Take the client's next cumulative voucher; it must pay exactly the listed owed receipts. In the same
        transaction (a group commit, see ``journal``) the receipts become paid and each worker is vouchered its
        share; the answer comes only after that commit."""
        with VOUCHER_SECONDS.time():
            signature = _hex(sub.signature, "signature")
            entry = VoucherEntry(raw_address(sub.channel), sub.cumulative, signature, sub.receipt_ids)
            return self._account_json(await self.journal.write(entry))

    async def reject(self, rejection: ReceiptRejection) -> dict[str, object]:
        """The client refused a receipt that did not verify: the charge is dropped, nobody is paid."""
        channel = raw_address(rejection.channel)
        signature = _hex(rejection.signature, "signature")
        async with self.lock(channel), self.store.writing(), self.store.session() as session:
            # Row locks: this proxy's channel lock does not reach the other replicas sharing a PostgreSQL.
            account = await session.get(ClientAccount, channel, with_for_update=True)
            charge = await session.get(Charge, rejection.receipt_id)
            if account is None or charge is None or charge.client_channel != channel:
                raise NotFound(f"receipt {rejection.receipt_id} was never charged to channel {channel}")
            if not verify_signature(account.payer_key, rejection_message(channel, charge.receipt_id), signature):
                raise Unauthorized(f"the rejection is not signed by the payer key of channel {channel}")
            if charge.status == OWED:
                charge.status, charge.reason = REJECTED, rejection.reason
                account.charged -= charge.cost
                account.rejected += charge.cost  # rejections use the credit limit up, for good
                log.warning("receipt rejected by client receipt=%s worker=%s", charge.receipt_id, charge.worker_id)
            elif charge.status == PAID:
                raise BadRequest(f"receipt {charge.receipt_id} is already paid by a voucher")
            await session.commit()
            return self._account_json(account)

    async def withhold(self, worker_id: str, since: datetime, reason: str) -> None:
        """Keep back ``worker_id``'s share of charges made since ``since`` that no client voucher has paid yet,
        and of every later one (see ``Cashier.withhold``); a second hold keeps the earlier ``since``."""
        async with self.store.writing(), self.store.session() as session:
            await session.execute(
                self.store.insert_if_absent(WorkerHold).values(
                    worker_id=worker_id, since=since, reason=reason, withheld=0, created_at=datetime.now(UTC)
                )
            )
            await session.commit()
        log.warning("worker earnings withheld worker=%s since=%s", worker_id, since.isoformat())

    def _free(self, account: ClientAccount) -> int:
        return account.deposit - max(account.charged, account.vouchered) - self.reserved(account.channel)

    def _account_json(self, account: ClientAccount) -> dict[str, object]:
        return account_json(account, self.reserved(account.channel))

    async def _standing(self, channel: str) -> tuple[ClientAccount, int, int]:
        """The channel's account, what it owes, and how many receipts it has left unpaid past the grace period:
        one prepared query on the request path (the chain is read first when the channel is new to this proxy)."""
        cutoff = datetime.now(UTC) - timedelta(seconds=self.unpaid_grace_s)
        params = {"channel": channel, "cutoff": cutoff}
        row = await self.store.transact(
            lambda session: session.connection().execute(_STANDING, params).first(), write=False
        )
        if row is None:  # new here, so nothing owed: the journal books no charge for a channel without its account
            return await self._refresh_deposit(channel), 0, 0
        fields = row._asdict()
        owed, unpaid = int(fields.pop("owed") or 0), int(fields.pop("unpaid") or 0)
        return ClientAccount(**fields), owed, unpaid

    async def _refresh_deposit(self, channel: str) -> ClientAccount:
        """Read the channel from the chain (first use, or a top-up the proxy has not seen yet)."""
        contract = ClientChannel(self.chain.toncenter, Address(channel))
        try:
            # Only the shipped code with canonical init data: a forged contract could report any deposit.
            state = await contract.read_genuine(
                payee=self.chain.wallet.address, min_close_delay=self.chain.params.close_delay
            )
        except ChainError as exc:
            raise PaymentRequired(
                f"cannot read a client channel at {channel} on chain ({exc.message}); "
                "if it does not exist yet, open one with `cocoon client deposit`"
            ) from exc
        async with self.store.writing(), self.store.session() as session:
            await session.execute(
                self.store.insert_if_absent(ClientAccount).values(
                    channel=channel, payer_key=state.payer_key, deposit=0, charged=0, vouchered=0,
                    voucher_signature=b"", claimed=0, rejected=0, closing=0, checked_at=datetime.now(UTC),
                )
            )  # fmt: skip
            account = await session.get(ClientAccount, channel, with_for_update=True)
            assert account is not None
            account.deposit, account.claimed = state.deposit, state.claimed
            account.closing = state.close_at or int(state.closed)
            account.checked_at = datetime.now(UTC)
            await session.commit()
        return account

    async def owed(self, channel: str) -> list[dict[str, object]]:
        """The receipts ``channel`` owes, oldest first, each with its cost and the signed receipt (msgpack hex)."""
        async with self.store.session() as session:
            rows = (
                await session.scalars(
                    select(Charge)
                    .where(Charge.client_channel == channel, Charge.status == OWED)
                    .order_by(Charge.created_at)
                )
            ).all()
        now = datetime.now(UTC)
        return [
            {
                "receipt_id": c.receipt_id,
                "request_id": c.request_id,
                "worker_id": c.worker_id,
                "cost": c.cost,
                "coefficient": c.coefficient,
                "created_at": as_utc(c.created_at).isoformat(),
                "age_s": round((now - as_utc(c.created_at)).total_seconds(), 3),
                "receipt": c.receipt.hex(),
            }
            for c in rows
        ]


def _standing_query() -> Select[Any]:
    """Built once: SQLAlchemy then finds its compiled form by the statement, not by rebuilding its cache key."""
    mine = (Charge.client_channel == bindparam("channel"), Charge.status == OWED)
    owed = select(func.coalesce(func.sum(Charge.cost), 0)).where(*mine).scalar_subquery().label("owed")
    old = Charge.created_at < bindparam("cutoff")
    unpaid = select(func.count()).select_from(Charge).where(*mine, old).scalar_subquery().label("unpaid")
    account = table_of(ClientAccount)
    return select(account, owed, unpaid).where(account.c.channel == bindparam("channel"))


_STANDING = _standing_query()


def _hex(text: str, what: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError as exc:
        raise BadRequest(f"{what} must be hex", param=what) from exc
