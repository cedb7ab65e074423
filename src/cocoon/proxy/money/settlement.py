"""Settlement: turn the vouchers the proxy holds into on-chain money, in batches.

A client channel is claimed, and a worker channel funded up to its latest voucher, once its unsettled amount
reaches ``settle_min_amount`` or its oldest unsettled voucher ``settle_max_age`` seconds: on-chain operations
grow with channels × periods, not with requests. ``settle(force=True)`` settles everything now.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pytoniq_core.boc.address import Address
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from cocoon.chain import ClientChannel
from cocoon.config import ProxySettings
from cocoon.errors import ChainError, TransactionFailed, UpstreamTimeout
from cocoon.metrics import record_money
from cocoon.proxy.money.chain_handle import ChainHandle
from cocoon.proxy.money.ledger import PAID, Charge, ClientAccount, FundingInFlight, WorkerAccount, as_utc

log = logging.getLogger("cocoon.proxy.settlement")
WATCH_INTERVAL_S = 60.0  # how often unsettled client channels are read back for a close started on chain


@dataclass(slots=True)
class SettleReport:
    claimed: dict[str, int] = field(default_factory=dict)  # client channel -> nanoton newly claimed
    funded: dict[str, int] = field(default_factory=dict)  # worker channel -> nanoton added
    failed: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "claimed": self.claimed,
            "funded": self.funded,
            "failed": self.failed,
            "operations": len(self.claimed) + len(self.funded),
            "claimed_total": sum(self.claimed.values()),
            "funded_total": sum(self.funded.values()),
        }


class Settlement:
    """Batches the vouchers the proxy holds into claims and fundings on chain; one per paid proxy."""

    def __init__(self, settings: ProxySettings, chain: ChainHandle) -> None:
        self.settings = settings
        self.chain = chain
        self._lock = asyncio.Lock()
        self._watched_at = 0.0

    async def run_forever(self) -> None:
        """Settle every ``settle_interval`` until cancelled; a failed round is logged and the next one runs."""
        while True:
            await asyncio.sleep(self.settings.settle_interval)
            try:
                await self.settle()
            except (ChainError, UpstreamTimeout) as exc:
                log.warning("settlement round failed error=%s; retrying next round", exc)
            except Exception:
                # Anything else is a bug or a chain answer nobody foresaw; the proxy must still settle tomorrow.
                log.exception("settlement round crashed; retrying next round")

    def _due(self, unsettled: int, since: datetime | None, force: bool) -> bool:
        if unsettled <= 0:
            return False
        if force or unsettled >= self.settings.settle_min_amount:
            return True
        age = timedelta(seconds=self.settings.settle_max_age)
        return since is not None and datetime.now(UTC) - as_utc(since) >= age

    async def settle(self, force: bool = False) -> SettleReport:
        """Claim due client vouchers, then fund due worker channels (claims pay for the funding).

        One round at a time across every replica sharing the store (``Store.exclusive``): each reads the chain
        and the books afresh once it holds the lock, so a round that waited finds the work done."""
        report = SettleReport()
        async with self._lock, self.chain.store.exclusive("settlement"):
            async with self.chain.store.session() as session:
                clients = (await session.scalars(select(ClientAccount))).all()
                workers = (await session.scalars(select(WorkerAccount))).all()
            # A client may start a close on chain at any time; claim before its delay runs out.
            watch = force or time.monotonic() - self._watched_at >= WATCH_INTERVAL_S
            if watch:
                self._watched_at = time.monotonic()
            for account in clients:
                unsettled = account.vouchered - account.claimed
                closing = bool(account.closing) or (watch and unsettled > 0 and await self._closing(account.channel))
                if self._due(unsettled, account.vouchered_at, force or closing):
                    await self._claim(account.channel, report)
            for worker in workers:
                if self._due(worker.vouchered - worker.funded, worker.vouchered_at, force):
                    await self._fund(worker.channel, report)
            if watch:
                await self._refresh_worker_claims()
        if report.claimed or report.funded:
            log.info("settled claimed=%s funded=%s", sum(report.claimed.values()), sum(report.funded.values()))
        return report

    async def _closing(self, channel: str) -> bool:
        try:
            state = await ClientChannel(self.chain.toncenter, Address(channel)).get_channel()
        except ChainError:
            return False
        return bool(state.close_at or state.closed)

    async def _claim(self, channel: str, report: SettleReport) -> None:
        async with self.chain.store.session() as session:
            account = await session.get(ClientAccount, channel)
            assert account is not None
            vouchered, signature, recorded = account.vouchered, account.voucher_signature, account.claimed
        contract = ClientChannel(self.chain.toncenter, Address(channel))
        current = await contract.get_channel()  # read first: get-methods cost nothing
        # A stale read (toncenter caches reads, liteservers lag) may not show our last claim yet.
        before, sent = max(current.claimed, recorded), False
        failure = ""
        if vouchered > current.deposit:
            failure = "the voucher exceeds the deposit; waiting for the client's top-up"
        elif before < vouchered:
            try:
                await contract.claim(self.chain.wallet, vouchered, signature)
                sent = True
            except TransactionFailed as exc:
                failure = exc.message
                await self.chain.record("claim", channel, 0, ok=False, detail=exc.message)
            current = await contract.get_channel()
        # The row again, locked: vouchers kept coming in while the chain worked, and must not be overwritten.
        async with self.chain.store.writing(), self.chain.store.session() as session:
            account = await session.get(ClientAccount, channel, with_for_update=True)
            assert account is not None
            # Keep the chain's view even when the claim failed (a close, a withdrawal): admission then refuses.
            # Claims only grow: a read that lags behind the one just applied does not take it back.
            claimed = max(current.claimed, account.claimed, vouchered if sent else 0)
            account.claimed, account.deposit = claimed, current.deposit
            account.closing = current.close_at or int(current.closed)
            account.checked_at = datetime.now(UTC)
            if account.claimed >= account.vouchered:
                account.vouchered_at = None
            await session.commit()
        if failure:
            report.failed[channel] = failure
        elif sent:  # else a crash came between the claim and its record: the chain has it already
            report.claimed[channel] = claimed - before
            record_money("proxy", "settled", max(claimed - before, 0))
            await self.chain.record("claim", channel, claimed - before)

    async def _fund(self, channel: str, report: SettleReport) -> None:
        store = self.chain.store
        async with store.session() as session:
            worker = await session.get(WorkerAccount, channel)
            assert worker is not None
            in_flight = await session.get(FundingInFlight, channel)
            # Fund only shares the chain has already paid the proxy for: never out of the proxy's own money.
            backed = await self._backed_share(session, channel)
            vouchered, recorded, payout = worker.vouchered, worker.funded, worker.payout
        contract = self.chain.worker_contract(payout)
        # What was funded is the larger of the chain's deposit (a crash after a top-up, before its record,
        # cannot make us fund twice) and our own record: a read served from a cache or a lagging liteserver
        # may not show the top-up we made a second ago, and must not make us fund it again.
        deployed = recorded > 0 or (await self.chain.toncenter.get_address_information(contract.address)).active
        funded = max((await contract.get_channel()).deposit if deployed else 0, recorded)
        if in_flight is not None:
            if funded < in_flight.target and datetime.now(UTC) < as_utc(in_flight.until):
                # A replica (or this one, before a crash) sent a top-up whose outcome nobody knows yet: it may
                # still land, and funding again now could pay the worker twice.
                report.failed[channel] = "a top-up sent earlier may still land; funding waits for it"
                return
            await self._forget_in_flight(channel)  # landed (the chain shows it) or expired unapplied
        amount = min(vouchered, backed) - funded
        if amount > 0:
            until = datetime.now(UTC) + timedelta(seconds=2 * (self.chain.wallet.message_ttl + 30))
            async with store.writing(), store.session() as session:
                session.add(FundingInFlight(channel=channel, target=funded + amount, until=until))
                await session.commit()  # before sending: from here on the outcome is unknown
            try:
                if deployed:
                    await contract.top_up(self.chain.wallet, amount)
                else:
                    await contract.deploy(self.chain.wallet, amount)
            except (TransactionFailed, ChainError) as exc:
                # Refused (or certainly dropped): nothing moved. A timeout leaves the record to the next round.
                await self._forget_in_flight(channel)
                report.failed[channel] = str(exc)
                await self.chain.record("fund", channel, 0, ok=False, detail=str(exc))
                return
        async with store.writing(), store.session() as session:
            worker = await session.get(WorkerAccount, channel, with_for_update=True)
            assert worker is not None
            worker.funded = max(worker.funded, funded + max(amount, 0))
            if worker.funded >= worker.vouchered:
                worker.vouchered_at = None
            elif amount <= 0:
                report.failed[channel] = (
                    f"{worker.vouchered - worker.funded} nanoton of this worker's vouchers wait for their clients' "
                    "channels to be claimed on chain"
                )
            await session.execute(delete(FundingInFlight).where(FundingInFlight.channel == channel))
            await session.commit()
        if amount > 0:
            report.funded[channel] = amount
            await self.chain.record("fund", channel, amount)

    async def _forget_in_flight(self, channel: str) -> None:
        async with self.chain.store.writing(), self.chain.store.session() as session:
            await session.execute(delete(FundingInFlight).where(FundingInFlight.channel == channel))
            await session.commit()

    async def _backed_share(self, session: AsyncSession, channel: str) -> int:
        """The worker's share of paid charges whose client voucher the chain has already paid out to the proxy."""
        total = await session.scalar(
            select(func.coalesce(func.sum(Charge.worker_share), 0))
            .join(ClientAccount, ClientAccount.channel == Charge.client_channel)
            .where(
                Charge.worker_channel == channel,
                Charge.status == PAID,
                Charge.voucher_cumulative <= ClientAccount.claimed,
            )
        )
        return int(total or 0)

    async def _refresh_worker_claims(self) -> None:
        """What workers have claimed is their business; read it back for the books (get-methods are free)."""
        async with self.chain.store.session() as session:
            for worker in (await session.scalars(select(WorkerAccount).where(WorkerAccount.funded > 0))).all():
                try:
                    state = await self.chain.worker_contract(worker.payout).get_channel()
                except ChainError:
                    continue
                worker.claimed = state.claimed
            await session.commit()
