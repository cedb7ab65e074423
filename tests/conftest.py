"""Fixtures shared by every test folder: the bundled model, free loopback ports and a throwaway PostgreSQL."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cocoon.engines import model_cache
from cocoon.proxy.store import default_url
from tests.helpers import pg

_databases = itertools.count(1)


@pytest.fixture(scope="session")
def bundled_model_path() -> Path:
    """The bundled Gemma 3 270M GGUF, assembled into the user's cache on first use."""
    return model_cache.bundled_model_path(progress=False)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[pg.PostgresCluster]:
    """A PostgreSQL server of our own on a free loopback port, for the whole session (see ``tests/pg.py``).

    Without PostgreSQL's binaries (``/usr/lib/postgresql/*/bin``) the PostgreSQL tests FAIL under CI (``CI=true``),
    whose ``.ci/run`` installs them, so a broken install cannot pass as green by skipping; on a developer's
    machine they SKIP, so the rest of the suite runs without a database server.
    """
    bin_dir = pg.find_bin_dir()
    if bin_dir is None:
        why = "PostgreSQL is not installed (no initdb/pg_ctl under /usr/lib/postgresql/*/bin)"
        if os.environ.get("CI", "").lower() in {"true", "1"}:
            pytest.fail(f"{why}; .ci/run installs it with apt-get install postgresql", pytrace=False)
        pytest.skip(f"{why}; `apt-get install postgresql` to run these tests")
    cluster = pg.start_cluster(bin_dir)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_cluster: pg.PostgresCluster) -> str:
    """``postgresql+asyncpg://postgres@127.0.0.1:<port>/cocoon``: one database for the session."""
    return postgres_cluster.create_database("cocoon")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty store for one test, on each database the proxy supports: the default SQLite file, then a fresh
    PostgreSQL database."""
    if request.param == "sqlite":
        return default_url(tmp_path / "proxy")
    cluster: pg.PostgresCluster = request.getfixturevalue("postgres_cluster")
    return cluster.create_database(f"test_{next(_databases)}")
