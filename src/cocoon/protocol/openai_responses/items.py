"""The Responses API's input: content parts and input items (messages, earlier function calls and their outputs),
each with its chat form, as ``ResponsesRequest.chat_messages`` strings them into a chat conversation."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Discriminator, Field, Tag, field_validator, model_validator

from cocoon.protocol.openai import Name as FunctionName
from cocoon.protocol.openai import Strict

CallId = Annotated[str, Field(min_length=1, max_length=128)]
ItemStatus = Literal["in_progress", "completed", "incomplete"]


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
