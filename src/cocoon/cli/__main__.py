"""``python -m cocoon.cli``: the ``cocoon`` command, as ``python -m cocoon`` is."""

from cocoon.cli import app

app()
