"""``cocoon status`` finds the proxy of the network ``cocoon up`` runs, and says clearly when none answers."""

from __future__ import annotations

from pathlib import Path

import tomli_w
from typer.testing import CliRunner

from cocoon.cli import app
from cocoon.cli.status import DEFAULT_PROXY, local_proxy
from cocoon.local import free_port


def test_the_local_network_s_proxy_comes_from_its_proxy_toml(tmp_path: Path) -> None:
    (tmp_path / "proxy.toml").write_text(tomli_w.dumps({"port": 9320, "data_dir": "x"}))
    assert local_proxy(tmp_path) == ("http://127.0.0.1:9320", True)


def test_without_a_local_network_the_default_proxy_is_asked(tmp_path: Path) -> None:
    assert local_proxy(tmp_path / "nothing-here") == (DEFAULT_PROXY, True)


def test_a_proxy_that_does_not_answer_is_one_clear_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(app, ["status", "--proxy", url])
    assert result.exit_code == 1
    assert url in result.output and "Traceback" not in result.output
