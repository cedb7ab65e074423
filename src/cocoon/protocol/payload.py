"""What is inside the seal: the request plaintext the client writes and the chunk plaintexts a worker writes.

Only client and worker ever see these; the proxy relays them as ciphertext.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgpack
from pydantic import BaseModel, ConfigDict, Field

from cocoon.protocol.messages import PROTOCOL_VERSION, JobKind


class SealedMessage(BaseModel):
    model_config = ConfigDict(frozen=True)
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str


CACHE_SCOPE_PATTERN = r"^[0-9a-f]{32}$"
MAX_LOGIT_BIAS = 300  # OpenAI's limit on logit_bias entries
MAX_TOKEN_ID = 2**31 - 1


class SealedParams(BaseModel):
    model_config = ConfigDict(frozen=True)
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None
    # OpenAI's ranges: the worker applies them as given, so they are bounded here too (a client can be anyone).
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0, allow_inf_nan=False)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0, allow_inf_nan=False)
    # (token id, bias) pairs: msgpack maps take only string keys here
    logit_bias: list[tuple[Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)], Annotated[float, Field(ge=-100, le=100)]]] = (
        Field(default_factory=list, max_length=MAX_LOGIT_BIAS)
    )


class RequestPayload(BaseModel):
    """The request plaintext. ``salt`` is random per request: it keys the response digest.

    A ``score`` job carries the prompt (``messages`` or ``prompt``) and the ``completion`` to rate under the
    worker's model; it is answered with one chunk of ``logprobs`` (see ``cocoon.engines.base.ScoreRequest``).

    ``openai`` is the app's OpenAI request itself, as the client validated it (``cocoon.protocol.openai``), for
    one choice and without cocoon's routing extras: the worker validates it again, its engine honours or forwards
    every field, and the receipt's request digest covers it. ``messages``/``prompt`` and ``params`` are the
    text view of it the worker counts and bounds (``max_tokens`` must equal the clear job's). A text prompt may
    be given as token ids of the served model instead (``prompt_ids``; embeddings' ``input`` likewise).

    ``cache_scope`` names whose prompt cache the request may use: the worker's engine reuses (or copies) cached
    prompt KV only between requests of one scope. A client derives it from a secret of its own
    (``cocoon.client.prefix.cache_scope``), so nobody else can pick it and time its prompts through the cache;
    a request without one shares no cache with any other.
    """

    model_config = ConfigDict(frozen=True)
    v: int = PROTOCOL_VERSION
    kind: JobKind
    model: str
    salt: bytes
    messages: list[SealedMessage] | None = None
    prompt: str | None = None
    prompt_ids: list[Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]] | None = None
    input: list[str | list[Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]]] | None = None
    completion: str | None = None
    params: SealedParams
    openai: dict[str, Any] | None = None
    cache_scope: str | None = Field(None, pattern=CACHE_SCOPE_PATTERN)


class ChunkPayload(BaseModel):
    """One response chunk plaintext: generated text, or embedding vectors. ``pad`` is filler (see ``encode``)."""

    model_config = ConfigDict(frozen=True)
    text: str = ""
    tokens: int = 0
    embeddings: list[list[float]] | None = None
    # A score job's answer: each completion token's log-probability, and whether greedy decoding chose it.
    logprobs: list[float] | None = None
    greedy: list[bool] | None = None
    # OpenAI's shapes, as the worker's engine produced them: pieces of tool calls (a chat delta's ``tool_calls``)
    # and each generated token's log-probability with its top alternatives (a chat choice's ``logprobs.content``).
    tool_calls: list[dict[str, Any]] | None = None
    token_logprobs: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    pad: bytes = b""

    def encode(self, bucket: int = 0) -> bytes:
        """The msgpack plaintext, padded with ``pad`` to a whole number of ``bucket`` bytes (0: unpadded).

        Sealed sizes then say only which bucket a chunk's text fell in, not how long each token is (the token-
        length side channel); the receipt's digest covers the padded bytes, as the client opens them.
        """
        fields = self.model_dump(exclude_defaults=True, exclude={"pad"})
        plain = msgpack.packb(fields, use_bin_type=True)
        if bucket <= 0:
            return plain
        # The "pad" entry adds its key (4 bytes), a bin header (2, 3 or 5 bytes) and the filler; the map's own
        # header stays one byte (fewer than 16 entries). Find the smallest bucket multiple the sizes can reach.
        base = len(plain) + 4
        target = -(-base // bucket) * bucket
        while True:
            for header, most in ((2, 0xFF), (3, 0xFFFF), (5, 0xFFFFFFFF)):
                filler = target - base - header
                if 0 <= filler <= most and (header == 2 or filler > (0xFF if header == 3 else 0xFFFF)):
                    padded = msgpack.packb(fields | {"pad": bytes(filler)}, use_bin_type=True)
                    assert len(padded) == target
                    return padded
            target += bucket
