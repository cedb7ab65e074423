"""What the machine a worker runs on has: memory it can give a model, and NVIDIA GPUs with their memory and
confidential-computing state, read from ``/proc/meminfo`` and ``nvidia-smi`` (``cocoon worker doctor`` asks).

``nvidia-smi``'s output is not guaranteed stable across drivers, so each reading is parsed leniently and an
answer it cannot read is said in words (``Gpu.cc_mode == "unknown"``), never guessed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

NVIDIA_SMI_TIMEOUT_S = 10.0


def ram_available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    """Memory the kernel says new work can take without swapping (``MemAvailable``), else all of it."""
    try:
        lines = meminfo.read_text().splitlines()
    except OSError:  # no /proc (not Linux): the whole machine's memory is the best answer left
        lines = []
    for line in lines:
        fields = line.split()
        if fields[:1] == ["MemAvailable:"] and len(fields) > 1 and fields[1].isdigit():
            return int(fields[1]) * 1024  # kB
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@dataclass(frozen=True, slots=True)
class Gpu:
    """One NVIDIA GPU as ``nvidia-smi`` reports it."""

    index: int
    name: str
    memory_bytes: int


@dataclass(frozen=True, slots=True)
class GpuReport:
    """The machine's GPUs and their confidential-computing state; ``cc_mode`` is ``on``, ``off``, ``devtools``
    or ``unknown``, ``ready`` whether the GPUs accept work in that mode (``None`` when it could not be read)."""

    gpus: tuple[Gpu, ...]
    cc_mode: str
    ready: bool | None


def nvidia_smi() -> str | None:
    """The ``nvidia-smi`` on ``PATH``, or ``None`` (no NVIDIA driver here)."""
    return shutil.which("nvidia-smi")


async def _run(binary: str, *args: str) -> str:
    """``binary args`` stdout; ``OSError`` naming the command when it fails or runs past the timeout."""
    process = await asyncio.create_subprocess_exec(
        binary, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), NVIDIA_SMI_TIMEOUT_S)
    except TimeoutError as exc:
        process.kill()
        await process.wait()
        raise OSError(f"`nvidia-smi {' '.join(args)}` did not answer in {NVIDIA_SMI_TIMEOUT_S:g}s") from exc
    if process.returncode != 0:
        text = (err or out).decode(errors="replace").strip()[:200]
        raise OSError(f"`nvidia-smi {' '.join(args)}` failed ({process.returncode}): {text}")
    return out.decode(errors="replace")


async def read_gpus(binary: str) -> GpuReport:
    """The GPUs ``binary`` (an ``nvidia-smi``) lists, with the confidential-computing feature and ready state.

    Raises ``OSError`` when the GPU list itself cannot be read; a driver too old for ``conf-compute`` gives
    ``cc_mode = "unknown"``.
    """
    listing = await _run(binary, "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits")
    gpus = []
    for line in listing.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 3 and fields[0].isdigit():
            mib = int(fields[2]) if fields[2].isdigit() else 0
            gpus.append(Gpu(int(fields[0]), fields[1], mib * 1024 * 1024))
    try:
        mode = _after_colon(await _run(binary, "conf-compute", "-f")).lower()  # "CC status: ON"
    except OSError:
        mode = ""
    cc_mode = next((m for m in ("devtools", "on", "off") if m in mode.split()), "unknown")
    ready: bool | None = None
    if cc_mode in ("on", "devtools"):
        try:
            state = _after_colon(await _run(binary, "conf-compute", "-grs")).lower()  # "... ready state: ready"
        except OSError:
            state = ""
        ready = None if not state else state.startswith("ready")
    return GpuReport(tuple(gpus), cc_mode, ready)


def _after_colon(text: str) -> str:
    """The value of the first ``key: value`` line of ``text``."""
    for line in text.splitlines():
        if ":" in line:
            return line.split(":", 1)[1].strip()
    return text.strip()
