"""A configfs-tsm provider in a temporary folder, for tests of evidence collection.

The gap, named: there is no real configfs here. On a guest, ``mkdir`` of an entry makes the kernel create its
attribute files and ``rmdir`` drops them; a plain directory does neither, so ``FakeTsm`` stands in for exactly
those two calls (``tsm._make_entry`` / ``tsm._remove_entry``). Its ``outblob`` is a FIFO: as on the kernel, the
report is produced when the reader opens it, from whatever ``inblob`` holds then (``report`` makes it), and
``generation`` counts the writes.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path


class FakeTsm:
    """A configfs-tsm provider in a temporary folder; ``other_writes`` simulates a racing writer."""

    def __init__(
        self,
        root: Path,
        provider: str = "tdx_guest",
        auxblob: bytes | None = None,
        report: Callable[[bytes], bytes] = lambda inblob: b"REPORT(" + inblob + b")",
    ) -> None:
        self.root = root
        self.report = report
        self.provider = provider
        self.auxblob = auxblob
        self.other_writes = 0
        self.entries: list[Path] = []
        self.removed: list[Path] = []
        self._servers: dict[Path, threading.Thread] = {}

    def make_entry(self, entry: Path) -> None:
        entry.mkdir(mode=0o700)
        (entry / "provider").write_text(self.provider + "\n")
        (entry / "generation").write_text("0\n")
        if self.auxblob is not None:
            (entry / "auxblob").write_bytes(self.auxblob)
        os.mkfifo(entry / "outblob")
        server = threading.Thread(target=self._serve, args=(entry,), daemon=True)
        server.start()
        self._servers[entry] = server
        self.entries.append(entry)

    def _serve(self, entry: Path) -> None:
        with open(entry / "outblob", "wb") as out:  # blocks until a reader opens outblob
            inblob = entry / "inblob"
            if not inblob.exists():
                return  # opened by remove_entry: the caller gave up before asking for a report
            writes = 1 + self.other_writes
            (entry / "generation").write_text(f"{writes}\n")  # before the report: the reader sees EOF after it
            out.write(self.report(inblob.read_bytes()))

    def remove_entry(self, entry: Path) -> None:
        unblock = os.open(entry / "outblob", os.O_RDONLY | os.O_NONBLOCK)  # lets a waiting server finish
        try:
            self._servers.pop(entry).join(timeout=10)
        finally:
            os.close(unblock)
        shutil.rmtree(entry)
        self.removed.append(entry)
