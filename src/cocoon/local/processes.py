"""The child processes of a local network: each started in its own session with its own log file, and on a
leash: a child whose parent dies (even by SIGKILL) is sent SIGTERM by the kernel, so none is left holding its port.

``LocalNetwork`` starts the devnet, the proxy, the workers and the client sidecar through ``spawn`` and ends them
with ``stop_all``; ``free_port`` picks loopback ports for tests and benchmarks, ``port_in_use`` checks one.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Child:
    """One process of a local network, the command that started it and the file its output goes to."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    command: list[str] = field(default_factory=list)
    started: float = field(default_factory=lambda: now())

    def log_tail(self, lines: int) -> list[str]:
        """The last ``lines`` lines the process wrote (fewer if it wrote fewer)."""
        return self.log.read_text(errors="replace").splitlines()[-lines:]


# Run before the command, in the child: ask Linux to SIGTERM it when its parent dies (PR_SET_PDEATHSIG, kept
# across exec), and give up if the parent is already gone. Python's ``preexec_fn`` could do the same, but it is
# unsafe in a process with threads (the dev attestation authority serves from one), so a tiny interpreter does
# it and then becomes the command. Elsewhere than Linux the command runs as is.
_LEASH = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)\n"
    "os.getppid() == int(sys.argv[1]) or os._exit(1)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def now() -> float:
    """The clock children's ages are measured on (monotonic seconds)."""
    return time.monotonic()


def on_leash(command: list[str]) -> list[str]:
    """``command`` wrapped so that the kernel ends it when this process dies (Linux; unchanged elsewhere).

    Linux signals the child when the *thread* that started it ends: spawn from a thread that lives as long as
    the network (the main one), never from a short-lived worker thread."""
    if not sys.platform.startswith("linux"):
        return command
    return [sys.executable, "-c", _LEASH, str(os.getpid()), *command]


def spawn(name: str, command: list[str], log: Path) -> Child:
    """Start ``command`` on a leash with stdout and stderr appended to ``log`` and no stdin."""
    handle = log.open("ab")
    process = subprocess.Popen(
        on_leash(command),
        stdout=handle,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C reaches only us; we stop the children in order
    )
    handle.close()
    return Child(name, process, log, command)


def port_in_use(port: int) -> bool:
    """Whether something already listens on (or holds) ``port`` on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc.errno in (errno.EADDRINUSE, errno.EACCES)
    return False


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


def free_port(offsets: Sequence[int] = (0,)) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, the kernel will not hand out on its own, and no
    other caller of ``free_port`` on this machine was given in the last ten minutes.

    Asking the kernel for port 0 returns an *ephemeral* port, and between closing that probe and the child's
    ``bind`` any outgoing connection (a worker dialling the proxy) may be given the same number, so the child
    fails with "address already in use". Ports are drawn below the ephemeral range instead. A probe alone
    cannot keep two processes (two pytest-xdist workers, a benchmark beside the tests) from drawing the same
    port before either child binds it, so each port handed out is also written, under a file lock, to a
    reservation file in the temporary folder that every caller reads first.

    ``offsets`` asks for a port whose neighbours at those distances are free and reserved as well: the ports
    ``cocoon up --port-base`` derives from its base are ``free_port(UP_PORT_OFFSETS)``.
    """
    low, _high = _ephemeral_range()
    # room above for the ports LocalNetwork derives from one it was given (devnet = proxy + 90, base + 710)
    ceiling = max(low - 1000, _PORT_FLOOR + 1000)
    with _reservations() as reserved:
        for _ in range(200):
            port = _random.randint(_PORT_FLOOR, ceiling)
            wanted = [port + offset for offset in offsets]
            if any(p in _handed_out or p in reserved or not _bindable(p) for p in wanted):
                continue
            until = time.time() + _RESERVED_FOR_S
            for p in wanted:
                _handed_out.add(p)
                reserved[p] = until
            return port
    raise OSError("no free loopback port below the ephemeral range")


# Where a local network on one port base listens: the sidecar on the base, the proxy and the devnet above it.
PROXY_OFFSET, DEVNET_OFFSET = 620, 710
UP_PORT_OFFSETS = (0, PROXY_OFFSET, DEVNET_OFFSET)
_PORT_FLOOR = 20000
_RESERVED_FOR_S = 600.0  # far longer than any child takes to bind the port it was given
_handed_out: set[int] = set()
_random = random.Random()


def _bindable(port: int) -> bool:
    """Whether ``port`` binds on 127.0.0.1 now, without ``SO_REUSEADDR`` (so a port in TIME_WAIT is refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextmanager
def _reservations() -> Iterator[dict[int, float]]:
    """The machine's port reservations (port -> wall-clock expiry), held under an exclusive lock and written
    back when the block ends. A missing or unreadable file is an empty one; expired entries are dropped."""
    path = Path(tempfile.gettempdir()) / f"cocoon-ports-{os.getuid()}.json"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    with os.fdopen(fd, "r+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        try:
            stored = json.loads(handle.read() or "{}")
            now_s = time.time()
            reserved = {int(port): float(until) for port, until in stored.items() if float(until) > now_s}
        except (ValueError, TypeError, AttributeError):
            reserved = {}
        yield reserved
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({str(port): until for port, until in reserved.items()}))


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's ephemeral port range (Linux), or the IANA one elsewhere."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 49152, 65535
