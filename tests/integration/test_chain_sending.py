"""Sending survives a real network: messages that land late, never land, or whose sender was interrupted, and
an API that fails now and then. Every test runs a devnet in real-toncenter mode (reads cached 1 s, messages
landing after a delay, rate limits) and drives it with the real wallet over the toncenter API."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pytoniq_core.boc.address import Address

from cocoon.chain import TON, Outbox, Registry, RegistryParams, Wallet
from cocoon.errors import UpstreamTimeout
from tests.helpers.chain import DevnetChain, devnet_chain


async def until(condition: Callable[[], object], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def interrupted_send(wallet: Wallet, chain: DevnetChain, to: Address, amount: int) -> None:
    """Start a transfer and kill it once its message is sent, as a crash or Ctrl-C would."""
    assert wallet.outbox is not None
    outbox = wallet.outbox
    task = asyncio.create_task(wallet.send(chain.toncenter, to, amount, bounce=False))
    await until(lambda: outbox.pending() is not None, "the message to be written down")
    await asyncio.sleep(0.2)  # past sendBoc
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert outbox.pending() is not None, "an interrupted transfer keeps its message"


async def seqno_reaches(chain: DevnetChain, wallet: Wallet, seqno: int) -> None:
    deadline = time.monotonic() + 15
    while await chain.toncenter.get_wallet_seqno(wallet.address) < seqno:
        assert time.monotonic() < deadline, f"the wallet never reached seqno {seqno}"
        await asyncio.sleep(0.2)


async def test_a_transfer_interrupted_before_it_landed_is_resumed_and_lands_once(tmp_path: Path) -> None:
    async with devnet_chain(tmp_path) as chain:
        await chain.devnet.set_faults(inclusion_delay_ms=3000)
        outbox = Outbox(tmp_path / "wallet.outbox.json")
        wallet = await chain.funded_wallet(5 * TON, outbox=outbox)
        receiver = Wallet.generate().address
        await interrupted_send(wallet, chain, receiver, TON)

        rerun = Wallet(wallet.seed, outbox=outbox)  # the command run again
        sent = await rerun.send(chain.toncenter, receiver, TON, bounce=False)

        assert sent.resumed and sent.seqno == 1
        assert outbox.pending() is None
        await asyncio.sleep(3.5)  # anything sent twice would have landed by now
        assert await chain.toncenter.get_wallet_seqno(wallet.address) == 1
        assert TON * 0.9 < await chain.toncenter.get_balance(receiver) <= TON


async def test_a_transfer_that_landed_while_nobody_watched_is_not_sent_again(tmp_path: Path) -> None:
    async with devnet_chain(tmp_path) as chain:
        await chain.devnet.set_faults(inclusion_delay_ms=1500)
        outbox = Outbox(tmp_path / "wallet.outbox.json")
        wallet = await chain.funded_wallet(5 * TON, outbox=outbox)
        receiver = Wallet.generate().address
        await interrupted_send(wallet, chain, receiver, TON)
        await seqno_reaches(chain, wallet, 1)

        sent = await Wallet(wallet.seed, outbox=outbox).send(chain.toncenter, receiver, TON, bounce=False)

        assert sent.resumed and sent.transaction.out_msgs[0].destination == receiver
        await asyncio.sleep(2.5)
        assert await chain.toncenter.get_wallet_seqno(wallet.address) == 1


async def test_another_transfer_waits_for_the_one_in_flight_and_then_goes(tmp_path: Path) -> None:
    async with devnet_chain(tmp_path) as chain:
        await chain.devnet.set_faults(inclusion_delay_ms=2000)
        outbox = Outbox(tmp_path / "wallet.outbox.json")
        wallet = await chain.funded_wallet(5 * TON, outbox=outbox)
        first, second = Wallet.generate().address, Wallet.generate().address
        await interrupted_send(wallet, chain, first, TON)

        sent = await Wallet(wallet.seed, outbox=outbox).send(chain.toncenter, second, 2 * TON, bounce=False)

        assert not sent.resumed and sent.seqno == 2
        assert await chain.toncenter.get_balance(first) > 0.9 * TON
        assert await chain.toncenter.get_balance(second) > 1.9 * TON


async def test_a_dropped_message_is_reported_only_once_expired_and_a_retry_sends_afresh(tmp_path: Path) -> None:
    async with devnet_chain(tmp_path) as chain:
        outbox = Outbox(tmp_path / "wallet.outbox.json")
        wallet = await chain.funded_wallet(5 * TON, outbox=outbox, message_ttl=3)
        receiver = Wallet.generate().address
        await chain.devnet.set_faults(drop_next=1)
        started = time.monotonic()

        with pytest.raises(UpstreamTimeout, match="has expired: nothing was sent"):
            await wallet.send(chain.toncenter, receiver, TON, bounce=False, timeout=1)

        assert time.monotonic() - started >= 3  # not before the message expired
        assert outbox.pending() is None
        assert (await chain.devnet.status()).toncenter_mode.counters.messages_dropped == 1
        sent = await wallet.send(chain.toncenter, receiver, TON, bounce=False)
        assert (sent.seqno, sent.resumed) == (1, False)


async def test_a_contract_send_goes_through_rate_limits_and_failing_reads(tmp_path: Path) -> None:
    async with devnet_chain(tmp_path) as chain:
        owner = await chain.funded_wallet(5 * TON)
        registry = Registry.for_deploy(chain.toncenter, owner.address, RegistryParams())
        # Five failures in a row: a 429 with its text in `result`, tonlib's 500, the C++ server's 542 and 504.
        await chain.devnet.set_faults(fail_next=[429, 500, 542, 504, 500])

        await registry.deploy(owner)

        assert await registry.get_owner() == owner.address
        mode = (await chain.devnet.status()).toncenter_mode
        assert mode.counters.faults_injected == 5 and mode.fail_next == ()
