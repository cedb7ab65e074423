"""Gemma's chat turns, built as tokens for llama.cpp.

The bundled GGUF carries no chat template, so chat requests are laid out here: turn markers as special
tokens, message contents as plain text (a user cannot forge a turn marker), system text in the first user turn.
Gemma has no tool role: tools and tool results come as text (``tool_calls.chat_messages``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cocoon.engines.base import ChatMessage, GenerationRequest
from cocoon.engines.tool_calls import chat_messages
from cocoon.errors import BadRequest, EngineError

if TYPE_CHECKING:
    from llama_cpp import Llama

TURN_START = "<start_of_turn>"
TURN_END = "<end_of_turn>"
_GEMMA_ROLES = {"user": "user", "assistant": "model"}


@dataclass(frozen=True, slots=True)
class GemmaTurns:
    """Gemma's chat template; ``end_of_turn`` is the id of ``<end_of_turn>``, -1 for a model without one."""

    end_of_turn: int
    name: str = "gemma"

    def prompt_tokens(self, llama: Llama, request: GenerationRequest) -> list[int]:
        return prompt_tokens(llama, request)


def raw_prompt_tokens(llama: Llama, request: GenerationRequest) -> list[int]:
    """A completion's prompt and continuation as tokens: BOS, then special markers such as ``<start_of_turn>``
    recognised (as llama.cpp's and vLLM's servers do); or the prompt's token ids exactly as given (no BOS added).

    Raises ``BadRequest(param="prompt")`` for an empty id list or ids past the model's vocabulary.
    """
    assert request.prompt is not None
    if request.prompt_ids is None:
        text = request.prompt + request.continuation
        return llama.tokenize(text.encode(), add_bos=True, special=True)
    vocabulary = llama.n_vocab()
    if not request.prompt_ids:
        raise BadRequest("prompt is an empty list of token ids; send at least one token", param="prompt")
    if any(not 0 <= token < vocabulary for token in request.prompt_ids):
        raise BadRequest(f"prompt holds token ids past this model's vocabulary of {vocabulary}", param="prompt")
    continuation = llama.tokenize(request.continuation.encode(), add_bos=False, special=False)
    return list(request.prompt_ids) + continuation


def prompt_tokens(llama: Llama, request: GenerationRequest) -> list[int]:
    """The prompt as tokens: Gemma's chat template for messages, the raw text for a completion."""
    if request.prompt is not None:
        return raw_prompt_tokens(llama, request)
    assert request.messages is not None
    tokens = [llama.token_bos()]
    for role, content in gemma_turns(chat_messages(request)):
        tokens += llama.tokenize(f"{TURN_START}{role}\n".encode(), add_bos=False, special=True)
        tokens += llama.tokenize(content.encode(), add_bos=False, special=False)
        tokens += llama.tokenize(f"{TURN_END}\n".encode(), add_bos=False, special=True)
    tokens += llama.tokenize(f"{TURN_START}model\n".encode(), add_bos=False, special=True)
    if request.continuation:
        tokens += llama.tokenize(request.continuation.encode(), add_bos=False, special=False)
    return tokens


def single_token(llama: Llama, marker: str) -> int:
    """The id of a special marker; ``EngineError`` when the model has no such token (not a Gemma model)."""
    ids = llama.tokenize(marker.encode(), add_bos=False, special=True)
    if len(ids) != 1:
        raise EngineError(f"this model has no {marker} token; it is not a Gemma model, chat needs one")
    return ids[0]


def gemma_turns(messages: tuple[ChatMessage, ...]) -> list[tuple[str, str]]:
    """Map OpenAI roles onto Gemma's two: system and developer text joins the first user turn (tool messages
    must have become user turns already, see ``tool_calls.chat_messages``)."""
    system = "\n\n".join(m.content for m in messages if m.role in ("system", "developer"))
    turns = [(_GEMMA_ROLES[m.role], m.content) for m in messages if m.role not in ("system", "developer")]
    if system:
        if turns and turns[0][0] == "user":
            turns[0] = ("user", f"{system}\n\n{turns[0][1]}")
        else:
            turns.insert(0, ("user", system))
    if not turns:
        raise BadRequest("messages is empty; send at least one message", param="messages")
    return turns
