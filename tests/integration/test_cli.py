"""The ``cocoon`` command as a user meets it: ``up`` starts everything and stops everything."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from cocoon.engines.config import DEFAULT_MODEL
from cocoon.local import UP_PORT_OFFSETS
from tests.helpers.network import free_port


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_up_answers_then_stops_every_process_on_sigterm(tmp_path: Path) -> None:
    base = free_port(UP_PORT_OFFSETS)
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
        assert (tmp_path / f"up-{base}" / "worker-1.toml").is_file()  # this port base's own state folder
        workers = subprocess.run(["pgrep", "-f", f"{tmp_path}/up-{base}/worker"], capture_output=True, text=True)
        assert workers.stdout.strip() == ""
    finally:
        if up.poll() is None:
            up.kill()


def _children_of(home: Path) -> dict[str, int]:
    """Role name -> pid of every running process started with a config under ``home``."""
    found: dict[str, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "status").read_text()
        except OSError:
            continue
        if "zombie" in state.lower():
            continue
        for arg in argv:
            text = arg.decode(errors="replace")
            if text.startswith(str(home)) and text.endswith(".toml"):
                found[Path(text).stem] = int(proc.name)
    return found


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_up_restarts_a_dead_worker_and_leaves_no_orphan_when_killed(tmp_path: Path) -> None:
    base = free_port(UP_PORT_OFFSETS)
    home = tmp_path / "net"
    command = [sys.executable, "-m", "cocoon", "up", "--port-base", str(base), "--no-demo", "--no-money"]
    up = subprocess.Popen(
        [*command, "--workers", "1", "--no-smollm2", "--home", str(home)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert up.stdout is not None
        lines = []
        for line in up.stdout:
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        assert set(_children_of(home)) == {"proxy", "worker-1", "client"}, "".join(lines)
        first = _children_of(home)["worker-1"]
        os.kill(first, signal.SIGKILL)
        for line in up.stdout:  # the supervisor says what it does
            lines.append(line)
            if "worker-1 restarted" in line:
                break
        assert any("worker-1 exited with code -9" in line and "restarting it in 1s" in line for line in lines)
        _wait(lambda: _children_of(home).get("worker-1", first) != first, 30, "a new worker-1")
        _wait(lambda: len(httpx.get(f"http://127.0.0.1:{base + 620}/v1/directory").json()["workers"]) == 1, 60,
              "the restarted worker to register")  # fmt: skip
        reply = httpx.post(
            f"http://127.0.0.1:{base}/v1/chat/completions",
            json={"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
            timeout=60,
        )
        assert reply.status_code == 200
        up.kill()  # SIGKILL: cocoon up stops nothing itself
        up.wait(10)
        _wait(lambda: _children_of(home) == {}, 20, "every child to end with its parent")
        assert not _listening(base) and not _listening(base + 620)
    finally:
        if up.poll() is None:
            up.kill()


def test_up_on_a_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    base = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base))
        taken.listen()
        done = subprocess.run(
            [sys.executable, "-m", "cocoon", "up", "--port-base", str(base), "--no-money", "--home", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2
    said = (done.stdout + done.stderr).strip()
    assert f"port {base} (the client sidecar's) is already in use" in said
    assert "Traceback" not in said


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
