"""The production path on a CPU: a worker whose engine is an OpenAI-compatible upstream server (here
llama-cpp-python's own server, standing in for vLLM), behind the whole sealed network."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from pathlib import Path

import openai
import pytest

from cocoon.engines import DEFAULT_MODEL, sha256_file
from cocoon.engines.bundled import SMOLLM2_INSTALL, SMOLLM2_MODEL, SMOLLM2_SHA256, smollm2_installed, smollm2_model_path
from tests.helpers.network import start_network
from tests.helpers.upstream import llama_server


def png_pixel() -> str:
    """A data URI of a PNG of one grey pixel."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)  # 1x1, 8-bit greyscale
    png = (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\x80")) + chunk(b"IEND", b"")
    )
    return "data:image/png;base64," + base64.b64encode(png).decode()


def test_a_vllm_style_upstream_answers_through_the_network_and_its_failure_is_a_502(
    tmp_path: Path, bundled_model_path: Path
) -> None:
    with llama_server(bundled_model_path) as (url, server):
        engine = {
            "kind": "openai_upstream",
            "upstream_url": url,
            "model_hash": sha256_file(bundled_model_path),
            "embeddings": False,
            "vision": True,
        }
        net = start_network(tmp_path, workers=1, model_path=bundled_model_path, engine=engine)
        try:
            oai = openai.OpenAI(base_url=net.base_url, api_key="unused", max_retries=0, timeout=60)
            reply = oai.chat.completions.create(
                model=DEFAULT_MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=8, temperature=0
            )
            assert reply.choices[0].message.content
            assert reply.usage is not None and reply.usage.completion_tokens > 0

            # The worker advertises its upstream's vision, so the client sends it image parts. (This server's
            # Gemma reads no images; the answer shows only that the request came through to it.)
            seen = oai.chat.completions.create(
                model=DEFAULT_MODEL,
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What is in the picture?"},
                            {"type": "image_url", "image_url": {"url": png_pixel()}},
                        ],
                    }
                ],
                max_tokens=4,
            )
            assert seen.choices[0].message.content

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


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.mark.skipif(not smollm2_installed(), reason=f"needs SmolLM2: {SMOLLM2_INSTALL}")
def test_tool_calls_logprobs_and_json_output_come_back_from_the_upstream_through_the_seal(tmp_path: Path) -> None:
    weights = smollm2_model_path()
    with llama_server(weights, chat_format="chatml-function-calling") as (url, _):
        engine = {
            "kind": "openai_upstream",
            "model": SMOLLM2_MODEL,
            "upstream_url": url,
            "model_hash": SMOLLM2_SHA256,
            "embeddings": False,
        }
        net = start_network(tmp_path, workers=1, model_path=weights, engine=engine)
        try:
            oai = openai.OpenAI(base_url=net.base_url, api_key="unused", max_retries=0, timeout=120)
            ask = [{"role": "user", "content": "What is the weather in Paris?"}]
            named = {"type": "function", "function": {"name": "get_weather"}}

            reply = oai.chat.completions.create(
                model=SMOLLM2_MODEL, messages=ask, tools=[WEATHER], tool_choice=named, max_tokens=40, temperature=0
            )
            (call,) = reply.choices[0].message.tool_calls or []
            assert call.function.name == "get_weather" and call.id
            assert "city" in json.loads(call.function.arguments)
            assert reply.choices[0].finish_reason == "tool_calls"

            # Streamed, the pieces join as OpenAI's SDK joins them: the name and id come once.
            stream = oai.chat.completions.create(
                model=SMOLLM2_MODEL,
                messages=ask,
                tools=[WEATHER],
                tool_choice=named,
                max_tokens=40,
                temperature=0,
                stream=True,
            )
            pieces = [p for chunk in stream for choice in chunk.choices for p in choice.delta.tool_calls or []]
            assert "".join(p.function.name or "" for p in pieces if p.function) == "get_weather"
            assert "".join(p.function.arguments or "" for p in pieces if p.function) == call.function.arguments

            rated = oai.chat.completions.create(
                model=SMOLLM2_MODEL, messages=ask, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2
            )
            content = rated.choices[0].logprobs.content if rated.choices[0].logprobs else None
            assert content and "".join(t.token for t in content) == rated.choices[0].message.content
            assert all(t.top_logprobs for t in content)

            cat = [{"role": "user", "content": "Describe a cat as a JSON object with a name."}]
            shaped = oai.chat.completions.create(
                model=SMOLLM2_MODEL, messages=cat, max_tokens=60, temperature=0, response_format={"type": "json_object"}
            )
            assert isinstance(json.loads(shaped.choices[0].message.content or ""), dict)
        finally:
            net.stop()
