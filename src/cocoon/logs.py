"""Logging set-up shared by every role: one line per event, key=value context, never prompt text."""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str, role: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s {role} %(name)s %(message)s",
        force=True,
    )
    # uvicorn's access log would print every request line; keep it quiet unless debugging.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING if level != "debug" else logging.INFO)
