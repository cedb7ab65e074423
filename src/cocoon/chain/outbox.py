"""A wallet's message in flight, kept on disk so that a retried command resumes it instead of sending another.

A transfer's outcome is unknown from the moment its message is sent until the wallet's seqno moves or the
message expires. A command that crashes, times out or is interrupted in that window and is run again must not
sign a second message for the same thing: the first may still land, and then the money moves twice. So
``Wallet.transfer`` writes the signed message here *before* sending it and clears it once the outcome is
known; the next transfer from the wallet first settles what the file holds:

- the seqno moved past it: it landed. If the new transfer asks for the same thing (same ``intent``: the
  destination, amount and body less its ``query_id``) it is not sent again; the earlier one is its result.
- neither landed nor expired: it may still land. The same intent sends the *same* message again (the chain
  applies it at most once) and waits for it; another intent waits for it to land or expire first.
- expired unapplied: it never can be; it is forgotten.

The file is locked while a transfer runs, so two processes sharing a wallet take turns. A wallet made
without an outbox (tests, throwaway keys) keeps nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path

from cocoon.errors import ConfigError


@dataclass(frozen=True, slots=True)
class PendingMessage:
    """A signed external message whose outcome was not known yet when it was written down."""

    intent: str  # hex digest of what the message does; see Wallet.transfer
    seqno: int
    valid_until: int
    boc: str  # base64 of the external message, to send again unchanged
    body_hash: str  # hex hash of its signed body, to find the wallet's transaction for it
    wallet_lt: int  # the wallet's last transaction lt before it was sent
    description: str  # for people: what was being sent


class Outbox:
    """The one pending message of a wallet, in a JSON file beside its key (``<key>.outbox.json``)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def beside(cls, key_file: Path) -> Outbox:
        return cls(key_file.with_name(key_file.name + ".outbox.json"))

    @contextlib.asynccontextmanager
    async def locked(self) -> AsyncIterator[None]:
        """Hold the outbox against other processes of the same wallet, waiting (without blocking the event
        loop) while one of them sends."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a+b") as handle:  # noqa: ASYNC230 - a local file
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.1)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def pending(self) -> PendingMessage | None:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"the wallet outbox {self.path} is unreadable ({exc}); move it aside to go on") from exc
        try:
            return PendingMessage(**raw)
        except TypeError as exc:
            raise ConfigError(f"the wallet outbox {self.path} holds an unexpected {raw!r}") from exc

    def record(self, message: PendingMessage) -> None:
        """Write ``message`` durably (temporary file, fsync, rename) before it is sent."""
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w") as handle:
            json.dump(asdict(message), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
