"""The relay's HTTP response: frames go out as they come, and the last write also ends the chunked body.

Leaner than Starlette's ``StreamingResponse`` on the hot path (one watcher task instead of a task group,
one socket write fewer per request); a client that hangs up still cancels the relay, and so its jobs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from starlette.responses import Response

Message = MutableMapping[str, Any]


class FrameStreamResponse(Response):
    """ASGI response over ``frames``; ``is_last()`` says, after each piece, whether it was the final one."""

    def __init__(
        self, frames: AsyncIterator[bytes], is_last: Callable[[], bool], media_type: str, status: int = 200
    ) -> None:
        self.frames = frames
        self.is_last = is_last
        self.status_code = status
        self.background = None
        self._head = [(b"content-type", media_type.encode()), (b"transfer-encoding", b"chunked")]

    async def __call__(
        self, scope: Message, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
    ) -> None:
        task = asyncio.current_task()
        state = {"done": False, "hung_up": False}

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if not state["done"] and task is not None:
                state["hung_up"] = True
                task.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self._head})
            async for data in self.frames:
                if state["done"]:
                    continue  # nothing may follow the end of the body; let the relay finish its books
                last = self.is_last()
                state["done"] = last
                await send({"type": "http.response.body", "body": data, "more_body": not last})
            if not state["done"]:
                state["done"] = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not state["hung_up"] or task is None:
                raise
            task.uncancel()  # the client left: the relay's cleanup below cancels its jobs
        finally:
            state["done"] = True
            watcher.cancel()
            aclose = getattr(self.frames, "aclose", None)
            if aclose is not None:
                await aclose()
