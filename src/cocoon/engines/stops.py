"""Stop strings the way OpenAI applies them, shared by the engines that decode locally.

The stop string itself is never emitted, and text that might be the start of one is held back until
the next piece of text proves it is not.
"""

from __future__ import annotations

from collections.abc import Iterable


class StopStringFilter:
    """Feed generated text in order; get back the part that is safe to emit.

    After ``feed()`` returns with ``stopped`` true, the generation must end: the text up to (not
    including) the earliest stop string has been returned and everything after it is dropped.
    ``flush()`` returns the held-back tail when generation ends for another reason.
    """

    __slots__ = ("_held", "_longest", "_stops", "stopped")

    def __init__(self, stops: Iterable[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._longest = max((len(s) for s in self._stops), default=0)
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Add ``text``; return what can be emitted now (possibly ``""``)."""
        if self.stopped:
            return ""
        held = self._held + text
        if not self._stops:
            return held
        cut = min((i for s in self._stops if (i := held.find(s)) >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return held[:cut]
        keep = self._partial_stop_length(held)
        self._held = held[len(held) - keep :]
        return held[: len(held) - keep]

    def flush(self) -> str:
        """Return and forget the held-back text (call once, when generation ended without a stop)."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _partial_stop_length(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of some stop string."""
        for k in range(min(len(text), self._longest - 1), 0, -1):
            tail = text[-k:]
            if any(s.startswith(tail) for s in self._stops):
                return k
        return 0
