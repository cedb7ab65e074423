"""How the decoded text of one generation becomes engine events: text through the stop strings, tool calls read
out of it, and every completion token carried by some event, so the deltas add up to what the worker bills.

The embedded engine feeds it token by token (with the token's log-probability when asked) and finishes it once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from cocoon.engines.base import Finished, FinishReason, GenerationEvent, TextDelta, TokenLogprob, ToolCallDelta
from cocoon.engines.stops import StopStringFilter
from cocoon.engines.tool_calls import ToolCallReader
from cocoon.protocol.usage import TokenUsage


class AnswerStream:
    """Events of one answer, sent through ``emit`` as they become known.

    A ``TextDelta`` carries the tokens (and log-probabilities) since the previous event; a tool call's piece is
    held until the next piece or the end, so that the tokens after it (the call's closing, the end of generation)
    are carried too. ``stopped`` turns true when a stop string ended the answer: generation must end.
    """

    def __init__(
        self, emit: Callable[[GenerationEvent], None], stops: tuple[str, ...], reader: ToolCallReader | None
    ) -> None:
        self._emit = emit
        self._stops = StopStringFilter(stops)
        self._reader = reader
        self._tokens = 0  # completion tokens no event carried yet
        self._logprobs: list[TokenLogprob] = []
        self._held: ToolCallDelta | None = None
        self.stopped = False

    def add(self, text: str, logprob: TokenLogprob | None = None) -> None:
        """One more completion token and its text ("" while it is part of a character, or a special token)."""
        self._tokens += 1
        if logprob is not None:
            self._logprobs.append(logprob)
        self._take(self._read(text))

    def finish(self, tail: str, reason: FinishReason, usage: TokenUsage) -> None:
        """End the answer: ``tail`` is the decoder's last text; the reason becomes "tool_calls" when the answer
        ended on its own after making calls."""
        if not self.stopped:
            self._take(self._read(tail) + (self._reader.close() if self._reader is not None else []))
        if not self.stopped:
            self._text(self._stops.flush())
        self._release()
        if reason == "stop" and not self.stopped and self._reader is not None and self._reader.calls:
            reason = "tool_calls"
        self._emit(Finished(reason, usage))

    def _read(self, text: str) -> list[str | ToolCallDelta]:
        return self._reader.feed(text) if self._reader is not None else [text]

    def _take(self, pieces: list[str | ToolCallDelta]) -> None:
        for piece in pieces:
            if self.stopped:
                return
            if isinstance(piece, str):
                self._text(self._stops.feed(piece))
            else:
                if piece.name is not None:  # a call begins: text held back for a stop string is final now
                    self._text(self._stops.flush())
                self._release()
                self._held = piece

    def _text(self, text: str) -> None:
        if text:
            self._release()
            self._emit(TextDelta(text, tokens=self._tokens, logprobs=tuple(self._logprobs)))
            self._tokens = 0
            self._logprobs.clear()
        if self._stops.stopped:
            self.stopped = True

    def _release(self) -> None:
        if self._held is not None:
            self._emit(replace(self._held, tokens=self._tokens))
            self._tokens = 0
            self._logprobs.clear()  # OpenAI gives log-probabilities of content only
            self._held = None
