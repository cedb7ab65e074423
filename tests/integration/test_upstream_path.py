"""The production path on a CPU: a worker whose engine is an OpenAI-compatible upstream server (here
llama-cpp-python's own server, standing in for vLLM), behind the whole sealed network."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from cocoon.engines import DEFAULT_MODEL, sha256_file
from tests.helpers.network import start_network
from tests.helpers.upstream import llama_server


def test_a_vllm_style_upstream_answers_through_the_network_and_its_failure_is_a_502(
    tmp_path: Path, bundled_model_path: Path
) -> None:
    with llama_server(bundled_model_path) as (url, server):
        engine = {
            "kind": "openai_upstream",
            "upstream_url": url,
            "model_hash": sha256_file(bundled_model_path),
            "embeddings": False,
        }
        net = start_network(tmp_path, workers=1, model_path=bundled_model_path, engine=engine)
        try:
            oai = openai.OpenAI(base_url=net.base_url, api_key="unused", max_retries=0, timeout=60)
            reply = oai.chat.completions.create(
                model=DEFAULT_MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=8, temperature=0
            )
            assert reply.choices[0].message.content
            assert reply.usage is not None and reply.usage.completion_tokens > 0

            server.kill()
            server.wait()
            with pytest.raises(openai.APIStatusError) as info:
                oai.chat.completions.create(
                    model=DEFAULT_MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=8
                )
            assert info.value.status_code == 502
            assert isinstance(info.value.body, dict)
            assert info.value.body["code"] == "upstream_failed"
            assert "127.0.0.1" in info.value.body["message"]  # says which upstream to look at
        finally:
            net.stop()
