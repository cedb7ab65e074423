"""Fixtures shared by every test folder: the bundled model and free loopback ports."""

from __future__ import annotations

from pathlib import Path

import pytest

from cocoon.engines import model_cache
from cocoon.up import free_port

__all__ = ["free_port"]


@pytest.fixture(scope="session")
def bundled_model_path() -> Path:
    """The bundled Gemma 3 270M GGUF, assembled into the user's cache on first use."""
    return model_cache.bundled_model_path(progress=False)
