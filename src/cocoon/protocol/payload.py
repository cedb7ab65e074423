"""What is inside the seal: the request plaintext the client writes and the chunk plaintexts a worker writes.

Only client and worker ever see these; the proxy relays them as ciphertext.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cocoon.protocol.messages import PROTOCOL_VERSION


class SealedMessage(BaseModel):
    model_config = ConfigDict(frozen=True)
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str


class SealedParams(BaseModel):
    model_config = ConfigDict(frozen=True)
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None


class RequestPayload(BaseModel):
    """The request plaintext. ``salt`` is random per request: it keys the response digest."""

    model_config = ConfigDict(frozen=True)
    v: int = PROTOCOL_VERSION
    kind: Literal["chat", "completion", "embedding"]
    model: str
    salt: bytes
    messages: list[SealedMessage] | None = None
    prompt: str | None = None
    input: list[str] | None = None
    params: SealedParams


class ChunkPayload(BaseModel):
    """One response chunk plaintext: generated text, or embedding vectors."""

    model_config = ConfigDict(frozen=True)
    text: str = ""
    tokens: int = 0
    embeddings: list[list[float]] | None = None
    finish_reason: str | None = None
