"""The sidecar's server-sent events response: the events ready together go out in one write, the last with the end
of the body.

Starlette's ``StreamingResponse`` writes every piece its iterator yields on its own, and each write on a
loopback socket wakes the app: a streamed completion whose chunks came from the proxy in three reads went to
the app in seven writes (role, each content delta, finish, ``[DONE]``, then the chunked body's end). Here the
body runs in a task feeding a queue, and each write takes everything the queue holds (nothing waits for more:
an event is written as soon as it is made, with whatever was made beside it). An app that hangs up cancels
the body, whose cleanup cancels its jobs, as with Starlette's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from starlette.responses import Response

Message = MutableMapping[str, Any]
_END = object()


class EventStreamResponse(Response):
    """``text/event-stream`` over ``body`` (bytes, event by event)."""

    media_type = "text/event-stream"

    def __init__(self, body: AsyncIterator[bytes], headers: Mapping[str, str] | None = None) -> None:
        self.body_iterator = body
        self.status_code = 200
        self.background = None
        self.init_headers(headers)

    async def __call__(
        self, scope: Message, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
    ) -> None:
        queue: asyncio.Queue[object] = asyncio.Queue()
        this = asyncio.current_task()
        hung_up = False

        async def pump() -> None:
            try:
                async for piece in self.body_iterator:
                    queue.put_nowait(piece)
            except Exception as exc:  # the writer raises it where the body's error belongs
                queue.put_nowait(exc)
            queue.put_nowait(_END)

        async def watch() -> None:
            nonlocal hung_up
            while (await receive())["type"] != "http.disconnect":
                pass
            if this is not None:
                hung_up = True
                this.cancel()

        producer = asyncio.ensure_future(pump())
        watcher = asyncio.ensure_future(watch())
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            while True:
                ready = [await queue.get()]
                while not queue.empty():
                    ready.append(queue.get_nowait())
                failure = next((item for item in ready if isinstance(item, Exception)), None)
                ended = failure is None and ready[-1] is _END
                pieces = [item for item in ready if isinstance(item, bytes)]
                if pieces or ended:
                    await send({"type": "http.response.body", "body": b"".join(pieces), "more_body": not ended})
                if failure is not None:
                    raise failure  # the body is left unfinished: the app sees the stream break, not end
                if ended:
                    return
        except asyncio.CancelledError:
            if not hung_up or this is None:
                raise
            this.uncancel()  # the app left: closing the body below cancels its jobs
        finally:
            watcher.cancel()
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()
