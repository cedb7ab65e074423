"""TEST AND CHAOS ONLY: receipts spoiled on purpose (``chaos_bad_receipts``), to prove clients pay nothing, and
an engine serving another model than it attests (``chaos_serve_model_path``), to prove canaries catch it.

``response-digest`` commits to a response the client never received (the proxy cannot tell, the client
can); ``signature`` signs with a fresh key instead of the attested one (both can tell); ``inflated-tokens``
signs, with the attested key, a million completion tokens more than it generated (the proxy's reservation caps it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path

from cocoon.crypto import SigningKey, sign_receipt
from cocoon.engines import (
    Embeddings,
    Engine,
    EngineInfo,
    EngineSettings,
    GenerationEvent,
    GenerationRequest,
    ScoreRequest,
    TokenScores,
    build_engine,
    bundled_model_path,
    sha256_file,
)
from cocoon.protocol import Receipt


def spoil(mode: str, receipt: Receipt, signature: bytes, key: SigningKey) -> tuple[Receipt, bytes]:
    """The receipt and signature a faulty worker would send instead of ``(receipt, signature)``."""
    if mode == "response-digest":
        forged = receipt.model_copy(update={"response_sha256": hashlib.sha256(b"not what was sent").hexdigest()})
        return forged, sign_receipt(key, forged)
    if mode == "signature":
        return receipt, sign_receipt(SigningKey.generate(), receipt)
    if mode == "inflated-tokens":  # a greedy worker: correctly signed, a million tokens more than it made
        inflated = receipt.model_copy(update={"completion_tokens": receipt.completion_tokens + 1_000_000})
        return inflated, sign_receipt(key, inflated)
    return receipt, signature


class ImpostorEngine:
    """Serves ``serve_path`` (another GGUF) while its ``info`` claims the weights hash ``settings`` names: the
    hash the worker attests and signs receipts for. Only the model differs; everything else is the real engine."""

    def __init__(self, settings: EngineSettings, serve_path: Path) -> None:
        self._claimed = settings
        self._inner: Engine = build_engine(settings.model_copy(update={"model_path": serve_path, "model_hash": None}))
        self._hash = ""

    @property
    def info(self) -> EngineInfo:
        return dataclasses.replace(self._inner.info, model_hash=self._hash)

    async def start(self) -> None:
        claimed = self._claimed.model_hash
        if not claimed:
            path = self._claimed.model_path
            if path is None:
                path = await asyncio.to_thread(bundled_model_path)
            claimed = await asyncio.to_thread(sha256_file, path)
        self._hash = claimed.lower()
        await self._inner.start()

    async def close(self) -> None:
        await self._inner.close()

    def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        return self._inner.generate(request)

    async def embed(self, inputs: Sequence[str | Sequence[int]]) -> Embeddings:
        return await self._inner.embed(inputs)

    async def score(self, request: ScoreRequest) -> TokenScores:
        return await self._inner.score(request)

    async def count_tokens(self, text: str) -> int:
        return await self._inner.count_tokens(text)
