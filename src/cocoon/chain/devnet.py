"""The local devnet: a Node.js @ton/sandbox chain serving the toncenter v2 API on loopback.

``DevnetProcess`` runs it as a child process; ``DevnetClient`` speaks its devnet-only endpoints (fund,
advance_time, status); ``bootstrap_devnet`` deploys the registry and funds wallets for ``cocoon up``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
from pytoniq_core.boc.address import Address

from cocoon.chain.address import address_text, raw_address
from cocoon.chain.contracts import TON
from cocoon.chain.node import ensure_devnet_installed, node_executable
from cocoon.chain.registry import ModelEntry, ProxyEntry, Registry, RegistryParams
from cocoon.chain.toncenter import ToncenterClient
from cocoon.chain.wallet import Wallet
from cocoon.errors import ChainError, UpstreamTimeout

DEFAULT_DEVNET_PORT = 8790


@dataclass(frozen=True, slots=True)
class DevnetStatus:
    """The devnet's clock and activity: ``ops`` maps raw address → op code (hex) → message count."""

    now: int
    time_offset: int
    transactions: int
    treasury: str
    ops: dict[str, dict[str, int]] = field(default_factory=dict)

    def op_count(self, address: Address, op: int) -> int:
        return self.ops.get(raw_address(address), {}).get(f"0x{op:08x}", 0)


class DevnetClient:
    """The devnet-only endpoints; the toncenter ones go through ``ToncenterClient``."""

    def __init__(self, base_url: str, *, timeout: float = 15.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout)

    async def __aenter__(self) -> DevnetClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def fund(self, address: Address, amount: int) -> int:
        """Send ``amount`` nanoton from the devnet treasury (non-bounceable); returns the new balance."""
        result = await self._call("POST", "/devnet/fund", {"address": address_text(address), "amount": str(amount)})
        return int(result["balance"])

    async def advance_time(self, seconds: int) -> int:
        """Move the chain clock forward (close delays pass without sleeping); returns the new ``now``."""
        result = await self._call("POST", "/devnet/advance_time", {"seconds": seconds})
        return int(result["now"])

    async def status(self) -> DevnetStatus:
        r = await self._call("GET", "/devnet/status")
        return DevnetStatus(int(r["now"]), int(r["time_offset"]), int(r["transactions"]), r["treasury"], r["ops"])

    async def _call(self, method: str, path: str, payload: Any = None) -> Any:
        try:
            response = await self._http.request(method, path, json=payload)
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ChainError(f"devnet at {self.base_url} did not answer {path}: {exc}") from exc
        if not body.get("ok"):
            raise ChainError(f"devnet {path} failed: {body.get('error')}")
        return body["result"]


def devnet_command(folder: Path, port: int, host: str = "127.0.0.1", state_file: Path | None = None) -> list[str]:
    """The command line that runs the devnet server installed in ``folder``."""
    args = [str(node_executable()), str(folder / "server.js"), "--port", str(port), "--host", host]
    if state_file is not None:
        args += ["--state", str(state_file)]
    return args


class DevnetProcess:
    """The devnet server as a child process on ``host:port`` (``port=0`` picks a free one)."""

    def __init__(
        self,
        port: int = DEFAULT_DEVNET_PORT,
        *,
        host: str = "127.0.0.1",
        state_file: Path | None = None,
        cache_dir: Path | None = None,
        log_file: Path | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.state_file = state_file
        self.cache_dir = cache_dir
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
        args = devnet_command(folder, self.port, self.host, self.state_file)
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
            with contextlib.suppress(ValueError):
                message = json.loads(line)
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


async def bootstrap_devnet(
    devnet: DevnetClient,
    chain: ToncenterClient,
    *,
    owner: Wallet,
    params: RegistryParams | None = None,
    models: Sequence[ModelEntry] = (),
    measurements: Sequence[bytes] = (),
    proxies: Sequence[ProxyEntry] = (),
    fund: Mapping[Address, int] | None = None,
    owner_balance: int = 100 * TON,
) -> Registry:
    """Fund ``owner`` and the ``fund`` addresses, deploy the registry (once) and fill it; returns it."""
    await devnet.fund(owner.address, owner_balance)
    for address, amount in (fund or {}).items():
        await devnet.fund(address, amount)
    registry = Registry.for_deploy(chain, owner.address, params or RegistryParams())
    if not await registry.is_deployed():
        await registry.deploy(owner)
    for model in models:
        await registry.upsert_model(owner, model)
    for measurement in measurements:
        await registry.add_measurement(owner, measurement)
    for proxy in proxies:
        await registry.upsert_proxy(owner, proxy)
    return registry
