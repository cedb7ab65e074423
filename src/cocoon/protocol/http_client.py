"""An httpx transport for cocoon's hot path: each HTTP/1.1 request in one write, on a lean asyncio stream.

httpcore writes a request's head and its body separately, and each write on a loopback socket wakes the peer:
on this project's 2-core VM a wakeup costs the sender ~50 µs and the receiver a pass of its event loop, and
uvicorn parses the head and the body in two rounds. ``CoalescingTransport`` holds what httpcore writes until it
reads (an HTTP/1.1 client always reads once its request is written) or ``FLUSH_BYTES`` are held, then writes it
at once. The SDK's requests to proxies, a payer's vouchers and a worker's calls to its upstream server use it.

Its connections are asyncio transports read through a small protocol (``_Stream``), not httpcore's anyio
streams: those enter a cancel scope and an exception map on every read and write, and build a dict of the
socket's attributes each time the pool asks an idle connection whether its server hung up (the pool asks every
idle connection whenever a request starts or ends). Measured on one loopback client: ~15-20% less CPU per
streamed request. TLS is asyncio's own (``loop.start_tls``); errors are httpcore's, which httpx maps as usual.
The pool's own bookkeeping is made linear (``_LinearPool``). cocoon runs on asyncio only (uvloop where
installed), so there is no trio path.

httpx has no public hook for httpcore's network backend: the transport replaces the pool ``AsyncHTTPTransport``
builds with one over ``CoalescingBackend`` (``tests/unit/protocol/test_http_client.py`` checks that a request
goes in one write, TLS, timeouts and hang-ups, so a change in httpx or httpcore shows there).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterable
from typing import Any, cast

import httpcore
import httpx

FLUSH_BYTES = 64 * 1024  # a larger body goes on as it comes
DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)  # httpx's own


READ_LIMIT = 256 * 1024  # bytes read ahead of httpcore before the socket is paused


class _Reader(asyncio.Protocol):
    """What a connection's socket delivered, for ``_Stream`` to read, and its write flow control."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.lost: Exception | None = None
        self.paused_reading = False
        self._data: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > READ_LIMIT and self.transport is not None:
            self.transport.pause_reading()
            self.paused_reading = True
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof, self.lost = True, exc
        self._wake()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    def _wake(self) -> None:
        if self._data is not None and not self._data.done():
            self._data.set_result(None)

    async def data(self) -> None:
        """Until there is something to read, or the end."""
        self._data = asyncio.get_running_loop().create_future()
        await self._data

    async def drained(self) -> None:
        if self._drained is not None:
            await self._drained


class _Stream(httpcore.AsyncNetworkStream):
    """One connection for httpcore, straight on an asyncio transport, holding writes until the next read.

    httpcore's default (anyio) stream enters a cancel scope and an exception map for every read and write and
    builds a dict of its socket's attributes for every question the pool asks; this waits on a future only
    when nothing was read yet, with ``asyncio.timeout`` only then. Errors are httpcore's, as its own backend
    raises them (httpx maps them to ``httpx.ReadTimeout``, ``ConnectError``...).
    """

    def __init__(self, reader: _Reader) -> None:
        assert reader.transport is not None
        self._reader = reader
        self._transport: asyncio.Transport = reader.transport
        self._held: list[bytes] = []
        self._size = 0

    async def _flush(self, timeout: float | None) -> None:
        if not self._held:
            return
        data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held.clear()
        self._size = 0
        if self._reader.lost is not None or self._transport.is_closing():
            raise httpcore.WriteError(f"the connection is closed ({self._reader.lost or 'by this side'})")
        self._transport.write(data)
        try:
            async with asyncio.timeout(timeout):
                await self._reader.drained()
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(f"the peer took no data for {timeout} s") from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._held.append(buffer)
        self._size += len(buffer)
        if self._size >= FLUSH_BYTES:
            await self._flush(timeout)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        await self._flush(timeout)
        reader = self._reader
        if not reader.buffer and not reader.eof:
            try:
                async with asyncio.timeout(timeout):
                    while not reader.buffer and not reader.eof:
                        await reader.data()
            except TimeoutError as exc:
                raise httpcore.ReadTimeout(f"nothing read for {timeout} s") from exc
        buffer = reader.buffer
        if not buffer:
            if reader.lost is not None:
                raise httpcore.ReadError(str(reader.lost)) from reader.lost
            return b""  # the peer closed: httpcore reads this as the end
        if len(buffer) <= max_bytes:
            data = bytes(buffer)
            buffer.clear()
        else:
            data = bytes(buffer[:max_bytes])
            del buffer[:max_bytes]
        if reader.paused_reading and len(buffer) <= READ_LIMIT // 2:
            reader.paused_reading = False
            self._transport.resume_reading()
        return data

    async def aclose(self) -> None:
        self._held.clear()
        self._transport.close()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        await self._flush(timeout)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport = await loop.start_tls(
                    self._transport, self._reader, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError as exc:
            self._transport.close()
            raise httpcore.ConnectTimeout(f"no TLS handshake within {timeout} s") from exc
        except (OSError, ssl.SSLError) as exc:
            self._transport.close()
            raise httpcore.ConnectError(str(exc)) from exc
        self._reader.transport = cast(asyncio.Transport, transport)
        return _Stream(self._reader)

    def get_extra_info(self, info: str) -> Any:
        transport = self._transport
        if info == "is_readable":
            # An idle connection whose server hung up (or sent what nobody asked for), as of the loop's last look
            # at the socket: no poll of its own (one per idle connection, twice a request, was 3% of a
            # sidecar's CPU). A FIN the loop has not read yet is seen at its next pass, much as one that comes
            # just after httpcore's own poll would be.
            return bool(self._reader.buffer) or self._reader.eof
        if info in ("socket", "ssl_object"):
            return transport.get_extra_info(info)
        if info == "client_addr":
            return transport.get_extra_info("sockname")
        if info == "server_addr":
            return transport.get_extra_info("peername")
        return None


class CoalescingBackend(httpcore.AsyncNetworkBackend):
    """A network backend for httpcore on the running asyncio loop, its streams holding writes until a read."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        local = (local_address, 0) if local_address else None
        loop = asyncio.get_running_loop()
        stream = await _connect(loop.create_connection(_Reader, host, port, local_addr=local), timeout)
        sock = stream.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for option in socket_options or ():
            sock.setsockopt(*option)
        return stream

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        stream = await _connect(asyncio.get_running_loop().create_unix_connection(_Reader, path), timeout)
        for option in socket_options or ():
            stream.get_extra_info("socket").setsockopt(*option)
        return stream

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def _connect(connecting: Any, timeout: float | None) -> _Stream:
    try:
        async with asyncio.timeout(timeout):
            _transport, reader = await connecting
    except TimeoutError as exc:
        raise httpcore.ConnectTimeout(f"no connection within {timeout} s") from exc
    except OSError as exc:
        raise httpcore.ConnectError(str(exc)) from exc
    return _Stream(reader)


class _LinearPool(httpcore.AsyncConnectionPool):
    """httpcore's pool with its bookkeeping linear in its connections.

    Each time a request starts or ends, httpcore's ``_assign_requests_to_connections`` drops closed and expired
    connections and idle ones beyond the keep-alive limit, then gives queued requests a connection; for the
    limit it counts every connection once per idle one (a list built each time), quadratic in the pool, ~4%
    of a sidecar's CPU at 16 streams. This does the same in one pass: the same connections dropped and closed,
    in the same order, and requests assigned as httpcore's rules say (``test_http_client.py`` holds both pools
    to the same decisions).
    """

    def _assign_requests_to_connections(self) -> list[httpcore.AsyncConnectionInterface]:
        closing: list[httpcore.AsyncConnectionInterface] = []
        kept: list[httpcore.AsyncConnectionInterface] = []
        left = len(self._connections)  # the pool's size as each connection is looked at
        for connection in self._connections:
            if connection.is_closed():
                left -= 1
            elif connection.has_expired() or (connection.is_idle() and left > self._max_keepalive_connections):
                left -= 1
                closing.append(connection)
            else:
                kept.append(connection)
        self._connections[:] = kept
        for pool_request in [r for r in self._requests if r.is_queued()]:
            origin = pool_request.request.url.origin
            found = next((c for c in self._connections if c.can_handle_request(origin) and c.is_available()), None)
            if found is None:
                if len(self._connections) >= self._max_connections:
                    idle = next((c for c in self._connections if c.is_idle()), None)
                    if idle is None:
                        continue  # it waits for a connection to come free
                    self._connections.remove(idle)
                    closing.append(idle)
                found = self.create_connection(origin)
                self._connections.append(found)
            pool_request.assign_to_connection(found)
        return closing


class CoalescingTransport(httpx.AsyncHTTPTransport):
    """``httpx.AsyncHTTPTransport`` (HTTP/1.1, no proxy) whose requests go out in one write each; ``trust_env``
    as httpx's (``SSL_CERT_FILE``/``SSL_CERT_DIR`` for the default verification)."""

    def __init__(
        self,
        verify: ssl.SSLContext | bool = True,
        limits: httpx.Limits = DEFAULT_LIMITS,
        trust_env: bool = True,
    ) -> None:
        # The base class builds a pool of its own, replaced on the next line before it can connect: built
        # without verification it skips a second load of the CA bundle (~35 ms a transport).
        super().__init__(verify=False, limits=limits, trust_env=False)
        self._pool = _LinearPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=trust_env),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=CoalescingBackend(),
        )
