"""Which engine a worker runs for each model: ``EngineSettings.kind`` mapped to its class."""

from __future__ import annotations

from cocoon.engines.base import Engine
from cocoon.engines.config import EngineSettings
from cocoon.engines.llamacpp import LlamaCppEngine
from cocoon.engines.openai_upstream import OpenAIUpstreamEngine
from cocoon.engines.synthetic import SyntheticEngine


def build_engine(settings: EngineSettings) -> Engine:
    """The engine ``settings.kind`` names, not yet started (call ``await engine.start()``).

    Raises ``cocoon.errors.ConfigError`` when the settings are incomplete for that kind.
    """
    if settings.kind == "llamacpp":
        return LlamaCppEngine(settings)
    if settings.kind == "openai_upstream":
        return OpenAIUpstreamEngine(settings)
    return SyntheticEngine(settings)
