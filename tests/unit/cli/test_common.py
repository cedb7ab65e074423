"""What every ``cocoon`` command shares: TON amounts in and out, the settings loader, clear errors, reports."""

from __future__ import annotations

import asyncio
import gc
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
import uvicorn

from cocoon.chain import TON
from cocoon.chain.pricing import parse_ton
from cocoon.cli import common
from cocoon.cli.common import load_settings, print_report, run_with_spinner, ton
from cocoon.config import ProxySettings
from cocoon.errors import ConfigError
from cocoon.local import free_port


def said(capsys: pytest.CaptureFixture[str]) -> str:
    """What the command wrote to stderr, with rich's line wrapping undone."""
    return " ".join(capsys.readouterr().err.split())


def test_ton_shows_nanoton_as_ton_without_rounding() -> None:
    assert ton(1_500_000_000) == "1.5 TON"
    assert ton(1) == "0.000000001 TON"
    assert ton(10 * TON) == "10 TON"


def test_parse_ton_reads_whole_and_fractional_ton_as_nanoton() -> None:
    assert parse_ton("5") == 5 * TON
    assert parse_ton("0.25") == 250_000_000
    assert parse_ton("0.000000001") == 1


def test_parse_ton_and_ton_round_trip() -> None:
    for nanoton in (1, 999, TON, 123_456_789_012):
        assert parse_ton(ton(nanoton).removesuffix(" TON")) == nanoton


def test_parse_ton_refuses_fractions_of_a_nanoton() -> None:
    with pytest.raises(ConfigError, match="not a positive whole number of nanoton"):
        parse_ton("0.0000000001")


@pytest.mark.parametrize("text", ["0", "-1", "-0.5"])
def test_parse_ton_refuses_zero_and_negative_amounts(text: str) -> None:
    with pytest.raises(ConfigError, match="not a positive whole number of nanoton"):
        parse_ton(text)


@pytest.mark.parametrize("text", ["", "five", "1,5", "nan", "inf", "-Infinity"])
def test_parse_ton_refuses_what_is_no_amount_and_shows_how_to_write_one(text: str) -> None:
    with pytest.raises(ConfigError, match=r"is not an amount of TON; write e\.g\. 5 or 0\.25"):
        parse_ton(text)


def test_load_settings_turns_a_broken_toml_file_into_exit_code_2_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "proxy.toml"
    config.write_text("port = [\n")
    with pytest.raises(typer.Exit) as exited:
        load_settings(ProxySettings, config)
    assert exited.value.exit_code == 2
    err = said(capsys)
    assert "error:" in err and "not valid TOML" in err and "proxy.toml" in err


def test_load_settings_names_the_option_with_a_bad_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "proxy.toml"
    config.write_text("port = 'eighty'\n")
    with pytest.raises(typer.Exit) as exited:
        load_settings(ProxySettings, config)
    assert exited.value.exit_code == 2
    assert "'port'" in said(capsys)


def test_load_settings_refuses_a_config_file_that_does_not_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(typer.Exit):
        load_settings(ProxySettings, tmp_path / "missing.toml")
    assert "missing.toml does not exist" in said(capsys)


def test_load_settings_applies_overrides_and_skips_those_left_unset(tmp_path: Path) -> None:
    config = tmp_path / "proxy.toml"
    config.write_text("port = 9100\n")
    settings = load_settings(ProxySettings, config, host="127.0.0.2", port=None)
    assert (settings.host, settings.port) == ("127.0.0.2", 9100)


def test_run_with_spinner_returns_what_the_work_returns() -> None:
    async def work() -> int:
        return 42

    assert run_with_spinner("thinking", work, peer="nobody") == 42


def test_run_with_spinner_names_an_unreachable_peer_and_exits_with_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"

    async def work() -> None:
        async with httpx.AsyncClient() as http:
            await http.get(url)

    with pytest.raises(typer.Exit) as exited:
        run_with_spinner("asking", work, peer=f"the proxy at {url}")
    assert exited.value.exit_code == 2
    err = said(capsys)
    assert f"cannot reach the proxy at {url}" in err and "is it running?" in err


def test_run_with_spinner_prints_a_cocoon_error_as_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    async def work() -> None:
        raise ConfigError("set chain_url first")

    with pytest.raises(typer.Exit) as exited:
        run_with_spinner("asking", work, peer="nobody")
    assert exited.value.exit_code == 2
    assert said(capsys) == "error: set chain_url first"


def test_print_report_as_json_is_the_data_unchanged(capsys: pytest.CaptureFixture[str]) -> None:
    data = {"deposit": 5 * TON, "channels": [{"kind": "client"}]}
    print_report(data, as_json=True, title="ignored")
    assert json.loads(capsys.readouterr().out) == data


def test_print_report_shows_amounts_also_in_ton(capsys: pytest.CaptureFixture[str]) -> None:
    print_report({"deposit": 5 * TON, "close_at": 1700000000}, as_json=False, title="client channel")
    out = capsys.readouterr().out
    assert "5000000000 (5 TON)" in out
    assert "1700000000 (" not in out  # a time, not an amount


def test_a_served_role_settles_its_heap_once_its_startup_has_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a role built to start leaves the collector's sight after the app's startup, not before it: a full
    collection then walks only what came later (``settle_heap``'s docstring has the pauses it saves)."""
    events: list[str] = []
    built: list[object] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        while (await receive())["type"] != "lifespan.shutdown":
            built.append([object() for _ in range(100)])  # what a role's startup builds
            events.append("startup")
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})

    real = common.settle_heap

    def settled() -> None:
        events.append("settled")
        real()
        server.should_exit = True  # startup is done: the test has seen what it came for

    monkeypatch.setattr(common, "settle_heap", settled)
    server = common._Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), lifespan="on", log_level="error"))

    try:
        asyncio.run(server.serve())
        assert events == ["startup", "settled"]
        assert gc.get_freeze_count() > 0
        assert not any(o is built[0] for o in gc.get_objects())  # frozen: no longer what collections walk
    finally:
        gc.unfreeze()
