"""Liveness: drop workers that stopped talking, and ping the rest so routing knows each one's round-trip time.

A worker's heartbeats and pongs refresh ``last_seen``; one silent for ``heartbeat_timeout`` seconds leaves the
directory (its jobs fail over). Pings go out every half second; their round trips feed ``WorkerEntry.rtt_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time

from cocoon.protocol import Ping, pack
from cocoon.proxy.routing.directory import Directory, SendFailed, WorkerEntry

log = logging.getLogger("cocoon.proxy")

PING_INTERVAL_S = 0.5
PINGS_REMEMBERED = 10  # a pong older than this many pings is not timed (its worker was too slow to matter)


class Liveness:
    """Sweeps ``directory`` for silent workers and times pings; one per proxy."""

    def __init__(self, directory: Directory, heartbeat_timeout: float) -> None:
        self.directory = directory
        self.heartbeat_timeout = heartbeat_timeout
        self._nonce = 0
        self._sent: dict[tuple[str, int], float] = {}

    async def run_forever(self) -> None:
        """Sweep until cancelled."""
        # Sweep often so a silent worker leaves within heartbeat_timeout + 0.1 s.
        interval = min(0.1, self.heartbeat_timeout / 4)
        sweeps_per_ping = max(1, round(PING_INTERVAL_S / interval))
        sweeps = 0
        while True:
            await asyncio.sleep(interval)
            sweeps += 1
            try:
                self.sweep()
                if sweeps % sweeps_per_ping == 0:
                    await self.ping_all()
            except Exception:  # a dead sweeper would keep silent workers routed forever
                log.exception("liveness sweep crashed; sweeping again in %gs", interval)

    def sweep(self) -> None:
        """Remove every worker silent for longer than ``heartbeat_timeout``."""
        for worker in self.directory.stale(self.heartbeat_timeout):
            log.warning("worker dropped worker=%s reason=missed-heartbeats", worker.worker_id)
            self.directory.remove(worker, "missed heartbeats")

    async def ping_all(self) -> None:
        """Send every connected worker a ping; a worker whose socket is gone is left to its reader to remove."""
        self._nonce += 1
        for worker in list(self.directory.workers.values()):
            self._sent[(worker.worker_id, self._nonce)] = time.monotonic()
            try:
                await worker.send(pack(Ping(nonce=self._nonce)))
            except SendFailed:
                log.debug("ping not delivered worker=%s", worker.worker_id)
        cutoff = self._nonce - PINGS_REMEMBERED
        self._sent = {k: v for k, v in self._sent.items() if k[1] > cutoff}

    def pong(self, worker: WorkerEntry, nonce: int) -> None:
        """The worker answered ping ``nonce``: it is alive, and the round trip updates its average."""
        worker.last_seen = time.monotonic()
        sent = self._sent.pop((worker.worker_id, nonce), None)
        if sent is not None:
            rtt = time.monotonic() - sent
            worker.rtt_s = rtt if worker.rtt_s == 0 else 0.8 * worker.rtt_s + 0.2 * rtt
