"""The ``cocoon`` command's shape, read in-process: every command a user knows is where it always was."""

from __future__ import annotations

from typer.testing import CliRunner

from cocoon.cli import app

runner = CliRunner()


def _commands(*args: str) -> list[str]:
    result = runner.invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    listing = result.output.split("Commands:\n")[1].split("\n\n")[0]  # up to the blank line that ends the section
    return [line.split()[0] for line in listing.splitlines() if line.startswith("  ") and not line.startswith("   ")]


def test_cocoon_lists_up_and_status_then_each_role() -> None:
    assert _commands() == ["status", "up", "proxy", "worker", "client", "chain", "attest"]


def test_each_role_keeps_its_subcommands() -> None:
    assert _commands("proxy") == ["settle"]
    assert _commands("worker") == ["earnings", "claim", "doctor"]
    assert _commands("client") == ["deposit", "balance", "close", "withdraw", "keys"]
    assert _commands("client", "keys") == ["create", "list", "revoke", "topup", "set-budget", "usage"]
    assert _commands("chain") == ["wallet", "policy", "status", "registry"]


def test_a_bad_amount_is_a_clear_error_not_a_traceback() -> None:
    result = runner.invoke(app, ["client", "deposit", "--amount", "0.0000000001"])
    assert result.exit_code == 2
    assert "not a positive whole number of nanoton" in result.output


def test_up_tells_the_ports_it_derives_from_its_port_base() -> None:
    """The help spells the offsets out (the CLI imports no ``cocoon.local`` to start fast): they must be the
    ones ``LocalNetwork`` listens at."""
    import typing

    from cocoon.cli.network import up
    from cocoon.local.processes import DEVNET_OFFSET, PROXY_OFFSET

    option = typing.get_type_hints(up, include_extras=True)["port_base"].__metadata__[0]
    assert f"proxy at +{PROXY_OFFSET}, devnet at +{DEVNET_OFFSET}" in option.help
