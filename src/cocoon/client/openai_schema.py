"""The OpenAI API as the sidecar speaks it: request bodies and response objects, as pydantic models (as vLLM's).

Fields OpenAI defines but cocoon cannot honour yet (``n`` > 1, ``logprobs``, tools, images) are refused with a
400 that names them, never silently ignored; ``usage`` adds cocoon's receipt ids, workers and costs. Every
number has bounds that fit the msgpack of the sealed payload and the job (64-bit), so no value a caller can
write in JSON fails later, at sealing, as a 500.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
)

from cocoon.errors import BadRequest
from cocoon.protocol import RoutingPrefs
from cocoon.protocol.payload import MAX_LOGIT_BIAS, MAX_TOKEN_ID, SealedMessage, SealedParams

# ---- requests --------------------------------------------------------------------------------------

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_TOKENS = 2**31 - 1  # far past any context window; the bound keeps the job's arithmetic in 64 bits
MAX_CHOICES = 128  # OpenAI's own bound on ``n``
MAX_PRICE_CAP = 2**53  # a price coefficient cap (1000 = 1x) past every worker; a float up to it converts exactly


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        for part in self.content:
            if part.type != "text":
                raise BadRequest(f"content parts of type {part.type!r} are not supported; send text", param="messages")
        return "".join(part.text or "" for part in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ProviderPrefs(BaseModel):
    """OpenRouter's ``provider`` object, the parts that map onto cocoon's routing."""

    model_config = ConfigDict(extra="ignore")
    sort: Literal["latency", "throughput", "price"] | None = None
    max_price: float | None = Field(
        None, ge=0, le=MAX_PRICE_CAP, description="cocoon: price coefficient cap, 1000 = 1x"
    )
    allow_fallbacks: bool = True
    region: str | None = None
    hedge: bool = Field(False, description="cocoon: run on two workers, keep the first to answer")


class SamplingFields(BaseModel):
    """What chat and text completions share; COCOON's ``max_coefficient``/``timeout`` and OpenRouter's
    ``provider`` object are accepted beside OpenAI's fields."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1, max_length=256)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    frequency_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    presence_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    logit_bias: dict[str, float] | None = Field(None, max_length=MAX_LOGIT_BIAS)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    logprobs: bool | int | None = None
    max_coefficient: int | None = Field(None, ge=1, le=MAX_PRICE_CAP, description="COCOON: price cap, 1000 = 1x")
    timeout: float | None = Field(None, gt=0, le=3600, description="COCOON: seconds")
    provider: ProviderPrefs | None = None

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _token_biases(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for token, bias in (value or {}).items():
            if not token.isdigit() or int(token) > MAX_TOKEN_ID:
                raise ValueError(f"logit_bias keys are token ids (non-negative integers), got {token[:20]!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"logit_bias values are from -100 to 100, got {bias} for token {token}")
        return value

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError("n > 1 is not supported: send one request per choice")
        return value

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool | int | None) -> bool | int | None:
        if value:
            raise ValueError("logprobs are not supported yet")
        return value

    def sealed_params(self, max_tokens: int) -> SealedParams:
        """The sampling parameters sealed to the worker, generating at most ``max_tokens``."""
        return SealedParams(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            stop=self.stops(),
            seed=self.seed,
            frequency_penalty=self.frequency_penalty or 0.0,
            presence_penalty=self.presence_penalty or 0.0,
            logit_bias=[(int(token), bias) for token, bias in (self.logit_bias or {}).items()],
        )

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop if s]

    def routing(self) -> RoutingPrefs:
        provider = self.provider or ProviderPrefs()
        max_price = self.max_coefficient
        if provider.max_price is not None:
            max_price = int(provider.max_price) if max_price is None else min(max_price, int(provider.max_price))
        return RoutingPrefs(
            sort=provider.sort,
            max_price=max_price,
            allow_fallbacks=provider.allow_fallbacks,
            region=provider.region,
            hedge=provider.hedge,
        )


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    tools: list[Any] | None = None

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, value: list[Any] | None) -> list[Any] | None:
        if value:
            raise ValueError("tools are not supported yet")
        return value

    def sealed_messages(self) -> list[SealedMessage]:
        """The conversation as the worker reads it: text only (``BadRequest`` on other content parts)."""
        return [SealedMessage(role=m.role, content=m.text()) for m in self.messages]


class CompletionRequest(SamplingFields):
    prompt: str | list[str]

    def prompt_text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise BadRequest("send exactly one prompt per request", param="prompt")
        return self.prompt[0]


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1, max_length=256)
    input: str | list[str] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    timeout: float | None = Field(None, gt=0, le=3600)

    def inputs(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


# ---- responses -------------------------------------------------------------------------------------


class ResponseObject(BaseModel):
    """A response object. Fields named in ``absent_when_none`` are left out of the JSON while ``None``, as
    OpenAI leaves them out; every other field is always written, ``null`` included."""

    absent_when_none: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _leave_out_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if v is not None or k not in self.absent_when_none}


COST_FIELDS = frozenset({"prompt_cost", "cached_cost", "completion_cost", "total_cost"})


class PromptTokensDetails(BaseModel):
    cached_tokens: int


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int


class Usage(ResponseObject):
    """Token counts summed over the workers that served the request, their receipts, and (COCOON, in nanoton)
    what the client's voucher paid for them; the costs are absent on a free proxy."""

    absent_when_none = COST_FIELDS
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails
    completion_tokens_details: CompletionTokensDetails
    receipt_ids: list[str]
    workers: list[str]
    prompt_cost: int | None = None
    cached_cost: int | None = None
    completion_cost: int | None = None
    total_cost: int | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(ResponseObject):
    """What a chat stream chunk adds: the role once, at the start, then pieces of content."""

    absent_when_none = frozenset({"role", "content"})
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    logprobs: None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a chat stream. ``usage`` is ``null`` on each chunk of a stream asked to
    ``include_usage`` (the last one, ``ChatCompletionUsageChunk``, has it) and absent otherwise, as OpenAI's."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ChatCompletionUsageChunk(ChatCompletionChunk):
    """The last event of a chat stream asked to ``include_usage``: no choices, only usage."""

    choices: list[ChatChunkChoice] = Field(default_factory=list)
    usage: Usage


class TextChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: str | None = None


class TextCompletionChunk(BaseModel):
    """One server-sent event of a text completion stream; ``usage`` as in ``ChatCompletionChunk``."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[TextChoice]
    usage: Usage | None = None


class TextCompletion(TextCompletionChunk):
    """A whole text completion (or the last event of a stream asked to ``include_usage``, with no choices)."""

    usage: Usage


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # floats, or little-endian float32 in base64


class EmbeddingUsage(ResponseObject):
    """Embeddings' usage: prompt tokens only, and the costs as in ``Usage``."""

    absent_when_none = COST_FIELDS
    prompt_tokens: int
    total_tokens: int
    prompt_cost: int | None = None
    cached_cost: int | None = None
    completion_cost: int | None = None
    total_cost: int | None = None


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class ModelCard(ResponseObject):
    """A model; the listing adds how many attested workers serve it and the hash of their weights."""

    absent_when_none = frozenset({"workers", "model_hash"})
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "cocoon"
    workers: int | None = None
    model_hash: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every error the sidecar answers, whatever its status (``CocoonError.to_openai``)."""

    error: ErrorDetail
