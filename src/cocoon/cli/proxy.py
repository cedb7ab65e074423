"""``cocoon proxy``: run a proxy, and ``cocoon proxy settle`` to settle its vouchers on chain now."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from cocoon.cli.common import (
    HostOpt,
    JsonOpt,
    OperatorKeyOpt,
    PortOpt,
    ProxyUrlOpt,
    RunConfigOpt,
    console,
    load_settings,
    operator_headers,
    proxy_json,
    role_group,
    role_runner,
    run_with_spinner,
    serve,
)
from cocoon.config import ProxySettings
from cocoon.logs import configure_logging

proxy_app = role_group("Run a proxy, or settle its vouchers on chain.")


@role_runner(proxy_app, ProxySettings)
def proxy(
    ctx: typer.Context,
    config: RunConfigOpt = None,
    host: HostOpt = None,
    port: PortOpt = None,
    capture_wire: Annotated[
        Path | None, typer.Option(help="append every byte the proxy receives and sends to this file (audits)")
    ] = None,
) -> None:
    """Run a proxy: worker directory, routing, sealed relay, /metrics (or a subcommand: settle)."""
    if ctx.invoked_subcommand is not None:
        return
    from cocoon.proxy import create_app, wrap_capture

    settings = load_settings(ProxySettings, config, host=host, port=port)
    configure_logging(settings.log_level, "proxy")
    asgi = wrap_capture(create_app(settings), str(capture_wire) if capture_wire else None)
    serve(asgi, settings.host, settings.port, settings.log_level, settings)


@proxy_app.command()
def settle(
    proxy_url: ProxyUrlOpt = "http://127.0.0.1:8700", operator_key: OperatorKeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Settle now: claim every client voucher and fund every worker channel up to its voucher (on the proxy's
    own host, or with --operator-key)."""

    async def work() -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=300) as http:
            result: dict[str, Any] = await proxy_json(
                http, "POST", f"{proxy_url}/v1/settle", headers=operator_headers(operator_key)
            )
        return result

    report = run_with_spinner("settling on chain", work, peer=f"the proxy at {proxy_url}")
    if as_json:
        print(json.dumps(report, indent=2))
        return
    console.print(
        f"[green]✓[/] claimed {report['claimed_total']} nanoton from {len(report['claimed'])} client channels, "
        f"funded {report['funded_total']} nanoton to {len(report['funded'])} worker channels "
        f"({report['operations']} on-chain operations now, {report['onchain_operations']} in all)"
    )
    for channel, why in report["failed"].items():
        console.print(f"[red]failed[/red] {channel}: {why}")
