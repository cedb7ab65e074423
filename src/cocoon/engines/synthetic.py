"""A deterministic engine that costs nothing: words cycled from a fixed text, one per token.

For benchmarks of the proxy and wire path, where the model would be the bottleneck; never for tests of
model behaviour. It honours the whole ``Engine`` contract (pacing, max_tokens, stop strings, cancellation) and
refuses what a model would have to do (tools, a response_format, logprobs, images) with a ``BadRequest``.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import AsyncGenerator, Sequence

from cocoon.engines.base import (
    SCORE_MAX_TOKENS,
    Embeddings,
    EngineInfo,
    Finished,
    GenerationEvent,
    GenerationRequest,
    SamplingParams,
    ScoreRequest,
    TextDelta,
    TokenScores,
)
from cocoon.engines.config import EngineSettings
from cocoon.engines.stops import StopStringFilter
from cocoon.errors import BadRequest, ContextLengthExceeded
from cocoon.protocol.usage import TokenUsage

_TEXT = (
    "the network carries sealed requests from clients to workers through proxies that cannot read them "
    "each worker proves what it runs signs a receipt for every job and is paid only for verified work "
    "while the proxy keeps the books and settles on chain in batches"
)
WORDS: tuple[str, ...] = tuple(_TEXT.split())
SYNTHETIC_MODEL_HASH = hashlib.sha256(b"cocoon synthetic engine v1\n" + _TEXT.encode()).hexdigest()
_EMBEDDING_DIM = 16
# What ``score`` rates a word: likely where ``generate`` would have put it, very unlikely anywhere else.
EXPECTED_WORD_LOGPROB = math.log(0.9)
OTHER_WORD_LOGPROB = math.log(1e-4)


class SyntheticEngine:
    """Streams ``WORDS`` (each token is one word followed by a space), starting at an offset derived from
    the prompt, so the same request always yields the same text and a resumed request (``continuation``
    holding the first k words) yields exactly the rest. Tokens are whitespace-separated words.
    """

    def __init__(self, settings: EngineSettings) -> None:
        self._settings = settings
        self._info = EngineInfo(
            model=settings.model,
            model_hash=SYNTHETIC_MODEL_HASH,
            context_length=settings.context_length,
            supports_embeddings=settings.embeddings,
            extra={"backend": "synthetic", "tokens_per_s": str(settings.synthetic_tokens_per_s)},
        )

    @property
    def info(self) -> EngineInfo:
        return self._info

    async def start(self) -> None:
        """Nothing to load."""

    async def close(self) -> None:
        """Nothing to release."""

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        """Stream words; ``Finished`` says "length" after ``max_tokens`` words, "stop" at a stop string.

        Raises ``BadRequest`` naming the field for tools, a response_format, logprobs or images: words cycled
        from a text cannot follow them.
        """
        _refuse_constraints(request, self._info.model)
        prompt = _prompt_text(request)
        prompt_tokens = len(prompt.split()) + len(request.continuation.split())
        max_tokens = request.params.max_tokens
        if prompt_tokens + max_tokens > self._info.context_length:
            raise ContextLengthExceeded(
                f"the prompt has {prompt_tokens} tokens and max_tokens is {max_tokens}: together more "
                f"than the context length of {self._info.context_length} tokens; shorten the prompt or "
                "lower max_tokens"
            )
        first = _first_word(prompt) + len(request.continuation.split())
        pace = self._settings.synthetic_tokens_per_s
        stops = StopStringFilter(request.params.stop)
        started = time.monotonic()
        unreported = 0
        for i in range(max_tokens):
            if pace > 0:
                await asyncio.sleep(max(0.0, started + (i + 1) / pace - time.monotonic()))
            else:
                await asyncio.sleep(0)  # let the loop breathe between tokens, as a real engine would
            unreported += 1
            text = stops.feed(WORDS[(first + i) % len(WORDS)] + " ")
            if text:
                yield TextDelta(text, tokens=unreported)
                unreported = 0
            if stops.stopped:
                yield Finished("stop", TokenUsage(prompt_tokens, i + 1))
                return
        tail = stops.flush()
        if tail:
            yield TextDelta(tail, tokens=unreported)
        yield Finished("length", TokenUsage(prompt_tokens, max_tokens))

    async def score(self, request: ScoreRequest) -> TokenScores:
        """Each completion word is likely (``EXPECTED_WORD_LOGPROB``) where ``generate`` would have said it and
        unlikely (``OTHER_WORD_LOGPROB``) otherwise: an answer of this engine scores high, any other text low."""
        layout = GenerationRequest(SamplingParams(max_tokens=1), messages=request.messages, prompt=request.prompt)
        prompt = _prompt_text(layout)
        words = request.completion.split()
        first = _first_word(prompt)
        greedy = tuple(word == WORDS[(first + i) % len(WORDS)] for i, word in enumerate(words[:SCORE_MAX_TOKENS]))
        logprobs = tuple(EXPECTED_WORD_LOGPROB if hit else OTHER_WORD_LOGPROB for hit in greedy)
        return TokenScores(logprobs, greedy, len(prompt.split()), truncated=len(words) > SCORE_MAX_TOKENS)

    async def embed(self, inputs: Sequence[str | Sequence[int]]) -> Embeddings:
        """One unit vector per input, derived from its sha256 (same text, same vector); token ids stand for the
        words of ``WORDS`` they index (modulo its length)."""
        if not self._info.supports_embeddings:
            raise BadRequest(f"embeddings are disabled for model {self._info.model!r}; set embeddings = true")
        texts = [item if isinstance(item, str) else " ".join(WORDS[i % len(WORDS)] for i in item) for item in inputs]
        vectors = [_unit_vector(text) for text in texts]
        return Embeddings(vectors, prompt_tokens=sum(len(text.split()) for text in texts))

    async def count_tokens(self, text: str) -> int:
        """Whitespace-separated words."""
        return len(text.split())


def _first_word(prompt: str) -> int:
    return int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "big")


def _prompt_text(request: GenerationRequest) -> str:
    if request.messages is not None:
        return "\n".join(message.content for message in request.messages)
    if request.prompt_ids is not None:  # token ids stand for the words they index, as in ``embed``
        return " ".join(WORDS[i % len(WORDS)] for i in request.prompt_ids)
    return request.prompt or ""


def _refuse_constraints(request: GenerationRequest, model: str) -> None:
    why = f"the synthetic engine serving {model!r} streams fixed words"
    if request.wants_tools:
        raise BadRequest(f"{why} and calls no tools; leave tools out or send tool_choice 'none'", param="tools")
    if request.response_format.type != "text":
        raise BadRequest(f"{why} and cannot write JSON; leave response_format out", param="response_format")
    if request.logprobs:
        raise BadRequest(f"{why} and has no log-probabilities; leave logprobs out", param="logprobs")
    if request.messages is not None and any(m.images for m in request.messages):
        raise BadRequest(f"{why} and takes no images; send the messages as text only", param="messages")


def _unit_vector(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    raw = [byte - 127.5 for byte in digest[:_EMBEDDING_DIM]]
    norm = math.sqrt(sum(x * x for x in raw))
    return [x / norm for x in raw]
