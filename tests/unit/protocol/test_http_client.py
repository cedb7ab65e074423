"""``CoalescingTransport``: httpx sends each request through it in one socket write, to a real loopback server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cocoon.protocol import http_client
from cocoon.protocol.http_client import FLUSH_BYTES, CoalescingTransport
from cocoon.protocol.tls import trust_context
from tests.helpers.tls import self_signed


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the writes CoalescingTransport's connections hand their sockets, in order."""
    sizes: list[int] = []
    made = http_client._Connection.connection_made

    def connection_made(self: http_client._Connection, transport: Any) -> None:
        made(self, transport)
        write = transport.write

        def counted(data: bytes) -> None:
            sizes.append(len(data))
            write(data)

        transport.write = counted

    monkeypatch.setattr(http_client._Connection, "connection_made", connection_made)
    return sizes


@pytest.fixture
async def echo_server() -> AsyncIterator[str]:
    """An HTTP/1.1 server that answers every POST with the length of the body it read."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await reader.readuntil(b"\r\n\r\n"):
            fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:-2])
            length = int({k.lower(): v for k, v in fields.items()}[b"content-length"])
            body = await reader.readexactly(length)
            answer = str(len(body)).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(answer), answer))
            await writer.drain()
            if reader.at_eof():
                break

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.close()


async def test_a_request_goes_out_in_one_write_and_a_large_body_as_it_comes(
    echo_server: str, writes: list[int]
) -> None:
    async with httpx.AsyncClient(transport=CoalescingTransport(), base_url=echo_server) as http:
        for size in (10, 3000):
            writes.clear()
            answer = await http.post("/", content=b"x" * size)
            assert answer.text == str(size)
            assert len(writes) == 1 and writes[0] > size  # head and body together
        writes.clear()
        big = await http.post("/", content=b"y" * (3 * FLUSH_BYTES))
        assert big.text == str(3 * FLUSH_BYTES)
        assert all(w >= FLUSH_BYTES for w in writes[:-1])  # held no longer than FLUSH_BYTES


def test_default_verification_reads_the_environment_as_httpx_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent/ca.pem")
    with pytest.raises(FileNotFoundError):
        httpx.AsyncHTTPTransport()  # httpx's own: SSL_CERT_FILE is read
    with pytest.raises(FileNotFoundError):
        CoalescingTransport()
    CoalescingTransport(trust_env=False)


async def test_a_connection_the_server_closed_while_idle_is_not_used_again() -> None:
    """The pool asks an idle connection whether its socket is readable (the server hung up) before it sends on
    it: asked through the socket this stream keeps, the answer must still be right, or the next request goes out
    on a dead connection and fails with "Server disconnected"."""
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")  # keep-alive, as far as the client knows
        await writer.drain()
        writer.close()  # ...and then gone

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(transport=CoalescingTransport(), base_url=f"http://127.0.0.1:{port}") as http:
            for _ in range(3):
                assert (await http.get("/")).text == "ok"
                await asyncio.sleep(0.05)  # the server's FIN arrives
        assert connections == 3
    finally:
        server.close()


def test_connections_are_verified_by_default_or_by_the_given_context() -> None:
    context = CoalescingTransport().ssl_context
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    mine = ssl.create_default_context()
    assert CoalescingTransport(verify=mine).ssl_context is mine


async def serving(handle: Any, context: ssl.SSLContext | None = None) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    return server, f"{'https' if context else 'http'}://127.0.0.1:{port}"


async def answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()


async def test_tls_is_verified_against_the_given_roots(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    server, url = await serving(answer_ok, served)
    try:
        async with httpx.AsyncClient(transport=CoalescingTransport(verify=trust_context(cert))) as http:
            for _ in range(2):  # the second on the kept connection
                assert (await http.get(url)).text == "ok"
        async with httpx.AsyncClient(transport=CoalescingTransport()) as http:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await http.get(url)  # the system's roots alone do not know it
    finally:
        server.close()


async def test_timeouts_refusals_and_hang_ups_are_httpxs_errors() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async def cut_short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
        await writer.drain()
        writer.close()

    quiet, quiet_url = await serving(silent)
    short, short_url = await serving(cut_short)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_url = f"http://127.0.0.1:{closed.getsockname()[1]}"  # bound, never listening: refused
    try:
        async with httpx.AsyncClient(transport=CoalescingTransport(), timeout=0.3) as http:
            with pytest.raises(httpx.ReadTimeout):
                await http.get(quiet_url)
            with pytest.raises(httpx.ConnectError):
                await http.get(closed_url)
            with pytest.raises(httpx.RemoteProtocolError):
                await http.get(short_url)
    finally:
        quiet.close()
        short.close()
        closed.close()


async def test_a_body_larger_than_the_read_ahead_arrives_whole_to_a_slow_reader() -> None:
    """The socket is paused once READ_LIMIT bytes wait unread and resumed as they are read: nothing lost."""
    size = 4 * http_client.READ_LIMIT
    body = bytes(range(256)) * (size // 256)

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        for at in range(0, size, 65536):
            writer.write(body[at : at + 65536])
            await writer.drain()

    server, url = await serving(big)
    try:
        async with httpx.AsyncClient(transport=CoalescingTransport()) as http, http.stream("GET", url) as response:
            got = bytearray()
            async for piece in response.aiter_raw():
                got += piece
                await asyncio.sleep(0.001)
        assert bytes(got) == body
    finally:
        server.close()


async def test_requests_share_one_kept_connection_and_bodies_go_chunked_both_ways() -> None:
    """A body of unknown length goes out chunked (httpx says so in the head; the transport frames it), a chunked
    answer arrives whole, and every request after the first goes out on the same kept connection."""
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        with contextlib.suppress(asyncio.IncompleteReadError):
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).lower()
                body = b""
                if b"transfer-encoding: chunked" in head:
                    while size := int((await reader.readuntil(b"\r\n"))[:-2], 16):
                        body += (await reader.readexactly(size + 2))[:-2]
                    await reader.readexactly(2)
                answer = body[::-1] or b"empty"
                writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                for at in range(0, len(answer), 3):
                    piece = answer[at : at + 3]
                    writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
                await writer.drain()

    async def parts() -> AsyncIterator[bytes]:
        for part in (b"abc", b"", b"defg", b"h"):
            yield part

    server, url = await serving(serve)
    try:
        async with httpx.AsyncClient(transport=CoalescingTransport(), base_url=url) as http:
            assert (await http.post("/", content=parts())).content == b"hgfedcba"
            for _ in range(3):
                assert (await http.get("/")).content == b"empty"
        assert connections == 1
    finally:
        server.close()


async def test_an_interim_answer_is_skipped_and_a_body_without_length_runs_to_the_close() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nx-kind: raw\r\n\r\nto the ")
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(b"end")
        writer.close()

    server, url = await serving(serve)
    try:
        async with httpx.AsyncClient(transport=CoalescingTransport()) as http:
            for _ in range(2):  # the first connection is not kept: the second request gets a new one
                answer = await http.get(url)
                assert (answer.status_code, answer.headers["x-kind"], answer.text) == (201, "raw", "to the end")
                assert answer.reason_phrase == "Created" and answer.http_version == "HTTP/1.1"
    finally:
        server.close()


async def test_a_stream_closed_before_its_end_and_a_head_request_do_not_leave_their_connection_in_the_pool() -> None:
    """The rest of an unread body (or a HEAD answer's length with no body) would be read as the next answer."""
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        with contextlib.suppress(Exception):
            while head := await reader.readuntil(b"\r\n\r\n"):
                body = b"" if head.startswith(b"HEAD") else b"x" * 100_000
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n" + body)
                await writer.drain()

    server, url = await serving(serve)
    try:
        async with httpx.AsyncClient(transport=CoalescingTransport()) as http:
            async with http.stream("GET", url) as response:
                async for _ in response.aiter_raw():
                    break
            assert (await http.head(url)).headers["content-length"] == "100000"
            assert len((await http.get(url)).content) == 100_000
            assert len((await http.get(url)).content) == 100_000  # this one on the kept connection
        assert connections == 3
    finally:
        server.close()


async def test_the_pool_keeps_to_its_limits() -> None:
    """No more connections than ``max_connections`` at once: a request waits for one to come free, and gives up
    with ``PoolTimeout`` after the pool timeout; no more idle ones kept than ``max_keepalive_connections``."""
    open_now = most = 0

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now, most
        open_now += 1
        most = max(most, open_now)
        with contextlib.suppress(Exception):
            while await reader.readuntil(b"\r\n\r\n"):
                await asyncio.sleep(0.05)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        open_now -= 1

    server, url = await serving(slow)
    limits = httpx.Limits(max_connections=2, max_keepalive_connections=1)
    try:
        transport = CoalescingTransport(limits=limits)
        async with httpx.AsyncClient(transport=transport) as http:
            answers = await asyncio.gather(*(http.get(url) for _ in range(6)))
            assert [a.text for a in answers] == ["ok"] * 6 and most == 2
            assert sum(map(len, transport._idle.values())) == 1
            waiting = [asyncio.ensure_future(http.get(url)) for _ in range(2)]
            await asyncio.sleep(0.01)
            with pytest.raises(httpx.PoolTimeout):
                await http.get(url, timeout=httpx.Timeout(5, pool=0.01))
            assert [(await w).text for w in waiting] == ["ok", "ok"]
    finally:
        server.close()


async def test_an_answer_that_is_not_http_is_a_protocol_error() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()

    server, url = await serving(garbage)
    try:
        async with httpx.AsyncClient(transport=CoalescingTransport(), timeout=2) as http:
            with pytest.raises(httpx.RemoteProtocolError, match="does not parse"):
                await http.get(url)
    finally:
        server.close()


async def test_the_lean_client_sends_what_httpx_would_without_its_per_request_machinery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Base URL joined (once per path), the client's and the request's headers, query parameters, JSON bodies,
    streamed and read answers: the same request line and headers as ``httpx.AsyncClient`` sends, and the same
    lines on the ``httpx`` logger."""
    caplog.set_level(logging.INFO, logger="httpx")
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = next((int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                               if line.startswith(b"content-length:")), 0)  # fmt: skip
                seen.append(head + await reader.readexactly(length))
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()

    server, url = await serving(serve)
    base, headers = f"{url}/v1/", {"authorization": "Bearer k"}
    hooked: list[str] = []

    async def on_request(request: httpx.Request) -> None:
        hooked.append(f"{request.method} {request.url.path}")

    async def on_response(response: httpx.Response) -> None:
        hooked.append(str(response.status_code))

    try:
        async with http_client.LeanClient(base_url=base, headers=headers) as lean:
            lean.event_hooks = {"request": [on_request], "response": [on_response]}
            for _ in range(2):
                assert (await lean.post("/jobs", json={"a": 1}, headers={"x-one": "1"})).text == "ok"
            assert (await lean.get("models", params={"q": "x y"})).text == "ok"
            async with lean.stream("GET", "/models") as response:
                assert await response.aread() == b"ok"
            with pytest.raises(TypeError, match="redirects"):
                await lean.get("/models", follow_redirects=True)
            assert len(lean._urls) == 2  # "/jobs" and "/models"; the one with parameters is not kept
            assert hooked[:4] == ["POST /v1/jobs", "200", "POST /v1/jobs", "200"] and len(hooked) == 8
        lean_seen, seen[:] = list(seen), []
        lean_logged = [r.getMessage() for r in caplog.records if r.name == "httpx"]
        caplog.clear()
        async with httpx.AsyncClient(base_url=base, headers=headers) as plain:
            for _ in range(2):
                await plain.post("/jobs", json={"a": 1}, headers={"x-one": "1"})
            await plain.get("models", params={"q": "x y"})
            await plain.get("/models")
        assert lean_seen == seen
        assert lean_logged == [r.getMessage() for r in caplog.records if r.name == "httpx"]
        assert lean_logged[0] == f'HTTP Request: POST {url}/v1/jobs "HTTP/1.1 200 OK"' and len(lean_logged) == 4
    finally:
        server.close()
    assert seen[0].startswith(b"POST /v1/jobs HTTP/1.1\r\n") and b"authorization: Bearer k" in seen[0]
    assert seen[2].startswith(b"GET /v1/models?q=x+y HTTP/1.1")


async def test_a_waiter_cancelled_just_after_it_was_woken_passes_the_free_connection_on() -> None:
    server, url = await serving(answer_ok)
    try:
        async with httpx.AsyncClient(transport=CoalescingTransport(limits=httpx.Limits(max_connections=1))) as http:
            async with http.stream("GET", url) as held:
                first = asyncio.ensure_future(http.get(url))
                second = asyncio.ensure_future(http.get(url))
                await asyncio.sleep(0.01)  # both wait for the one connection
                await held.aread()  # read to its end: the connection is free, and the first waiter woken...
            first.cancel()  # ...but cancelled before it could take it
            assert (await asyncio.wait_for(second, 2)).text == "ok"
            assert first.cancelled()
    finally:
        server.close()


async def test_an_endless_answer_head_is_refused_and_a_large_one_read() -> None:
    """A server that never ends its headers must not make the client hold them all (httpcore bounded the head at
    100 KiB through h11; so does this), while a head under the bound, however it is cut up, is read whole."""

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n")
        with contextlib.suppress(ConnectionError):
            for i in range(10_000):
                writer.write(b"x-%d: %s\r\n" % (i, b"v" * 1000))
                await writer.drain()

    async def large(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = b"HTTP/1.1 200 OK\r\n" + b"".join(b"x-%d: %s\r\n" % (i, b"v" * 1000) for i in range(60))
        for at in range(0, len(head), 7000):
            writer.write(head[at : at + 7000])
            await writer.drain()
        writer.write(b"content-length: 2\r\n\r\nok")
        await writer.drain()

    bad, bad_url = await serving(endless)
    good, good_url = await serving(large)
    try:
        async with httpx.AsyncClient(transport=CoalescingTransport(), timeout=5) as http:
            with pytest.raises(httpx.RemoteProtocolError, match=f"head over {http_client.MAX_HEAD_BYTES} bytes"):
                await http.get(bad_url)
            answer = await http.get(good_url)
            assert answer.text == "ok" and answer.headers["x-59"] == "v" * 1000
    finally:
        bad.close()
        good.close()


async def test_an_answer_sent_before_the_body_was_read_is_the_response_not_a_write_error() -> None:
    """A server may refuse a body too large as soon as it reads the head: the client gets that 413, whether the
    server then closes the connection (the client's write fails) or leaves it open without reading (the write
    would wait forever). The connection is not used again: its request was cut short."""
    connections = 0
    too_large = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 9\r\n\r\ntoo large"

    async def closes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(too_large)
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.close()  # unread data: the kernel resets the connection

    async def stops_reading(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(too_large)
        await writer.drain()
        await asyncio.sleep(30)

    body = b"z" * (64 * 1024 * 1024)  # far more than loopback's socket buffers hold

    async def in_parts() -> AsyncIterator[bytes]:
        for at in range(0, len(body), 1024 * 1024):
            yield body[at : at + 1024 * 1024]

    closing, closing_url = await serving(closes)
    stalling, stalling_url = await serving(stops_reading)
    try:
        async with httpx.AsyncClient(transport=CoalescingTransport(), timeout=10) as http:
            for content in (body, in_parts()):
                answer = await http.post(closing_url, content=content)
                assert (answer.status_code, answer.text) == (413, "too large")
            for _ in range(2):
                answer = await asyncio.wait_for(http.post(stalling_url, content=body), 5)
                assert (answer.status_code, answer.text) == (413, "too large")
        assert connections == 2
    finally:
        closing.close()
        stalling.close()
