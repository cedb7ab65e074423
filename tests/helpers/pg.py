"""A throwaway PostgreSQL cluster for the tests: ``initdb`` into a temporary folder, ``pg_ctl start`` on a free
loopback port, trust authentication, stopped and deleted afterwards. Used by ``tests/conftest.py``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cocoon.local import free_port

SUPERUSER = "postgres"


def find_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` (Debian's layout) holding initdb and pg_ctl, or None."""
    found = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")]
    found = [p for p in found if (p / "initdb").is_file() and (p / "pg_ctl").is_file()]
    found.sort(key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return found[-1] if found else None


@dataclass(frozen=True, slots=True)
class PostgresCluster:
    bin_dir: Path
    root: Path
    port: int

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create an empty database ``name`` and return its asyncpg URL."""
        createdb = [str(self.bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, name]
        _run(createdb, self.root, as_postgres=False)
        return self.url(name)

    def stop(self) -> None:
        try:
            _run([str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast", "-w"], self.root)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(bin_dir: Path, timeout: float = 30.0) -> PostgresCluster:
    """initdb and start a cluster listening on 127.0.0.1 only; returns once ``pg_isready`` says it accepts
    connections. PostgreSQL refuses to run as root, so under root it runs as the ``postgres`` system user."""
    # Not under pytest's tmp dirs: those are 0700 root, which the postgres user cannot enter.
    root = Path(tempfile.mkdtemp(prefix="cocoon-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, user=SUPERUSER, group=SUPERUSER)
    cluster = PostgresCluster(bin_dir, root, free_port())
    initdb = [
        str(bin_dir / "initdb"), "-D", str(cluster.data_dir), "--username", SUPERUSER, "--auth=trust",
        "--no-sync", "--encoding=UTF8", "--locale=C",
    ]  # fmt: skip
    # Durability is the store's job in production, not in a cluster that lives for one test session.
    options = f"-p {cluster.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    start = [str(bin_dir / "pg_ctl"), "start", "-D", str(cluster.data_dir), "-l", str(root / "log"), "-o", options]
    try:
        _run(initdb, root)
        _run(start, root)
        _wait_ready(cluster, timeout)
    except BaseException as exc:
        log = root / "log"
        tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
        with contextlib.suppress(RuntimeError):  # it may never have started; stop() deletes the folder anyway
            cluster.stop()
        if tail and isinstance(exc, Exception):
            raise RuntimeError(f"PostgreSQL did not start ({exc}); its log ends with:\n{tail}") from exc
        raise
    return cluster


def _wait_ready(cluster: PostgresCluster, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    isready = [str(cluster.bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", SUPERUSER]
    while subprocess.run(isready, capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"PostgreSQL on 127.0.0.1:{cluster.port} not ready within {timeout:g}s")
        time.sleep(0.05)


def _run(command: list[str], cwd: Path, *, as_postgres: bool = True) -> None:
    if as_postgres and os.geteuid() == 0:
        command = ["runuser", "-u", SUPERUSER, "--", *command]
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip() or done.stdout}")
