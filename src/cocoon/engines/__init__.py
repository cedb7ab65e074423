"""Inference backends behind one ``Engine`` protocol: embedded llama.cpp, any OpenAI-compatible server,
and a synthetic engine for benchmarks. ``build_engine`` (``factory.py``) picks one
from ``EngineSettings``. This module only re-exports.
"""

from __future__ import annotations

from cocoon.engines.base import (
    SCORE_MAX_TOKENS,
    ChatMessage,
    ChatRole,
    Embeddings,
    Engine,
    EngineInfo,
    Finished,
    FinishReason,
    FunctionTool,
    GenerationEvent,
    GenerationRequest,
    OutputFormat,
    SamplingParams,
    ScoreRequest,
    TextDelta,
    TokenLogprob,
    TokenScores,
    ToolCall,
    ToolCallDelta,
    TopLogprob,
)
from cocoon.engines.config import DEFAULT_MODEL, EngineSettings
from cocoon.engines.factory import build_engine
from cocoon.engines.llamacpp import LlamaCppEngine
from cocoon.engines.model_cache import bundled_model_path, default_cache_dir, sha256_file
from cocoon.engines.openai_upstream import OpenAIUpstreamEngine
from cocoon.engines.stops import StopStringFilter
from cocoon.engines.synthetic import SyntheticEngine
from cocoon.protocol.usage import TokenUsage

__all__ = [
    "DEFAULT_MODEL",
    "SCORE_MAX_TOKENS",
    "ChatMessage",
    "ChatRole",
    "Embeddings",
    "Engine",
    "EngineInfo",
    "EngineSettings",
    "FinishReason",
    "Finished",
    "FunctionTool",
    "GenerationEvent",
    "GenerationRequest",
    "LlamaCppEngine",
    "OpenAIUpstreamEngine",
    "OutputFormat",
    "SamplingParams",
    "ScoreRequest",
    "StopStringFilter",
    "SyntheticEngine",
    "TextDelta",
    "TokenLogprob",
    "TokenScores",
    "TokenUsage",
    "ToolCall",
    "ToolCallDelta",
    "TopLogprob",
    "build_engine",
    "bundled_model_path",
    "default_cache_dir",
    "sha256_file",
]
