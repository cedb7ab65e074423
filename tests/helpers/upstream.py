"""A real OpenAI-compatible upstream for the ``openai_upstream`` engine: llama-cpp-python's own server."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from cocoon.local import free_port


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
