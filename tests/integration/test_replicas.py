"""Two proxy replicas behind one registry entry, sharing one PostgreSQL: one is SIGKILLed under load, both then
settle at once, and the books still conserve to the nanoton, no worker channel is funded twice, and every
voucher either replica took is claimed on chain; then one replica is SIGKILLed in the middle of a settlement
round, with a worker's top-up on its way, and the other finishes it without funding anyone twice. One more
client lists both replicas (as a sidecar given both
URLs would): its payers share one channel book, so one channel pays through either replica. A sealed request
one replica served and a relay replays to the other is refused there.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from cocoon.attestation import AttestationPolicy
from cocoon.chain import TON, ClientChannel, ToncenterClient, Wallet, WorkerChannel
from cocoon.chain.address import raw_address
from cocoon.chain.devnet import DevnetClient
from cocoon.client import CocoonClient
from cocoon.client.sdk import Completion
from cocoon.client.wallet import ChannelBook, ChannelPayer, check_same_chain, client_channel, payment_terms
from cocoon.crypto import SigningKey
from cocoon.engines.config import DEFAULT_MODEL
from cocoon.errors import CocoonError
from cocoon.local import LocalNetwork
from cocoon.protocol import JobRequest, pack, unpack_as
from cocoon.protocol.payload import SealedMessage, SealedParams
from cocoon.proxy.money.ledger import FundingInFlight
from cocoon.proxy.store import Store
from tests.helpers.chain import TEST_API_KEY
from tests.helpers.money import books_at, on_chain, settle_at
from tests.helpers.replicas import start_replica, start_replicated_network

CLIENTS, REQUESTS = 10, 12


async def _client(
    urls: list[str], net: LocalNetwork, chain: ToncenterClient, devnet: DevnetClient
) -> tuple[CocoonClient, str]:
    """A paid client of ``urls`` (replicas: one channel) and its channel; its payers share the channel's book."""
    key = SigningKey.generate()
    wallet = Wallet(key.seed)
    await devnet.fund(wallet.address, 3 * TON)
    https = [httpx.AsyncClient(base_url=url, timeout=30) for url in urls]
    terms = await payment_terms(https[0])
    assert terms is not None
    await check_same_chain(chain, terms, "devnet")
    channel = client_channel(chain, wallet, terms)
    await channel.deploy(wallet, TON)
    client = CocoonClient(urls, AttestationPolicy.model_validate(net.policy))
    books: dict[str, ChannelBook] = {}
    for proxy, http in zip(client.proxies.proxies, https, strict=True):
        proxy.payer = ChannelPayer(http, chain, key, books=books)
    return client, raw_address(channel.address)


async def _load(client: CocoonClient, done: list[int]) -> None:
    """``REQUESTS`` paid requests; one that fails while its replica is down is tried again."""
    finished, tries = 0, 0
    while finished < REQUESTS and tries < 20 * REQUESTS:
        tries += 1
        try:
            async for event in client.stream(
                "chat",
                DEFAULT_MODEL,
                messages=[SealedMessage(role="user", content=f"request {finished}")],
                params=SealedParams(max_tokens=3 + finished % 4),
            ):
                if isinstance(event, Completion):
                    finished += 1
                    done.append(1)
        except (CocoonError, httpx.HTTPError):
            await asyncio.sleep(0.3)  # the replica this client talks to was killed; it comes back


async def _replayed_to_the_other_replica(
    net: LocalNetwork, second: str, chain: ToncenterClient, devnet: DevnetClient
) -> None:
    """A relay captures a paid sealed request served by the first replica and replays it to the second, with the
    key of the worker that ran it stripped (so the next candidate, which never saw the id, would run it): the
    second replica refuses it, as the first would (before, it was run and billed a second time)."""
    client, _ = await _client([net.proxy_url], net, chain, devnet)
    captured: list[bytes] = []

    async def capture(request: httpx.Request) -> None:
        if request.url.path == "/v1/jobs":
            captured.append(request.content)

    client.proxies.proxies[0].http.event_hooks = {"request": [capture]}
    messages = [SealedMessage(role="user", content="captured on the way")]
    events = [
        e async for e in client.stream("chat", DEFAULT_MODEL, messages=messages, params=SealedParams(max_tokens=3))
    ]
    await client.aclose()
    final = events[-1]
    assert isinstance(final, Completion) and len(captured) == 1
    job = unpack_as(captured[0], JobRequest)
    served_by = final.receipts[0].worker_id
    others = [k for k in job.keys if k.worker_id != served_by]
    assert others, "the request was sealed to one worker only: nothing to replay to"
    replay = pack(job.model_copy(update={"keys": others}))
    async with httpx.AsyncClient(base_url=second, timeout=30) as http:
        answer = await http.post("/v1/jobs", content=replay, headers={"content-type": "application/msgpack"})
    assert answer.status_code == 409, answer.text[:300]
    assert answer.json()["error"]["code"] == "request_replayed"


async def _more_vouchers(net: LocalNetwork, url: str) -> None:
    """A new client's paid requests through the replica at ``url``: both workers get vouchers to fund again."""
    async with ToncenterClient(net.chain.url, TEST_API_KEY) as chain, DevnetClient(net.chain.url) as devnet:  # type: ignore[union-attr]
        client, _ = await _client([url], net, chain, devnet)
        done: list[int] = []
        await _load(client, done)
        await client.aclose()
        assert len(done) == REQUESTS


def _kill_mid_funding(net: LocalNetwork, store_url: str) -> None:
    """Start a settlement round on the network's own replica and SIGKILL it while a worker top-up it sent is
    on its way (recorded as in flight, not yet on chain: the devnet includes messages a second after sending)."""
    replica = net.child("proxy")
    with ThreadPoolExecutor(1) as pool:
        settling = pool.submit(_settle_unanswered, net.proxy_url)

        async def in_flight() -> None:
            store = Store(store_url)
            try:
                while not settling.done():
                    async with store.session() as session:
                        if (await session.scalars(select(FundingInFlight))).first() is not None:
                            return
                    await asyncio.sleep(0.01)
                raise AssertionError("the settlement round ended before any top-up was in flight")
            finally:
                await store.close()

        asyncio.run(in_flight())
        time.sleep(0.3)  # sent (its record is committed just before), a second from landing
        os.kill(replica.process.pid, signal.SIGKILL)
        replica.process.wait(10)
        net.children.remove(replica)
        assert settling.result() is None  # the round died with its replica: no answer came


def _settle_unanswered(url: str) -> dict[str, Any] | None:
    try:
        return settle_at(url)
    except httpx.HTTPError:
        return None


def _settle_until_clean(url: str, timeout: float = 120) -> None:
    """Settle at ``url`` until a round fails nothing (a top-up a killed replica sent blocks its channel until
    the chain shows it)."""
    deadline = time.monotonic() + timeout
    while (report := settle_at(url))["failed"]:
        assert time.monotonic() < deadline, report
        time.sleep(1)


def test_two_replicas_on_one_postgresql_conserve_and_fund_once_after_one_is_killed(
    tmp_path: Path, postgres_cluster: Any
) -> None:
    store_url = postgres_cluster.create_database("replicas")
    net, second = start_replicated_network(tmp_path, store_url)
    second_port = int(second.rsplit(":", 1)[1])
    try:
        assert net.chain is not None

        async def run() -> None:
            async with ToncenterClient(net.chain.url, TEST_API_KEY) as chain, DevnetClient(net.chain.url) as devnet:  # type: ignore[union-attr]
                await _replayed_to_the_other_replica(net, second, chain, devnet)
                urls = [[net.proxy_url if i % 2 else second] for i in range(CLIENTS)] + [[net.proxy_url, second]]
                made = [await _client(u, net, chain, devnet) for u in urls]
                clients = [client for client, _ in made]
                both[:] = [made[-1][1]]
                done: list[int] = []
                load = asyncio.gather(*(_load(c, done) for c in clients))
                while len(done) < CLIENTS * REQUESTS // 3:  # mid-load  # noqa: ASYNC110 - polling a count
                    await asyncio.sleep(0.05)
                replica = next(c for c in net.children if c.name == "proxy-2")
                os.kill(replica.process.pid, signal.SIGKILL)
                replica.process.wait(10)
                net.children.remove(replica)
                start_replica(net, second_port, wait=False)  # from this thread: it lives as long as the test
                await load
                # A receipt the killed replica committed but never delivered is owed by a request that failed;
                # the payer's resync rejects it (the client never got it), as a sidecar's does on a 402.
                payer = clients[-1].proxies.proxies[0].payer  # the client of both: replica 1 was never killed
                assert payer is not None
                payer.resync_min_age_s = 0
                await payer.resync()
                for client in clients:
                    await client.aclose()
                assert len(done) == (CLIENTS + 1) * REQUESTS

        both: list[str] = []
        asyncio.run(run())
        held, other = books_at(net.proxy_url), books_at(second)
        totals = ("client_debits", "worker_credits", "proxy_fees", "receipts")
        assert {k: held[k] for k in totals} == {k: other[k] for k in totals}  # one set of books, either replica
        assert len(held["clients"]) == CLIENTS + 2  # and the client whose request was replayed
        assert held["client_debits"] == held["worker_credits"] + held["proxy_fees"] > 0
        (shared,) = [c for c in held["clients"] if c["channel"] == both[0]]
        # Both replicas' receipts paid in one voucher sequence (with a book per replica, most were refused).
        assert shared["vouchered"] == shared["charged"] > 0

        with ThreadPoolExecutor(2) as pool:  # both replicas settle at once
            reports = list(pool.map(settle_at, [net.proxy_url, second]))
        assert all(r["failed"] == {} for r in reports), reports
        settled = books_at(net.proxy_url)
        for client in settled["clients"]:
            assert on_chain(net, client["channel"], ClientChannel)[1] == client["vouchered"] == client["claimed"]
        funded = sum(r["funded_total"] for r in reports)
        assert funded == settled["worker_credits"]  # every share funded once, by one replica or the other
        for worker in settled["workers"]:  # nothing funded twice: the chain holds exactly the vouchered amount
            assert on_chain(net, worker["channel"], WorkerChannel)[0] == worker["vouchered"] == worker["funded"]
        total_claimed = sum(c["claimed"] for c in settled["clients"])
        assert total_claimed == settled["client_debits"] == funded + settled["proxy_fees"]

        # One replica SIGKILLed in the middle of its settlement round, a worker top-up sent and not yet recorded:
        # the other replica finishes the round, and funds nobody twice.
        asyncio.run(_more_vouchers(net, second))
        _kill_mid_funding(net, store_url)
        _settle_until_clean(second)
        settled = books_at(second)
        assert settled["worker_credits"] > funded  # the new vouchers were funded
        for worker in settled["workers"]:
            assert on_chain(net, worker["channel"], WorkerChannel)[0] == worker["vouchered"] == worker["funded"]
        for client in settled["clients"]:
            assert on_chain(net, client["channel"], ClientChannel)[1] == client["vouchered"] == client["claimed"]

        for i in range(1, net.workers + 1):  # every voucher the workers hold is claimable on chain
            config = str(net.home / f"worker-{i}.toml")
            command = [sys.executable, "-m", "cocoon", "worker", "claim", "-c", config]
            done = subprocess.run(command, capture_output=True, text=True, timeout=120)
            # The killed replica is still down: the worker claims its channel through the other, and says so.
            assert done.returncode == 1, done.stdout + done.stderr
            said = done.stdout + done.stderr
            assert "not claimed from it" in said and net.proxy_url in said, said
        for worker in settled["workers"]:
            assert on_chain(net, worker["channel"], WorkerChannel)[1] == worker["vouchered"]
    finally:
        net.stop()
