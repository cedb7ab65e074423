"""The events of a streamed reply: a text chunk (or a Responses text delta) filled into its template is, byte for
byte, the event pydantic builds and dumps for the same text."""

from __future__ import annotations

import random

import pytest

from cocoon.client.answers import ChunkLines, Reply
from cocoon.client.responses import ResponseWriter, _line
from cocoon.protocol.openai_responses.objects import OutputMessage, OutputText, TextDeltaEvent
from cocoon.protocol.openai_responses.request import ResponsesRequest

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


def test_a_responses_text_delta_from_the_template_is_the_event_itself() -> None:
    """The Responses API's text deltas: the template's bytes are the model's, sequence numbers counting on."""
    writer = ResponseWriter(ResponsesRequest(model="gemma-3-270m", input="hi"))
    first = OutputMessage(id="msg_" + "7" * 32, status="in_progress", content=[OutputText(text="")])
    second = OutputMessage(id="msg_second", status="in_progress", content=[OutputText(text="")])
    writer.items += [first, second]
    for n, text in enumerate(TEXTS * 3):
        message = first if n % 2 else second
        expected = _line(
            TextDeltaEvent(
                type="response.output_text.delta",
                sequence_number=n,
                item_id=message.id,
                output_index=writer.items.index(message),
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        assert writer._text(message, text, []) == expected, (n, text)
    output = writer.response("in_progress").output  # the deltas joined as the response object shows them
    assert output[0].content[0].text == "".join(TEXTS[i % len(TEXTS)] for i in range(1, 3 * len(TEXTS), 2))
    assert output[1].content[0].text == "".join(TEXTS[i % len(TEXTS)] for i in range(0, 3 * len(TEXTS), 2))
