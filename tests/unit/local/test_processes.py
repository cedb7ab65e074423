"""The pieces of a local network that need no process: free ports, log tails, each role's chain settings and
where the ports of a network go."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import cast

from cocoon.local import UP_PORT_OFFSETS, Child, LocalChain, LocalNetwork, free_port
from cocoon.local.chain import money_options


def test_free_port_returns_a_loopback_port_that_can_be_bound() -> None:
    port = free_port()
    assert 0 < port < 65536
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


def test_a_childs_log_tail_is_its_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "proxy.log"
    log.write_text("".join(f"line {i}\n" for i in range(20)))
    child = Child("proxy", cast(subprocess.Popen[bytes], None), log)
    assert child.log_tail(3) == ["line 17", "line 18", "line 19"]
    assert len(child.log_tail(100)) == 20


def test_a_network_without_a_chain_gives_no_role_money_settings(tmp_path: Path) -> None:
    assert money_options(None, tmp_path, "proxy") == {}
    assert money_options(None, tmp_path, "worker-1") == {}


def test_each_role_gets_the_chain_and_its_own_wallet(tmp_path: Path) -> None:
    chain = LocalChain("http://127.0.0.1:8790", "EQregistry", "0:channel")
    on_devnet = {"chain_url": chain.url, "network": "devnet"}
    assert money_options(chain, tmp_path, "proxy") == on_devnet | {"registry": "EQregistry"}
    assert money_options(chain, tmp_path, "client") == on_devnet | {
        "wallet_file": str(tmp_path / "client-wallet.json"),
        "registry": "EQregistry",  # the client reads the policy from the registry itself
    }
    assert money_options(chain, tmp_path, "worker-2") == on_devnet | {
        "wallet_file": str(tmp_path / "worker-2" / "wallet.json")
    }


def test_on_a_devnet_that_limits_keyless_callers_each_role_has_its_own_api_key(tmp_path: Path) -> None:
    chain = LocalChain("http://127.0.0.1:8790", "EQregistry", "0:channel", keyed=True)
    keys = {role: money_options(chain, tmp_path, role)["chain_api_key"] for role in ("proxy", "client", "worker-1")}
    assert keys == {"proxy": "local-proxy", "client": "local-client", "worker-1": "local-worker-1"}


def test_a_network_puts_the_proxy_620_and_the_devnet_710_ports_above_its_base(tmp_path: Path) -> None:
    net = LocalNetwork(port_base=9000, home=tmp_path)
    assert net.base_url == "http://127.0.0.1:9000/v1"
    assert (net.proxy_port, net.devnet_port) == (9620, 9710)
    assert net.proxy_url == "http://127.0.0.1:9620"
    assert net.children == [] and net.chain is None


def test_free_ports_stay_below_the_ephemeral_range_and_never_repeat() -> None:
    """An outgoing connection can be given any ephemeral port, so a child told to bind one may find it taken."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(port + 90 < low for port in ports)


def test_processes_drawing_ports_at_once_are_never_given_the_same_one() -> None:
    """Two pytest-xdist workers (or a benchmark beside the tests) draw from one range: a port one was given,
    and each port a network derives from a port base it was given, is never handed to another before either
    binds it."""
    base = free_port(UP_PORT_OFFSETS)
    mine = {base + offset for offset in UP_PORT_OFFSETS}
    draw = "from cocoon.local import free_port\nprint(' '.join(str(free_port()) for _ in range(400)))"
    drawers = [subprocess.Popen([sys.executable, "-c", draw], stdout=subprocess.PIPE, text=True) for _ in range(3)]
    drawn = [set(map(int, drawer.communicate(timeout=60)[0].split())) for drawer in drawers]
    assert all(len(ports) == 400 for ports in drawn)
    everyone = [mine, *drawn]
    assert sum(len(ports) for ports in everyone) == len(set().union(*everyone))
