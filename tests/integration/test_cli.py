"""The ``cocoon`` command as a user meets it: ``up`` starts everything and stops everything."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from cocoon.engines.config import DEFAULT_MODEL
from tests.helpers.network import free_port


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_up_answers_then_stops_every_process_on_sigterm(tmp_path: Path) -> None:
    base = free_port()
    while _listening(base + 620):
        base = free_port()
    env = os.environ | {"COCOON_HOME": str(tmp_path)}
    up = subprocess.Popen(
        [sys.executable, "-m", "cocoon", "up", "--port-base", str(base), "--no-demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        lines = []
        assert up.stdout is not None
        for line in up.stdout:
            lines.append(line)
            if "cocoon is up" in line:
                break
            assert time.monotonic() < deadline, "".join(lines)
        assert f"http://127.0.0.1:{base}/v1" in "".join(lines)
        reply = httpx.post(
            f"http://127.0.0.1:{base}/v1/chat/completions",
            json={"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
            timeout=60,
        )
        assert reply.status_code == 200
        assert _listening(base) and _listening(base + 620)
        up.send_signal(signal.SIGTERM)
        assert up.wait(20) == 0
        assert not _listening(base) and not _listening(base + 620)
        workers = subprocess.run(["pgrep", "-f", f"{tmp_path}/up/worker"], capture_output=True, text=True)
        assert workers.stdout.strip() == ""
    finally:
        if up.poll() is None:
            up.kill()


def test_every_role_lists_its_settings_in_help() -> None:
    for role, field in (("worker", "slots"), ("proxy", "heartbeat_timeout"), ("client", "candidates")):
        out = subprocess.run(
            [sys.executable, "-m", "cocoon", role, "--help"], capture_output=True, text=True, check=True
        ).stdout
        assert field in out, out


def test_a_broken_config_file_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "proxy.toml"
    config.write_text("port = 'eighty'\n")
    result = subprocess.run(
        [sys.executable, "-m", "cocoon", "proxy", "--config", str(config)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "port" in result.stderr and "proxy.toml" in result.stderr
