"""The OpenAI API as cocoon speaks it: request bodies and response objects, as pydantic models (as vLLM's
``entrypoints/openai/protocol.py``), shared by the sidecar that validates an app's request, the sealed payload
that carries it to the worker, and the worker that validates it again before its engine reads it.

No field is silently dropped. Every field OpenAI defines is either honoured, forwarded to an upstream engine
that implements it, or refused with a 400 that names it (``param``); an unknown field is refused as OpenAI
refuses it. COCOON's extras (``max_coefficient``, ``timeout``) and OpenRouter's ``provider`` object are accepted
beside them. Every number has bounds that fit msgpack and the job (64-bit), so no value a caller can write in
JSON fails later, at sealing, as a 500. ``docs/openai.md`` has the table of every field and what happens to it.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from cocoon.errors import BadRequest
from cocoon.protocol import RoutingPrefs
from cocoon.protocol.payload import MAX_LOGIT_BIAS, MAX_TOKEN_ID, SealedMessage, SealedParams

# ---- requests --------------------------------------------------------------------------------------

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_TOKENS = 2**31 - 1  # far past any context window; the bound keeps the job's arithmetic in 64 bits
MAX_CHOICES = 8  # choices per request (``n``, and ``n`` times the prompts of a completion); each is one job
MAX_PROMPTS = 32  # prompts in one legacy completion request
MAX_TOOLS = 128  # OpenAI's bound on ``tools``
MAX_TOP_LOGPROBS = 20  # OpenAI's bound on chat ``top_logprobs``; completions' ``logprobs`` stops at 5
MAX_PRICE_CAP = 2**53  # a price coefficient cap (1000 = 1x) past every worker; a float up to it converts exactly
MAX_SCHEMA_BYTES = 64 * 1024  # a tool's parameters or a response_format schema, as JSON

Strict = ConfigDict(extra="forbid")  # an unknown field is a 400 naming it (OpenAI: "Unrecognized request argument")
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
TokenIds = list[Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]]


class ImageUrl(BaseModel):
    model_config = Strict
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] = "auto"


class ContentPart(BaseModel):
    """One part of a message's content: text, or an image (for workers that declare vision)."""

    model_config = Strict
    type: Literal["text", "image_url", "input_audio", "file", "refusal"]
    text: str | None = None
    refusal: str | None = None
    image_url: ImageUrl | None = None
    input_audio: dict[str, Any] | None = None
    file: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _supported(self) -> ContentPart:
        if self.type in ("input_audio", "file"):
            raise ValueError(f"content parts of type {self.type!r} are not supported; send text or image_url")
        if self.type == "image_url" and self.image_url is None:
            raise ValueError("an image_url part needs its image_url object")
        return self


class FunctionCall(BaseModel):
    model_config = Strict
    name: Name
    arguments: str


class ToolCall(BaseModel):
    """A tool call the assistant made, as a message in the history carries it (and a response returns it)."""

    model_config = Strict
    id: str = Field(min_length=1, max_length=128)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessageIn(BaseModel):
    model_config = Strict
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = Field(None, max_length=64)
    tool_calls: list[ToolCall] | None = Field(None, max_length=MAX_TOOLS)
    tool_call_id: str | None = Field(None, max_length=128)
    refusal: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _known_parts(cls, value: Any) -> Any:
        # Checked before the union is tried: its error would otherwise say "should be a valid string".
        for part in value if isinstance(value, list) else ():
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in ("input_audio", "file"):
                raise ValueError(f"content parts of type {kind!r} are not supported; send text or image_url")
        return value

    @model_validator(mode="after")
    def _well_formed(self) -> ChatMessageIn:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        return self

    def text(self) -> str:
        """The message's text: its string, or its text parts joined (image parts contribute none)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or part.refusal or "" for part in self.content if part.type in ("text", "refusal"))

    def images(self) -> list[str]:
        if isinstance(self.content, str) or self.content is None:
            return []
        return [part.image_url.url for part in self.content if part.image_url is not None]


class StreamOptions(BaseModel):
    model_config = Strict
    include_usage: bool = False
    include_obfuscation: bool = False  # OpenAI's padding of stream chunks; the seal pads them already


class ProviderPrefs(BaseModel):
    """OpenRouter's ``provider`` object: ``sort``, ``max_price``, ``allow_fallbacks`` map onto cocoon's routing;
    ``order``/``only``/``ignore`` name providers, which on cocoon are worker ids (``only`` and ``ignore`` filter,
    ``order`` is tried first); the rest of OpenRouter's keys are accepted and have no meaning here."""

    model_config = ConfigDict(extra="ignore")
    sort: Literal["latency", "throughput", "price"] | None = None
    max_price: float | None = Field(
        None, ge=0, le=MAX_PRICE_CAP, description="cocoon: price coefficient cap, 1000 = 1x"
    )
    allow_fallbacks: bool = True
    region: str | None = None
    hedge: bool = Field(False, description="cocoon: run on two workers, keep the first to answer")
    order: list[str] | None = Field(None, max_length=64)
    only: list[str] | None = Field(None, max_length=64)
    ignore: list[str] | None = Field(None, max_length=64)


def bounded_schema(value: dict[str, Any] | None, what: str) -> dict[str, Any] | None:
    """``value`` when its JSON fits ``MAX_SCHEMA_BYTES`` (a grammar is built from it on the worker)."""
    if value is not None and len(json.dumps(value)) > MAX_SCHEMA_BYTES:
        raise ValueError(f"{what} is limited to {MAX_SCHEMA_BYTES} bytes of JSON")
    return value


class FunctionDefinition(BaseModel):
    model_config = Strict
    name: Name
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _bounded(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return bounded_schema(value, "a function's parameters schema")


class Tool(BaseModel):
    model_config = Strict
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = Strict
    name: Name


class NamedToolChoice(BaseModel):
    model_config = Strict
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(BaseModel):
    model_config = Strict
    name: Name
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None

    @field_validator("schema_")
    @classmethod
    def _bounded(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return bounded_schema(value, "a response_format schema")


class ResponseFormat(BaseModel):
    model_config = Strict
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs its json_schema object")
        return self


class SamplingFields(BaseModel):
    """What chat and text completions share; COCOON's ``max_coefficient``/``timeout`` and OpenRouter's
    ``provider`` object are accepted beside OpenAI's fields."""

    model_config = Strict
    # Fields that are cocoon's or OpenRouter's, not OpenAI's: read by the client, never forwarded upstream.
    routing_fields: ClassVar[frozenset[str]] = frozenset({"max_coefficient", "timeout", "provider"})

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
    user: str | None = Field(None, max_length=256, description="an end-user id; no effect on the answer")
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
            order=provider.order or [],
            only=provider.only,
            ignore=provider.ignore or [],
        )

    def sealed_body(self, **changes: Any) -> dict[str, Any]:
        """The request as it is sealed to the worker: every field the app set, as JSON, but cocoon's routing
        extras (the proxy and client act on those), with ``changes`` applied (one choice of ``n``, one prompt)."""
        body = self.model_dump(mode="json", exclude_unset=True, by_alias=True, exclude=set(self.routing_fields))
        body.update(changes)
        return body


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    tools: list[Tool] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    metadata: dict[str, str] | None = Field(None, max_length=16)
    store: bool | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    prompt_cache_key: str | None = Field(None, max_length=256)
    safety_identifier: str | None = Field(None, max_length=256)
    # Defined by OpenAI, refused here with a reason (see ``_refused``).
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    functions: list[Any] | None = None
    function_call: Any = None

    @model_validator(mode="after")
    def _refused(self) -> ChatCompletionRequest:
        refusals = {
            "audio": "audio output is not supported; leave audio out",
            "prediction": "predicted outputs are not supported; leave prediction out",
            "web_search_options": "web search is not supported: workers have no network access",
            "functions": "functions is deprecated by OpenAI and not supported; send tools instead",
            "function_call": "function_call is deprecated by OpenAI and not supported; send tool_choice instead",
        }
        for field, reason in refusals.items():
            if getattr(self, field) is not None:
                raise BadRequest(reason, param=field)
        if self.modalities is not None and "audio" in self.modalities:
            raise BadRequest(
                "only text output is supported; send modalities ['text'] or leave it out", param="modalities"
            )
        if self.store:
            raise BadRequest(
                "store=true is not supported: cocoon keeps no completions; send store=false", param="store"
            )
        if self.service_tier not in (None, "auto", "default"):
            raise BadRequest(
                f"service_tier {self.service_tier!r} is not offered; send 'auto' or 'default'", param="service_tier"
            )
        if self.top_logprobs and not self.logprobs:
            raise BadRequest("top_logprobs needs logprobs set to true", param="top_logprobs")
        if self.tool_choice is not None and not self.tools and self.tool_choice != "none":
            raise BadRequest("tool_choice needs tools to choose from", param="tool_choice")
        if isinstance(self.tool_choice, NamedToolChoice):
            names = {tool.function.name for tool in self.tools or []}
            if self.tool_choice.function.name not in names:
                raise BadRequest(
                    f"tool_choice names the function {self.tool_choice.function.name!r}, which is not in tools",
                    param="tool_choice",
                )
        return self

    def sealed_messages(self) -> list[SealedMessage]:
        """The conversation as text, the worker's view for counting and routing (the whole messages travel in
        the sealed body)."""
        return [SealedMessage(role=m.role, content=m.text()) for m in self.messages]

    def wants_images(self) -> bool:
        return any(m.images() for m in self.messages)


Prompt = str | list[str] | TokenIds | list[TokenIds]


class CompletionRequest(SamplingFields):
    prompt: Prompt
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool | None = None
    best_of: int | None = Field(None, ge=1, le=MAX_CHOICES)
    suffix: str | None = None

    @model_validator(mode="after")
    def _refused(self) -> CompletionRequest:
        if self.suffix:
            raise BadRequest("suffix (inserting text) is not supported; send the whole prompt", param="suffix")
        if self.best_of is not None and self.best_of != self.n:
            raise BadRequest(
                f"best_of={self.best_of} with n={self.n}: ranking extra candidates is not supported; "
                "send best_of equal to n or leave it out",
                param="best_of",
            )
        if self.echo and self.logprobs is not None:
            raise BadRequest(
                "echo with logprobs needs the prompt's log-probabilities, which are not supported", param="echo"
            )
        if len(self.prompts()) * self.n > MAX_CHOICES * 4:
            raise BadRequest(f"prompts times n is limited to {MAX_CHOICES * 4} choices per request", param="prompt")
        return self

    def prompts(self) -> list[str | list[int]]:
        """Each prompt: text, or token ids of the served model (as vLLM reads token arrays)."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if not prompt:
            raise BadRequest("prompt is an empty list; send at least one prompt", param="prompt")
        if all(isinstance(p, int) for p in prompt):
            return [list(prompt)]  # type: ignore[arg-type]
        if len(prompt) > MAX_PROMPTS:
            raise BadRequest(f"at most {MAX_PROMPTS} prompts per request", param="prompt")
        return list(prompt)  # type: ignore[arg-type]


EmbeddingInput = str | list[str] | TokenIds | list[TokenIds]


class EmbeddingRequest(BaseModel):
    model_config = Strict
    routing_fields: ClassVar[frozenset[str]] = frozenset({"timeout"})
    model: str = Field(min_length=1, max_length=256)
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, le=65536)
    user: str | None = Field(None, max_length=256)
    timeout: float | None = Field(None, gt=0, le=3600)

    def inputs(self) -> list[str | list[int]]:
        """Each input: text, or token ids of the served model (LangChain's default sends token arrays)."""
        value = self.input
        if isinstance(value, str):
            return [value]
        if not value:
            raise BadRequest("input is an empty list; send at least one input", param="input")
        if all(isinstance(v, int) for v in value):
            return [list(value)]  # type: ignore[arg-type]
        return list(value)  # type: ignore[arg-type]


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


class ReceiptsAndCosts(ResponseObject):
    """What every cocoon ``usage`` adds to OpenAI's counts: the verified receipts, their workers and (in nanoton)
    what the client's vouchers paid for them; the costs are absent on a free proxy."""

    absent_when_none = COST_FIELDS
    receipt_ids: list[str]
    workers: list[str]
    prompt_cost: int | None = None
    cached_cost: int | None = None
    completion_cost: int | None = None
    total_cost: int | None = None

    @model_serializer(mode="wrap")
    def _leave_out_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # OpenAI's counts first, as OpenAI writes them; cocoon's additions after them.
        data: dict[str, Any] = handler(self)
        ours = set(ReceiptsAndCosts.model_fields)
        kept = {k: v for k, v in data.items() if v is not None or k not in self.absent_when_none}
        return {k: v for k, v in kept.items() if k not in ours} | {k: v for k, v in kept.items() if k in ours}


class Usage(ReceiptsAndCosts):
    """Token counts summed over the workers that served the request, their receipts, and (COCOON, in nanoton)
    what the client's voucher paid for them; the costs are absent on a free proxy."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails
    completion_tokens_details: CompletionTokensDetails


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    """One generated token's log-probability and the most likely alternatives there (chat ``logprobs``)."""

    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class ToolCallOut(ResponseObject):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(ResponseObject):
    absent_when_none = frozenset({"tool_calls"})
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCallOut] | None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChoice]
    usage: Usage


class FunctionCallDelta(ResponseObject):
    absent_when_none = frozenset({"name", "arguments"})
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(ResponseObject):
    """A piece of a streamed tool call: the first names it (``id``, ``type``, ``function.name``), later ones
    add to its ``function.arguments``; ``index`` says which call of the message it belongs to."""

    absent_when_none = frozenset({"id", "type"})
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta


class ChatDelta(ResponseObject):
    """What a chat stream chunk adds: the role once, at the start, then pieces of content or tool calls."""

    absent_when_none = frozenset({"role", "content", "tool_calls"})
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    logprobs: ChoiceLogprobs | None = None
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


class TextLogprobs(BaseModel):
    """Legacy completions' log-probabilities: per token its text, log-probability, top alternatives (token ->
    log-probability) and character offset in the choice's text."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class TextChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: TextLogprobs | None = None
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


class EmbeddingUsage(ReceiptsAndCosts):
    """Embeddings' usage: prompt tokens only, with the receipts and costs."""

    prompt_tokens: int
    total_tokens: int


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
