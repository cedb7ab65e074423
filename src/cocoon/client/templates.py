"""Streamed events made from a template: most events of a stream differ from the one before only in a text (and a
sequence number), so their bytes are rendered once by the models, with markers in the holes, and filled in.

Building and dumping a pydantic model per token was a tenth of a sidecar's CPU on a streamed chat. A template is
made from a rendering of the same model, so its bytes are the model's (the tests of its users hold them to it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

TEXT_MARK = "\x00cocoon-text\x00"  # a text field's value in a rendering made for a template
TEXT_MARK_JSON = json.dumps(TEXT_MARK).encode()


def text_json(text: str) -> bytes:
    """``text`` as its JSON string, as ``json.dumps`` writes it in a whole object."""
    return json.dumps(text).encode()


class Template:
    """The bytes of ``rendered`` with a hole at each of ``marks`` (each found exactly once); ``fill`` takes the
    holes' bytes in the order of ``marks``."""

    __slots__ = ("_order", "_pieces")

    def __init__(self, rendered: bytes, marks: Sequence[bytes]) -> None:
        found = []
        for i, mark in enumerate(marks):
            if rendered.count(mark) != 1:
                raise ValueError(f"a template's mark {mark!r} is not in its rendering exactly once")
            found.append((rendered.index(mark), i, len(mark)))
        self._pieces: list[bytes] = []
        self._order: list[int] = []
        at = 0
        for position, i, size in sorted(found):
            self._pieces.append(rendered[at:position])
            self._order.append(i)
            at = position + size
        self._pieces.append(rendered[at:])

    def fill(self, *values: bytes) -> bytes:
        parts = [self._pieces[0]]
        for i, piece in zip(self._order, self._pieces[1:], strict=True):
            parts.append(values[i])
            parts.append(piece)
        return b"".join(parts)
