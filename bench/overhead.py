"""What the sealed path costs: time to first token and tokens/s, engine called directly vs through cocoon.

Runs the same greedy completion on the bundled model (a) straight on an in-process llama.cpp engine,
(b) through the Python SDK -> proxy -> worker, (c) through the OpenAI sidecar -> proxy -> worker, at
1 and 8 concurrent requests, and prints one table with medians, p99s and ratios. Same engine settings
everywhere (one llama.cpp context decoding up to the highest concurrency's sequences together, ``--threads``
threads), so the difference is cocoon's own overhead: sealing, two extra hops, receipts. The last two columns
are batching's gain: each row's aggregate tokens/s and TTFT p50 against the same path at the lowest
concurrency. Every request has one prompt (as requests sharing a system prompt do: the engine evaluates a prefix
once for the sequences running together), or with ``--distinct`` a prompt of its own. Usage: ``python
bench/overhead.py [--requests 50] [--max-tokens 16] [--threads 1] [--distinct]``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from llama_cpp._utils import suppress_stdout_stderr
from quantiles import quantile
from rich.console import Console
from rich.table import Table

from cocoon.attestation import AttestationPolicy
from cocoon.client import CocoonClient, TextEvent
from cocoon.engines import DEFAULT_MODEL, EngineSettings, GenerationRequest, LlamaCppEngine, SamplingParams, TextDelta
from cocoon.engines.model_cache import bundled_model_path
from cocoon.local import LocalNetwork, free_port
from cocoon.protocol.payload import SealedParams

PROMPT = "The history of the lighthouse begins"
_drawn = itertools.count()


def prompt_of(distinct: bool) -> str:
    """The prompt of the next request: the same one every time (requests sharing a prompt, whose prefix the
    engine evaluates once for those running together), or with ``--distinct`` one of its own from the first
    word on (nothing to share)."""
    return f"{next(_drawn)}. {PROMPT}" if distinct else PROMPT


console = Console(width=150)


@dataclass(frozen=True, slots=True)
class Sample:
    ttft_s: float
    tokens: int
    decode_s: float


Run = Callable[[], Awaitable[Sample]]


async def measure(run: Run, requests: int, concurrency: int) -> tuple[list[Sample], float]:
    queue = list(range(requests))
    samples: list[Sample] = []

    async def lane() -> None:
        while queue:
            queue.pop()
            samples.append(await run())

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return samples, time.perf_counter() - started


def direct_run(engine: LlamaCppEngine, max_tokens: int, distinct: bool) -> Run:
    async def run() -> Sample:
        params = SamplingParams(max_tokens=max_tokens, temperature=0)
        request = GenerationRequest(params=params, prompt=prompt_of(distinct))
        t0 = time.perf_counter()
        first = 0.0
        tokens = 0
        async for event in engine.generate(request):
            if isinstance(event, TextDelta):
                first = first or time.perf_counter()
                tokens += event.tokens
        end = time.perf_counter()
        return Sample(first - t0, tokens, end - first)

    return run


def sdk_run(client: CocoonClient, max_tokens: int, distinct: bool) -> Run:
    async def run() -> Sample:
        params = SealedParams(max_tokens=max_tokens, temperature=0)
        prompt = prompt_of(distinct)
        t0 = time.perf_counter()
        first = 0.0
        tokens = 0
        async for event in client.stream("completion", DEFAULT_MODEL, prompt=prompt, params=params):
            if isinstance(event, TextEvent):
                first = first or time.perf_counter()
                tokens += event.tokens
        end = time.perf_counter()
        return Sample(first - t0, tokens, end - first)

    return run


def sidecar_run(http: httpx.AsyncClient, max_tokens: int, distinct: bool) -> Run:
    async def run() -> Sample:
        body = {
            "model": DEFAULT_MODEL,
            "prompt": prompt_of(distinct),
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        t0 = time.perf_counter()
        first = 0.0
        tokens = 0
        async with http.stream("POST", "/completions", json=body) as response:
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk["choices"] and chunk["choices"][0]["text"]:
                    first = first or time.perf_counter()
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
        end = time.perf_counter()
        return Sample(first - t0, tokens, end - first)

    return run


def kernel_rates(model: Path, settings: EngineSettings, levels: list[int], steps: int = 40) -> dict[int, float]:
    """Decode tokens/s of bare ``llama_decode`` steps of ``c`` sequences (one token each, nothing sampled, no
    Python between steps but the batch's fill) on a context made as the engine makes its own: the most that
    batching on these kernels and threads can give, for each level's ``c``. Median step over ``steps``."""
    import llama_cpp

    from cocoon.engines.batching import context_params

    with suppress_stdout_stderr(disable=False):
        loaded = llama_cpp.llama_model_load_from_file(str(model).encode(), llama_cpp.llama_model_default_params())
        threads = settings.threads or os.cpu_count() or 1
        params = context_params(parallel=max(levels), context_length=settings.context_length, threads=threads)
        context = llama_cpp.llama_init_from_model(loaded, params)
    batch = llama_cpp.llama_batch_init(64, 0, 1)
    prompt = 10

    def step(tokens: list[tuple[int, int, int]]) -> float:
        batch.n_tokens = len(tokens)
        for i, (token, position, seq) in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, position, 1, True
            batch.seq_id[i][0] = seq
        started = time.perf_counter()
        if llama_cpp.llama_decode(context, batch) != 0:
            raise RuntimeError("llama_decode failed")
        return time.perf_counter() - started

    rates: dict[int, float] = {}
    try:
        for c in levels:
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(context), True)
            for seq in range(c):  # a short prompt in each sequence's KV, as a request brings
                step([(2 + i, i, seq) for i in range(prompt)])
            times = [step([(100 + n, prompt + n, seq) for seq in range(c)]) for n in range(steps)]
            rates[c] = c / statistics.median(times)
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(context)
        llama_cpp.llama_model_free(loaded)
    return rates


def _threads_of(pid: int) -> list[int]:
    return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=50, help="requests per row (>= 50 for a fair p99)")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads (the other core runs cocoon)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--distinct", action="store_true", help="a prompt of its own for every request (default: one shared prompt)"
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="pin the engine (direct: this process; network: the worker) to CPU 0 and everything else to CPU 1, "
        "as when the engine has its own machine",
    )
    args = parser.parse_args()
    if args.pin:
        os.sched_setaffinity(0, {0})

    model = bundled_model_path()
    parallel = max(args.concurrency)  # as a worker with that many slots runs it
    settings = EngineSettings(model_path=model, threads=args.threads, embeddings=False, parallel=parallel)
    results: dict[tuple[str, int], tuple[list[Sample], float]] = {}

    engine = LlamaCppEngine(settings)
    await engine.start()
    await direct_run(engine, args.max_tokens, args.distinct)()  # warm-up
    for c in args.concurrency:
        results[("engine direct", c)] = await measure(
            direct_run(engine, args.max_tokens, args.distinct), args.requests, c
        )
    await engine.close()
    kernel = kernel_rates(model, settings, args.concurrency)

    with tempfile.TemporaryDirectory() as home:
        net = LocalNetwork(
            port_base=free_port(),
            proxy_port=free_port(),
            workers=1,
            home=Path(home),
            model_path=model,
            engine={"threads": args.threads, "embeddings": False},
            worker_options={"slots": max(args.concurrency)},
        )
        if args.pin:
            os.sched_setaffinity(0, {1})  # children inherit CPU 1; the worker moves to CPU 0 below
        net.start()
        try:
            net.wait_ready(120)
            if args.pin:
                for pid in _threads_of(net.child("worker-1").process.pid):
                    os.sched_setaffinity(pid, {0})
            client = CocoonClient(net.proxy_url, AttestationPolicy.model_validate(net.policy))
            http = httpx.AsyncClient(base_url=net.base_url, timeout=120)
            await sdk_run(client, args.max_tokens, args.distinct)()
            for c in args.concurrency:
                results[("SDK → proxy → worker", c)] = await measure(
                    sdk_run(client, args.max_tokens, args.distinct), args.requests, c
                )
                results[("OpenAI sidecar → proxy → worker", c)] = await measure(
                    sidecar_run(http, args.max_tokens, args.distinct), args.requests, c
                )
            await client.aclose()
            await http.aclose()
        finally:
            net.stop()

    table = Table(
        title=f"cocoon overhead: {args.requests} greedy completions of {args.max_tokens} tokens per row, "
        f"{'a prompt of its own each' if args.distinct else 'one prompt shared'}, llama.cpp {args.threads} "
        f"thread(s), {parallel} sequences per batch, Gemma 3 270M Q4_K_M"
    )
    for col in (
        "path",
        "conc.",
        "TTFT p50 ms",
        "TTFT p99 ms",
        "ΔTTFT p50 ms",
        "decode tok/s p50",
        "aggregate tok/s",
        "× direct",
        "agg. × conc. 1",
        "TTFT × conc. 1",
    ):
        table.add_column(col, justify="right")
    low = min(args.concurrency)
    for (path, c), result in results.items():
        samples = result[0]
        ttft = [s.ttft_s * 1000 for s in samples]
        decode = [(s.tokens - 1) / s.decode_s for s in samples if s.decode_s > 0 and s.tokens > 1]
        aggregate = aggregate_of(result)
        base_aggregate = aggregate_of(results[("engine direct", c)])
        base_ttft = statistics.median(s.ttft_s * 1000 for s in results[("engine direct", c)][0])
        single_aggregate = aggregate_of(results[(path, low)])
        single_ttft = statistics.median(s.ttft_s * 1000 for s in results[(path, low)][0])
        table.add_row(
            path,
            str(c),
            f"{statistics.median(ttft):.1f}",
            f"{quantile(ttft, 0.99):.1f}",
            f"{statistics.median(ttft) - base_ttft:+.1f}",
            f"{statistics.median(decode):.1f}",
            f"{aggregate:.1f}",
            f"{aggregate / base_aggregate:.3f}",
            f"{aggregate / single_aggregate:.2f}",
            f"{statistics.median(ttft) / single_ttft:.2f}",
        )
    console.print(table)
    ceiling = ", ".join(f"{kernel[c]:.1f} at {c} ({kernel[c] / kernel[low]:.2f}× {low})" for c in args.concurrency)
    engine_gain = ", ".join(
        f"{aggregate_of(results[('engine direct', c)]) / aggregate_of(results[('engine direct', low)]):.2f}× at {c}"
        for c in args.concurrency
        if c != low
    )
    console.print(
        f"llama_decode alone, decode tok/s (the kernels' ceiling for batching on {args.threads} thread(s)): {ceiling}; "
        f"the engine direct's aggregate gain: {engine_gain}"
    )


def aggregate_of(result: tuple[list[Sample], float]) -> float:
    samples, wall = result
    return sum(s.tokens for s in samples) / wall


if __name__ == "__main__":
    asyncio.run(main())
