"""Every role's log: one line per event of its own, not one per HTTP request a library made or served."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from cocoon.logs import configure_logging


@pytest.fixture(autouse=True)
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in ("httpx", "uvicorn.access")}
    yield
    root.handlers[:], root.level = handlers, level
    for name, old in levels.items():
        logging.getLogger(name).setLevel(old)


def test_request_lines_of_httpx_and_uvicorn_are_quiet_unless_debugging() -> None:
    configure_logging("info", "worker")
    for name in ("httpx", "uvicorn.access"):
        logger = logging.getLogger(name)
        assert not logger.isEnabledFor(logging.INFO) and logger.isEnabledFor(logging.WARNING)
    assert logging.getLogger("cocoon.worker").isEnabledFor(logging.INFO)
    configure_logging("debug", "worker")
    assert logging.getLogger("httpx").isEnabledFor(logging.INFO)
