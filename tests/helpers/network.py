"""Starting and inspecting real local networks from tests: one place for what several test files need."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import httpx

from cocoon.crypto import load_or_create_node_keys
from cocoon.local import LocalNetwork, free_port

__all__ = ["directory", "free_port", "start_network", "wait_for", "worker_process"]


# Canaries are background jobs the proxy sends on its own: tests that count jobs or busy slots would see them.
# Only the tests about canaries turn them on (their proxy_options override these).
NO_CANARIES = {"canary_rate": 0.0, "canary_min_interval_s": 0.0}


def start_network(home: Path, **options: object) -> LocalNetwork:
    """A ``LocalNetwork`` on free ports (or ``proxy_port``) under ``home``, started and answering; stopped again
    if it fails to. Canaries are off unless ``proxy_options`` turn them on."""
    proxy_options = dict(cast(dict[str, object], options.pop("proxy_options", None) or {}))
    options["proxy_options"] = NO_CANARIES | proxy_options
    proxy_port = cast(int | None, options.pop("proxy_port", None)) or free_port()
    network = LocalNetwork(
        port_base=free_port(),
        proxy_port=proxy_port,
        home=home,
        **options,  # type: ignore[arg-type]
    )
    try:
        network.start()
        network.wait_ready(timeout=120)
    except BaseException:
        network.stop()
        raise
    return network


def directory(net: LocalNetwork) -> list[dict[str, object]]:
    """The proxy's ``GET /v1/directory`` workers."""
    workers: list[dict[str, object]] = httpx.get(f"{net.proxy_url}/v1/directory", timeout=5).json()["workers"]
    return workers


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def worker_process(net: LocalNetwork, worker_id: object) -> subprocess.Popen[bytes]:
    """The process of the worker whose id the directory shows."""
    for i in range(1, net.workers + 1):
        if load_or_create_node_keys(net.home / f"worker-{i}" / "keys.json").node_id == worker_id:
            return net.child(f"worker-{i}").process
    raise AssertionError(f"no worker process has id {worker_id}")
