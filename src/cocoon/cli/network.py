"""``cocoon up``: a whole local network in one command (``cocoon status``, what its proxy shows, is in ``status``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cocoon.cli.common import clear_errors
from cocoon.logs import configure_logging


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
