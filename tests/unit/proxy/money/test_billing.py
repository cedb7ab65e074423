"""Billing on both databases: vouchers from many clients at once pay each worker every nanoton of its share
(PostgreSQL runs them as truly concurrent transactions; SQLite has one writer), and ids fit the books' columns."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select, text

from cocoon.chain import TESTNET_GLOBAL_ID, Wallet, sign_voucher, verify_voucher
from cocoon.errors import BadRequest
from cocoon.protocol import JobRequest, WrappedKeyWire, pack, unpack_as
from cocoon.protocol.money import VoucherSubmission
from cocoon.proxy.money.billing import Billing
from cocoon.proxy.money.chain_handle import ChainHandle
from cocoon.proxy.money.ledger import OWED, PAID, Charge, ClientAccount, WorkerAccount, WorkerHold
from cocoon.proxy.store import Store

WORKERS = ("0:" + "a" * 64, "0:" + "b" * 64)
BIG = 3 * 2**31  # nanoton: every amount is past 32 bits


def charge(receipt_id: str, client: str, worker: str, cost: int) -> Charge:
    fee = cost // 20
    return Charge(
        receipt_id=receipt_id, request_id="req-" + receipt_id, client_channel=client, worker_channel=worker,
        worker_payout=worker, worker_id="w-" + worker[2:10], model="m", coefficient=1000, prompt_cost=cost,
        cached_cost=0, completion_cost=0, cost=cost, worker_share=cost - fee, fee=fee, status=OWED, receipt=b"",
    )  # fmt: skip


async def test_concurrent_vouchers_from_many_clients_credit_shared_workers_exactly(store_url: str) -> None:
    store = Store(store_url)
    await store.start()
    proxy = Wallet(bytes(range(32)))
    billing = Billing(
        store,
        cast(ChainHandle, SimpleNamespace(wallet=proxy, global_id=TESTNET_GLOBAL_ID)),
        unpaid_grace_s=60,
        credit_limit=10**9,
    )
    payers = [Ed25519PrivateKey.from_private_bytes(bytes([i + 1]) * 32) for i in range(8)]
    submissions, shares = [], dict.fromkeys(WORKERS, 0)
    async with store.session() as session:
        for i, payer in enumerate(payers):
            client = f"0:{i + 1:064x}"
            session.add(
                ClientAccount(channel=client, payer_key=payer.public_key().public_bytes_raw(), deposit=10 * BIG)
            )
            # Half the clients pay the workers in the other order: row locks must not deadlock.
            workers = WORKERS if i % 2 else WORKERS[::-1]
            charges = [charge(f"rcpt-{i}-{w[2]}", client, w, BIG + i * 1000 + j) for j, w in enumerate(workers)]
            for c in charges:
                session.add(c)
                shares[c.worker_channel] += c.worker_share
            cumulative = sum(c.cost for c in charges)
            submissions.append(
                VoucherSubmission(
                    channel=client,
                    cumulative=cumulative,
                    signature=sign_voucher(payer, client, cumulative, global_id=TESTNET_GLOBAL_ID).hex(),
                    receipt_ids=[c.receipt_id for c in charges],
                )
            )
        await session.commit()

    await asyncio.gather(*(billing.accept_voucher(s) for s in submissions))

    async with store.session() as session:
        workers = {w: await session.get(WorkerAccount, w) for w in WORKERS}
        statuses = set(await session.scalars(select(Charge.status)))
    await store.close()
    for channel, account in workers.items():
        assert account is not None
        assert account.vouchered == shares[channel]
        assert verify_voucher(
            proxy.public_key, channel, account.vouchered, account.voucher_signature, global_id=TESTNET_GLOBAL_ID
        )
    assert statuses == {PAID}


def test_a_request_id_too_long_for_the_books_is_refused_before_any_work() -> None:
    def request(request_id: str) -> bytes:
        key = WrappedKeyWire(worker_id="w-1", enc=b"", wrapped=b"")
        job = JobRequest(request_id="r", model="m", kind="chat", max_tokens=1, keys=[key], ciphertext=b"")
        return pack(job.model_copy(update={"request_id": request_id}))  # unchecked, as any client may send it

    width = Charge.__table__.c.request_id.type.length
    assert unpack_as(request("r" * width), JobRequest).request_id == "r" * width
    with pytest.raises(BadRequest, match="request_id"):
        unpack_as(request("r" * (width + 1)), JobRequest)


async def test_a_worker_flagged_by_canaries_is_not_vouchered_its_share_and_the_books_show_the_hold(
    tmp_path: Path,
) -> None:
    store = Store(f"sqlite:///{tmp_path / 'books.db'}")
    await store.start()
    proxy = Wallet(bytes(range(32)))
    billing = Billing(
        store,
        cast(ChainHandle, SimpleNamespace(wallet=proxy, global_id=TESTNET_GLOBAL_ID)),
        unpaid_grace_s=60,
        credit_limit=10**9,
    )
    payer = Ed25519PrivateKey.from_private_bytes(bytes([9]) * 32)
    client = f"0:{7:064x}"
    honest, cheater = charge("rcpt-h", client, WORKERS[0], BIG), charge("rcpt-c", client, WORKERS[1], BIG)
    async with store.session() as session:
        session.add(ClientAccount(channel=client, payer_key=payer.public_key().public_bytes_raw(), deposit=10 * BIG))
        session.add_all([honest, cheater])
        await session.commit()
    await billing.withhold(cheater.worker_id, datetime.now(UTC) - timedelta(minutes=5), "canaries: another model")

    cumulative = 2 * BIG
    signature = sign_voucher(payer, client, cumulative, global_id=TESTNET_GLOBAL_ID).hex()
    await billing.accept_voucher(
        VoucherSubmission(channel=client, cumulative=cumulative, signature=signature, receipt_ids=["rcpt-h", "rcpt-c"])
    )
    async with store.session() as session:
        paid_honest = await session.get(WorkerAccount, WORKERS[0])
        paid_cheater = await session.get(WorkerAccount, WORKERS[1])
        hold = await session.get(WorkerHold, cheater.worker_id)
    await store.close()

    assert paid_honest is not None and paid_honest.vouchered == honest.worker_share
    assert paid_cheater is None  # never vouchered a nanoton
    assert hold is not None and hold.withheld == cheater.worker_share


async def test_a_voucher_batch_postgresql_aborts_to_break_a_deadlock_is_run_again(
    postgres_cluster: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Another transaction locks the worker's row, the journal's batch locks the client's and waits for the
    worker's, then the other asks for the client's: a real deadlock. PostgreSQL aborts the batch (it waited
    first; the other waits longer before checking), and the journal runs it again once the other commits."""
    store = Store(postgres_cluster.create_database("deadlock"))
    await store.start()
    billing = Billing(
        store,
        cast(ChainHandle, SimpleNamespace(wallet=Wallet(bytes(range(32))), global_id=TESTNET_GLOBAL_ID)),
        unpaid_grace_s=60,
        credit_limit=10**9,
    )
    payer = Ed25519PrivateKey.from_private_bytes(bytes([5]) * 32)
    client, worker = f"0:{5:064x}", WORKERS[0]
    owed = charge("rcpt-d", client, worker, BIG)
    async with store.session() as session:
        session.add(ClientAccount(channel=client, payer_key=payer.public_key().public_bytes_raw(), deposit=10 * BIG))
        session.add(WorkerAccount(channel=worker, payout=worker))
        session.add(owed)
        await session.commit()
    signature = sign_voucher(payer, client, BIG, global_id=TESTNET_GLOBAL_ID).hex()
    submission = VoucherSubmission(channel=client, cumulative=BIG, signature=signature, receipt_ids=["rcpt-d"])

    async with store.engine.connect() as other:
        await other.execute(text("SET deadlock_timeout = '10s'"))  # so the batch's own check finds the cycle
        await other.execute(select(WorkerAccount.channel).where(WorkerAccount.channel == worker).with_for_update())
        taking = asyncio.create_task(billing.accept_voucher(submission))
        await asyncio.sleep(0.5)  # the batch holds the client's row and waits for the worker's
        assert not taking.done()
        await other.execute(select(ClientAccount.channel).where(ClientAccount.channel == client).with_for_update())
        await other.commit()
        account = await taking

    async with store.session() as session:
        paid = await session.get(WorkerAccount, worker)
    await store.close()
    assert account["vouchered"] == BIG
    assert paid is not None and paid.vouchered == owed.worker_share
    assert "aborted by the database, retrying" in caplog.text and "deadlock detected" in caplog.text
