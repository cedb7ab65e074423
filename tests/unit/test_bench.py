"""``bench/`` holds together: every script starts (its imports resolve and its options parse: a bench broken by a
rename elsewhere shows here, not when someone needs its figures), the one quantile all of them report with
reads the measured values as documented, and the lean load generator counts only whole, good answers."""

from __future__ import annotations

import asyncio
import importlib.util
import math
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if 'if __name__ == "__main__"' in p.read_text())


def bench_module(name: str) -> ModuleType:
    """``bench/{name}.py``, imported once as ``bench_{name}`` (bench/ is no package: its scripts run as files)."""
    qualified = f"bench_{name}"
    if qualified in sys.modules:
        return sys.modules[qualified]
    spec = importlib.util.spec_from_file_location(qualified, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[qualified] = module  # dataclasses look their module up while it is being run
    spec.loader.exec_module(module)
    return module


def test_the_helpers_are_not_taken_for_scripts() -> None:
    assert "gateways.py" in SCRIPTS and "quantiles.py" not in SCRIPTS and "loadgen.py" not in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_bench_script_starts_and_explains_its_options(script: str) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


def test_the_quantile_is_a_measured_value_by_the_nearest_rank() -> None:
    quantile = bench_module("quantiles").quantile
    values = [5.0, 1.0, 4.0, 2.0, 3.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    assert quantile(values, 0.5) == 6.0  # the 6th of 10: half the values lie below it
    assert quantile(values, 0.99) == 10.0
    assert quantile(values, 0.0) == 1.0 and quantile(values, 1.0) == 10.0
    assert quantile(values, 0.1) == 2.0
    assert quantile([0.0123], 0.5, scale=1000) == pytest.approx(12.3)  # seconds read as milliseconds
    assert quantile(iter(values), 0.5) == 6.0  # any iterable, read once


def test_no_values_have_no_quantile_and_a_bad_q_is_refused() -> None:
    quantile = bench_module("quantiles").quantile
    assert math.isnan(quantile([], 0.5))
    with pytest.raises(ValueError, match="between 0 and 1"):
        quantile([1.0], 99)


Answer = Callable[[int], bytes]  # the n-th request on a connection -> the bytes answered


async def serve(answer: Answer) -> tuple[asyncio.Server, int, list[int]]:
    """A loopback HTTP/1.1 server that reads each request whole and writes ``answer(n)``; it closes a connection
    whose answer says ``connection: close``. Returns the server, its port and each connection's request count."""
    served: list[int] = []

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.append(0)
        mine = len(served) - 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))  # type: ignore[union-attr]
                await reader.readexactly(length)
                served[mine] += 1
                reply = answer(served[mine])
                writer.write(reply)
                await writer.drain()
                if b"connection: close" in reply:
                    break
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(connection, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], served


def chunked_sse(*events: bytes, close: bool = False) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
    head += b"connection: close\r\n\r\n" if close else b"\r\n"
    return head + b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"


STREAM = (b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n', b"data: [DONE]\n\n")


async def drive(answer: Answer, lanes: int = 2, seconds: float = 0.3) -> tuple[list[float], list[int]]:
    server, port, served = await serve(answer)
    try:
        load = bench_module("loadgen").StreamLoad(f"http://127.0.0.1:{port}/v1/chat/completions", {"stream": True})
        latencies: list[float] = []
        await load.run(lanes, time.monotonic() + seconds, latencies, timeout=5)
        return latencies, served
    finally:
        server.close()
        await server.wait_closed()


async def test_each_lane_keeps_its_connection_and_counts_every_whole_stream() -> None:
    latencies, served = await drive(lambda n: chunked_sse(*STREAM))
    assert len(served) == 2  # one connection per lane, kept alive
    assert len(latencies) == sum(served) > 10 and all(0 < t < 1 for t in latencies)


async def test_a_server_that_closes_after_each_answer_gets_a_new_connection() -> None:
    latencies, served = await drive(lambda n: chunked_sse(*STREAM, close=True), lanes=1)
    assert len(latencies) == len(served) > 3 and set(served) == {1}


async def test_an_error_status_or_a_stream_without_done_stops_the_load_with_what_came_back() -> None:
    refused = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 11\r\n\r\nno capacity"
    with pytest.raises(RuntimeError, match="answered 503: b'no capacity'"):
        await drive(lambda n: chunked_sse(*STREAM) if n < 3 else refused, lanes=1)
    with pytest.raises(RuntimeError, match=r"without \[DONE\]"):
        await drive(lambda n: chunked_sse(STREAM[0]), lanes=1)


async def test_a_connection_cut_mid_answer_is_an_error_not_a_counted_request() -> None:
    cut = chunked_sse(*STREAM, close=True)[:-20]  # a torn answer, then the server hangs up
    with pytest.raises(ConnectionError, match="closed the connection mid-answer"):
        await drive(lambda n: cut, lanes=1)
