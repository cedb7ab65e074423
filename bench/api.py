"""What constrained decoding costs: tokens/s and time to first token of the embedded engine, free vs held to a grammar.

Runs the same chat on an in-process llama.cpp engine (a) unconstrained, (b) with a ``json_schema``
``response_format`` (a pydantic model with a nested list and an enum), (c) unconstrained on the prompt that
offers the tools, (d) with those tools and ``tool_choice`` "required", (e) with "auto" (free text that may turn
into a call). One request of each in turn, so that a busy machine slows all rows alike, each with a prompt of its
own (no KV prefix is reused); one table with medians, p99s, and each constrained row against the free row of
its prompt ((a) for (b), (c) for (d) and (e)). The grammar's cost is the sampling around the model's step. Time
to first token is time to the first event: for a tool call that is its name, some fifteen tokens in, so its
ΔTTFT is mostly those tokens. Usage: ``python bench/api.py [--requests 20] [--max-tokens 48]
[--model gemma-3-270m] [--temperature 0]``.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import os
import statistics
import time
from dataclasses import dataclass, replace

from pydantic import BaseModel, Field
from quantiles import quantile
from rich.console import Console
from rich.table import Table

from cocoon.engines import ChatMessage, EngineSettings, Finished, GenerationRequest, LlamaCppEngine, SamplingParams
from cocoon.engines.base import FunctionTool, OutputFormat
from cocoon.engines.tool_calls import chat_messages

console = Console(width=150)
QUESTION = "Alice orders two apples and a pear, all green. Write the order, then the weather in Paris."


class Colour(enum.StrEnum):
    red = "red"
    green = "green"
    yellow = "yellow"


class Line(BaseModel):
    fruit: str
    quantity: int


class Order(BaseModel):
    customer: str
    colour: Colour
    lines: list[Line] = Field(max_length=4)


TOOLS = (
    FunctionTool(
        "get_weather",
        "The current weather in a city",
        {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
        },
    ),
    FunctionTool("place_order", "Place an order for a customer", Order.model_json_schema(), strict=True),
)


@dataclass(frozen=True, slots=True)
class Sample:
    ttft_s: float
    tokens: int  # completion tokens, as Finished counts them
    decode_s: float  # from the first event to the last
    after_first: int  # tokens the events after the first one carried


BASELINE = {"json_schema": "free", "tools, required": "free, tools' prompt", "tools, auto": "free, tools' prompt"}


def requests(n: int, max_tokens: int, temperature: float) -> dict[str, GenerationRequest]:
    """The rows' requests, the ``n``-th time: a system message of their own keeps KV prefixes from being reused."""
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=1)
    schema = OutputFormat("json_schema", Order.model_json_schema(), "order", strict=True)

    def chat(row: str) -> tuple[ChatMessage, ...]:
        return ChatMessage("system", f"Request {n} of {row}."), ChatMessage("user", QUESTION)

    required = GenerationRequest(params, messages=chat("tools"), tools=TOOLS, tool_choice="required")
    return {
        "free": GenerationRequest(params, messages=chat("free")),
        "json_schema": GenerationRequest(params, messages=chat("json"), response_format=schema),
        "free, tools' prompt": GenerationRequest(params, messages=chat_messages(replace(required, messages=chat("t")))),
        "tools, required": required,
        "tools, auto": GenerationRequest(params, messages=chat("auto"), tools=TOOLS, tool_choice="auto"),
    }


async def measure(engine: LlamaCppEngine, request: GenerationRequest) -> Sample:
    t0 = time.perf_counter()
    first = 0.0
    after_first = total = 0
    async for event in engine.generate(request):
        if isinstance(event, Finished):
            total = event.usage.completion_tokens
            break
        if first:
            after_first += event.tokens
        else:
            first = time.perf_counter()
    end = time.perf_counter()
    return Sample(first - t0, total, end - first, after_first)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20, help="requests per row")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--model", default="gemma-3-270m", help="a bundled model: gemma-3-270m, smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: all cores)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy, as canaries compare it")
    args = parser.parse_args()

    engine = LlamaCppEngine(EngineSettings(model=args.model, threads=args.threads, embeddings=False, parallel=1))
    await engine.start()
    samples: dict[str, list[Sample]] = {name: [] for name in requests(0, 1, 0)}
    prompt_tokens: dict[str, int] = {}
    try:
        for name, request in requests(-1, args.max_tokens, args.temperature).items():  # warm-up; prompt sizes
            async for event in engine.generate(request):
                if isinstance(event, Finished):
                    prompt_tokens[name] = event.usage.prompt_tokens
        for n in range(args.requests):
            for name, request in requests(n, args.max_tokens, args.temperature).items():
                samples[name].append(await measure(engine, request))
    finally:
        await engine.close()

    table = Table(
        title=f"constrained decoding: {args.requests} chats per row, at most {args.max_tokens} tokens, "
        f"temperature {args.temperature}, {args.model} on llama.cpp ({args.threads or os.cpu_count()} threads)"
    )
    columns = ("answer", "prompt tok", "tokens p50", "TTFT p50 ms", "TTFT p99 ms", "ΔTTFT p50 ms", "tok/s p50")
    for col in (*columns, "tok/s p1 (slowest)", "× free tok/s"):
        table.add_column(col, justify="right")
    for name, row in samples.items():
        ttft = [s.ttft_s * 1000 for s in row]
        rates = [rate(s) for s in row if rate(s) > 0]
        base = samples[BASELINE.get(name, name)]
        base_rate = statistics.median(rate(s) for s in base if rate(s) > 0)
        table.add_row(
            name,
            str(prompt_tokens[name]),
            f"{statistics.median(s.tokens for s in row):.0f}",
            f"{statistics.median(ttft):.1f}",
            f"{quantile(ttft, 0.99):.1f}",
            f"{statistics.median(ttft) - statistics.median(s.ttft_s * 1000 for s in base):+.1f}",
            f"{statistics.median(rates):.1f}",
            f"{quantile(rates, 0.01):.1f}",  # the slowest 1 %: the bad tail of a rate is its low end
            f"{statistics.median(rates) / base_rate:.3f}",
        )
    console.print(table)


def rate(sample: Sample) -> float:
    return sample.after_first / sample.decode_s if sample.decode_s > 0 and sample.after_first else 0.0


if __name__ == "__main__":
    asyncio.run(main())
