"""The ``cocoon`` command (console script ``cocoon = "cocoon.cli:app"``): ``up`` and ``status`` for a network, and
one command per role (``proxy``, ``worker``, ``client``, ``chain``) with that role's subcommands.

Each role command reads its settings from ``--config`` (TOML) and the environment; the options listed under
"Settings" in each ``--help`` are the TOML keys, and ``COCOON_<ROLE>_<KEY>`` overrides them.
"""

from cocoon.cli.main import app

__all__ = ["app"]
