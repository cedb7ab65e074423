"""``deploy/``, the copyable distributed deployment, holds together: every role's config loads with the settings
that role reads (no typo'd key, no bad value), the workers dial every proxy replica, Caddy balances over those
same replicas, the sidecar reaches Caddy and trusts its CA, and each health check asks the port its role listens
on. (Docker cannot run here; this is what can be checked without it.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from cocoon.config import ClientSettings, ProxySettings, RoleSettings, WorkerSettings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ROLES: dict[str, type[RoleSettings]] = {"proxy": ProxySettings, "worker": WorkerSettings, "client": ClientSettings}


def services() -> dict[str, dict[str, Any]]:
    compose: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return compose["services"]


def load(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> RoleSettings:
    role, _, config = service["command"]
    for key, value in (service.get("environment") or {}).items():
        monkeypatch.setenv(key, str(value))
    return ROLES[role].load(DEPLOY / "config" / Path(config).name)


def cocoon_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services().items() if s.get("image") == "cocoon:local"}


def test_every_role_config_loads_with_the_settings_of_its_role(monkeypatch: pytest.MonkeyPatch) -> None:
    found = cocoon_services()
    assert sorted(found) == ["proxy-1", "proxy-2", "sidecar", "worker-1", "worker-2", "worker-3"]
    for service in found.values():
        with monkeypatch.context() as env:
            assert isinstance(load(service, env), RoleSettings)


def test_workers_dial_every_replica_and_caddy_balances_over_them(monkeypatch: pytest.MonkeyPatch) -> None:
    found = cocoon_services()
    replica_ports = set()
    for name in ("proxy-1", "proxy-2"):
        with monkeypatch.context() as env:
            proxy = load(found[name], env)
        assert isinstance(proxy, ProxySettings)
        assert proxy.store_url and proxy.store_url.startswith("postgresql://")  # one set of books for both
        assert str(proxy.port) in " ".join(found[name]["healthcheck"]["test"])
        replica_ports.add(proxy.port)
    assert len(replica_ports) == 2
    keys, status = set(), set()
    for name in ("worker-1", "worker-2", "worker-3"):
        with monkeypatch.context() as env:
            worker = load(found[name], env)
        assert isinstance(worker, WorkerSettings)
        assert {int(re.search(r":(\d+)/", url).group(1)) for url in worker.proxies} == replica_ports  # type: ignore[union-attr]
        keys.add(worker.keys_file)
        status.add(worker.status_port)
    assert len(keys) == 3 and len(status) == 3 and 0 not in status  # own identities, own probes
    (upstreams,) = re.findall(r"reverse_proxy ([^{]*)\{", (DEPLOY / "Caddyfile").read_text())
    assert {int(port) for port in re.findall(r":(\d+)", upstreams)} == replica_ports


def test_the_sidecar_reaches_caddy_and_trusts_its_ca(monkeypatch: pytest.MonkeyPatch) -> None:
    sidecar = cocoon_services()["sidecar"]
    client = load(sidecar, monkeypatch)
    assert isinstance(client, ClientSettings)
    site = re.search(r"^(https://[0-9.]+:\d+) \{", (DEPLOY / "Caddyfile").read_text(), re.M)
    assert site is not None and client.proxy_url == site.group(1)
    assert client.tls_ca_file is not None and str(client.tls_ca_file).startswith("/caddy/")
    assert any(volume.startswith("caddy-data:/caddy") for volume in sidecar["volumes"])
    assert str(client.port) in " ".join(sidecar["healthcheck"]["test"])
