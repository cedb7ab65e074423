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
    # uvicorn's access log and httpx's client log print a line per request (the sidecar's every job and voucher,
    # a worker's every upstream call): a busy node's log filled with them, and writing them cost as much CPU as
    # the request's own receipt check. Quiet unless debugging; their warnings and errors still show.
    for noisy in ("uvicorn.access", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING if level != "debug" else logging.INFO)
