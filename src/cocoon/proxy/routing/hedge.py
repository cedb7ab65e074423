"""Hedged dispatch: the same sealed job runs on two workers; the first to answer wins the stream.

The loser is cancelled at the winner's first frame with reason ``hedge``; its worker then signs a receipt
for the prefill it did (and nothing else), which the proxy passes on so the client pays exactly that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from cocoon.errors import CocoonError

A = TypeVar("A")
Frame = dict[str, Any]


async def race(
    attempts: list[A],
    first_frame: Callable[[A], Awaitable[Frame]],
    failed: Callable[[A, CocoonError], None],
) -> tuple[A, Frame, list[A]]:
    """Wait for the first of ``attempts`` to yield a frame: ``(winner, its frame, the others still running)``.

    Attempts that fail first are reported through ``failed``; when all fail, the last error is raised.
    """
    tasks = {asyncio.ensure_future(first_frame(a)): a for a in attempts}
    last: CocoonError | None = None
    try:
        while tasks:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            # Several may finish in one tick: prefer a success, in dispatch (rank) order.
            for task in sorted(done, key=lambda t: attempts.index(tasks[t])):
                attempt = tasks.pop(task)
                exc = task.exception()
                if exc is None:
                    return attempt, task.result(), list(tasks.values())
                if not isinstance(exc, CocoonError):
                    raise exc
                failed(attempt, exc)
                last = exc
        assert last is not None
        raise last
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
