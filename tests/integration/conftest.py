"""Real networks on loopback: proxy, workers and client sidecar started as processes by ``LocalNetwork``."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from cocoon.crypto import load_or_create_node_keys
from cocoon.up import LocalNetwork, free_port


def start_network(home: Path, **options: object) -> LocalNetwork:
    network = LocalNetwork(
        port_base=free_port(),
        proxy_port=free_port(),
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


@pytest.fixture(scope="session")
def network(tmp_path_factory: pytest.TempPathFactory, bundled_model_path: Path) -> Iterator[LocalNetwork]:
    """One shared network of two llama.cpp workers; the proxy records every byte it sees."""
    home = tmp_path_factory.mktemp("net")
    net = start_network(home, workers=2, model_path=bundled_model_path, capture_wire=home / "proxy-wire.bin")
    yield net
    net.stop()


@pytest.fixture
def oai(network: LocalNetwork) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=network.base_url, api_key="unused", max_retries=0, timeout=60)
    yield client
    client.close()


@contextlib.contextmanager
def llama_server(model: Path, n_ctx: int = 2048) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """llama-cpp-python's own OpenAI-compatible server on a free port: a real upstream for the
    ``openai_upstream`` engine. Yields its base URL (``.../v1``) and process; waits for ``/v1/models``."""
    port = free_port()
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model),
        "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", str(n_ctx), "--n_threads", "2",
        "--chat_format", "gemma",  # the base GGUF carries no chat template
        "--verbose", "false",
    ]  # fmt: skip
    log = tempfile.TemporaryFile()
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"llama_cpp.server exited early: {log.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{url}/models", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise TimeoutError(f"llama_cpp.server did not answer {url}/models within 60 s")
            time.sleep(0.1)
        yield url, server
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


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
