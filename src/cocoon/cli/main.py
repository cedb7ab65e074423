"""The ``cocoon`` typer app: ``up`` and ``status`` at the top, then one group per role (``proxy``, ``worker``,
``client``), ``chain`` and ``attest``, each defined in the module named after it."""

from __future__ import annotations

import typer

from cocoon.cli.attest import attest_app
from cocoon.cli.chain import chain_app
from cocoon.cli.client import client_app
from cocoon.cli.network import up
from cocoon.cli.proxy import proxy_app
from cocoon.cli.status import status
from cocoon.cli.worker import worker_app

app = typer.Typer(
    name="cocoon",
    help="cocoon: private LLM inference, sealed end to end, paid only for verified completions.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.command()(status)
app.command()(up)
_GROUPS = (("proxy", proxy_app), ("worker", worker_app), ("client", client_app), ("chain", chain_app))
for _name, _group in (*_GROUPS, ("attest", attest_app)):
    app.add_typer(_group, name=_name)
