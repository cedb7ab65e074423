"""``EventStreamResponse``: events made together go in one body write, the last one ends the body; an app that
hangs up closes the body; a body that fails leaves the stream unfinished."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cocoon.client.event_stream import EventStreamResponse


class App:
    """The ASGI server's side: what the response sent, and a disconnect when told."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    @property
    def bodies(self) -> list[tuple[bytes, bool]]:
        return [(m["body"], m["more_body"]) for m in self.sent if m["type"] == "http.response.body"]


async def test_events_made_together_go_in_one_write_and_the_last_ends_the_body() -> None:
    upstream: asyncio.Queue[list[bytes]] = asyncio.Queue()

    async def body() -> AsyncIterator[bytes]:
        while burst := await upstream.get():
            for event in burst:
                yield event

    app = App()
    response = EventStreamResponse(body(), headers={"cache-control": "no-cache"})
    serving = asyncio.create_task(response({"type": "http"}, app.receive, app.send))
    upstream.put_nowait([b"a", b"b", b"c"])
    await asyncio.sleep(0.01)
    upstream.put_nowait([b"d"])
    await asyncio.sleep(0.01)
    upstream.put_nowait([b"e", b"f"])
    upstream.put_nowait([])
    await asyncio.wait_for(serving, 5)

    assert app.sent[0]["type"] == "http.response.start"
    assert (b"content-type", b"text/event-stream; charset=utf-8") in app.sent[0]["headers"]
    assert app.bodies == [(b"abc", True), (b"d", True), (b"ef", False)]


async def test_an_app_that_hangs_up_closes_the_body() -> None:
    closed = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        try:
            yield b"first"
            await asyncio.sleep(60)
            yield b"never"
        finally:
            closed.set()

    app = App()
    serving = asyncio.create_task(EventStreamResponse(body())({"type": "http"}, app.receive, app.send))
    await asyncio.sleep(0.01)
    app.gone.set()
    await asyncio.wait_for(serving, 5)
    assert closed.is_set() and app.bodies == [(b"first", True)]


async def test_a_body_that_fails_leaves_the_stream_unfinished() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"first"
        raise RuntimeError("the body broke")

    app = App()
    with pytest.raises(RuntimeError, match="the body broke"):
        await EventStreamResponse(body())({"type": "http"}, app.receive, app.send)
    assert app.bodies == [(b"first", True)]  # never more_body False: the app sees the stream break
