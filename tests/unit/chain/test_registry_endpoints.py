"""Proxy endpoints in the registry: which ones clients and workers can use, and the CLI's refusal to list one
they would skip (before any gas is spent)."""

from __future__ import annotations

import logging
import os

import pytest
from pytoniq_core.boc.address import Address
from typer.testing import CliRunner

from cocoon.chain import ProxyEntry
from cocoon.chain.registry import endpoint_problem, usable_proxies
from cocoon.cli import app

USABLE = [
    "https://proxy.example:8700",
    "http://127.0.0.1:8700",
    "http://[::1]:8700",
    "https://proxy.example/cocoon",
    "wss://proxy.example/v1/worker/connect",
]
JUNK = {
    "": "empty",
    "https//proxy.example": "scheme is missing",
    "ftp://proxy.example": "scheme is ftp",
    "javascript:alert(1)": "scheme is javascript",
    "http://": "no host",
    "http://proxy example": "spaces",
    " http://proxy.example": "spaces",
    "http://proxy.example\x00": "control characters",
    "http://[::1": "not a URL",
    "http://proxy.example:99999": "not a URL",
    "http://proxy.example:0": "port is 0",
    "http://user:secret@proxy.example": "credentials",
    "http://proxy.example/?a=1": "query",
    "http://bücher.example": "punycode",
    "http://\ufffd\ufffdproxy": "not ASCII",
}


@pytest.mark.parametrize("endpoint", USABLE)
def test_a_proxy_base_url_is_usable(endpoint: str) -> None:
    assert endpoint_problem(endpoint) is None


@pytest.mark.parametrize(("endpoint", "why"), JUNK.items())
def test_junk_is_not_and_says_why(endpoint: str, why: str) -> None:
    problem = endpoint_problem(endpoint)
    assert problem is not None and why in problem


def test_readers_keep_the_usable_entries_and_log_each_one_skipped(caplog: pytest.LogCaptureFixture) -> None:
    address = Address((0, bytes(32)))
    entries = [ProxyEntry(i, address, os.urandom(32), e) for i, e in enumerate([USABLE[0], "ftp://x", USABLE[1]])]
    with caplog.at_level(logging.WARNING, logger="cocoon.chain.registry"):
        assert usable_proxies(entries) == [entries[0], entries[2]]
    assert [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()] == [
        f"registry proxy skipped id={1:064x} endpoint='ftp://x': its scheme is ftp, not http(s) or ws(s)"
    ]


def test_the_cli_refuses_to_list_an_endpoint_readers_would_skip() -> None:
    result = CliRunner().invoke(
        app, ["chain", "registry", "add-proxy", "https//proxy.example", "--address", "0:" + "00" * 32]
    )
    assert result.exit_code != 0
    assert "cannot be a proxy's endpoint: its scheme is missing" in result.output
