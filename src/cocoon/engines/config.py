"""Configuration of one engine, embedded in the worker's settings (``[[engines]]`` tables in worker.toml)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator

DEFAULT_MODEL = "gemma-3-270m"
MAX_PARALLEL = 64  # sequences one llama.cpp context decodes together


class EngineSettings(BaseModel):
    """One model served by a worker, and the backend that serves it."""

    kind: Literal["llamacpp", "openai_upstream", "synthetic"] = Field(
        "llamacpp",
        description="llamacpp: embedded llama.cpp on the CPU; openai_upstream: any OpenAI-compatible server "
        "(vLLM, SGLang, Ollama, llama.cpp server); synthetic: instant deterministic text, for benchmarks",
    )
    model: str = Field(DEFAULT_MODEL, description="model name clients ask for")
    model_path: Path | None = Field(
        None,
        description="GGUF file for llamacpp; empty means the bundled one of `model`: SmolLM2-135M-Instruct for "
        "smollm2-135m-instruct (the smollm extra), else Gemma 3 270M (assembled once)",
    )
    context_length: int = Field(4096, ge=128, description="context window in tokens (llamacpp n_ctx)")
    threads: int | None = Field(None, ge=1, description="CPU threads llama.cpp computes with; empty: all cores")
    parallel: int | None = Field(
        None,
        ge=1,
        le=MAX_PARALLEL,
        description="llamacpp: sequences decoded together in one context, each with its own KV cache of "
        "context_length tokens (generations computed at once); empty: the worker's slots",
    )
    embeddings: bool = Field(True, description="also serve /v1/embeddings from this model")
    upstream_url: str | None = Field(None, description="base URL of the upstream server, e.g. http://127.0.0.1:8000/v1")
    upstream_api_key: str | None = Field(None, description="bearer token for the upstream server")
    upstream_model: str | None = Field(None, description="model name at the upstream; empty: same as `model`")
    upstream_cache_salt: bool = Field(
        False,
        description="openai_upstream only: send each request's client cache scope as `cache_salt` (vLLM >= 0.9), "
        "so the upstream's prefix cache is shared only among one client's requests; servers without the field "
        "refuse it",
    )
    model_hash: str | None = Field(
        None,
        description="sha256 of the weights (hex); computed from the GGUF for llamacpp, required for upstream",
    )
    vision: bool = Field(
        False,
        description="openai_upstream only: the upstream model takes image content parts (advertised to clients, "
        "which send image requests only to such workers); without it image parts are refused",
    )
    synthetic_tokens_per_s: float = Field(0.0, ge=0, description="synthetic engine pace; 0 means no delay")

    @model_validator(mode="after")
    def _vision_is_upstreams(self) -> EngineSettings:
        # Only an upstream server can take images; a llamacpp or synthetic engine declaring vision would route
        # image requests to a worker that cannot read them.
        if self.vision and self.kind != "openai_upstream":
            raise ValueError(f"vision = true needs kind = 'openai_upstream' (engine {self.model!r} is {self.kind})")
        return self
