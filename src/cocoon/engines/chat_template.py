"""How a chat request becomes prompt tokens for the model being served: the template follows the model.

Gemma (a ``<end_of_turn>`` token) gets Gemma's turns (``gemma_template.py``; the bundled GGUF has no template);
another model gets the Jinja chat template its GGUF carries (``tokenizer.chat_template``), e.g. SmolLM2's ChatML.
Either way the markers are special tokens and message contents plain text, so a user cannot forge a turn; tools,
tool calls and tool results are message text too (``tool_calls.chat_messages``), so no template needs a tool role.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from cocoon.engines.base import GenerationRequest
from cocoon.engines.gemma_template import TURN_END, GemmaTurns, raw_prompt_tokens, single_token
from cocoon.engines.tool_calls import chat_messages
from cocoon.errors import BadRequest, EngineError

if TYPE_CHECKING:
    from llama_cpp import Llama

log = logging.getLogger(__name__)

# Message contents are rendered as these placeholders, then tokenized apart from the template's text.
_PLACEHOLDER = re.compile("\x00([0-9]+)\x00")
_ROLES = {"developer": "system"}  # OpenAI's newer name for the system role; templates know only the old one


class ChatTemplate(Protocol):
    """Lays out a request as prompt tokens. ``end_of_turn`` ends an answer (-1: only the model's EOG tokens)."""

    @property
    def name(self) -> str: ...

    @property
    def end_of_turn(self) -> int: ...

    def prompt_tokens(self, llama: Llama, request: GenerationRequest) -> list[int]:
        """The prompt of ``request``: its messages in the template, or its raw completion prompt."""
        ...


def chat_template_for(llama: Llama, path: Path) -> ChatTemplate:
    """The template for the model ``llama`` has loaded from ``path``.

    Gemma's turns when the model has an ``<end_of_turn>`` token, else the GGUF's own Jinja template, else (a
    model with neither) Gemma's turns read as plain text, with a warning. Raises ``EngineError`` when the
    GGUF's template is not valid Jinja.
    """
    try:
        return GemmaTurns(single_token(llama, TURN_END))
    except EngineError:
        pass  # not a Gemma model: its GGUF says how it chats
    source = llama.metadata.get("tokenizer.chat_template")
    if source:
        return GgufChatTemplate.compile(source, llama)
    log.warning("model %s has neither %s nor a chat template; chat turns are plain text to it", path, TURN_END)
    return GemmaTurns(-1)


@dataclass(frozen=True, slots=True)
class GgufChatTemplate:
    """The Jinja chat template of a GGUF, rendered as llama.cpp's and Hugging Face's servers render it.

    Contents go in as placeholders; the rendered text is cut at them, the template's pieces tokenized with special
    tokens recognised and each content as plain text. A template that refuses the messages (``raise_exception``,
    e.g. roles out of order) is a ``BadRequest``.
    """

    template: jinja2.Template
    bos: str
    eos: str
    name: str = "gguf"
    end_of_turn: int = -1

    @classmethod
    def compile(cls, source: str, llama: Llama) -> GgufChatTemplate:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_exception
        try:
            template = env.from_string(source)
        except jinja2.TemplateError as exc:
            raise EngineError(f"the model's chat template is not valid Jinja: {exc}") from exc
        return cls(template, _token_text(llama, llama.token_bos()), _token_text(llama, llama.token_eos()))

    def prompt_tokens(self, llama: Llama, request: GenerationRequest) -> list[int]:
        if request.prompt is not None:
            return raw_prompt_tokens(llama, request)
        assert request.messages is not None
        if not request.messages:
            raise BadRequest("messages is empty; send at least one message", param="messages")
        plain = chat_messages(request)  # tools, calls and their results as text in system, user, assistant turns
        contents = [m.content for m in plain]
        messages: list[dict[str, Any]] = [
            {"role": _ROLES.get(m.role, m.role), "content": f"\x00{i}\x00"} for i, m in enumerate(plain)
        ]
        try:
            text = self.template.render(
                messages=messages, add_generation_prompt=True, bos_token=self.bos, eos_token=self.eos
            )
        except jinja2.TemplateError as exc:
            raise BadRequest(f"the model's chat template refuses these messages: {exc}", param="messages") from exc
        # The template may write the BOS text itself; otherwise the tokenizer adds BOS if the model wants one.
        tokens: list[int] = []
        pieces = _PLACEHOLDER.split(text)
        for i, piece in enumerate(pieces):
            if i % 2:
                tokens += llama.tokenize(contents[int(piece)].encode(), add_bos=False, special=False)
            elif piece or i == 0:
                add_bos = i == 0 and not (self.bos and piece.startswith(self.bos))
                tokens += llama.tokenize(piece.encode(), add_bos=add_bos, special=True)
        if request.continuation:
            tokens += llama.tokenize(request.continuation.encode(), add_bos=False, special=False)
        return tokens


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _token_text(llama: Llama, token: int) -> str:
    if token < 0:
        return ""
    return llama.detokenize([token], special=True).decode("utf-8", errors="replace")
