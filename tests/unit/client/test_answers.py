"""The events of a streamed reply: a text chunk filled into its choice's template is, byte for byte, the chunk
pydantic builds and dumps for the same text."""

from __future__ import annotations

import random

import pytest

from cocoon.client.answers import ChunkLines, Reply

TEXTS = ["", "Hello", ' "quoted" \\ back', "line\nbreak\ttab", "héllo wörld", "日本語", "🦊 emoji", "\x00\x1f", "</s>"]


@pytest.mark.parametrize("kind", ["chat", "completion"])
@pytest.mark.parametrize("include_usage", [False, True])
def test_a_text_chunk_from_the_template_is_the_chunk_itself(kind: str, include_usage: bool) -> None:
    lines = ChunkLines(Reply(kind, "gemma-3-270m"), include_usage)  # type: ignore[arg-type]
    rng = random.Random(3)
    texts = TEXTS + ["".join(chr(rng.randrange(1, 0x2FFF)) for _ in range(rng.randrange(1, 12))) for _ in range(50)]
    texts.append("\x00cocoon-text\x00")  # the template's own marker, as a text
    for index in (0, 1, 2):
        for text in texts:
            assert lines.text(index, text) == lines.chunk(index, text), (index, text)
