"""``cocoon worker``: run a worker, ``cocoon worker earnings`` to see what the proxies owe it,
``cocoon worker claim`` to claim that on chain, and ``cocoon worker doctor`` to see what it lacks to earn."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import Coroutine
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from cocoon.cli.common import (
    ConfigOpt,
    JsonOpt,
    RunConfigOpt,
    clear_errors,
    console,
    load_settings,
    print_report,
    role_group,
    role_runner,
    run_with_spinner,
    settle_heap,
    ton,
)
from cocoon.config import WorkerSettings
from cocoon.logs import configure_logging

worker_app = role_group("Run a worker, or see and claim its earnings.")


@role_runner(worker_app, WorkerSettings)
def worker(
    ctx: typer.Context,
    config: RunConfigOpt = None,
    proxy_url: Annotated[list[str] | None, typer.Option("--proxy", help="proxy WebSocket URL (repeatable)")] = None,
    slots: Annotated[int | None, typer.Option(help="jobs run at once")] = None,
) -> None:
    """Run a worker: load the engines, attest, dial out to the proxies and serve jobs (or: earnings, claim)."""
    if ctx.invoked_subcommand is not None:
        return
    from cocoon.worker import WorkerNode

    settings = load_settings(WorkerSettings, config, proxies=proxy_url or None, slots=slots)
    configure_logging(settings.log_level, "worker")

    async def main() -> None:
        node = WorkerNode(settings)
        await node.start()
        settle_heap()
        task = asyncio.create_task(node.serve())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):  # a signal cancels the node: that is how it stops
            await task

    with clear_errors():
        _run_async(main())


def _run_async(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop when it is installed (it comes with uvicorn[standard] on Linux)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


@worker_app.command()
def earnings(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """What each proxy owes this worker: vouchered, funded on chain, claimed; exit 1 when a proxy could not be
    asked (it is listed with why)."""
    from cocoon.worker.earnings import earnings as fetch

    settings = load_settings(WorkerSettings, config)
    survey = run_with_spinner("asking the proxies", lambda: fetch(settings), peer="the worker's proxies")
    data = [
        {"proxy": e.proxy, "channel": e.channel, "vouchered": e.vouchered, "funded": e.funded, "claimed": e.claimed}
        for e in survey.channels
    ]
    unreachable = [{"proxy": url, "error": error} for url, error in survey.unreachable.items()]
    print_report({"earnings": data, "unreachable": unreachable}, as_json, "worker earnings")
    if survey.unreachable:
        raise typer.Exit(1)


@worker_app.command()
def claim(config: ConfigOpt = None) -> None:
    """Claim the latest voucher of every proxy on chain, into the worker's payout wallet; exit 1 when a proxy
    could not be asked (the others are claimed)."""
    from cocoon.errors import UpstreamFailed
    from cocoon.worker.earnings import claim as claim_one
    from cocoon.worker.earnings import earnings as fetch

    settings = load_settings(WorkerSettings, config)

    async def work() -> tuple[int, dict[str, str]]:
        survey = await fetch(settings)
        if survey.unreachable and not survey.channels:
            raise UpstreamFailed("no proxy could be asked: " + "; ".join(survey.unreachable.values()))
        claims = [await claim_one(settings, e) for e in survey.channels if e.vouchered > e.claimed]
        return sum(claims), survey.unreachable

    paid, unreachable = run_with_spinner("claiming on chain", work, peer="the worker's proxies")
    console.print(f"[green]✓[/] claimed {paid} nanoton ({ton(paid)})")
    for error in unreachable.values():  # what they owe waits until they answer again
        console.print(f"[yellow]![/] not claimed from it: {escape(error)}", soft_wrap=True)
    if unreachable:
        raise typer.Exit(1)


MARKS = {"ok": "[green]✓[/]", "warn": "[yellow]![/]", "fail": "[red]✗[/]"}


@worker_app.command()
def doctor(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """What this machine can serve and what it lacks to earn: one line per check; exit 0 when it can earn."""
    from cocoon.worker.doctor import can_earn, examine

    settings = load_settings(WorkerSettings, config)
    with console.status("examining this machine…"):
        findings = asyncio.run(examine(settings))
    earns = can_earn(findings)
    if as_json:
        print(json.dumps({"can_earn": earns, "checks": [f.to_json() for f in findings]}, indent=2))
    else:
        out = Console(highlight=False, soft_wrap=True)
        for f in findings:
            out.print(f"{MARKS[f.status]} {f.check:<7} {escape(f.message)}")
            if f.fix and f.status != "ok":
                out.print(f"          → {escape(f.fix)}")
        verdict = "[green]this worker can earn[/]" if earns else "[red]this worker cannot earn yet[/]: fix the ✗ lines"
        out.print(verdict)
    raise typer.Exit(0 if earns else 1)
