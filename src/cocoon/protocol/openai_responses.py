"""OpenAI's Responses API (``POST /v1/responses``) as cocoon speaks it: the request with its input items, tools
and text format, and the response object and stream events, as pydantic models beside ``protocol.openai``'s.

cocoon serves a response as one chat completion: ``ResponsesRequest.chat_request()`` translates the request onto
the chat path, which seals, routes and pays for it; the sidecar writes the answer back as these objects. cocoon
keeps nothing, so every field that needs a stored response or conversation is refused. Every field:

- honoured: ``model``; ``input`` (a string, or messages, ``function_call`` and ``function_call_output`` items);
  ``instructions`` (a leading system message); ``tools`` (functions); ``tool_choice``; ``parallel_tool_calls``;
  ``text`` (``format``, ``verbosity``) and the top-level ``verbosity`` the SDK's ``parse`` sends;
  ``max_output_tokens``; ``temperature``; ``top_p``; ``top_logprobs`` and ``include``
  ``message.output_text.logprobs``; ``metadata`` (echoed in the response, never sealed to a worker); ``user``,
  ``safety_identifier``, ``prompt_cache_key`` and ``reasoning.effort`` (sealed as on chat); ``stream``;
  COCOON's ``max_coefficient``/``timeout`` and OpenRouter's ``provider``, as on chat.
- accepted, with nothing to do: ``store`` false or omitted (OpenAI's default is true, but the SDK sends nothing;
  nothing is stored either way), ``background`` false, ``truncation`` "disabled", ``service_tier``
  auto/default, ``reasoning.summary`` auto, ``prompt_cache_retention`` in_memory, ``max_tool_calls`` (it bounds
  built-in tools; there are none), ``include`` ``reasoning.encrypted_content`` (no reasoning items are made),
  ``stream_options.include_obfuscation`` (the seal pads chunks already).
- refused with a 400 naming the field: ``store`` true, ``previous_response_id``, ``conversation``, ``prompt``,
  ``background`` true, ``truncation`` auto, other service tiers, reasoning summaries, 24h cache retention, tools
  and tool choices other than functions, other ``include`` values, ``item_reference``, reasoning and built-in
  tool items, input files and audio, image file ids; and any field OpenAI does not define.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Discriminator,
    Field,
    ModelWrapValidatorHandler,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from cocoon.errors import BadRequest, first_problem
from cocoon.protocol.openai import (
    COST_FIELDS,
    INT64_MAX,
    MAX_PRICE_CAP,
    MAX_SCHEMA_BYTES,
    MAX_TOKENS,
    MAX_TOOLS,
    MAX_TOP_LOGPROBS,
    ChatCompletionRequest,
    ProviderPrefs,
    ResponseObject,
    Strict,
)
from cocoon.protocol.openai import Name as FunctionName

# ---- requests: input items -------------------------------------------------------------------------

CallId = Annotated[str, Field(min_length=1, max_length=128)]
ItemStatus = Literal["in_progress", "completed", "incomplete"]
LOGPROBS = "message.output_text.logprobs"
INCLUDABLE = frozenset({LOGPROBS, "reasoning.encrypted_content"})


class InputText(BaseModel):
    model_config = Strict
    type: Literal["input_text"]
    text: str


class OutputTextIn(BaseModel):
    """An earlier answer's text as an app sends it back; its annotations and logprobs do not change the answer."""

    model_config = Strict
    type: Literal["output_text"]
    text: str
    annotations: list[dict[str, Any]] = Field(default_factory=list)
    logprobs: list[dict[str, Any]] | None = None


class RefusalIn(BaseModel):
    model_config = Strict
    type: Literal["refusal"]
    refusal: str


class InputImage(BaseModel):
    """An image by URL (or ``data:`` URL), for workers that declare vision."""

    model_config = Strict
    type: Literal["input_image"]
    image_url: str | None = Field(None, min_length=1)
    file_id: str | None = None
    detail: Literal["auto", "low", "high"] = "auto"

    @model_validator(mode="after")
    def _by_url(self) -> InputImage:
        if self.file_id is not None or self.image_url is None:
            raise ValueError("an input_image needs its image_url: file_id names a file in OpenAI's store, not here")
        return self


def _tag(value: Any) -> Any:
    return value.get("type") if isinstance(value, dict) else getattr(value, "type", None)


Part = Annotated[
    Annotated[InputText, Tag("input_text")]
    | Annotated[OutputTextIn, Tag("output_text")]
    | Annotated[RefusalIn, Tag("refusal")]
    | Annotated[InputImage, Tag("input_image")],
    Discriminator(
        _tag,
        custom_error_type="unsupported_part",
        custom_error_message="a content part is input_text, output_text, refusal or input_image; "
        "input files and audio are not supported",
    ),
]


def _part_text(part: Part) -> str:
    if isinstance(part, RefusalIn):
        return part.refusal
    return "" if isinstance(part, InputImage) else part.text


class MessageItem(BaseModel):
    """A message of the conversation; an earlier answer sent back keeps its ``id``, ``status`` and ``phase``."""

    model_config = Strict
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[Part]
    id: str | None = Field(None, max_length=128)
    status: ItemStatus | None = None
    phase: Literal["commentary", "final_answer"] | None = None

    @model_validator(mode="after")
    def _text_from_the_assistant(self) -> MessageItem:
        if self.role == "assistant" and any(isinstance(p, InputImage) for p in self.content):
            raise ValueError("an assistant message carries text only; send images in user messages")
        return self

    def chat_message(self) -> dict[str, Any]:
        """This message as chat's: its text, or its parts when it holds images."""
        if isinstance(self.content, str):
            return {"role": self.role, "content": self.content}
        if any(isinstance(p, InputImage) for p in self.content):
            return {"role": self.role, "content": [_chat_part(p) for p in self.content]}
        return {"role": self.role, "content": "".join(map(_part_text, self.content))}


def _chat_part(part: Part) -> dict[str, Any]:
    if isinstance(part, InputImage):
        return {"type": "image_url", "image_url": {"url": part.image_url, "detail": part.detail}}
    return {"type": "text", "text": _part_text(part)}


class FunctionCallItem(BaseModel):
    """A function call the model made in an earlier turn (an assistant message's tool call on chat)."""

    model_config = Strict
    type: Literal["function_call"]
    call_id: CallId
    name: FunctionName
    arguments: str
    id: str | None = Field(None, max_length=128)
    status: ItemStatus | None = None

    def chat_tool_call(self) -> dict[str, Any]:
        return {"id": self.call_id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


class FunctionCallOutputItem(BaseModel):
    """What the app's function returned for ``call_id`` (a tool message on chat): text."""

    model_config = Strict
    type: Literal["function_call_output"]
    call_id: CallId
    output: str | list[Part]
    id: str | None = Field(None, max_length=128)
    status: ItemStatus | None = None

    @field_validator("output")
    @classmethod
    def _text_only(cls, value: str | list[Part]) -> str | list[Part]:
        if not isinstance(value, str) and any(isinstance(p, InputImage) for p in value):
            raise ValueError("a function_call_output carries text here; images in function outputs are not supported")
        return value

    def chat_message(self) -> dict[str, Any]:
        text = self.output if isinstance(self.output, str) else "".join(map(_part_text, self.output))
        return {"role": "tool", "tool_call_id": self.call_id, "content": text}


def _item_tag(value: Any) -> Any:
    return (value.get("type") or "message") if isinstance(value, dict) else getattr(value, "type", None)


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")],
    Discriminator(
        _item_tag,
        custom_error_type="unsupported_item",
        custom_error_message="an input item is a message, a function_call or a function_call_output: cocoon keeps "
        "no items to reference (item_reference) and its models make no reasoning or built-in tool items",
    ),
]


# ---- requests: tools, text format, options ---------------------------------------------------------


def _bounded(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is not None and len(json.dumps(value)) > MAX_SCHEMA_BYTES:
        raise ValueError(f"a JSON schema is limited to {MAX_SCHEMA_BYTES} bytes of JSON")
    return value


class FunctionTool(BaseModel):
    """A function the model may call, in the Responses API's flat shape (chat nests it under ``function``)."""

    model_config = Strict
    type: Literal["function"]
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("type", mode="before")
    @classmethod
    def _functions_only(cls, value: Any) -> Any:
        if value != "function":
            raise ValueError(
                f"tools of type {str(value)[:40]!r} are not supported: only function tools are "
                "(built-in tools need services that workers cannot reach)"
            )
        return value

    _schema_bounded = field_validator("parameters")(_bounded)

    def chat_tool(self) -> dict[str, Any]:
        return {"type": "function", "function": self.model_dump(exclude={"type"}, exclude_unset=True)}


class FunctionChoice(BaseModel):
    model_config = Strict
    type: Literal["function"]
    name: FunctionName


class PlainText(BaseModel):
    model_config = Strict
    type: Literal["text"]


class JsonObject(BaseModel):
    model_config = Strict
    type: Literal["json_object"]


class JsonSchema(BaseModel):
    model_config = Strict
    type: Literal["json_schema"]
    name: FunctionName
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None

    _schema_bounded = field_validator("schema_")(_bounded)


TextFormat = Annotated[PlainText | JsonObject | JsonSchema, Field(discriminator="type")]
Verbosity = Literal["low", "medium", "high"]


class TextConfig(BaseModel):
    model_config = Strict
    format: TextFormat | None = None
    verbosity: Verbosity | None = None


class ReasoningConfig(BaseModel):
    model_config = Strict
    effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class ResponsesStreamOptions(BaseModel):
    model_config = Strict
    include_obfuscation: bool = True  # OpenAI's padding of stream events; the seal pads them already


class ResponsesRequest(BaseModel):
    """A ``POST /v1/responses`` body; see the module docstring for what happens to each field."""

    model_config = Strict

    model: str = Field(min_length=1, max_length=256)
    input: str | list[InputItem] | None = None
    instructions: str | None = None
    tools: list[FunctionTool] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    verbosity: Verbosity | None = None
    max_output_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    max_tool_calls: int | None = Field(None, ge=0, le=INT64_MAX)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    include: list[str] | None = Field(None, max_length=16)
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None = Field(
        None, max_length=16
    )
    user: str | None = Field(None, max_length=256)
    safety_identifier: str | None = Field(None, max_length=256)
    prompt_cache_key: str | None = Field(None, max_length=256)
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    reasoning: ReasoningConfig | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None
    stream: bool | None = False
    stream_options: ResponsesStreamOptions | None = None
    store: bool | None = None
    background: bool | None = None
    truncation: Literal["auto", "disabled"] | None = None
    # Defined by OpenAI, refused here: they need responses, conversations or prompts that cocoon does not keep.
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    # COCOON's and OpenRouter's, as on chat: read by the client, never sealed.
    max_coefficient: int | None = Field(None, ge=1, le=MAX_PRICE_CAP, description="COCOON: price cap, 1000 = 1x")
    timeout: float | None = Field(None, gt=0, le=3600, description="COCOON: seconds")
    provider: ProviderPrefs | None = None

    @model_validator(mode="wrap")
    @classmethod
    def _problem_named(cls, data: Any, handler: ModelWrapValidatorHandler[ResponsesRequest]) -> ResponsesRequest:
        """The first problem as a ``BadRequest`` naming its field by the path an app wrote."""
        try:
            return handler(data)
        except ValidationError as exc:
            raise _named(exc) from exc

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _function_choices_only(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("type") != "function":
            raise ValueError(
                f"tool_choice of type {str(value.get('type'))[:40]!r} is not supported; send 'auto', 'none', "
                "'required' or {'type': 'function', 'name': ...}"
            )
        return value

    @model_validator(mode="after")
    def _refused(self) -> ResponsesRequest:
        stateless = "cocoon is stateless and keeps no responses"
        refusals = {
            "previous_response_id": f"{stateless}: leave previous_response_id out and send the whole conversation "
            "as input, earlier output items included",
            "conversation": f"{stateless} or conversations: leave conversation out and send the whole "
            "conversation as input",
            "prompt": "prompt templates live in OpenAI's store, which cocoon cannot read; send instructions and input",
        }
        for field, reason in refusals.items():
            if getattr(self, field) is not None:
                raise BadRequest(reason, param=field)
        if self.store:
            raise BadRequest(
                f"store=true is not supported: {stateless}; send store=false or leave it out", param="store"
            )
        if self.background:
            raise BadRequest(
                f"background responses are polled from the store and {stateless}; stream instead", param="background"
            )
        if self.truncation == "auto":
            raise BadRequest(
                "truncation 'auto' (dropping the oldest input) is not supported; send 'disabled' or leave it out, "
                "and shorten the input yourself",
                param="truncation",
            )
        if self.service_tier not in (None, "auto", "default"):
            raise BadRequest(
                f"service_tier {self.service_tier!r} is not offered; send 'auto' or 'default'", param="service_tier"
            )
        if self.prompt_cache_retention == "24h":
            raise BadRequest(
                "workers keep prompt caches in memory only; send 'in_memory'", param="prompt_cache_retention"
            )
        for summary in ("summary", "generate_summary"):
            if getattr(self.reasoning, summary, None) not in (None, "auto"):
                raise BadRequest("reasoning summaries are not made; leave them out", param=f"reasoning.{summary}")
        for value in self.include or []:
            if value not in INCLUDABLE:
                raise BadRequest(
                    f"include {value[:80]!r} is not supported; cocoon can include {LOGPROBS!r}", param="include"
                )
        return self

    def wants_logprobs(self) -> bool:
        return LOGPROBS in (self.include or []) or bool(self.top_logprobs)

    def text_verbosity(self) -> Verbosity | None:
        return self.verbosity or (self.text.verbosity if self.text else None)

    def text_format(self) -> PlainText | JsonObject | JsonSchema:
        return (self.text.format if self.text else None) or PlainText(type="text")

    def chat_messages(self) -> list[dict[str, Any]]:
        """The conversation as chat messages: ``instructions`` first, then each input item; a function call
        joins the assistant message before it (one turn's text and calls), or starts one."""
        messages: list[dict[str, Any]] = []
        if self.instructions:
            messages.append({"role": "system", "content": self.instructions})
        items = [MessageItem(role="user", content=self.input)] if isinstance(self.input, str) else self.input or []
        for item in items:
            if isinstance(item, FunctionCallItem):
                if not messages or messages[-1]["role"] != "assistant":
                    messages.append({"role": "assistant", "content": None})
                messages[-1].setdefault("tool_calls", []).append(item.chat_tool_call())
            else:
                messages.append(item.chat_message())
        if not messages:
            raise BadRequest("input is empty: send a string or at least one input item", param="input")
        return messages

    def chat_request(self) -> ChatCompletionRequest:
        """This request as the one chat completion that serves it; ``BadRequest`` naming this request's field
        for what chat refuses."""
        body: dict[str, Any] = {"model": self.model, "messages": self.chat_messages(), "stream": bool(self.stream)}
        for field in (
            "temperature", "top_p", "parallel_tool_calls", "user", "safety_identifier", "prompt_cache_key",
            "service_tier", "max_coefficient", "timeout", "provider",
        ):  # fmt: skip
            if getattr(self, field) is not None:
                body[field] = getattr(self, field)
        if self.max_output_tokens is not None:
            body["max_completion_tokens"] = self.max_output_tokens
        if self.tools is not None:
            body["tools"] = [tool.chat_tool() for tool in self.tools]
        if isinstance(self.tool_choice, FunctionChoice):
            body["tool_choice"] = {"type": "function", "function": {"name": self.tool_choice.name}}
        elif self.tool_choice is not None:
            body["tool_choice"] = self.tool_choice
        if self.text and self.text.format:
            body["response_format"] = _response_format(self.text.format)
        if verbosity := self.text_verbosity():
            body["verbosity"] = verbosity
        if self.reasoning and self.reasoning.effort:
            body["reasoning_effort"] = self.reasoning.effort
        if self.wants_logprobs():
            body["logprobs"] = True
            if self.top_logprobs:
                body["top_logprobs"] = self.top_logprobs
        try:
            return ChatCompletionRequest.model_validate(body)
        except ValidationError as exc:
            where, message = first_problem(exc)
            param = "input" if where.startswith("messages") else where.split(".")[0] or None
            raise BadRequest(f"{param or 'the request'}: {message}", param=param) from exc


def _named(exc: ValidationError) -> BadRequest:
    """The deepest problem of ``exc`` (in ``str | list[...]``, the list's item rather than "not a string"), at
    its path with pydantic's union labels and tags left out: ``input.2.call_id``, not
    ``input.list[...].2.function_call.call_id``."""
    problem = max(exc.errors(), key=lambda e: len(e["loc"]))
    loc = problem["loc"]
    if "[key]" in loc:  # a mapping's key was wrong: name the mapping, not the key (which may be anything)
        loc = loc[: loc.index("[key]") - 1]
    path = [
        str(part)
        for i, part in enumerate(loc)
        if not (
            isinstance(part, str)
            and (
                "[" in part
                or part[:1].isupper()
                or part == "str"
                or (part in _UNION_TAGS and i > 0 and (isinstance(loc[i - 1], int) or loc[i - 1] == "format"))
            )
        )
    ]
    where = ".".join(path)
    message = problem["msg"].removeprefix("Value error, ")
    return BadRequest(f"{where}: {message}" if where else message, param=where or None)


_UNION_TAGS = frozenset(
    {"message", "function_call", "function_call_output", "input_text", "output_text", "refusal", "input_image"}
    | {"text", "json_object", "json_schema"}
)


def _response_format(fmt: PlainText | JsonObject | JsonSchema) -> dict[str, Any]:
    if isinstance(fmt, JsonSchema):
        return {
            "type": "json_schema",
            "json_schema": fmt.model_dump(by_alias=True, exclude={"type"}, exclude_unset=True),
        }
    return {"type": fmt.type}


# ---- responses -------------------------------------------------------------------------------------


class OutputTopLogprob(BaseModel):
    token: str
    bytes: list[int]
    logprob: float


class OutputLogprob(OutputTopLogprob):
    top_logprobs: list[OutputTopLogprob]


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[dict[str, Any]] = Field(default_factory=list)
    logprobs: list[OutputLogprob] = Field(default_factory=list)


class OutputMessage(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: ItemStatus
    content: list[OutputText]


class FunctionToolCall(BaseModel):
    id: str
    type: Literal["function_call"] = "function_call"
    status: ItemStatus
    call_id: str
    name: str
    arguments: str


OutputItem = OutputMessage | FunctionToolCall


class InputTokensDetails(BaseModel):
    cached_tokens: int


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int


class ResponseUsage(ResponseObject):
    """Token counts, the receipts and (COCOON, in nanoton) the costs, as chat's ``Usage`` has them."""

    absent_when_none = COST_FIELDS
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int
    receipt_ids: list[str]
    workers: list[str]
    prompt_cost: int | None = None
    cached_cost: int | None = None
    completion_cost: int | None = None
    total_cost: int | None = None


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseError(BaseModel):
    """Why a streamed response failed: cocoon's error ``code`` and ``type`` (as a 4xx/5xx body has them)."""

    code: str
    message: str
    type: str
    param: str | None = None


class Response(BaseModel):
    """A model response: its output items and usage, and the request's settings echoed as OpenAI echoes them."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    completed_at: int | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None
    max_output_tokens: int | None
    max_tool_calls: int | None
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool
    previous_response_id: None = None
    reasoning: ReasoningConfig
    service_tier: str
    store: bool = False
    background: bool = False
    temperature: float
    text: TextConfig
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice
    tools: list[FunctionTool]
    top_logprobs: int
    top_p: float
    truncation: Literal["disabled"] = "disabled"
    usage: ResponseUsage | None = None
    user: str | None
    safety_identifier: str | None
    prompt_cache_key: str | None
    metadata: dict[str, str]


# ---- stream events ---------------------------------------------------------------------------------


class StreamEvent(BaseModel):
    """One server-sent event of a streamed response, sent as ``event: {type}``; numbered from 0."""

    type: str
    sequence_number: int


class LifecycleEvent(StreamEvent):
    type: Literal[
        "response.created", "response.in_progress", "response.completed", "response.incomplete", "response.failed"
    ]
    response: Response


class OutputItemEvent(StreamEvent):
    type: Literal["response.output_item.added", "response.output_item.done"]
    output_index: int
    item: OutputItem


class ContentPartEvent(StreamEvent):
    type: Literal["response.content_part.added", "response.content_part.done"]
    item_id: str
    output_index: int
    content_index: int
    part: OutputText


class TextDeltaEvent(StreamEvent):
    type: Literal["response.output_text.delta"]
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[OutputLogprob]


class TextDoneEvent(StreamEvent):
    type: Literal["response.output_text.done"]
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[OutputLogprob]


class ArgumentsDeltaEvent(StreamEvent):
    type: Literal["response.function_call_arguments.delta"]
    item_id: str
    output_index: int
    delta: str


class ArgumentsDoneEvent(StreamEvent):
    type: Literal["response.function_call_arguments.done"]
    item_id: str
    output_index: int
    name: str
    arguments: str
