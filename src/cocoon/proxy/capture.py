"""An ASGI wrapper that appends every byte the proxy receives and sends to a file.

For audits and for the test that proves the proxy never sees plaintext: whatever reaches the app, over
HTTP bodies or WebSocket frames, lands in the capture.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def wrap_capture(app: Callable[..., Awaitable[None]], capture_file: str | None) -> Any:
    """Wrap ``app`` so every byte it receives and sends is appended to ``capture_file`` (audits, tests)."""
    return WireCapture(app, capture_file) if capture_file else app


class WireCapture:
    """Appends each message's bytes as ``direction (< or >) + 4-byte length + payload``."""

    def __init__(self, app: Callable[[Message, Receive, Send], Awaitable[None]], path: str) -> None:
        self.app = app
        self._out = open(path, "ab", buffering=0)

    def _write(self, direction: bytes, payload: bytes | str | None) -> None:
        if payload:
            data = payload.encode() if isinstance(payload, str) else payload
            self._out.write(direction + len(data).to_bytes(4, "big") + data)

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        self._write(b"<", (scope.get("path", "") + "?" + scope.get("query_string", b"").decode()))
        for name, value in scope.get("headers", []):
            self._write(b"<", name + b": " + value)

        async def recv() -> Message:
            message = await receive()
            self._write(b"<", message.get("body") or message.get("bytes") or message.get("text"))
            return message

        async def snd(message: Message) -> None:
            self._write(b">", message.get("body") or message.get("bytes") or message.get("text"))
            await send(message)

        await self.app(scope, recv, snd)
