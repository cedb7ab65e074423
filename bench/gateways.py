"""What cocoon adds in front of a zero-cost upstream, beside another gateway: latency and requests per second.

One tiny OpenAI-compatible server answers every streamed chat completion at once with fixed chunks. Three
paths reach it, measured in one run by the same client: the upstream alone; cocoon (OpenAI sidecar -> proxy ->
worker with the ``openai_upstream`` engine -> upstream, every hop a real local socket, the request sealed end
to end); and LiteLLM's proxy in front of the same upstream (installed by this script in its own venv, or
skipped with a message if that fails). Latency is request sent -> ``[DONE]`` read; a gateway's CPU per request
(from /proc, each of its processes, the upstream's not counted) says what it costs where latency is noisy.
The requests come from ``bench/loadgen.py`` (``--client httpx``: from an ``httpx.AsyncClient``, whose own CPU
capped the upstream-alone row near 370 requests/s here; see loadgen's docstring).
Usage: ``python bench/gateways.py [--seconds 4] [--chunks 16] [--levels 1,16] [--client lean] [--no-litellm]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from loadgen import StreamLoad
from quantiles import quantile
from rich.console import Console
from rich.table import Table
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cocoon.engines import DEFAULT_MODEL
from cocoon.local import LocalNetwork, free_port

UPSTREAM_MODEL = "instant-upstream"
LITELLM_VENV = Path.home() / ".cache" / "cocoon" / "bench-litellm"
LITELLM_KEY = "sk-cocoon-bench-" + os.urandom(12).hex()  # LiteLLM's proxy refuses to start without a master key
console = Console(width=150)


# ---- the upstream: fixed chunks, at once --------------------------------------------------------------------


def sse_body(chunks: int) -> bytes:
    """A whole streamed chat completion: ``chunks`` one-token deltas, the finish, the usage, ``[DONE]``."""

    def event(delta: dict[str, str], finish: str | None = None, usage: dict[str, int] | None = None) -> bytes:
        choices = [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]
        body: dict[str, object] = {"id": "chatcmpl-0", "object": "chat.completion.chunk", "created": 0}
        body |= {"model": UPSTREAM_MODEL, "choices": choices}
        if usage:
            body["usage"] = usage
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    pieces = [event({"role": "assistant", "content": ""})]
    pieces += [event({"content": f"w{i} "}) for i in range(chunks)]
    pieces.append(event({}, "length"))
    pieces.append(event({}, usage={"prompt_tokens": 8, "completion_tokens": chunks, "total_tokens": 8 + chunks}))
    return b"".join(pieces) + b"data: [DONE]\n\n"


def upstream_app(chunks: int) -> Starlette:
    stream = sse_body(chunks)
    reply = {
        "id": "chatcmpl-0",
        "object": "chat.completion",
        "created": 0,
        "model": UPSTREAM_MODEL,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "w " * chunks}, "finish_reason": "length"}
        ],
        "usage": {"prompt_tokens": 8, "completion_tokens": chunks, "total_tokens": 8 + chunks},
    }

    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": UPSTREAM_MODEL, "object": "model"}]})

    async def chat(request: Request) -> Response:
        body = await request.json()
        if body.get("stream"):
            return Response(stream, media_type="text/event-stream")
        return JSONResponse(reply)

    return Starlette(routes=[Route("/v1/models", models), Route("/v1/chat/completions", chat, methods=["POST"])])


def serve_upstream(port: int, chunks: int) -> None:
    import uvicorn

    uvicorn.run(upstream_app(chunks), host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ---- the gateways in front of it ----------------------------------------------------------------------------


def start_upstream(chunks: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [sys.executable, __file__, "--serve-upstream", str(port), "--chunks", str(chunks)]
    return subprocess.Popen(command), f"http://127.0.0.1:{port}/v1"


def wait_for(url: str, what: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before answering {url}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer {url} within {timeout:g}s")


def litellm_venv(venv: Path) -> Path | None:
    """LiteLLM's CLI in its own venv, installed there on first use; ``None`` (with a message) if that fails."""
    cli = venv / "bin" / "litellm"
    if cli.exists():
        return cli
    console.print(f"installing litellm[proxy] into {venv} (once)…")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "litellm[proxy]"]
        subprocess.run(pip, check=True, capture_output=True, timeout=900)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        console.print(f"[yellow]LiteLLM skipped: could not install it ({exc}) {detail.decode()[-300:]}[/yellow]")
        return None
    return cli if cli.exists() else None


def start_litellm(cli: Path, upstream: str, home: Path) -> tuple[subprocess.Popen[bytes], str]:
    config = home / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {DEFAULT_MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{UPSTREAM_MODEL}\n"
        f"      api_base: {upstream}\n"
        "      api_key: unused\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
    )
    port = free_port()
    env = os.environ | {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        "LITELLM_MASTER_KEY": LITELLM_KEY,
    }
    command = [str(cli), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    log = (home / "litellm.log").open("wb")
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), f"http://127.0.0.1:{port}"


# ---- load ---------------------------------------------------------------------------------------------------


@dataclass
class Row:
    path: str
    streams: int
    latencies: list[float]
    seconds: float
    cpu: dict[str, float]  # CPU seconds each of the path's own processes spent (the upstream's not counted)

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds

    def pct(self, q: float) -> float:
        return quantile(self.latencies, q, scale=1000)


async def one_stream(http: httpx.AsyncClient, url: str, body: dict[str, object]) -> None:
    async with http.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}: {(await response.aread())[:300]!r}")
        tail = b""
        async for data in response.aiter_bytes():
            tail = (tail + data)[-32:]
        if b"[DONE]" not in tail:
            raise RuntimeError(f"{url} ended its stream without [DONE]")


async def load(
    url: str, streams: int, seconds: float, chunks: int, key: str = "", client: str = "lean"
) -> tuple[list[float], float]:
    """``streams`` lanes of streamed completions to ``url`` for ``seconds`` (after half a second's warm-up): the
    latencies and the seconds measured. ``client`` is ``lean`` (``loadgen.StreamLoad``, light enough not to be
    the bottleneck) or ``httpx`` (an ``httpx.AsyncClient``, as an application would send them)."""
    body: dict[str, object] = {
        "model": DEFAULT_MODEL,
        "messages": [{"role": "user", "content": "benchmark the gateway"}],
        "max_tokens": chunks,
        "stream": True,
    }
    latencies: list[float] = []
    if client == "lean":
        generator = StreamLoad(url, body, key)
        await generator.run(streams, time.monotonic() + 0.5, [])
        t0 = time.monotonic()
        await generator.run(streams, t0 + seconds, latencies)
        return latencies, time.monotonic() - t0
    if client != "httpx":
        raise ValueError(f"the load generator is lean or httpx, not {client}")
    limits = httpx.Limits(max_connections=streams, max_keepalive_connections=streams)
    headers = {"authorization": f"Bearer {key}"} if key else None
    async with httpx.AsyncClient(timeout=60, limits=limits, headers=headers) as http:

        async def lane(until: float, out: list[float]) -> None:
            while time.monotonic() < until:
                t0 = time.perf_counter()
                await one_stream(http, url, body)
                out.append(time.perf_counter() - t0)

        warm: list[float] = []
        await asyncio.gather(*(lane(time.monotonic() + 0.5, warm) for _ in range(streams)))
        t0 = time.monotonic()
        await asyncio.gather(*(lane(t0 + seconds, latencies) for _ in range(streams)))
        return latencies, time.monotonic() - t0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    paths: dict[str, str], processes: dict[str, dict[str, int]], args: argparse.Namespace
) -> AsyncIterator[Row]:
    """Rows of every path at every level; ``processes`` names each path's own processes (name -> pid)."""
    for streams in args.levels:
        for _ in range(args.rounds):  # interleaved, so a noisy neighbour hits every path alike
            for path, url in paths.items():
                key = LITELLM_KEY if path == "LiteLLM proxy" else ""
                own = processes.get(path, {})
                before = {name: cpu_seconds(pid) for name, pid in own.items()}
                latencies, seconds = await load(
                    f"{url}/chat/completions", streams, args.seconds, args.chunks, key, args.client
                )
                spent = {name: cpu_seconds(pid) - before[name] for name, pid in own.items()}
                yield Row(path, streams, latencies, seconds, spent)


def merged(rows: list[Row]) -> dict[tuple[str, int], Row]:
    by: dict[tuple[str, int], Row] = {}
    for row in rows:
        key = (row.path, row.streams)
        if key in by:
            by[key].latencies += row.latencies
            by[key].seconds += row.seconds
            for name, spent in row.cpu.items():
                by[key].cpu[name] += spent
        else:
            by[key] = Row(row.path, row.streams, list(row.latencies), row.seconds, dict(row.cpu))
    return by


def print_table(rows: list[Row], paths: list[str], args: argparse.Namespace) -> None:
    title = (
        f"gateways in front of an instant upstream: {args.chunks} chunks per streamed chat completion, "
        f"{args.rounds}×{args.seconds:g}s per row"
    )
    table = Table(title=title)
    columns = ("streams", "path", "req/s", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms", "req/s vs upstream",
               "gateway CPU µs/req")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="right")
    cpu_lines = []
    by = merged(rows)
    for streams in args.levels:
        base = by[("upstream alone", streams)]
        for i, path in enumerate(paths):
            row = by[(path, streams)]
            added = path != "upstream alone"
            table.add_row(
                str(streams) if i == 0 else "",
                path,
                f"{row.rps:,.0f}",
                f"{row.pct(0.5):.2f}",
                f"{row.pct(0.99):.2f}",
                f"{row.pct(0.5) - base.pct(0.5):+.2f}" if added else "",
                f"{row.pct(0.99) - base.pct(0.99):+.2f}" if added else "",
                f"{row.rps / base.rps:.0%}" if added else "",
                f"{sum(row.cpu.values()) / len(row.latencies) * 1e6:,.0f}" if row.cpu else "",
            )
            if len(row.cpu) > 1:
                each = ", ".join(f"{name} {spent / len(row.latencies) * 1e6:,.0f}" for name, spent in row.cpu.items())
                cpu_lines.append(f"{path} @{streams}: {each}")
    console.print(table)
    spread = {
        (r.path, r.streams): [round(x.rps) for x in rows if (x.path, x.streams) == (r.path, r.streams)] for r in rows
    }
    console.print("req/s per round (spread): " + "; ".join(f"{p} @{s}: {v}" for (p, s), v in spread.items()))
    if cpu_lines:
        console.print("CPU µs per request by process: " + "; ".join(cpu_lines))
    console.print(
        f"{os.cpu_count()} cores shared by the client ({args.client} load generator), the upstream and every gateway "
        "process; one uvicorn worker each."
    )


async def run(args: argparse.Namespace) -> None:
    home = Path(tempfile.mkdtemp(prefix="cocoon-bench-gateways-"))
    upstream, upstream_url = start_upstream(args.chunks)
    children: list[subprocess.Popen[bytes]] = [upstream]
    net: LocalNetwork | None = None
    try:
        wait_for(f"{upstream_url}/models", "the upstream", upstream, 30)
        paths = {"upstream alone": upstream_url}
        weights = home / "weights.bin"  # the upstream 'serves' these: the attestation commits to their hash
        weights.write_bytes(b"an instant upstream's stand-in weights\n")
        engine = {
            "kind": "openai_upstream",
            "upstream_url": upstream_url,
            "model_hash": hashlib.sha256(weights.read_bytes()).hexdigest(),
            "embeddings": False,
        }
        net = LocalNetwork(
            port_base=free_port(),
            proxy_port=free_port(),
            home=home / "cocoon",
            workers=1,
            model_path=weights,
            engine=engine,
            worker_options={"slots": 64, "max_queue": 4096},
        )
        net.start()
        net.wait_ready(timeout=120)
        paths["cocoon (sidecar → proxy → worker)"] = net.base_url
        processes = {
            "cocoon (sidecar → proxy → worker)": {
                "sidecar": net.child("client").process.pid,
                "proxy": net.child("proxy").process.pid,
                "worker": net.child("worker-1").process.pid,
            }
        }
        cli = None if args.no_litellm else litellm_venv(args.litellm_venv)
        if cli is not None:
            litellm, litellm_url = start_litellm(cli, upstream_url, home)
            children.append(litellm)
            try:
                wait_for(f"{litellm_url}/health/liveliness", "LiteLLM", litellm, 180)
                paths["LiteLLM proxy"] = f"{litellm_url}/v1"
                processes["LiteLLM proxy"] = {"litellm": litellm.pid}
            except RuntimeError as exc:
                console.print(f"[yellow]LiteLLM skipped: {exc} (log: {home / 'litellm.log'})[/yellow]")
        rows = [row async for row in measure(paths, processes, args)]
    finally:
        if net is not None:
            net.stop()
        for child in children:
            child.terminate()
            child.wait(10)
    print_table(rows, list(paths), args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring time per row and round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over all paths, interleaved")
    parser.add_argument("--chunks", type=int, default=16, help="content chunks per streamed completion")
    parser.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16])
    parser.add_argument(
        "--client",
        choices=("lean", "httpx"),
        default="lean",
        help="load generator: lean (bench/loadgen.py, light enough not to be the bottleneck) or httpx",
    )
    parser.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out")
    parser.add_argument("--litellm-venv", type=Path, default=LITELLM_VENV, help="where LiteLLM is installed")
    parser.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.serve_upstream:
        serve_upstream(parsed.serve_upstream, parsed.chunks)
    else:
        asyncio.run(run(parsed))
