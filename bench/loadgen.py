"""A load generator light enough not to be what a bench measures: streamed chat completions over keep-alive
HTTP/1.1 connections, one per lane, each request a fixed byte string and each answer parsed by httptools.

Why not httpx: on this 2-core machine an ``httpx.AsyncClient`` spent 3.8–4.8 ms of CPU per streamed request
(these lanes: 0.14 ms). In front of the instant upstream alone, 16 lanes of it topped out near 370 requests/s
with a p99 ten times its p50 (9% of requests over 100 ms), while these lanes drove the same upstream at
6,500–8,400 requests/s with a p99 near 5 ms. The "upstream alone" row measured the generator, not the upstream,
and every gateway's row paid for the generator's CPU on the cores it shares with them.

A request succeeds when the answer is ``200`` and its body ends with ``data: [DONE]`` (what ``one_stream``
checks); anything else raises with what came back. A lane whose connection the server closed opens another.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httptools


@dataclass
class _Answer:
    """One answer being read: its status once known, the body's last bytes, and whether it is all in."""

    status: int = 0
    tail: bytes = b""
    body: bytearray = field(default_factory=bytearray)  # a failed answer's first ~300 bytes, for its error
    keep_alive: bool = True
    complete: bool = False


class _Lane(asyncio.Protocol):
    """One keep-alive connection that sends a request and waits for its whole answer, then the next."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.answer = _Answer()
        self.done: asyncio.Future[None] | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._finish(RuntimeError(f"the server's answer is not HTTP/1.1: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._finish(ConnectionError(f"the server closed the connection mid-answer ({exc})"))

    # httptools' callbacks
    def on_status(self, status: bytes) -> None:
        self.answer.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        answer = self.answer
        answer.tail = (answer.tail + body)[-32:]
        if answer.status != 200 and len(answer.body) < 300:
            answer.body += body

    def on_message_complete(self) -> None:
        self.answer.complete = True
        self.answer.keep_alive = self.parser.should_keep_alive()
        self._finish(None)

    def _finish(self, error: Exception | None) -> None:
        if self.done is not None and not self.done.done():
            if error is None or self.answer.complete:
                self.done.set_result(None)
            else:
                self.done.set_exception(error)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def exchange(self, request: bytes) -> _Answer:
        assert self.transport is not None
        self.answer = _Answer()
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        await self.done
        return self.answer


class StreamLoad:
    """``POST`` of one streamed chat completion to ``url``, sent by lanes of their own connections."""

    def __init__(self, url: str, body: dict[str, object], key: str = "") -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"the load generator speaks plain http:// to a host, not {url}")
        self.url, self.host, self.port = url, parts.hostname, parts.port or 80
        content = json.dumps(body).encode()
        head = [
            f"POST {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1",
            f"host: {parts.netloc}",
            "content-type: application/json",
            "accept: text/event-stream",
            f"content-length: {len(content)}",
        ]
        if key:
            head.append(f"authorization: Bearer {key}")
        self.request = ("\r\n".join(head) + "\r\n\r\n").encode() + content

    async def _connect(self) -> _Lane:
        loop = asyncio.get_running_loop()
        _transport, lane = await loop.create_connection(_Lane, self.host, self.port)
        return lane

    async def run(self, lanes: int, until: float, latencies: list[float], timeout: float = 60) -> None:
        """Send requests on ``lanes`` connections until ``until`` (``time.monotonic()``), each one's seconds
        from the first byte sent to the last received appended to ``latencies``."""

        async def lane() -> None:
            connection: _Lane | None = None
            try:
                while time.monotonic() < until:
                    if connection is None or connection.lost:
                        connection = await self._connect()
                    t0 = time.perf_counter()
                    answer = await asyncio.wait_for(connection.exchange(self.request), timeout)
                    elapsed = time.perf_counter() - t0
                    if answer.status != 200:
                        raise RuntimeError(f"{self.url} answered {answer.status}: {bytes(answer.body)[:300]!r}")
                    if b"[DONE]" not in answer.tail:
                        raise RuntimeError(f"{self.url} ended its stream without [DONE]")
                    latencies.append(elapsed)
                    if not answer.keep_alive:  # the server closes it: the next request opens another
                        connection.close()
                        connection = None
            finally:
                if connection is not None:
                    connection.close()

        await asyncio.gather(*(lane() for _ in range(lanes)))
