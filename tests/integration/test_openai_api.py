"""The sidecar speaks the OpenAI API: the official ``openai`` client gets real answers from the real model.

The sidecar's error shapes that need no model are specified in-process, in ``tests/unit/client/test_gateway.py``.
"""

from __future__ import annotations

import base64
import struct

import httpx
import openai
import pytest

from cocoon.engines.config import DEFAULT_MODEL
from cocoon.local import LocalNetwork

PROMPT = [{"role": "user", "content": "Name three colours."}]


def test_chat_completion_answers_with_usage_and_a_verified_receipt(oai: openai.OpenAI) -> None:
    reply = oai.chat.completions.create(model=DEFAULT_MODEL, messages=PROMPT, max_tokens=12, temperature=0)
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None
    assert reply.usage.prompt_tokens > 5
    assert 0 < reply.usage.completion_tokens <= 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    extra = reply.usage.model_extra or {}
    assert extra["receipt_ids"][0].startswith("rcpt-")


def test_chat_stream_delivers_deltas_then_usage(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=PROMPT,
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    assert text
    assert finishes == ["length"] or finishes == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 16


def test_stream_and_whole_answers_agree_under_greedy_decoding(oai: openai.OpenAI) -> None:
    whole = oai.chat.completions.create(model=DEFAULT_MODEL, messages=PROMPT, max_tokens=10, temperature=0)
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in oai.chat.completions.create(
            model=DEFAULT_MODEL, messages=PROMPT, max_tokens=10, temperature=0, stream=True
        )
        if c.choices
    )
    assert whole.choices[0].message.content == streamed


def test_seeded_sampling_repeats_exactly(oai: openai.OpenAI) -> None:
    args = {"model": DEFAULT_MODEL, "messages": PROMPT, "max_tokens": 10, "temperature": 0.9, "seed": 7}
    first = oai.chat.completions.create(**args).choices[0].message.content  # type: ignore[call-overload]
    second = oai.chat.completions.create(**args).choices[0].message.content  # type: ignore[call-overload]
    assert first == second


def test_completion_honours_max_tokens_and_stop(oai: openai.OpenAI) -> None:
    limited = oai.completions.create(model=DEFAULT_MODEL, prompt="One, two, three, four,", max_tokens=5, temperature=0)
    assert limited.choices[0].finish_reason == "length"
    assert limited.usage is not None and limited.usage.completion_tokens == 5
    stopped = oai.completions.create(
        model=DEFAULT_MODEL, prompt="One, two, three, four,", max_tokens=30, temperature=0, stop=[","]
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert "," not in stopped.choices[0].text


def test_completion_streams(oai: openai.OpenAI) -> None:
    parts = [
        c.choices[0].text
        for c in oai.completions.create(
            model=DEFAULT_MODEL, prompt="The capital of France is", max_tokens=8, temperature=0, stream=True
        )
        if c.choices
    ]
    assert "".join(parts).strip()


def test_models_lists_the_bundled_model(oai: openai.OpenAI) -> None:
    models = {m.id: m for m in oai.models.list()}
    assert DEFAULT_MODEL in models
    assert (models[DEFAULT_MODEL].model_extra or {})["workers"] == 2
    assert oai.models.retrieve(DEFAULT_MODEL).id == DEFAULT_MODEL


def test_embeddings_come_back_in_float_and_base64(oai: openai.OpenAI, network: LocalNetwork) -> None:
    # The openai client asks for base64 by default and decodes it.
    batch = oai.embeddings.create(model=DEFAULT_MODEL, input=["the sea", "a cat"])
    assert [d.index for d in batch.data] == [0, 1]
    dim = len(batch.data[0].embedding)
    assert dim > 100 and len(batch.data[1].embedding) == dim
    assert batch.usage.prompt_tokens > 0
    result = oai.embeddings.create(model=DEFAULT_MODEL, input="the sea")
    raw = httpx.post(
        f"{network.base_url}/embeddings",
        json={"model": DEFAULT_MODEL, "input": "the sea", "encoding_format": "float"},
        timeout=60,
    ).json()
    vector = raw["data"][0]["embedding"]
    assert vector == pytest.approx(result.data[0].embedding, abs=1e-5)
    b64 = httpx.post(
        f"{network.base_url}/embeddings",
        json={"model": DEFAULT_MODEL, "input": "the sea", "encoding_format": "base64"},
        timeout=60,
    ).json()["data"][0]["embedding"]
    decoded = struct.unpack(f"<{dim}f", base64.b64decode(b64))
    assert list(decoded) == pytest.approx(vector, abs=1e-6)


def test_prompt_beyond_the_context_window_is_a_400(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai.completions.create(model=DEFAULT_MODEL, prompt="hello " * 5000, max_tokens=8)
    assert isinstance(info.value.body, dict)
    assert info.value.body["code"] == "context_length_exceeded"


def test_penalties_and_logit_bias_are_sealed_to_the_worker_and_answered(oai: openai.OpenAI) -> None:
    """The worker validates and applies them (their effect on the text: tests/unit/engines/test_llamacpp.py)."""
    answer = oai.completions.create(
        model=DEFAULT_MODEL,
        prompt="One, two, three, four,",
        max_tokens=4,
        temperature=0,
        frequency_penalty=2.0,
        presence_penalty=-0.5,
        logit_bias={"0": -100, "106": 1.5},
    )
    assert answer.choices[0].text
    assert answer.usage is not None and 0 < answer.usage.completion_tokens <= 4
