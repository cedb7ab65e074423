"""``cocoon status``: what the proxy's explorer shows (network, workers, money), as tables in the terminal or as
the ``GET /v1/stats`` JSON with ``--json``.

Without ``--proxy`` it asks the network ``cocoon up`` runs in its state folder (``--home``, or the one of
``--port-base``): its ``proxy.toml`` names the port and, with TLS, the certificate to trust; with no network
there, the default proxy at ``http://127.0.0.1:8700``.
"""

from __future__ import annotations

import json
import ssl
import tomllib
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from cocoon.cli.common import clear_errors, ton
from cocoon.errors import CocoonError, map_http_errors
from cocoon.protocol.tls import trust_context

DEFAULT_PROXY = "http://127.0.0.1:8700"


def status(
    proxy_url: Annotated[
        str | None, typer.Option("--proxy", "--proxy-url", help="proxy base URL (default: the local network's)")
    ] = None,
    port_base: Annotated[int, typer.Option(help="the --port-base the local network was started with")] = 8080,
    home: Annotated[Path | None, typer.Option(help="state folder of `cocoon up` (default: from --port-base)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the /v1/stats JSON for scripts")] = False,
) -> None:
    """Show a proxy's network: models, prices and traffic, workers and their reputation, and the money."""
    from cocoon.local.network import default_home  # the local harness only when asked: it imports engines

    url, verify = local_proxy(home or default_home(port_base)) if proxy_url is None else (proxy_url.rstrip("/"), True)
    with clear_errors(1), map_http_errors(f"the proxy at {url}"):
        response = httpx.get(f"{url}/v1/stats", timeout=10, verify=verify)
        if response.status_code != 200:
            raise CocoonError.from_openai(response.status_code, response.json())
    stats: dict[str, Any] = response.json()
    if as_json:
        print(json.dumps(stats, indent=2))
        return
    console = Console()
    for table in (network_table(stats), models_table(stats), workers_table(stats), money_table(stats["money"])):
        console.print(table)
    console.print(f"explorer: {url}/  ·  {stats['economics']}", markup=False, soft_wrap=True)


def local_proxy(home: Path) -> tuple[str, ssl.SSLContext | bool]:
    """The URL of the proxy ``cocoon up`` started in ``home`` and how to verify it; the default proxy when
    ``home`` holds no network."""
    config = home / "proxy.toml"
    if not config.is_file():
        return DEFAULT_PROXY, True
    settings = tomllib.loads(config.read_text())
    cert = settings.get("tls_certfile")
    scheme = "https" if cert else "http"
    return f"{scheme}://127.0.0.1:{settings.get('port', 8700)}", trust_context(Path(cert)) if cert else True


def network_table(stats: dict[str, Any]) -> Table:
    totals = stats["totals"]
    table = Table(title=f"network · proxy {stats['proxy_id']} ({stats['network']})")
    for col in ("workers online", f"req/min ({stats['window_s'] // 60} min)", "tok/s", "p50 TTFT", "p99 TTFT"):
        table.add_column(col)
    table.add_row(
        str(stats["workers_online"]),
        str(totals["requests_per_min"]),
        str(totals["tokens_per_s"]),
        _ms(totals["ttft_p50_ms"]),
        _ms(totals["ttft_p99_ms"]),
    )
    return table


def models_table(stats: dict[str, Any]) -> Table:
    table = Table(title="models (prices: TON per million tokens at 1x)")
    for col in ("model", "workers", "prompt", "cached", "completion", "coefficients", "req/min", "tok/s", "p50", "p99"):
        table.add_column(col)
    for m in stats["models"]:
        prices = m.get("price_per_million")
        table.add_row(
            m["model"],
            str(m["workers"]),
            *((ton(prices[k]) if prices else "free") for k in ("prompt", "cached", "completion")),
            ", ".join(f"{c / 1000:g}x" for c in m.get("price_coefficients", [])),
            str(m["requests_per_min"]),
            str(m["tokens_per_s"]),
            _ms(m["ttft_p50_ms"]),
            _ms(m["ttft_p99_ms"]),
        )
    return table


def workers_table(stats: dict[str, Any]) -> Table:
    table = Table(title="workers")
    for col in ("worker", "region", "models", "slots free", "done", "reputation", "breaker", "canaries",
                "earned", "attestation", "score ms"):  # fmt: skip
        table.add_column(col)
    for w in stats["workers"]:
        canary, earnings = w["canary"], w.get("earnings")
        table.add_row(
            w["worker_id"],
            w["region"] or "-",
            ", ".join(m["model"] for m in w["models"]),
            f"{w['free_slots']}/{w['slots']}",
            str(w["completed"]),
            str(w["reputation"]["factor"]) + (" (condemned)" if w["reputation"].get("condemned") else ""),
            w["breaker"]["state"],
            f"{canary['status']} ({canary['checked']}/{canary['sent']})",
            ton(earnings["vouchered"]) if earnings else "-",
            w["attested"]["provider"],
            str(w["score"].get("score_ms", "")),
        )
    return table


def money_table(money: dict[str, Any]) -> Table:
    table = Table(title="money", show_header=False)
    if not money.get("paid"):
        table.add_row("free proxy", money["economics"])
        return table
    for label, key in (
        ("client payments (revenue)", "client_payments"),
        ("worker earnings", "worker_earnings"),
        ("proxy fees", "proxy_fees"),
        ("settled from clients on chain", "settled_from_clients"),
        ("owed by clients, not settled", "owed_by_clients_unsettled"),
        ("funded to workers on chain", "funded_to_workers"),
        ("owed to workers, not funded", "owed_to_workers_unfunded"),
    ):
        table.add_row(label, f"{ton(money[key])} ({money[key]} nanoton)")
    table.add_row("on-chain operations", str(money["onchain_operations"]))
    table.add_row("receipts", ", ".join(f"{n} {s}" for s, n in sorted(money["receipts"].items())) or "none")
    table.add_row(
        "proxy wallet", money["proxy_wallet"] + (f"  {money['proxy_wallet_url']}" if money["proxy_wallet_url"] else "")
    )
    return table


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:g} ms"
