"""The OpenAI request bodies the sidecar accepts, as pydantic models (vLLM's server does the same).

Fields OpenAI defines but cocoon cannot honour yet (``n`` > 1, ``logprobs``, tools, images) are refused with
a 400 that names them, never silently ignored. COCOON's ``max_coefficient``/``timeout`` and OpenRouter's
``provider`` object are accepted too.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cocoon.errors import BadRequest
from cocoon.protocol import RoutingPrefs


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
    max_price: float | None = None
    allow_fallbacks: bool = True
    region: str | None = None
    hedge: bool = Field(False, description="cocoon: run on two workers, keep the first to answer")


class SamplingFields(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1)
    logprobs: bool | int | None = None
    max_coefficient: int | None = Field(None, ge=1, description="COCOON: price cap, 1000 = 1x")
    timeout: float | None = Field(None, gt=0, le=3600, description="COCOON: seconds")
    provider: ProviderPrefs | None = None

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        return value

    @model_validator(mode="after")
    def _refuse_unsupported(self) -> SamplingFields:
        if self.n != 1:
            raise ValueError("n > 1 is not supported: send one request per choice")
        if self.logprobs:
            raise ValueError("logprobs are not supported yet")
        return self

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
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[Any] | None = None

    @model_validator(mode="after")
    def _no_tools(self) -> ChatCompletionRequest:
        if self.tools:
            raise ValueError("tools are not supported yet")
        return self


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
    model: str = Field(min_length=1)
    input: str | list[str] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    timeout: float | None = Field(None, gt=0, le=3600)

    def inputs(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)
