"""``cocoon up`` (a whole local network in one command) and ``cocoon status`` (the workers a proxy knows)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.table import Table

from cocoon.cli.common import clear_errors
from cocoon.errors import map_http_errors
from cocoon.logs import configure_logging


def status(
    proxy_url: Annotated[str, typer.Option(help="proxy base URL")] = "http://127.0.0.1:8700",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON for scripts")] = False,
) -> None:
    """Show the workers a proxy knows, their load and routing score."""
    with clear_errors(1), map_http_errors(f"the proxy at {proxy_url}"):
        body = httpx.get(f"{proxy_url}/v1/directory", timeout=5).json()
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


def up(
    port_base: Annotated[int, typer.Option(help="client sidecar port; proxy at +620, devnet at +710")] = 8080,
    workers: Annotated[int, typer.Option(min=1, max=16, help="workers to start")] = 2,
    home: Annotated[Path | None, typer.Option(help="state folder (keys, configs, logs)")] = None,
    model_path: Annotated[Path | None, typer.Option(help="GGUF to serve instead of the bundled Gemma 3 270M")] = None,
    smollm2: Annotated[
        bool | None,
        typer.Option(help="also serve SmolLM2-135M-Instruct (the smollm extra); default: when it is installed"),
    ] = None,
    demo: Annotated[bool, typer.Option(help="send one chat request once the network answers")] = True,
    exit_after_demo: Annotated[bool, typer.Option(help="stop everything after the demo request")] = False,
    money: Annotated[
        bool, typer.Option(help="run a devnet chain and pay for requests in TON (--no-money: a free network)")
    ] = True,
) -> None:
    """Start a whole local network: devnet chain, proxy, workers on the CPU models, and the client sidecar."""
    from cocoon.engines.bundled import SMOLLM2_INSTALL, smollm2_installed
    from cocoon.local import LocalNetwork

    configure_logging("warning", "up")
    if smollm2 is None:
        smollm2 = smollm2_installed()
        if not smollm2:
            Console(stderr=True).print(
                f"serving Gemma 3 270M only; `{SMOLLM2_INSTALL}` adds SmolLM2-135M-Instruct, a model that can chat",
                markup=False,
            )
    network = LocalNetwork(
        port_base=port_base, workers=workers, home=home, model_path=model_path, money=money, smollm2=smollm2
    )
    with clear_errors():
        code = network.run(demo=demo, exit_after_demo=exit_after_demo)
    raise typer.Exit(code)
