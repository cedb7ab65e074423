"""Paid local networks for tests: a devnet chain, registry prices and workers at a known coefficient, and
readers for the proxy's books and the chain's view of a channel."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
from pytoniq_core.boc.address import Address

from cocoon.chain import ClientChannel, ToncenterClient, WorkerChannel
from cocoon.chain.pricing import Prices
from cocoon.engines.config import DEFAULT_MODEL
from cocoon.local import PRICE_CACHED, PRICE_COMPLETION, PRICE_PROMPT, LocalNetwork, free_port
from tests.helpers.chain import TEST_API_KEY, TONCENTER_MODE
from tests.helpers.network import start_network

COEFFICIENT = 1500  # the workers charge 1.5x the registry price
OPERATOR_KEY = "test-operator-key"  # the proxy shows its books only to callers holding it
OPERATOR = {"authorization": f"Bearer {OPERATOR_KEY}"}
PRICES = Prices(PRICE_PROMPT, PRICE_CACHED, PRICE_COMPLETION)


def start_paid_network(
    home: Path,
    workers: int = 2,
    proxy_options: dict[str, Any] | None = None,
    engine: dict[str, Any] | None = None,
    client_options: dict[str, Any] | None = None,
    proxy_port: int | None = None,
    **worker_options: Any,
) -> LocalNetwork:
    """A network that bills in TON on its own devnet (synthetic workers, ``engine`` adding to their engine table,
    ``client_options`` to the sidecar's settings); it settles only when a test calls ``settle``."""
    return start_network(
        home,
        devnet_port=free_port(),
        devnet_options=TONCENTER_MODE,
        workers=workers,
        money=True,
        engine={"kind": "synthetic", **(engine or {})},
        # Settle only when told to, so the tests see the books before and after.
        proxy_options={
            "settle_min_amount": 10**18,
            "settle_max_age": 10**6,
            "operator_key": OPERATOR_KEY,
            **(proxy_options or {}),
        },
        worker_options={"price_coefficient": COEFFICIENT, **worker_options},
        client_options=client_options or {},
        proxy_port=proxy_port,
    )


def oai(net: LocalNetwork) -> openai.OpenAI:
    """An OpenAI client on ``net``'s sidecar that never retries (a retry would hide a refusal)."""
    return openai.OpenAI(base_url=net.base_url, api_key="unused", max_retries=0, timeout=30)


def books(net: LocalNetwork) -> dict[str, Any]:
    """The proxy's ``GET /v1/books``."""
    return books_at(net.proxy_url, timeout=10)


def books_at(url: str, timeout: float = 30) -> dict[str, Any]:
    """``GET /v1/books`` of the proxy (or replica) at ``url``, as its operator."""
    response = httpx.get(f"{url}/v1/books", headers=OPERATOR, timeout=timeout)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def settle(net: LocalNetwork) -> dict[str, Any]:
    """Settle now (``POST /v1/settle``) and return the report."""
    return settle_at(net.proxy_url, timeout=120)


def settle_at(url: str, timeout: float = 300) -> dict[str, Any]:
    """Settle now at the proxy (or replica) at ``url``, as its operator, and return the report."""
    response = httpx.post(f"{url}/v1/settle", headers=OPERATOR, timeout=timeout)
    assert response.status_code == 200, response.text
    report: dict[str, Any] = response.json()
    return report


def on_chain(net: LocalNetwork, channel: str, kind: type[ClientChannel] | type[WorkerChannel]) -> tuple[int, int]:
    """``(deposit, claimed)`` of a channel, read from the chain."""

    async def read() -> tuple[int, int]:
        assert net.chain is not None
        async with ToncenterClient(net.chain.url, TEST_API_KEY) as chain:
            state = await kind(chain, Address(channel)).get_channel()
            return state.deposit, state.claimed

    return asyncio.run(read())


def mixed_requests(net: LocalNetwork, count: int) -> list[int]:
    """Chat, streamed chat, completions and embeddings, concurrently; returns each response's total_cost."""
    client = oai(net)

    def one(i: int) -> int:
        if i % 4 == 0:
            reply = client.chat.completions.create(
                model=DEFAULT_MODEL, messages=[{"role": "user", "content": f"Say {i}"}], max_tokens=3 + i % 7
            )
            return int(reply.usage.model_extra["total_cost"])  # type: ignore[union-attr]
        if i % 4 == 1:
            stream = client.chat.completions.create(
                model=DEFAULT_MODEL,
                messages=[{"role": "user", "content": "Count " * i}],
                max_tokens=5,
                stream=True,
                stream_options={"include_usage": True},
            )
            usage = next(chunk.usage for chunk in stream if chunk.usage is not None)
            return int(usage.model_extra["total_cost"])  # type: ignore[union-attr]
        if i % 4 == 2:
            done = client.completions.create(model=DEFAULT_MODEL, prompt=f"Once {i}", max_tokens=4)
            return int(done.usage.model_extra["total_cost"])  # type: ignore[union-attr]
        body = {"model": DEFAULT_MODEL, "input": [f"text {i}", "more text"]}
        return int(httpx.post(f"{net.base_url}/embeddings", json=body, timeout=30).json()["usage"]["total_cost"])

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, range(count)))
