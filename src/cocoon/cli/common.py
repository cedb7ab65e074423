"""What every ``cocoon`` command shares: the settings loader, the options, clear errors instead of tracebacks,
the spinner that runs a command's async work, TON amounts in and out, and the report printer.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import socket
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import uvicorn
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cocoon.chain.pricing import ton_text
from cocoon.config import RoleSettings, TlsServing
from cocoon.errors import CocoonError, map_http_errors

console = Console(stderr=True, soft_wrap=True)  # an error naming a long path stays one line, copyable
T = TypeVar("T")
S = TypeVar("S", bound=RoleSettings)
F = TypeVar("F", bound=Callable[..., Any])

RunConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML settings file", exists=False)]
"""``--config`` of the commands that run a role."""
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML settings file of the role")]
"""``--config`` of a role's subcommands (deposit, earnings, …)."""
HostOpt = Annotated[str | None, typer.Option(help="listen address")]
PortOpt = Annotated[int | None, typer.Option(help="listen port")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]
ProxyUrlOpt = Annotated[str, typer.Option(help="proxy base URL")]
OperatorKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--operator-key",
        envvar="COCOON_PROXY_OPERATOR_KEY",
        help="the proxy's operator_key; not needed on the proxy's own host when it has none",
    ),
]


def operator_headers(key: str | None) -> dict[str, str]:
    """The headers that show a proxy this caller is its operator (none without a key)."""
    return {"authorization": f"Bearer {key}"} if key else {}


async def proxy_json(http: Any, method: str, url: str, **kwargs: Any) -> Any:
    """The JSON body of a proxy's answer; its OpenAI-shaped error as the matching ``CocoonError`` otherwise."""
    response = await http.request(method, url, **kwargs)
    if response.status_code != 200:
        raise CocoonError.from_openai(response.status_code, response.json())
    return response.json()


AMOUNTS = {"deposit", "claimed", "vouchered", "charged", "reserved", "free", "wallet_balance", "proxy_wallet_balance"}


def role_group(help_text: str) -> typer.Typer:
    """The typer group of one role's commands (``cocoon proxy …``)."""
    return typer.Typer(help=help_text, pretty_exceptions_enable=False, rich_markup_mode=None)


def role_runner(group: typer.Typer, settings: type[RoleSettings]) -> Callable[[F], F]:
    """Make the decorated function what plain ``cocoon ROLE`` runs (``group``'s callback, so the subcommands
    still work); its ``--help`` ends with every setting of ``settings``."""
    return group.callback(invoke_without_command=True, epilog=settings_help(settings))


def settings_help(cls: type[RoleSettings]) -> str:
    """The "Settings" epilog of a role's ``--help``: every TOML key, its description and default."""
    lines = [f"Settings (TOML keys; env {cls.model_config.get('env_prefix', '')}<KEY> overrides):\n\n"]
    for name, field in cls.model_fields.items():
        default = field.default if field.default_factory is None else "(computed)"
        lines.append(f"  {name}: {field.description or ''} [default: {default}]\n\n")
    return "".join(lines)


@contextlib.contextmanager
def clear_errors(code: int = 2) -> Iterator[None]:
    """A CocoonError inside the block is printed as ``error: MESSAGE`` and exits with ``code``, no traceback."""
    try:
        yield
    except CocoonError as exc:
        # The message as text, never markup: it quotes what other parties sent, brackets included.
        console.print(Text.assemble(("error:", "red"), " ", exc.message))
        raise typer.Exit(code) from exc


def load_settings(cls: type[S], config: Path | None, **overrides: Any) -> S:
    """``cls`` from the ``config`` TOML file, the environment and ``overrides`` (``None`` ones skipped).

    A missing or broken file, or a bad value, prints what is wrong and where, and exits with code 2."""
    with clear_errors():
        return cls.load(config, **overrides)


def run_with_spinner(what: str, work: Callable[[], Coroutine[Any, Any, T]], *, peer: str) -> T:
    """Run ``work`` under a spinner saying ``what``; returns its result.

    A CocoonError, or an HTTP failure talking to ``peer`` (``"the proxy at URL"``), prints one clear line and
    exits with code 2."""
    with clear_errors(), map_http_errors(peer), console.status(what + "…"):
        return asyncio.run(work())


def serve(asgi: Any, host: str, port: int, log_level: str, tls: TlsServing | None = None) -> None:
    """Serve ``asgi`` with uvicorn until SIGINT/SIGTERM; over TLS when ``tls`` names a certificate and key."""
    certfile = keyfile = None
    if tls is not None and tls.tls_certfile is not None:
        certfile, keyfile = str(tls.tls_certfile), str(tls.tls_keyfile)
    config = uvicorn.Config(
        asgi,
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
        host=host,
        port=port,
        log_level=log_level,
        lifespan="on",
        ws="websockets-sansio",  # the legacy implementation costs the proxy ~2x CPU per worker frame
        ws_ping_interval=None,
        ws_max_size=2**26,
        timeout_graceful_shutdown=5,
        access_log=False,
    )
    _Server(config).run()


class _Server(uvicorn.Server):
    """uvicorn's server, which settles the heap (``settle_heap``) once the app's startup has run."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        settle_heap()


def settle_heap() -> None:
    """Move everything a role built to start (modules, its app, pydantic and SQLAlchemy schemas, its config)
    out of the garbage collector's sight; call it once, when startup is done.

    The problem: CPython's full collection walks every tracked object, and a started role holds ~125,000 of
    them that live as long as it does. Measured under load (16 streams through sidecar → proxy → worker),
    one full collection took 60–116 ms, a pause of the whole event loop that every stream in flight waited
    out, and collections were ~5% of the sidecar's CPU. What this does: one ``gc.collect()`` (startup's
    garbage goes now, not into the frozen set), then ``gc.freeze()``, so later collections walk only the
    objects made since. Frozen objects are still freed by reference counting; only a reference cycle among
    them would stay, and startup's are long-lived by nature.
    """
    gc.collect()
    gc.freeze()


def ton(nanoton: int) -> str:
    """``1500000000`` → ``1.5 TON`` (display only: amounts stay integers)."""
    return ton_text(nanoton)


def print_report(data: dict[str, Any], as_json: bool, title: str) -> None:
    """``data`` as indented JSON, or as a two-column table whose amounts also show in TON."""
    if as_json:
        print(json.dumps(data, indent=2))
        return
    table = Table(title=title, show_header=False)
    for key, value in data.items():
        if isinstance(value, list):
            for i, item in enumerate(value):
                table.add_row(f"{key}[{i}]", "  ".join(f"{k}={v}" for k, v in item.items()))
        else:
            table.add_row(key, f"{value} ({ton(value)})" if key in AMOUNTS else str(value))
    Console().print(table)
