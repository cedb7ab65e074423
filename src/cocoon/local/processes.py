"""The child processes of a local network: each started in its own session with its own log file.

``LocalNetwork`` starts the devnet, the proxy, the workers and the client sidecar through ``spawn`` and ends them
with ``stop_all``; ``free_port`` picks loopback ports for tests and benchmarks.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Child:
    """One process of a local network and the file its output goes to."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int) -> list[str]:
        """The last ``lines`` lines the process wrote (fewer if it wrote fewer)."""
        return self.log.read_text(errors="replace").splitlines()[-lines:]


def spawn(name: str, command: list[str], log: Path) -> Child:
    """Start ``command`` with stdout and stderr appended to ``log`` and no stdin."""
    handle = log.open("ab")
    process = subprocess.Popen(
        command,
        stdout=handle,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C reaches only us; we stop the children in order
    )
    handle.close()
    return Child(name, process, log)


def stop_all(children: list[Child], grace: float = 8) -> None:
    """SIGTERM every running child, newest first; SIGKILL those still running after ``grace`` seconds in all."""
    for child in reversed(children):
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for tests and benchmarks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
