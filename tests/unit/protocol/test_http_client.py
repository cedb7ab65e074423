"""``CoalescingTransport``: httpx sends each request through it in one socket write, to a real loopback server."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest

from cocoon.protocol import http_client
from cocoon.protocol.http_client import FLUSH_BYTES, CoalescingTransport, _LinearPool
from cocoon.protocol.tls import trust_context
from tests.helpers.tls import self_signed


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the writes CoalescingTransport's connections hand their sockets, in order."""
    sizes: list[int] = []
    made = http_client._Reader.connection_made

    def connection_made(self: http_client._Reader, transport: Any) -> None:
        made(self, transport)
        write = transport.write

        def counted(data: bytes) -> None:
            sizes.append(len(data))
            write(data)

        transport.write = counted

    monkeypatch.setattr(http_client._Reader, "connection_made", connection_made)
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


async def test_the_stream_answers_for_its_socket() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    backend: Any = CoalescingTransport()._pool._network_backend
    stream = await backend.connect_tcp("127.0.0.1", port)
    try:
        sock = stream.get_extra_info("socket")
        assert sock.getpeername() == ("127.0.0.1", port)
        assert stream.get_extra_info("server_addr") == ("127.0.0.1", port)
        assert stream.get_extra_info("is_readable") is False
    finally:
        await stream.aclose()
        server.close()


class FakeConnection:
    """A pooled connection in a given state, named so two pools' decisions can be compared."""

    def __init__(self, name: str, state: str, origin: str) -> None:
        self.name, self.state, self.origin = name, state, origin

    def is_closed(self) -> bool:
        return self.state == "closed"

    def has_expired(self) -> bool:
        return self.state == "expired"

    def is_idle(self) -> bool:
        return self.state == "idle"

    def is_available(self) -> bool:
        return self.state == "idle"

    def can_handle_request(self, origin: Any) -> bool:
        return self.origin == origin


class FakeRequest:
    def __init__(self, origin: str) -> None:
        self.request = type("R", (), {"url": type("U", (), {"origin": origin})()})()
        self.connection: FakeConnection | None = None

    def is_queued(self) -> bool:
        return self.connection is None

    def assign_to_connection(self, connection: FakeConnection) -> None:
        self.connection = connection


def test_the_linear_pool_decides_as_httpcores_own() -> None:
    """Drop the same connections (closed, expired, idle beyond keep-alive), close the same, and give each
    queued request the connection httpcore's pool would: random pools, both pools run on copies of each."""
    rng = random.Random(7)
    states, origins = ["idle", "busy", "closed", "expired"], ["a", "b"]
    for trial in range(400):
        layout = [(rng.choice(states), rng.choice(origins)) for _ in range(rng.randrange(0, 12))]
        queued = [rng.choice(origins) for _ in range(rng.randrange(0, 5))]
        limits = rng.randrange(1, 8), rng.randrange(0, 6)  # max connections, max keep-alive
        outcomes = []
        for pool_type in (httpcore.AsyncConnectionPool, _LinearPool):
            pool: Any = pool_type(max_connections=limits[0], max_keepalive_connections=limits[1])
            made = iter(range(100))
            pool.create_connection = lambda origin, made=made: FakeConnection(f"new{next(made)}", "busy", origin)
            pool._connections = [FakeConnection(f"c{i}", s, o) for i, (s, o) in enumerate(layout)]
            pool._requests = [FakeRequest(o) for o in queued]
            closing = pool._assign_requests_to_connections()
            outcomes.append(
                (
                    [c.name for c in closing],
                    [c.name for c in pool._connections],
                    [r.connection and r.connection.name for r in pool._requests],
                )
            )
        assert outcomes[0] == outcomes[1], (trial, layout, queued, limits)


def test_the_pool_in_use_verifies_certificates() -> None:
    """The base class's own pool is built unverified and thrown away: the one requests go through verifies."""
    context = CoalescingTransport()._pool._ssl_context
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    mine = ssl.create_default_context()
    assert CoalescingTransport(verify=mine)._pool._ssl_context is mine


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
