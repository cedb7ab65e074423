"""A ``POST /v1/responses`` body: its tools, text format and options beside the input, what of it is refused,
and ``ResponsesRequest.chat_request()``, the one chat completion that serves it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    field_validator,
    model_validator,
)

from cocoon.errors import BadRequest, first_problem
from cocoon.protocol.openai import (
    INT64_MAX,
    MAX_PRICE_CAP,
    MAX_TOKENS,
    MAX_TOOLS,
    MAX_TOP_LOGPROBS,
    ChatCompletionRequest,
    ProviderPrefs,
    Strict,
    bounded_schema,
)
from cocoon.protocol.openai import Name as FunctionName
from cocoon.protocol.openai_responses.items import FunctionCallItem, InputItem, MessageItem

LOGPROBS = "message.output_text.logprobs"
INCLUDABLE = frozenset({LOGPROBS, "reasoning.encrypted_content"})


def _bounded(value: dict[str, Any] | None) -> dict[str, Any] | None:
    return bounded_schema(value, "a JSON schema")


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
    """A ``POST /v1/responses`` body; the package docstring says what happens to each field."""

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
        """A problem as a ``BadRequest`` naming its field by the path an app wrote (see ``_named``)."""
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
    unknown = problem["type"] == "extra_forbidden"  # its last part is the unknown field's name, whatever it is
    path = [
        str(part)
        for i, part in enumerate(loc)
        if (unknown and i == len(loc) - 1)
        or not (
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
