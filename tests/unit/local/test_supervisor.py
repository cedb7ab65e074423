"""``cocoon up`` keeps its network running and cleans up after itself: a dead child is restarted with backoff,
a dead devnet ends the network, a killed parent takes its children with it, and two networks never share a
state folder or fight over a port. Real processes throughout (small Python ones)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cocoon.errors import ChildDied, ConfigError
from cocoon.local import LocalNetwork, free_port, spawn
from cocoon.local.network import default_home
from cocoon.local.processes import DEVNET_OFFSET, PROXY_OFFSET, port_in_use
from cocoon.local.supervisor import Supervisor
from tests.helpers.network import wait_for

DIES = [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]
LIVES = [sys.executable, "-c", "import time; time.sleep(60)"]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (dead, not yet reaped by its parent) counts as gone.
    return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def test_a_dead_child_is_restarted_with_a_growing_pause_and_a_line_saying_so(tmp_path: Path) -> None:
    lines: list[str] = []
    children = [spawn("worker-1", DIES, tmp_path / "worker-1.log"), spawn("proxy", LIVES, tmp_path / "proxy.log")]
    supervisor = Supervisor(children, lines.append, first_pause_s=0.05, max_pause_s=0.2)
    try:
        wait_for(lambda: (supervisor.check(), supervisor.restarts.get("worker-1", 0) >= 3)[1], 10, "three restarts")
        pauses = [line.split("restarting it in ")[1].split("s")[0] for line in lines if "restarting" in line]
        assert pauses[:3] == ["0.05", "0.1", "0.2"]
        assert "exited with code 3" in lines[0] and "boom" in lines[0] and "worker-1.log" in lines[0]
        assert any(line.startswith("worker-1 restarted (pid ") for line in lines)
        assert children[1].process.poll() is None  # the healthy child was left alone
    finally:
        for child in children:
            child.process.kill()
            child.process.wait()


def test_the_devnet_dying_ends_the_network(tmp_path: Path) -> None:
    devnet = spawn("devnet", DIES, tmp_path / "devnet.log")
    devnet.process.wait(10)
    with pytest.raises(ChildDied, match="devnet exited with code 3"):
        Supervisor([devnet], print).check()


def test_children_die_with_their_parent_even_when_it_is_killed(tmp_path: Path) -> None:
    """SIGKILL leaves a parent no time to stop anything: the kernel ends the children (PR_SET_PDEATHSIG)."""
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from cocoon.local import spawn\n"
            f"child = spawn('worker-1', {LIVES!r}, Path({str(tmp_path / 'w.log')!r}))\n"
            "print(child.process.pid, flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        env=os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    wait_for(lambda: "sleep" in Path(f"/proc/{child_pid}/cmdline").read_text(), 10, "the child to exec its command")
    parent.send_signal(signal.SIGKILL)
    parent.wait(10)
    wait_for(lambda: not alive(child_pid), 10, "the orphaned child to be ended")


def test_a_port_in_use_is_one_clear_error_before_anything_starts(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port + 620))
        taken.listen()
        assert port_in_use(port + 620)
        net = LocalNetwork(port_base=port, home=tmp_path, workers=1, model_path=Path("unused.gguf"))
        started = time.monotonic()
        with pytest.raises(ConfigError, match=f"port {port + 620} \\(the proxy's\\) is already in use") as refused:
            net.start()
        assert f"the proxy listens at +{PROXY_OFFSET}, the devnet at +{DEVNET_OFFSET}" in str(refused.value)
        assert net.children == [] and time.monotonic() - started < 5
        net.stop()
    assert not port_in_use(port + 620)


def test_two_networks_never_share_a_state_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COCOON_HOME", str(tmp_path))
    assert default_home(8080) == tmp_path / "up"
    assert default_home(9000) == tmp_path / "up-9000"
    first = LocalNetwork(port_base=free_port(), home=tmp_path / "net", workers=1)
    second = LocalNetwork(port_base=free_port(), home=tmp_path / "net", workers=1)
    (tmp_path / "net").mkdir()
    first._hold_home()
    try:
        with pytest.raises(ConfigError, match=f"another cocoon network \\(pid {os.getpid()}\\) is running in"):
            second._hold_home()
    finally:
        first.stop()
    second._hold_home()  # free again once the first has stopped
    second.stop()
