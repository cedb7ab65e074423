"""Proxy replicas for tests: a paid network whose proxy runs as two processes on one PostgreSQL.

Both replicas read the same config but their port: the same key (so one wallet and one registry entry) and the
same data folder (so one wallet outbox, which lets a replica finish what a killed one sent). Every worker dials
both. Replica 1 is the network's own ``proxy``; replica 2 is the child ``proxy-2``.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Any

import httpx
import tomli_w

from cocoon.local import Child, LocalNetwork, free_port, spawn
from tests.helpers.chain import TONCENTER_MODE
from tests.helpers.money import COEFFICIENT, OPERATOR_KEY
from tests.helpers.network import NO_CANARIES, wait_for


def start_replicated_network(home: Path, store_url: str, workers: int = 2) -> tuple[LocalNetwork, str]:
    """A paid network (synthetic workers, settling only when told) with a second proxy replica; returns it and
    the replica's base URL once every worker is in both directories."""
    first, second = free_port(), free_port()
    net = LocalNetwork(
        port_base=free_port(),
        proxy_port=first,
        home=home,
        devnet_port=free_port(),
        devnet_options=TONCENTER_MODE,
        workers=workers,
        money=True,
        engine={"kind": "synthetic"},
        proxy_options=NO_CANARIES
        | {"settle_min_amount": 10**18, "settle_max_age": 10**6, "operator_key": OPERATOR_KEY, "store_url": store_url},
        worker_options={
            "price_coefficient": COEFFICIENT,
            "slots": 8,
            "proxies": [f"ws://127.0.0.1:{port}/v1/worker/connect" for port in (first, second)],
        },
    )
    try:
        net.start()
        start_replica(net, second)
        net.wait_ready(timeout=120)
        url = f"http://127.0.0.1:{second}"
        wait_for(lambda: len(_workers(url)) >= workers, 60, "every worker to join the second replica")
    except BaseException:
        net.stop()
        raise
    return net, url


def start_replica(net: LocalNetwork, port: int, name: str = "proxy-2", *, wait: bool = True) -> Child:
    """Start (or restart) replica ``name`` of ``net``'s proxy on ``port`` and, with ``wait``, wait until it
    answers; ``net.stop()`` stops it too. Call it from the main thread: a child on a leash dies with the thread
    that started it."""
    settings: dict[str, Any] = tomllib.loads((net.home / "proxy.toml").read_text())
    config = net.home / f"{name}.toml"
    config.write_text(tomli_w.dumps(settings | {"port": port}))
    command = [sys.executable, "-m", "cocoon", "proxy", "--config", str(config)]
    child = spawn(name, command, net.home / "logs" / f"{name}.log")
    net.children.append(child)
    if wait:
        wait_for(lambda: _healthy(f"http://127.0.0.1:{port}"), 60, f"proxy replica {name} to answer")
    return child


def replica_url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _workers(url: str) -> list[object]:
    try:
        found: list[object] = httpx.get(f"{url}/v1/directory", timeout=5).json()["workers"]
    except (httpx.HTTPError, ValueError, KeyError):
        return []
    return found
