"""Coalescing an engine's text by time, so the sealed stream's chunk count and timing do not spell out its tokens.

The first text goes out at once (time to first token is what users feel); after it, every delta that arrives
within ``window_s`` of the first one held joins it in one chunk, log-probabilities concatenated. Tool-call pieces
pass through as they come (each is one whole piece of OpenAI's stream). Padding (``ChunkPayload.encode``) hides
sizes.

With no window, deltas that are already there when a chunk goes out still join it: an upstream server's read
often holds many of its events, and each chunk is a sealed frame and a socket write on every hop to the app
(on this project's 2-core VM, a loopback write costs a third of a millisecond: sixteen of them were most of
what a request through cocoon added). Nothing waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator

from cocoon.engines.base import Finished, GenerationEvent, TextDelta, ToolCallDelta

_END = object()


async def coalesced(
    events: AsyncGenerator[GenerationEvent, None], window_s: float
) -> AsyncGenerator[GenerationEvent, None]:
    """``events`` with text deltas merged over ``window_s`` seconds (0: those already there); closes ``events`` at
    the end.

    Engine errors surface here as they would from ``events``.
    """
    queue: asyncio.Queue[object] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for event in events:
                queue.put_nowait(event)
        except Exception as exc:  # handed to the reader, which raises it where the engine's error belongs
            queue.put_nowait(exc)
        queue.put_nowait(_END)

    task = asyncio.create_task(pump())
    first = True
    held: object = None  # an item read past the end of a merge, to hand out next
    try:
        while True:
            item, held = (held, None) if held is not None else (await queue.get(), None)
            if isinstance(item, TextDelta) and not first:
                merged = [item]
                deadline = time.monotonic() + window_s
                while held is None:
                    if not queue.empty():  # what came meanwhile joins without waiting
                        nxt = queue.get_nowait()
                    elif (left := deadline - time.monotonic()) > 0:
                        try:
                            async with asyncio.timeout(left):
                                nxt = await queue.get()
                        except TimeoutError:
                            break
                    else:
                        break
                    if isinstance(nxt, TextDelta):
                        merged.append(nxt)
                    else:
                        held = nxt
                item = TextDelta(
                    "".join(d.text for d in merged),
                    sum(d.tokens for d in merged),
                    tuple(lp for d in merged for lp in d.logprobs),
                )
            if item is _END:
                return
            if isinstance(item, Exception):
                raise item
            assert isinstance(item, TextDelta | ToolCallDelta | Finished)
            first = first and not (isinstance(item, TextDelta) and item.text)
            yield item
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await events.aclose()
