"""A client timing another client's prompt through a worker's prompt cache, mounted on the shared network of two
real llama.cpp workers.

The attacker is an ordinary client: it guesses a prompt another client sent and asks the same worker for it
(``provider.only``), reading ``cached_tokens`` (and its time to first token) for a hit. Before the cache was
scoped per client, a worker reused any earlier request's prompt KV for it: the probe came back with the
victim's prompt cached (``cached_tokens`` ≥ 128, the prefill skipped).
"""

from __future__ import annotations

import pytest

from cocoon.attestation import AttestationPolicy
from cocoon.client import CocoonClient, Completion
from cocoon.engines.batching import PREFILL_CHUNK
from cocoon.engines.config import DEFAULT_MODEL
from cocoon.local import LocalNetwork
from cocoon.protocol import RoutingPrefs
from cocoon.protocol.payload import SealedMessage, SealedParams

pytestmark = pytest.mark.asyncio(loop_scope="session")

# ~300 tokens: the worker caches whole 128-token chunks of a prompt
SECRET = "Memo for the board, strictly confidential: the merger with the northern shipyard closes in May. " * 14


async def ask(client: CocoonClient, routing: RoutingPrefs | None = None) -> Completion:
    final = None
    async for event in client.stream(
        "chat",
        DEFAULT_MODEL,
        messages=[SealedMessage(role="user", content=SECRET)],
        params=SealedParams(max_tokens=2, temperature=0),
        routing=routing,
    ):
        if isinstance(event, Completion):
            final = event
    assert final is not None
    return final


async def test_a_client_cannot_find_another_clients_prompt_in_the_worker_cache(network: LocalNetwork) -> None:
    policy = AttestationPolicy(**network.policy)
    async with CocoonClient(network.proxy_url, policy) as victim, CocoonClient(network.proxy_url, policy) as attacker:
        first = await ask(victim)
        worker = RoutingPrefs(only=[first.receipts[0].worker_id])
        again = await ask(victim, worker)
        probe = await ask(attacker, worker)
        own = await ask(attacker, worker)

    # The cache is there for the client that filled it (and for the attacker's own prompts)...
    assert again.usage.cached_tokens >= PREFILL_CHUNK
    assert own.usage.cached_tokens >= PREFILL_CHUNK
    # ...and not for anyone else: the probe's prompt was evaluated in full.
    assert probe.receipts[0].worker_id == first.receipts[0].worker_id
    assert probe.usage.cached_tokens == 0
