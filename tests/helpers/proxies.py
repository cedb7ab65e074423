"""Networks of more than one proxy for tests: a second (third, ...) proxy process beside a ``LocalNetwork``'s own,
each with its own identity and store, and a client sidecar that holds connections to all of them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx
import tomli_w

from cocoon.local import LocalNetwork, free_port
from cocoon.local.processes import Child, spawn
from tests.helpers.network import NO_CANARIES, wait_for


def worker_socket(port: int) -> str:
    return f"ws://127.0.0.1:{port}/v1/worker/connect"


def start_proxy(net: LocalNetwork, name: str, port: int, **options: Any) -> Child:
    """Another proxy of ``net``'s network on ``port``, its data (keys, books) in ``home/name``; stopped with ``net``."""
    config = {"port": port, "policy": net.policy, "data_dir": str(net.home / name)} | NO_CANARIES | options
    return _spawn(net, name, "proxy", config)


def start_sidecar(net: LocalNetwork, name: str, proxy_urls: list[str], **options: Any) -> tuple[Child, str]:
    """A client sidecar of ``net``'s network holding ``proxy_urls``; returns it and its OpenAI base URL."""
    port = free_port()
    config = {"port": port, "proxy_urls": proxy_urls, "policy": net.policy} | options
    return _spawn(net, name, "client", config), f"http://127.0.0.1:{port}/v1"


def _spawn(net: LocalNetwork, name: str, role: str, config: dict[str, Any]) -> Child:
    path = net.home / f"{name}.toml"
    path.write_text(tomli_w.dumps(config))
    command = [sys.executable, "-m", "cocoon", role, "--config", str(path)]
    child = spawn(name, command, net.home / "logs" / f"{name}.log")
    net.children.append(child)  # net.stop() stops it with the rest
    return child


def directory_size(proxy_url: str) -> int:
    """How many workers the proxy at ``proxy_url`` lists now (0 when it does not answer)."""
    try:
        return len(httpx.get(f"{proxy_url}/v1/directory", timeout=2).json()["workers"])
    except (httpx.HTTPError, ValueError, KeyError):
        return 0


def wait_for_workers(proxy_url: str, count: int, timeout: float = 60) -> None:
    wait_for(lambda: directory_size(proxy_url) >= count, timeout, f"{count} workers at {proxy_url}")


def home_of(tmp: Path) -> Path:
    home = tmp / "net"
    home.mkdir(parents=True, exist_ok=True)
    return home
