"""An httpx transport that sends each HTTP/1.1 request in one write: the hops of cocoon's hot path use it.

httpcore writes a request's head and its body separately, and each write on a loopback socket wakes the peer:
on this project's 2-core VM a wakeup costs the sender ~50 µs and the receiver a pass of its event loop, and
uvicorn parses the head and the body in two rounds. ``CoalescingTransport`` holds what httpcore writes until it
reads (an HTTP/1.1 client always reads once its request is written) or ``FLUSH_BYTES`` are held, then writes it
at once. The SDK's requests to proxies, a payer's vouchers and a worker's calls to its upstream server use it.
Its streams also answer httpcore's pool cheaply when it asks whether an idle connection's server hung up (the
pool asks every idle connection each time a request starts or ends).

httpx has no public hook for httpcore's network backend: the transport replaces the pool ``AsyncHTTPTransport``
builds with one over ``CoalescingBackend`` (``tests/unit/protocol/test_http_client.py`` checks that a request
goes in one write, so a change in httpx shows there).
"""

from __future__ import annotations

import select
import socket
import ssl
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

FLUSH_BYTES = 64 * 1024  # a larger body goes on as it comes
DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)  # httpx's own


class _CoalescingStream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._held: list[bytes] = []
        self._size = 0
        # httpcore's pool asks every idle connection "is_readable" (a server that hung up) each time a request
        # starts or ends; anyio builds a dict of its socket's attributes on every such question, which took
        # ~15% of a sidecar's or worker's CPU at 16 streams. The socket is asked for once.
        self._socket: socket.socket | None = inner.get_extra_info("socket")

    async def _flush(self, timeout: float | None) -> None:
        if self._held:
            data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
            self._held.clear()
            self._size = 0
            await self._inner.write(data, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._held.append(buffer)
        self._size += len(buffer)
        if self._size >= FLUSH_BYTES:
            await self._flush(timeout)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        await self._flush(timeout)
        return await self._inner.read(max_bytes, timeout)

    async def aclose(self) -> None:
        self._held.clear()
        await self._inner.aclose()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        await self._flush(timeout)
        return _CoalescingStream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable" and self._socket is not None:
            return _readable(self._socket)
        if info == "socket":
            return self._socket
        return self._inner.get_extra_info(info)


def _readable(sock: socket.socket) -> bool:
    """Whether ``sock`` has something to read (or was closed), without waiting: httpcore's own check."""
    fd = sock.fileno()
    if fd < 0:
        return True
    poll = select.poll()
    poll.register(fd, select.POLLIN)
    return bool(poll.poll(0))


class CoalescingBackend(httpcore.AsyncNetworkBackend):
    """httpcore's default backend, its streams holding writes until the next read."""

    def __init__(self) -> None:
        from httpcore._backends.auto import AutoBackend  # httpcore's default (anyio or trio, as running)

        self._inner: httpcore.AsyncNetworkBackend = AutoBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        inner = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _CoalescingStream(inner)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        return _CoalescingStream(await self._inner.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


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
