"""Get-methods run here, in the TVM, on an account state the caller has proven.

``LiteserverClient`` proves an account's code and data against a block, then asks ``NodeTvm`` for the
get-method's result instead of trusting a server's answer. ``NodeTvm`` keeps one Node.js process running
``devnet/tvm.js``: @ton/sandbox's WASM emulator, the same TVM the devnet and the contract tests run, installed
with the devnet's npm dependencies. The result stack is converted into cocoon's own ``StackValue`` exactly as
``ToncenterClient`` decodes toncenter's, so the contract wrappers read one shape: ints, a Cell for a cell,
slice or builder, ``None`` for null (and, as tonlib renders it, for an empty tuple), lists for tuples.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import contextlib
import itertools
import json
import logging
import secrets
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from pytoniq_core.boc.address import Address
from pytoniq_core.boc.builder import Builder
from pytoniq_core.boc.cell import Cell
from pytoniq_core.boc.slice import Slice
from pytoniq_core.tlb.vm_stack import VmStack, VmTuple

from cocoon.chain.address import address_text
from cocoon.chain.devnet.nodejs import ensure_devnet_installed, node_executable
from cocoon.chain.toncenter import StackArg, StackValue
from cocoon.errors import ChainError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'cocoon[liteserver]'"
GAS_LIMIT = 1_000_000  # a get-method of ours uses a few thousand; this stops a runaway one
SCRIPT = "tvm.js"
STOP_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class ContractState:
    """What a get-method runs on: the account's code, data and balance, the block's time and config.

    ``config`` is the root of the masterchain config dictionary (``Hashmap 32 ^Cell``); a getter reads
    e.g. config param 19 (the global id) from it. ``libraries`` is the ``HashmapE 256`` of library cells the
    code references, if any.
    """

    address: Address
    code: Cell
    data: Cell
    balance: int
    unixtime: int
    config: Cell
    libraries: Cell | None = None


class NodeTvm:
    """Runs get-methods in @ton/sandbox's emulator, in one long-lived ``node tvm.js`` process.

    The process starts on the first call (installing the devnet's npm packages first if needed; a
    ConfigError when Node.js >= 18 or npm is missing) and again after it died. Callers may overlap, from any
    event loop or thread: each request carries an id and its answer is matched to it. ``aclose()`` stops the
    process. Every failure of a run is a ChainError.
    """

    def __init__(self, *, cache_dir: Path | None = None, timeout: float = 30.0) -> None:
        self.cache_dir = cache_dir
        self.timeout = timeout
        self._lock = threading.Lock()  # guards _node and the write of each request line
        self._node: _NodeProcess | None = None
        self._ids = itertools.count(1)
        self._config_bocs: dict[bytes, str] = {}  # by hash: a config is ~100 kB and changes rarely

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def run_get_method(
        self, state: ContractState, method: str, stack: Sequence[StackArg] = ()
    ) -> list[StackValue]:
        """Run ``method`` on ``state``; its result stack, bottom first (as ``ToncenterClient`` returns it).

        ChainError on an exit code other than 0 or 1, a library cell the state does not hold, or an emulator
        that refused the request or did not answer within ``timeout``.
        """
        where = f"get-method {method} on {address_text(state.address)}"
        answer = await self._request(
            {
                "code": _b64(state.code),
                "data": _b64(state.data),
                "libs": _b64(state.libraries) if state.libraries is not None else None,
                "address": address_text(state.address),
                "balance": str(state.balance),
                "config": self._config_boc(state.config),
                "method": method,
                "stack": _b64(VmStack.serialize([to_vm_arg(arg) for arg in stack])),
                "now": state.unixtime,
                "random_seed": secrets.token_hex(32),
                "gas_limit": str(GAS_LIMIT),
            },
            where,
        )
        if answer.get("missing_library"):
            raise ChainError(f"{where} needs library cell {answer['missing_library']}, which the state does not hold")
        exit_code = int(answer["exit_code"])
        if exit_code not in (0, 1):
            raise ChainError(f"{where} failed with exit code {exit_code} (run locally on the proven state)")
        try:
            values = VmStack.deserialize(Slice.one_from_boc(base64.b64decode(answer["stack"])))
        except Exception as exc:  # pytoniq_core raises bare errors of many kinds on a malformed BOC
            raise ChainError(f"{where}: the local TVM's result stack does not parse: {exc!r}") from exc
        return [from_vm_value(value) for value in values]

    async def default_config(self) -> Cell:
        """@ton/sandbox's own config dictionary (mainnet's, global id -239): what the devnet runs with."""
        answer = await self._request({"op": "default_config"}, "the sandbox's default config")
        config: Cell = Cell.one_from_boc(base64.b64decode(answer["config"]))
        return config

    def _config_boc(self, config: Cell) -> str:
        key = bytes(config.hash)
        if key not in self._config_bocs:
            if len(self._config_bocs) >= 8:
                self._config_bocs.clear()
            self._config_bocs[key] = _b64(config)
        return self._config_bocs[key]

    async def aclose(self) -> None:
        """Stop the node process, failing any request still waiting for it; the next call starts a new one."""
        with self._lock:
            node, self._node = self._node, None
        if node is not None:
            await asyncio.to_thread(node.stop)

    async def _request(self, payload: dict[str, Any], where: str) -> dict[str, Any]:
        future = await asyncio.to_thread(self._send, payload)
        try:
            answer = await asyncio.wait_for(asyncio.wrap_future(future), self.timeout)
        except TimeoutError as exc:
            # The gas limit bounds a run, so a silent emulator is a broken one: drop it, the next call restarts it.
            await self._discard(future)
            raise ChainError(f"{where}: the local TVM did not answer within {self.timeout:g}s") from exc
        if "error" in answer:
            raise ChainError(f"{where}: the local TVM refused it: {answer['error']}")
        return answer

    def _send(self, payload: dict[str, Any]) -> concurrent.futures.Future[dict[str, Any]]:
        """Write one request line (starting node if it is not running) and return the future of its answer."""
        request_id = next(self._ids)
        line = (json.dumps({"id": request_id, **payload}) + "\n").encode()
        with self._lock:
            for attempt in (1, 2):
                if self._node is None or not self._node.alive:
                    if self._node is not None:  # died: reap it and close its pipes, then start afresh
                        self._node.stop()
                    self._node = _NodeProcess.start(self.cache_dir)
                future = self._node.expect(request_id)
                try:
                    self._node.write(line)
                except OSError as exc:  # it died between the check and the write: once more on a fresh one
                    self._node.forget(request_id)
                    self._node.stop()
                    self._node = None
                    if attempt == 2:
                        raise ChainError(f"could not reach the local TVM process: {exc}") from exc
                return future
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def _discard(self, future: concurrent.futures.Future[dict[str, Any]]) -> None:
        with self._lock:
            node = self._node
            if node is None or not node.owns(future):
                return
            self._node = None
        await asyncio.to_thread(node.stop)


@dataclass(eq=False, slots=True)
class _NodeProcess:
    """One ``node tvm.js``: its pipes, the requests awaiting answers, and the last lines it wrote to stderr."""

    process: subprocess.Popen[bytes]
    pending: dict[int, concurrent.futures.Future[dict[str, Any]]] = field(default_factory=dict)
    stderr_tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=20))
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def start(cls, cache_dir: Path | None) -> _NodeProcess:
        folder = ensure_devnet_installed(cache_dir)
        command = [str(node_executable()), str(folder / SCRIPT)]
        try:
            process = subprocess.Popen(
                command, cwd=folder, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        except OSError as exc:
            raise ChainError(f"could not start the local TVM ({' '.join(command)}): {exc}") from exc
        node = cls(process)
        threading.Thread(target=node._read_answers, name="tvm-answers", daemon=True).start()
        threading.Thread(target=node._read_stderr, name="tvm-stderr", daemon=True).start()
        log.info("local TVM started pid=%d script=%s", process.pid, folder / SCRIPT)
        return node

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def expect(self, request_id: int) -> concurrent.futures.Future[dict[str, Any]]:
        future: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        with self.lock:
            self.pending[request_id] = future
        return future

    def forget(self, request_id: int) -> None:
        with self.lock:
            self.pending.pop(request_id, None)

    def owns(self, future: concurrent.futures.Future[dict[str, Any]]) -> bool:
        with self.lock:
            return any(waiting is future for waiting in self.pending.values())

    def write(self, line: bytes) -> None:
        stdin = self._pipe(self.process.stdin)
        stdin.write(line)
        stdin.flush()

    def stop(self) -> None:
        with contextlib.suppress(OSError):  # already gone: closing its stdin is the polite way to say stop
            self._pipe(self.process.stdin).close()
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._fail_pending(ChainError("the local TVM was stopped before it answered"))

    def _read_answers(self) -> None:
        with self._pipe(self.process.stdout) as stdout:
            for raw in stdout:
                try:
                    answer = json.loads(raw)
                    request_id = answer["id"]
                except (ValueError, KeyError, TypeError):
                    log.warning("local TVM wrote a line that is no answer: %r", raw[:200])
                    continue
                with self.lock:
                    future = self.pending.pop(request_id, None) if isinstance(request_id, int) else None
                if future is None:
                    log.warning("local TVM answered a request nobody waits for id=%r", request_id)
                else:
                    _settle(future, answer)
        code = self.process.wait()
        tail = " | ".join(self.stderr_tail) or "nothing on stderr"
        self._fail_pending(ChainError(f"the local TVM (node {SCRIPT}) exited with code {code}: {tail}"))

    def _read_stderr(self) -> None:
        with self._pipe(self.process.stderr) as stderr:
            for raw in stderr:
                text = raw.decode(errors="replace").rstrip()
                if text:
                    self.stderr_tail.append(text)
                    log.debug("local TVM stderr: %s", text)

    def _fail_pending(self, error: ChainError) -> None:
        with self.lock:
            waiting, self.pending = list(self.pending.values()), {}
        for future in waiting:
            _settle(future, error)

    @staticmethod
    def _pipe(pipe: IO[bytes] | None) -> IO[bytes]:
        if pipe is None:  # pragma: no cover - every pipe is opened in start()
            raise ChainError("the local TVM process has no pipe")
        return pipe


def to_vm_arg(arg: StackArg) -> int | Cell | Slice:
    """An argument as pytoniq's ``VmStack`` takes it; a bool is TVM's -1/0, as ``ToncenterClient`` sends it."""
    if isinstance(arg, bool):
        return -1 if arg else 0
    return arg


def from_vm_value(value: Any) -> StackValue:
    """One of pytoniq's ``VmStack`` values as cocoon's ``StackValue``; ChainError for a continuation."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, Cell):
        return value
    if isinstance(value, Slice):
        # toncenter renders a slice as the cell of its remaining bits and refs; so does this.
        cell: Cell = Builder().store_slice(value).end_cell()
        return cell
    if isinstance(value, Builder):
        built: Cell = value.end_cell()
        return built
    if isinstance(value, VmTuple | list):
        items = list(value.list if isinstance(value, VmTuple) else value)
        # tonlib, hence toncenter, cannot tell an empty tuple from null; reading both as None keeps the paths alike.
        return [from_vm_value(item) for item in items] if items else None
    raise ChainError(f"unsupported get-method result value {value!r} (continuations are not read)")


def _settle(future: concurrent.futures.Future[dict[str, Any]], outcome: dict[str, Any] | ChainError) -> None:
    # A caller that timed out or was cancelled cancelled its future meanwhile; nobody waits for this outcome.
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if isinstance(outcome, ChainError):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


def _b64(cell: Cell) -> str:
    return base64.b64encode(bytes(cell.to_boc())).decode()  # type: ignore[no-untyped-call]
