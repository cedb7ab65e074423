"""The ``cocoon`` command: ``up`` (a whole local network), and one command per role.

Each role command reads its settings from ``--config`` (TOML) and the environment; the options listed
under "Settings" in each ``--help`` are the TOML keys, and ``COCOON_<ROLE>_<KEY>`` overrides them.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import uvicorn
from pydantic_settings import BaseSettings
from rich.console import Console
from rich.table import Table

from cocoon.cli_money import chain_app, client_app, proxy_app, worker_app
from cocoon.config import ClientSettings, ProxySettings, RoleSettings, WorkerSettings
from cocoon.errors import CocoonError
from cocoon.logs import configure_logging

console = Console(stderr=True)


def _settings_help(cls: type[BaseSettings], prefix: str) -> str:
    lines = [f"Settings (TOML keys; env {prefix}<KEY> overrides):\n\n"]
    for name, field in cls.model_fields.items():
        default = field.default if field.default_factory is None else "(computed)"
        lines.append(f"  {name}: {field.description or ''} [default: {default}]\n\n")
    return "".join(lines)


app = typer.Typer(
    name="cocoon",
    help="cocoon: private LLM inference, sealed end to end, paid only for verified completions.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML settings file", exists=False)]
for _name, _group in (("proxy", proxy_app), ("worker", worker_app), ("client", client_app), ("chain", chain_app)):
    app.add_typer(_group, name=_name)


def _load(cls: type[RoleSettings], config: Path | None, **overrides: Any) -> Any:
    try:
        return cls.load(config, **overrides)
    except CocoonError as exc:
        console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from exc


def _run_async(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop when it is installed (it comes with uvicorn[standard] on Linux)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def _serve(asgi: Any, host: str, port: int, log_level: str) -> None:
    config = uvicorn.Config(
        asgi,
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
    uvicorn.Server(config).run()


@proxy_app.callback(invoke_without_command=True, epilog=_settings_help(ProxySettings, "COCOON_PROXY_"))
def proxy(
    ctx: typer.Context,
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="listen address")] = None,
    port: Annotated[int | None, typer.Option(help="listen port")] = None,
    capture_wire: Annotated[
        Path | None, typer.Option(help="append every byte the proxy receives and sends to this file (audits)")
    ] = None,
) -> None:
    """Run a proxy: worker directory, routing, sealed relay, /metrics (or a subcommand: settle)."""
    if ctx.invoked_subcommand is not None:
        return
    from cocoon.proxy import create_app, wrap_capture

    settings = _load(ProxySettings, config, host=host, port=port)
    configure_logging(settings.log_level, "proxy")
    asgi = wrap_capture(create_app(settings), str(capture_wire) if capture_wire else None)
    _serve(asgi, settings.host, settings.port, settings.log_level)


@worker_app.callback(invoke_without_command=True, epilog=_settings_help(WorkerSettings, "COCOON_WORKER_"))
def worker(
    ctx: typer.Context,
    config: ConfigOpt = None,
    proxy_url: Annotated[list[str] | None, typer.Option("--proxy", help="proxy WebSocket URL (repeatable)")] = None,
    slots: Annotated[int | None, typer.Option(help="jobs run at once")] = None,
) -> None:
    """Run a worker: load the engines, attest, dial out to the proxies and serve jobs (or: earnings, claim)."""
    if ctx.invoked_subcommand is not None:
        return
    from cocoon.worker import WorkerNode

    settings = _load(WorkerSettings, config, proxies=proxy_url or None, slots=slots)
    configure_logging(settings.log_level, "worker")

    async def main() -> None:
        node = WorkerNode(settings)
        await node.start()
        task = asyncio.create_task(node.serve())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass

    try:
        _run_async(main())
    except CocoonError as exc:
        console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from exc


@client_app.callback(invoke_without_command=True, epilog=_settings_help(ClientSettings, "COCOON_CLIENT_"))
def client(
    ctx: typer.Context,
    config: ConfigOpt = None,
    proxy_url: Annotated[str | None, typer.Option(help="proxy base URL")] = None,
    host: Annotated[str | None, typer.Option(help="listen address")] = None,
    port: Annotated[int | None, typer.Option(help="listen port")] = None,
) -> None:
    """Run the client sidecar: an OpenAI-compatible API on localhost (or: deposit, balance, close, withdraw)."""
    if ctx.invoked_subcommand is not None:
        return
    from cocoon.client import create_gateway

    settings = _load(ClientSettings, config, proxy_url=proxy_url, host=host, port=port)
    configure_logging(settings.log_level, "client")
    _serve(create_gateway(settings), settings.host, settings.port, settings.log_level)


@app.command()
def status(
    proxy_url: Annotated[str, typer.Option(help="proxy base URL")] = "http://127.0.0.1:8700",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON for scripts")] = False,
) -> None:
    """Show the workers a proxy knows, their load and routing score."""
    try:
        body = httpx.get(f"{proxy_url}/v1/directory", timeout=5).json()
    except httpx.HTTPError as exc:
        console.print(f"[red]error:[/red] cannot reach the proxy at {proxy_url}: {exc}; is it running?")
        raise typer.Exit(1) from exc
    if as_json:
        print(json.dumps(body, indent=2))
        return
    table = Table(title=f"proxy {body.get('proxy_id')}")
    for col in ("worker", "models", "slots free", "queue", "tok/s", "done", "failed", "rtt ms", "expected ms",
                "reputation", "breaker", "score ms"):  # fmt: skip
        table.add_column(col)
    for w in body["workers"]:
        table.add_row(
            w["worker_id"],
            ", ".join(m["model"] for m in w["models"]),
            f"{w['free_slots']}/{w['slots']}",
            str(w["queue_depth"]),
            str(w["tokens_per_s"]),
            str(w["completed"]),
            str(w["failed"]),
            str(w["score"].get("rtt_ms", "")),
            str(w["score"]["expected_latency_ms"]),
            str(w["score"].get("reputation", "")),
            str(w["score"].get("breaker", "")),
            str(w["score"].get("score_ms", "")),
        )
    Console().print(table)


@app.command()
def up(
    port_base: Annotated[int, typer.Option(help="client sidecar port; proxy at +620, devnet at +710")] = 8080,
    workers: Annotated[int, typer.Option(min=1, max=16, help="workers to start")] = 2,
    home: Annotated[Path | None, typer.Option(help="state folder (keys, configs, logs)")] = None,
    model_path: Annotated[Path | None, typer.Option(help="GGUF to serve instead of the bundled Gemma 3 270M")] = None,
    demo: Annotated[bool, typer.Option(help="send one chat request once the network answers")] = True,
    exit_after_demo: Annotated[bool, typer.Option(help="stop everything after the demo request")] = False,
    money: Annotated[
        bool, typer.Option(help="run a devnet chain and pay for requests in TON (--no-money: a free network)")
    ] = True,
) -> None:
    """Start a whole local network: devnet chain, proxy, workers on the CPU model, and the client sidecar."""
    from cocoon.local import LocalNetwork

    configure_logging("warning", "up")
    network = LocalNetwork(port_base=port_base, workers=workers, home=home, model_path=model_path, money=money)
    try:
        raise typer.Exit(network.run(demo=demo, exit_after_demo=exit_after_demo))
    except CocoonError as exc:
        console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from exc


if __name__ == "__main__":
    app()
