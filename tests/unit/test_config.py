"""Settings: TOML file, then environment, then flags; mistakes name the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from cocoon.config import ProxySettings, WorkerSettings
from cocoon.errors import ConfigError


def test_toml_then_env_then_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "proxy.toml"
    config.write_text('port = 9000\nhost = "0.0.0.0"\n[policy]\nallow_simulated = true\n')
    assert ProxySettings.load(config).port == 9000
    assert ProxySettings.load(config).policy.allow_simulated
    monkeypatch.setenv("COCOON_PROXY_PORT", "9100")
    assert ProxySettings.load(config).port == 9100
    assert ProxySettings.load(config, port=9200).port == 9200
    assert ProxySettings.load(config).host == "0.0.0.0"


def test_worker_engines_come_from_toml_tables(tmp_path: Path) -> None:
    config = tmp_path / "worker.toml"
    config.write_text('[[engines]]\nkind = "synthetic"\nmodel = "echo"\n')
    settings = WorkerSettings.load(config)
    assert [(e.kind, e.model) for e in settings.engines] == [("synthetic", "echo")]


def test_errors_name_the_file_and_the_field(tmp_path: Path) -> None:
    config = tmp_path / "proxy.toml"
    config.write_text("port = 'eighty'\n")
    with pytest.raises(ConfigError, match=r"port.*proxy.toml"):
        ProxySettings.load(config)
    config.write_text("port = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        ProxySettings.load(config)
    config.write_text("prot = 1\n")
    with pytest.raises(ConfigError, match="prot"):
        ProxySettings.load(config)
    with pytest.raises(ConfigError, match="does not exist"):
        ProxySettings.load(tmp_path / "missing.toml")
