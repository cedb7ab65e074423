"""The journal: every charge and client voucher goes to the store through here, many to one transaction.

The problem: each receipt and each voucher must be durable before it is acknowledged, and one transaction per
item costs a commit (an fsync on SQLite, a round trip and a WAL flush on PostgreSQL) plus a handful of round
trips each. The naive answer, a commit per item, caps the proxy near 200 vouchers/s whatever the hardware.
What this does instead is a group commit: items queue while one batch is being written; the next batch takes
them all, in one transaction, and each caller is answered only after that transaction committed. An item whose
checks fail is refused before it changes anything, so it never spoils the rest of its batch.

A batch is a fixed number of statements whatever its size: three reads (accounts, charges, holds), then each
table's changes as one executemany (``_save``), then the commit. The rows read are detached from the session
and changed as plain objects: the ORM's unit of work, which flushed them row by row (and again before each
later statement), took most of a batch's time. The batch is one blocking transaction (``Store.transact``): on
SQLite it runs in the store's writer thread, one hop from the event loop instead of about four per statement
through aiosqlite (a voucher waited 57 ms under load in those hops, 37 ms after).

Lock order, for replicas sharing a PostgreSQL: a batch locks its client accounts (sorted, one
``SELECT … FOR UPDATE``), then its worker accounts (sorted). Every other writer of those rows locks one row at
a time, so two batches never wait on each other in a circle. A transaction outside that order (an operator's,
a future writer's) can still deadlock with a batch; PostgreSQL then aborts one of the two, and a batch it
aborted (deadlock or serialization failure) is run again, up to ``ATTEMPTS`` times.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, Update, bindparam, insert, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from cocoon.chain import sign_voucher, verify_voucher
from cocoon.errors import BadRequest, CocoonError, NotFound, Unauthorized
from cocoon.metrics import record_money
from cocoon.proxy.money.chain_handle import ChainHandle
from cocoon.proxy.money.ledger import OWED, PAID, Charge, ClientAccount, VoucherRecord, WorkerAccount, WorkerHold
from cocoon.proxy.money.ledger import as_utc as _utc
from cocoon.proxy.store import Base, Store
from cocoon.store import table_of, transient

log = logging.getLogger("cocoon.proxy.journal")
MAX_BATCH = 512  # items in one transaction: bounds a batch's time, and so the wait of the item behind it
ATTEMPTS = 4  # runs of a batch PostgreSQL aborts to break a deadlock or serialization conflict


@dataclass(slots=True)
class VoucherEntry:
    """A client voucher to take: it must pay exactly the listed owed receipts of ``channel``."""

    channel: str
    cumulative: int
    signature: bytes
    receipt_ids: list[str]


@dataclass(slots=True)
class ChargeEntry:
    """A receipt to book; ``owed`` charges add their cost to the channel's ``charged``."""

    charge: Charge


Entry = VoucherEntry | ChargeEntry


@dataclass(slots=True)
class _Pending:
    entry: Entry
    done: asyncio.Future[ClientAccount]


@dataclass(slots=True)
class _Batch:
    accounts: dict[str, ClientAccount]
    charges: dict[str, Charge]
    holds: dict[str, WorkerHold]
    shares: dict[tuple[str, str], int] = field(default_factory=dict)  # (worker channel, payout) -> nanoton
    paid: list[Charge] = field(default_factory=list)  # charges a voucher of this batch pays
    new: list[Charge] = field(default_factory=list)  # charges booked by this batch, inserted as they end up
    changed: set[str] = field(default_factory=set)  # client channels whose account this batch changed
    records: list[dict[str, object]] = field(default_factory=list)  # vouchers taken and signed
    workers: list[WorkerAccount] = field(default_factory=list)  # worker accounts this batch vouchered
    held: set[str] = field(default_factory=set)  # workers whose hold this batch added to


class Journal:
    """Writes charges and vouchers in group commits; ``write(entry)`` returns the client account after commit.

    Raises the ``CocoonError`` that refuses the entry (``NotFound``, ``Unauthorized``, ``BadRequest``), or the
    store's error when the batch's transaction failed (then nothing of it was written).
    """

    def __init__(self, store: Store, chain: ChainHandle) -> None:
        self.store = store
        self.chain = chain
        self._queue: list[_Pending] = []
        self._writer: asyncio.Task[None] | None = None
        self._new_workers = store.insert_if_absent(WorkerAccount)  # in the store's dialect; built once (below)

    async def write(self, entry: Entry) -> ClientAccount:
        done: asyncio.Future[ClientAccount] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(entry, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        return await done

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            try:
                await self._write(batch)
            except Exception as exc:  # the transaction failed: every caller still waiting hears why
                log.warning("journal batch of %d failed error=%r", len(batch), exc)
                for pending in batch:
                    if not pending.done.done():
                        pending.done.set_exception(exc)

    async def _write(self, batch: list[_Pending]) -> None:
        entries = [p.entry for p in batch]
        for attempt in range(1, ATTEMPTS + 1):
            try:
                async with self.store.writing():
                    state, outcomes = await self.store.transact(
                        functools.partial(self._transact, entries=entries), write=True
                    )
                break
            except DBAPIError as exc:
                # PostgreSQL broke a deadlock with another writer (one outside the lock order, or an operator's
                # transaction) by aborting this batch: nothing of it was written, so run it again.
                if attempt == ATTEMPTS or not transient(exc):
                    raise
                log.warning("journal batch of %d aborted by the database, retrying error=%s", len(batch), exc.orig)
                await asyncio.sleep(random.uniform(0, 0.05 * attempt))
        _count_paid(state)
        for pending, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, CocoonError):
                pending.done.set_exception(outcome)
            else:
                pending.done.set_result(outcome)

    def _transact(self, session: Session, entries: list[Entry]) -> tuple[_Batch, list[ClientAccount | CocoonError]]:
        """The batch's transaction, committed: each entry's account, or the error that refused it. Blocking: it
        runs in the store's writer thread on SQLite (``Store.transact``), so it touches no event loop."""
        state = self._load(session, entries)
        session.expunge_all()  # plain objects from here on: ``_save`` writes what changed
        outcomes: list[ClientAccount | CocoonError] = []
        now = datetime.now(UTC)
        for entry in entries:
            try:
                if isinstance(entry, VoucherEntry):
                    outcomes.append(self._voucher(state, entry, now))
                else:
                    outcomes.append(self._charge(state, entry, now))
            except CocoonError as exc:  # refused before it changed anything
                outcomes.append(exc)
        self._credit_workers(session, state, now)
        self._save(session, state, now)
        session.commit()
        return state, outcomes

    def _load(self, session: Session, entries: list[Entry]) -> _Batch:
        channels = sorted({e.channel if isinstance(e, VoucherEntry) else e.charge.client_channel for e in entries})
        # Row locks: another replica's batch waits here until this one commits (SQLite ignores FOR UPDATE).
        rows = session.scalars(_LOCK_ACCOUNTS, {"channels": channels})
        accounts = {a.channel: a for a in rows}
        receipt_ids = [r for e in entries for r in (e.receipt_ids if isinstance(e, VoucherEntry) else ())]
        receipt_ids += [e.charge.receipt_id for e in entries if isinstance(e, ChargeEntry)]
        found = session.scalars(_CHARGES, {"receipt_ids": receipt_ids})
        charges = {c.receipt_id: c for c in found}
        holds: dict[str, WorkerHold] = {}
        if any(isinstance(e, VoucherEntry) for e in entries):
            holds = {h.worker_id: h for h in session.scalars(_HOLDS)}
        return _Batch(accounts, charges, holds)

    def _charge(self, state: _Batch, entry: ChargeEntry, now: datetime) -> ClientAccount:
        charge = entry.charge
        account = state.accounts.get(charge.client_channel)
        if account is None:
            raise NotFound(f"channel {charge.client_channel} has never been used with this proxy")
        if charge.receipt_id in state.charges:
            raise BadRequest(f"receipt {charge.receipt_id} is booked already; a worker must not reuse receipt ids")
        # The column defaults, set here: the row is inserted from these attributes, not by the ORM.
        charge.created_at = charge.created_at or now
        charge.reason = charge.reason or ""
        state.new.append(charge)
        state.charges[charge.receipt_id] = charge
        if charge.status == OWED:
            account.charged += charge.cost
            state.changed.add(account.channel)
        return account

    def _voucher(self, state: _Batch, entry: VoucherEntry, now: datetime) -> ClientAccount:
        channel = entry.channel
        account = state.accounts.get(channel)
        if account is None:
            raise NotFound(f"channel {channel} has never been used with this proxy")
        global_id = self.chain.global_id
        if not verify_voucher(account.payer_key, channel, entry.cumulative, entry.signature, global_id=global_id):
            raise Unauthorized(
                f"the voucher is not signed by the payer key of channel {channel} for this chain "
                f"(global id {global_id}); sign it over the voucher cell with that global id"
            )
        rows = [c for r in entry.receipt_ids if (c := state.charges.get(r)) is not None and c.client_channel == channel]
        owed = [c for c in rows if c.status == OWED]
        if entry.cumulative == account.vouchered and not owed and len(rows) == len(entry.receipt_ids):
            return account  # a retry of a voucher already taken
        unknown = sorted(set(entry.receipt_ids) - {c.receipt_id for c in owed})
        if unknown or len(set(entry.receipt_ids)) != len(entry.receipt_ids):
            raise BadRequest(f"receipts {unknown} are not owed on channel {channel}; pay only owed receipts")
        delta, due = entry.cumulative - account.vouchered, sum(c.cost for c in owed)
        if delta != due:
            raise BadRequest(
                f"the voucher adds {delta} nanoton to {account.vouchered} but the receipts cost {due}; "
                "sign cumulative = previous voucher + their cost (prices from the registry)"
            )
        for charge in owed:
            charge.status, charge.voucher_cumulative = PAID, entry.cumulative
            state.paid.append(charge)
            hold = state.holds.get(charge.worker_id)
            if hold is not None and _utc(charge.created_at) >= _utc(hold.since):
                hold.withheld += charge.worker_share  # the client pays; the caught worker is not paid
                state.held.add(hold.worker_id)
                charge.reason = f"worker share withheld: {hold.reason}"[:2000]
                continue
            key = (charge.worker_channel, charge.worker_payout)
            state.shares[key] = state.shares.get(key, 0) + charge.worker_share
        account.vouchered, account.voucher_signature = entry.cumulative, entry.signature
        account.vouchered_at = account.vouchered_at or now
        state.changed.add(channel)
        state.records.append(
            {"kind": "client", "channel": channel, "cumulative": entry.cumulative, "signature": entry.signature}
        )
        return account

    def _credit_workers(self, session: Session, state: _Batch, now: datetime) -> None:
        """One cumulative voucher per worker for the whole batch, its rows locked in one order."""
        if not state.shares:
            return
        # Vouchers from different clients credit the same worker at once: create its row once, then lock it.
        session.execute(
            self._new_workers,
            [
                {"channel": c, "payout": p, "funded": 0, "vouchered": 0, "voucher_signature": b"", "claimed": 0}
                for c, p in sorted(state.shares)
            ],
        )
        channels = sorted({channel for channel, _ in state.shares})
        workers = {w.channel: w for w in session.scalars(_LOCK_WORKERS, {"channels": channels})}
        session.expunge_all()
        for (worker_channel, _payout), share in sorted(state.shares.items()):
            account = workers[worker_channel]
            account.vouchered += share
            account.voucher_signature = sign_voucher(
                self.chain.wallet.signing, worker_channel, account.vouchered, global_id=self.chain.global_id
            )
            account.vouchered_at = account.vouchered_at or now
            state.records.append(
                {
                    "kind": "worker", "channel": worker_channel, "cumulative": account.vouchered,
                    "signature": account.voucher_signature,
                }
            )  # fmt: skip
        state.workers = list(workers.values())

    def _save(self, session: Session, state: _Batch, now: datetime) -> None:
        """Write what the batch changed: one executemany per table, new charges with their final status."""
        new = {c.receipt_id for c in state.new}
        db = session.connection()  # Core statements: nothing here needs the ORM's execute path
        if state.new:
            db.execute(_NEW_CHARGES, [{k: getattr(c, k) for k in _CHARGE_COLUMNS} for c in state.new])
        if paid := [c for c in state.paid if c.receipt_id not in new]:
            db.execute(_PAY_CHARGES.statement, [_PAY_CHARGES.params(c) for c in paid])
        if state.changed:
            db.execute(_CLIENTS.statement, [_CLIENTS.params(state.accounts[c]) for c in sorted(state.changed)])
        if holds := [state.holds[w] for w in sorted(state.held)]:
            db.execute(_WITHHOLD.statement, [_WITHHOLD.params(h) for h in holds])
        if state.workers:
            db.execute(_WORKERS.statement, [_WORKERS.params(w) for w in state.workers])
        if state.records:
            db.execute(_NEW_RECORDS, [r | {"created_at": now} for r in state.records])


@dataclass(frozen=True, slots=True)
class _ByKey:
    """``UPDATE table SET fields WHERE key`` for an executemany of ``params(row)`` rows."""

    statement: Update
    fields: tuple[str, ...]  # the key first

    @classmethod
    def of(cls, table: type[Base], key: str, *fields: str) -> _ByKey:
        t = table_of(table)
        statement = update(t).where(t.c[key] == bindparam(f"p_{key}"))
        return cls(statement.values({f: bindparam(f"p_{f}") for f in fields}), (key, *fields))

    def params(self, row: object) -> dict[str, object]:
        return {f"p_{f}": getattr(row, f) for f in self.fields}


# A batch's statements, built once. SQLAlchemy keeps a statement's cache key on the statement object, so one
# built per batch was keyed (a walk of its whole tree) and looked up again every time: a batch of a voucher or
# two is mostly such fixed costs. IN lists are expanding parameters, so one statement serves every batch size.
def _lock_in_order(table: type[ClientAccount] | type[WorkerAccount]) -> Select[Any]:
    """The rows of ``table`` whose channel is in ``:channels``, locked in channel order (the lock order above)."""
    channel = table.channel
    return select(table).where(channel.in_(bindparam("channels", expanding=True))).order_by(channel).with_for_update()


_LOCK_ACCOUNTS = _lock_in_order(ClientAccount)
_LOCK_WORKERS = _lock_in_order(WorkerAccount)
_CHARGES = select(Charge).where(Charge.receipt_id.in_(bindparam("receipt_ids", expanding=True)))
_HOLDS = select(WorkerHold)
_CHARGE_COLUMNS = tuple(c.key for c in table_of(Charge).columns)
_NEW_CHARGES = insert(table_of(Charge))
_NEW_RECORDS = insert(table_of(VoucherRecord))
_PAY_CHARGES = _ByKey.of(Charge, "receipt_id", "status", "voucher_cumulative", "reason")
_CLIENTS = _ByKey.of(ClientAccount, "channel", "charged", "vouchered", "voucher_signature", "vouchered_at")
_WITHHOLD = _ByKey.of(WorkerHold, "worker_id", "withheld")
_WORKERS = _ByKey.of(WorkerAccount, "channel", "vouchered", "voucher_signature", "vouchered_at")


def _count_paid(state: _Batch) -> None:
    """The money a committed batch moved, in ``cocoon_money_nanoton_total``: what clients paid, the workers'
    shares they earned (a withheld share is not earned), the proxy's fees."""
    record_money("proxy", "paid", sum(c.cost for c in state.paid))
    record_money("proxy", "earned", sum(state.shares.values()))
    record_money("proxy", "fee", sum(c.fee for c in state.paid))
