"""The devnet server as a child process: the command line that runs it and ``DevnetProcess``, which installs,
starts, waits for and stops it (tests and tools; ``cocoon up`` starts it as one of its own children instead).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from cocoon.chain.devnet.client import DevnetClient
from cocoon.chain.devnet.nodejs import ensure_devnet_installed, node_executable
from cocoon.chain.network import DEVNET_GLOBAL_ID
from cocoon.errors import ChainError, UpstreamTimeout

DEFAULT_DEVNET_PORT = 8790


@dataclass(frozen=True, slots=True)
class DevnetOptions:
    """How much the devnet behaves like toncenter in front of a real network; every knob is off when ``None``.

    ``toncenter`` turns on the realistic profile (reads cached 1 s, messages land 1 s after sendBoc, 1 request/s
    without an API key, 10 with one); a knob given beside it overrides the profile's value. ``global_id`` sets
    config param 19 at start: the devnet's own id (``DEVNET_GLOBAL_ID``) unless told otherwise, since the
    sandbox's own config is mainnet's (-239) and nothing signed on a devnet should be valid on mainnet; it is
    kept in the saved state. ``None`` leaves the sandbox's config as it is.
    """

    toncenter: bool = False
    read_cache_ms: int | None = None
    inclusion_delay_ms: int | None = None
    drop_rate: float | None = None
    fault_rate: float | None = None
    seed: int | None = None
    keyless_rps: float | None = None
    key_rps: float | None = None
    global_id: int | None = DEVNET_GLOBAL_ID

    def cli_args(self) -> list[str]:
        """The server.js flags for these options (none for the defaults)."""
        args = ["--toncenter"] if self.toncenter else []
        flags: list[tuple[str, int | float | None]] = [
            ("--read-cache-ms", self.read_cache_ms),
            ("--inclusion-delay-ms", self.inclusion_delay_ms),
            ("--drop-rate", self.drop_rate),
            ("--fault-rate", self.fault_rate),
            ("--seed", self.seed),
            ("--keyless-rps", self.keyless_rps),
            ("--key-rps", self.key_rps),
            ("--global-id", self.global_id),
        ]
        for flag, value in flags:
            if value is not None:
                args += [flag, str(value)]
        return args


def devnet_command(
    folder: Path,
    port: int,
    host: str = "127.0.0.1",
    state_file: Path | None = None,
    options: DevnetOptions | None = None,
) -> list[str]:
    """The command line that runs the devnet server installed in ``folder``."""
    args = [str(node_executable()), str(folder / "server.js"), "--port", str(port), "--host", host]
    if state_file is not None:
        args += ["--state", str(state_file)]
    return args + (options or DevnetOptions()).cli_args()


class DevnetProcess:
    """The devnet server as a child process on ``host:port`` (``port=0`` picks a free one), answering like
    toncenter on a real network as far as ``options`` asks."""

    def __init__(
        self,
        port: int = DEFAULT_DEVNET_PORT,
        *,
        host: str = "127.0.0.1",
        state_file: Path | None = None,
        cache_dir: Path | None = None,
        log_file: Path | None = None,
        options: DevnetOptions | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.state_file = state_file
        self.cache_dir = cache_dir
        self.options = options
        self.log_file = log_file or Path(tempfile.gettempdir()) / f"cocoon-devnet-{os.getpid()}-{port}.log"
        self._process: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> DevnetProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self, timeout: float = 60.0) -> None:
        """Install (first run only), launch, and wait until the devnet answers; UpstreamTimeout if not."""
        folder = await asyncio.to_thread(ensure_devnet_installed, self.cache_dir)
        args = devnet_command(folder, self.port, self.host, self.state_file, self.options)
        self._log = self._open_log()
        self._process = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=self._log, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        try:
            self.port = await asyncio.wait_for(self._read_ready_line(), timeout)
            await self._wait_until_answering(deadline)
        except ChainError:
            await self.stop()
            raise
        except TimeoutError as exc:
            await self.stop()
            raise UpstreamTimeout(f"the devnet did not start within {timeout:.0f} s; see {self.log_file}") from exc

    async def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (the devnet saves its state), then SIGKILL after ``timeout`` seconds."""
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _open_log(self) -> IO[bytes]:
        return open(self.log_file, "ab")  # closed in stop()

    async def _read_ready_line(self) -> int:
        assert self._process is not None and self._process.stdout is not None
        while True:
            line = await self._process.stdout.readline()
            if not line:
                code = await self._process.wait()
                raise ChainError(f"the devnet exited with code {code} before it was ready: {self._log_tail()}")
            try:
                message = json.loads(line)
            except ValueError:
                continue  # not the ready line: the server's other output
            if isinstance(message, dict) and message.get("ready"):
                return int(message["port"])

    def _log_tail(self) -> str:
        if self._log is not None:
            self._log.flush()
        try:
            lines = self.log_file.read_text(errors="replace").strip().splitlines()
        except OSError:
            return f"(no log at {self.log_file})"
        return " | ".join(lines[-3:]) + f" (full log: {self.log_file})"

    async def _wait_until_answering(self, deadline: float) -> None:
        async with DevnetClient(self.base_url) as client:
            while True:
                try:
                    await client.status()
                    return
                except ChainError:
                    if time.monotonic() >= deadline:
                        raise
                    await asyncio.sleep(0.1)
