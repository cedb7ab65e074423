"""The worker's heartbeat outlives a beat that fails: a dead heartbeat task would get a healthy, connected worker
dropped by the proxy for missed heartbeats."""

from __future__ import annotations

import asyncio
import logging
import time
from types import SimpleNamespace
from typing import cast

import pytest
import websockets

from cocoon.crypto import SigningKey
from cocoon.worker.link import ProxyLink
from cocoon.worker.runner import JobRunner


class Board:
    def __init__(self, crashes: int) -> None:
        self.crashes = crashes
        self.waiting = 0
        self.running = 0

    @property
    def free(self) -> int:
        if self.crashes:
            self.crashes -= 1
            raise RuntimeError("a slot board bug")
        return 1


class Socket:
    def __init__(self, closes_after: int) -> None:
        self.sent: list[bytes] = []
        self.closes_after = closes_after

    async def send(self, frame: bytes) -> None:
        if len(self.sent) >= self.closes_after:
            raise websockets.ConnectionClosed(None, None)
        self.sent.append(frame)


def link(board: Board) -> ProxyLink:
    runner = SimpleNamespace(
        board=board,
        meter=SimpleNamespace(rate=lambda: 0.0),
        first_tokens=SimpleNamespace(prefill_tokens_per_s=0.0, median_ms=lambda: 0.0),
    )
    return ProxyLink("ws://proxy", None, cast(SigningKey, None), cast(JobRunner, runner), 0.01, 1.0)  # type: ignore[arg-type]


async def test_a_heartbeat_that_crashes_is_logged_and_the_next_one_is_sent(caplog: pytest.LogCaptureFixture) -> None:
    socket = Socket(closes_after=2)
    caplog.set_level(logging.ERROR, logger="cocoon.worker")

    await asyncio.wait_for(link(Board(crashes=2))._heartbeat(socket), timeout=5)  # type: ignore[arg-type]

    assert len(socket.sent) == 2  # both beats after the two crashes went out, then the link closed
    crashed = [r for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], RuntimeError)]
    assert len(crashed) == 2


async def test_the_heartbeat_ends_quietly_when_the_link_closes() -> None:
    started = time.monotonic()
    await asyncio.wait_for(link(Board(crashes=0))._heartbeat(Socket(closes_after=0)), timeout=5)  # type: ignore[arg-type]
    assert time.monotonic() - started < 1
