"""The bundled models on a real network: every worker serves Gemma 3 270M and SmolLM2-135M-Instruct, the sidecar
lists both and answers a chat on each, sealed to an attested worker. Needs the smollm extra; skipped without it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cocoon.engines.bundled import SMOLLM2_INSTALL, SMOLLM2_MODEL, SMOLLM2_SHA256, smollm2_installed
from cocoon.engines.config import DEFAULT_MODEL
from cocoon.local import LocalNetwork
from tests.helpers.network import directory, start_network

pytestmark = pytest.mark.skipif(not smollm2_installed(), reason=f"needs SmolLM2: {SMOLLM2_INSTALL}")


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory, bundled_model_path: Path) -> Iterator[LocalNetwork]:
    net = start_network(tmp_path_factory.mktemp("bundled"), workers=1, model_path=bundled_model_path, smollm2=True)
    yield net
    net.stop()


def ask(net: LocalNetwork, model: str, messages: list[dict[str, str]], **options: object) -> dict[str, object]:
    body = {"model": model, "messages": messages, "max_tokens": 16, "temperature": 0} | options
    response = httpx.post(f"{net.base_url}/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    answer: dict[str, object] = response.json()
    return answer


def content(answer: dict[str, object]) -> str:
    choices = answer["choices"]
    assert isinstance(choices, list)
    return str(choices[0]["message"]["content"])


def test_models_lists_both_bundled_models(network: LocalNetwork) -> None:
    listed = httpx.get(f"{network.base_url}/models", timeout=10).json()["data"]
    assert sorted(m["id"] for m in listed) == sorted([DEFAULT_MODEL, SMOLLM2_MODEL])
    served = {m["model"]: m for w in directory(network) for m in w["models"]}  # type: ignore[attr-defined]
    assert set(served) == {DEFAULT_MODEL, SMOLLM2_MODEL}
    assert SMOLLM2_SHA256 in network.policy["allowed_model_hashes"]


def test_the_instruct_model_answers_a_question(network: LocalNetwork) -> None:
    answer = ask(network, SMOLLM2_MODEL, [{"role": "user", "content": "What is the capital city of Japan?"}])
    assert answer["model"] == SMOLLM2_MODEL
    assert "Tokyo" in content(answer)
    assert answer["choices"][0]["finish_reason"] == "stop"  # type: ignore[index]


def test_gemma_still_answers_beside_it(network: LocalNetwork) -> None:
    messages = [
        {"role": "user", "content": "What is the capital of Italy?"},
        {"role": "assistant", "content": "The capital of Italy is Rome."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    answer = ask(network, DEFAULT_MODEL, messages, stop=["."])
    assert answer["model"] == DEFAULT_MODEL
    assert content(answer).strip()
