"""``cocoon client keys`` in-process on a sidecar's own store: a key is printed once and listed without its
secret; revoking, budgets and usage say what they did; a deposit that cannot be read is one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cocoon.cli import app
from cocoon.crypto import load_or_create_signing_key
from cocoon.local import free_port

runner = CliRunner()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A free sidecar's settings (no chain_url: nothing is paid) keeping its keys under ``tmp_path``."""
    path = tmp_path / "client.toml"
    path.write_text(f'data_dir = "{tmp_path / "client"}"\n')
    return path


def keys(config: Path, *args: str) -> tuple[int, str]:
    """Exit code and stdout (what scripts read); ``said`` has what the user is told on stderr."""
    result = runner.invoke(app, ["client", "keys", *args, "--config", str(config)])
    return result.exit_code, result.stdout


def said(config: Path, *args: str) -> tuple[int, str]:
    """Exit code and everything printed, as one line (rich wraps stderr to the terminal's width)."""
    result = runner.invoke(app, ["client", "keys", *args, "--config", str(config)])
    return result.exit_code, " ".join(result.output.split())


def test_a_key_is_printed_once_and_listed_without_its_secret(config: Path) -> None:
    result = runner.invoke(
        app, ["client", "keys", "create", "--name", "ci-bot", "--budget", "0.5", "--rpm", "30", "--models", "a,b",
              "--config", str(config)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    secret = result.stdout.strip()  # the key alone on stdout: `KEY=$(cocoon client keys create ...)`
    assert secret.startswith("ck-") and len(secret) >= 46
    assert "budgets are not backed by a deposit" in " ".join(result.stderr.split())  # this sidecar pays nobody

    code, out = keys(config, "list", "--json")
    assert code == 0, out
    (listed,) = json.loads(out)
    assert secret not in out
    assert (listed["name"], listed["budget"], listed["rpm"], listed["models"]) == ("ci-bot", 5 * 10**8, 30, ["a", "b"])
    assert listed["state"] == "live" and listed["hint"] == secret[:7] + "…"
    table = runner.invoke(app, ["client", "keys", "list", "--config", str(config)], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "ci-bot" in table.stdout and "0.5 TON" in table.stdout
    assert secret not in table.stdout


def test_revoke_topup_set_budget_and_usage(config: Path) -> None:
    code, out = keys(config, "create", "--name", "app", "--budget", "1", "--json")
    assert code == 0, out
    key_id = json.loads(out)["id"]
    assert keys(config, "topup", "app", "--amount", "0.25")[0] == 0
    code, out = said(config, "set-budget", key_id, "--budget", "2")
    assert code == 0 and "2 TON" in out, out
    assert keys(config, "revoke", "app")[0] == 0
    code, out = keys(config, "list", "--json")
    assert json.loads(out)[0]["state"] == "revoked"
    code, out = keys(config, "usage", "--json", "--days", "7")
    assert code == 0 and json.loads(out) == []
    code, out = said(config, "usage", "--key", "nobody")
    assert code == 2 and "no API key is named 'nobody'" in out


def test_bad_names_and_amounts_are_one_clear_line(config: Path) -> None:
    code, out = said(config, "create", "--name", "has space", "--budget", "1")
    assert code == 2 and "is no key name" in out
    code, out = said(config, "create", "--name", "app", "--budget", "0.0000000001")
    assert code == 2 and "not a positive whole number of nanoton" in out
    code, out = said(config, "revoke", "ghost")
    assert code == 2 and "no API key is named 'ghost'" in out


def test_a_deposit_that_cannot_be_read_is_said_so(tmp_path: Path) -> None:
    config = tmp_path / "client.toml"
    down = f"http://127.0.0.1:{free_port()}"
    config.write_text(
        f'data_dir = "{tmp_path / "client"}"\nchain_url = "{down}"\nproxy_url = "{down}"\n'
        f'wallet_file = "{tmp_path / "wallet.json"}"\n'
    )
    load_or_create_signing_key(tmp_path / "wallet.json")  # a wallet exists: its deposit must be read
    code, out = said(config, "create", "--name", "app", "--budget", "1")
    assert code == 2
    assert "cannot read the client's deposit" in out, out
    assert f"cannot reach the proxy at {down}" in out and "is it running?" in out, out
    assert keys(config, "list", "--json")[1].strip() == "[]"


def test_keys_replace_the_shared_api_key(tmp_path: Path) -> None:
    config = tmp_path / "client.toml"
    config.write_text(f'data_dir = "{tmp_path / "client"}"\napi_key = "sk-shared"\n')
    code, out = said(config, "create", "--name", "app", "--budget", "1")
    assert code == 2 and "unset api_key first" in out
