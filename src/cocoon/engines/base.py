"""The ``Engine`` protocol every inference backend implements, and the values it speaks.

A worker holds one engine per served model. Requests arrive already unsealed as ``GenerationRequest``;
the engine streams ``TextDelta`` events and ends with exactly one ``Finished`` carrying the token counts
that go into the signed receipt.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from cocoon.protocol.usage import TokenUsage

ChatRole = Literal["system", "developer", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls", "cancelled"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call of a function tool: ``arguments`` is JSON text, as OpenAI carries it."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of a chat. An assistant message may carry the ``tool_calls`` it made; a ``tool`` message
    answers the call ``tool_call_id``; ``images`` are the URLs (or data URIs) of its image parts, in order."""

    role: ChatRole
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    images: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FunctionTool:
    """A function the model may call; ``parameters`` is the JSON schema of its arguments (an object)."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)
    strict: bool = False


ToolChoice = Literal["auto", "none", "required", "function"]


@dataclass(frozen=True, slots=True)
class OutputFormat:
    """OpenAI's ``response_format``: free text, any JSON object, or JSON matching ``schema``."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    schema: Mapping[str, Any] | None = None
    name: str = ""
    strict: bool = False


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Decoding knobs in OpenAI's vocabulary; ``max_tokens`` is always set by the caller."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    frequency_penalty: float = 0.0  # OpenAI's: minus this times how often a token appeared so far
    presence_penalty: float = 0.0  # minus this once a token appeared at all
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit), -100 bans it


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One generation job. Exactly one of ``messages`` (chat) or ``prompt`` (completion) is set.

    ``continuation`` is text the model already produced for this request elsewhere (mid-stream resume):
    the engine appends it after the prompt, does not emit it again, and counts it as prompt tokens.

    Chat requests may offer ``tools`` (``tool_choice`` "function" forces the one named ``tool_name``) and ask
    for a ``response_format``; ``logprobs`` asks for each token's log-probability and ``top_logprobs``
    alternatives (``TextDelta.logprobs``). ``prompt_ids`` is a completion prompt given as the model's token ids
    (``prompt`` is then ""). ``openai`` is the app's whole OpenAI request, as validated: an engine that forwards
    to an OpenAI server sends it on (every field it does not need to change), the others read the fields above.
    An engine refuses what it cannot do with ``BadRequest`` naming the field, never by ignoring it.

    ``cache_scope`` partitions the engine's prompt cache: a request reuses or copies the cached KV of another
    only when both have the same scope (the worker gives each client's requests one, see ``RequestPayload``), so
    a client cannot time another's prompts through the cache.
    """

    params: SamplingParams
    messages: tuple[ChatMessage, ...] | None = None
    prompt: str | None = None
    continuation: str = ""
    tools: tuple[FunctionTool, ...] = ()
    tool_choice: ToolChoice = "auto"
    tool_name: str | None = None
    parallel_tool_calls: bool = True
    response_format: OutputFormat = OutputFormat()
    logprobs: bool = False
    top_logprobs: int = 0
    prompt_ids: tuple[int, ...] | None = None
    openai: Mapping[str, Any] | None = None
    cache_scope: str = ""

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("a GenerationRequest needs exactly one of messages or prompt")
        if self.tool_choice == "function" and self.tool_name not in {tool.name for tool in self.tools}:
            raise ValueError("tool_choice 'function' needs tool_name to name one of tools")

    @property
    def wants_tools(self) -> bool:
        """Whether the model may (or must) answer with tool calls."""
        return bool(self.tools) and self.tool_choice != "none"


@dataclass(frozen=True, slots=True)
class TopLogprob:
    token: str
    logprob: float
    bytes: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """A generated token, its log-probability and the ``top`` most likely tokens at its place (best first)."""

    token: str
    logprob: float
    bytes: tuple[int, ...] | None = None
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of generated text; ``tokens`` is how many completion tokens it holds (may be 0 or >1), and
    ``logprobs`` one entry per token when the request asked for them."""

    text: str
    tokens: int = 1
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of the ``index``-th tool call of the answer: the first names it (``id``, ``name``), later ones
    add to its ``arguments`` (JSON text); an engine may also send a whole call at once. ``tokens`` as in
    ``TextDelta``."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""
    tokens: int = 0


@dataclass(frozen=True, slots=True)
class Finished:
    """The last event of every generation."""

    finish_reason: FinishReason
    usage: TokenUsage


GenerationEvent = TextDelta | ToolCallDelta | Finished

SCORE_MAX_TOKENS = 256
"""Completion tokens a ``score`` job rates at most: the tail beyond is not scored, so the answer stays bounded."""


@dataclass(frozen=True, slots=True)
class ScoreRequest:
    """Teacher forcing: how likely is ``completion`` right after this prompt (chat ``messages`` or ``prompt``)?

    The engine tokenizes the prompt as ``generate`` would and the completion as plain text after it, and rates
    at most ``SCORE_MAX_TOKENS`` completion tokens. Canaries use it to check one worker's answer on another.
    ``cache_scope`` is ``GenerationRequest``'s.
    """

    completion: str
    messages: tuple[ChatMessage, ...] | None = None
    prompt: str | None = None
    cache_scope: str = ""

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("a ScoreRequest needs exactly one of messages or prompt")


@dataclass(frozen=True, slots=True)
class TokenScores:
    """Per-token log-probabilities of a completion under the engine's model, computed in one prefill.

    ``greedy`` says, for each token, whether it was the model's most likely next token there (greedy replay).
    """

    logprobs: tuple[float, ...]
    greedy: tuple[bool, ...]
    prompt_tokens: int
    truncated: bool = False  # the completion had more than SCORE_MAX_TOKENS tokens; the rest was not scored

    @property
    def mean_nll(self) -> float:
        """Mean negative log-likelihood per scored token (0.0 for an empty completion)."""
        return -sum(self.logprobs) / len(self.logprobs) if self.logprobs else 0.0

    @property
    def greedy_rate(self) -> float:
        """Share of scored tokens that greedy decoding would have produced (1.0 for an empty completion)."""
        return sum(self.greedy) / len(self.greedy) if self.greedy else 1.0


@dataclass(frozen=True, slots=True)
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What a worker advertises about an engine: model name, weights hash, limits and abilities."""

    model: str
    model_hash: str
    context_length: int
    supports_embeddings: bool = False
    supports_vision: bool = False  # takes image content parts (upstream engines that declare it)
    extra: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    """An inference backend.

    Contract:
    - ``start()`` loads the model (may take seconds) and must be called before anything else;
      ``info`` is valid after it.
    - ``generate()`` returns an async iterator of ``TextDelta`` / ``ToolCallDelta`` events followed by one
      ``Finished`` (``tool_calls`` when the answer is tool calls).
      Closing the iterator early (``aclose()``, or cancelling the task that drives it) cancels the
      generation: the engine stops computing promptly and frees its slot.
    - ``embed()`` takes texts or token-id lists of the model's vocabulary; raises ``cocoon.errors.BadRequest``
      when ``info.supports_embeddings`` is false.
    - ``score()`` rates a given completion token by token (``TokenScores``, at most ``SCORE_MAX_TOKENS``
      tokens) without sampling; raises ``ContextLengthExceeded`` when prompt + completion do not fit.
    - ``count_tokens()`` is exact for the engine's own tokenizer (used for routing and limits).
    - Errors are ``cocoon.errors.CocoonError`` subclasses (``ContextLengthExceeded``, ``EngineError``,
      ``UpstreamFailed``), never bare exceptions.
    """

    @property
    def info(self) -> EngineInfo: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]: ...

    async def embed(self, inputs: Sequence[str | Sequence[int]]) -> Embeddings: ...

    async def score(self, request: ScoreRequest) -> TokenScores: ...

    async def count_tokens(self, text: str) -> int: ...
