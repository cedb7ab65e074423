"""For tests of the ``openai_upstream`` engine: a real OpenAI-compatible upstream (llama-cpp-python's own server),
and the engine's request for an app's OpenAI body, built as the sidecar seals it and the worker opens it."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from cocoon.engines.base import GenerationRequest, SamplingParams
from cocoon.local import free_port
from cocoon.protocol.openai import ChatCompletionRequest, CompletionRequest
from cocoon.protocol.payload import RequestPayload
from cocoon.worker.requests import generation_request


def app_request(body: dict[str, Any], *, budget: int | None = None, continuation: str = "") -> GenerationRequest:
    """The ``GenerationRequest`` a worker's engine gets for the app's chat (``messages``) or completion (one
    ``prompt``) ``body``: sealed as the sidecar seals it (one choice, routing extras left out), opened as the
    worker opens it. ``budget`` is the completion tokens left (default: the body's own ``max_tokens``)."""
    payload: RequestPayload
    if "messages" in body:
        chat = ChatCompletionRequest.model_validate(body)
        max_tokens = chat.max_completion_tokens or chat.max_tokens or 16
        payload = RequestPayload(
            kind="chat",
            model=chat.model,
            salt=b"salt",
            messages=chat.sealed_messages(),
            params=chat.sealed_params(max_tokens),
            openai=chat.sealed_body(n=1),
        )
    else:
        text = CompletionRequest.model_validate(body)
        (prompt,) = text.prompts()
        payload = RequestPayload(
            kind="completion",
            model=text.model,
            salt=b"salt",
            prompt=prompt if isinstance(prompt, str) else "",
            prompt_ids=None if isinstance(prompt, str) else prompt,
            params=text.sealed_params(text.max_tokens or 16),
            openai=text.sealed_body(n=1, prompt=prompt, best_of=None),
        )
    sealed = payload.params
    params = SamplingParams(
        max_tokens=sealed.max_tokens if budget is None else budget,
        temperature=sealed.temperature,
        top_p=sealed.top_p,
        stop=tuple(sealed.stop),
        seed=sealed.seed,
        frequency_penalty=sealed.frequency_penalty,
        presence_penalty=sealed.presence_penalty,
        logit_bias=tuple(sorted(sealed.logit_bias)),
    )
    return generation_request(payload, params, continuation)


@contextlib.contextmanager
def llama_server(
    model: Path, n_ctx: int = 2048, chat_format: str = "gemma"
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """llama-cpp-python's own OpenAI-compatible server on a free port: a real upstream for the
    ``openai_upstream`` engine. Yields its base URL (``.../v1``) and process; waits for ``/v1/models``.

    ``chat_format`` is its prompt template: "gemma" for the bundled base Gemma GGUF (which carries no template);
    "chatml-function-calling" (ChatML, SmolLM2's own) also calls tools, for a named ``tool_choice`` only."""
    port = free_port()
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model),
        "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", str(n_ctx), "--n_threads", "2",
        "--chat_format", chat_format,
        "--verbose", "false",
    ]  # fmt: skip
    log = tempfile.TemporaryFile()
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"llama_cpp.server exited early: {log.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{url}/models", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise TimeoutError(f"llama_cpp.server did not answer {url}/models within 60 s")
            time.sleep(0.1)
        yield url, server
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
