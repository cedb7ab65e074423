"""Chain clients for tests that answer as toncenter does without a network."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from cocoon.chain import ToncenterClient, Wallet
from cocoon.chain.devnet import DevnetClient, DevnetOptions, DevnetProcess

# The chain tests meet the devnet as roles meet toncenter on a real network: reads cached for 1 s, a message
# landing 1 s after sendBoc, 1 request/s without an API key and 10 a second with one.
TONCENTER_MODE = DevnetOptions(toncenter=True)
TEST_API_KEY = "tests"  # the key tests read the devnet with (any key is one to the devnet)


def mock_toncenter(url: str, handle: Callable[[httpx.Request], httpx.Response]) -> ToncenterClient:
    """A ``ToncenterClient`` of ``url`` whose requests ``handle`` answers; keyed, so not held to toncenter's
    keyless 1 request/s, and retrying at once instead of backing off."""
    return ToncenterClient(
        url, api_key="test-key", rps=10_000, retry_backoff=0.001, transport=httpx.MockTransport(handle)
    )


@dataclass
class DevnetChain:
    """A devnet process in real-toncenter mode and the two clients tests drive it with."""

    devnet: DevnetClient
    toncenter: ToncenterClient
    process: DevnetProcess

    async def funded_wallet(self, amount: int, **options: Any) -> Wallet:
        wallet = Wallet(Wallet.generate().seed, **options)
        await self.devnet.fund(wallet.address, amount)
        return wallet


@contextlib.asynccontextmanager
async def devnet_chain(folder: Path, options: DevnetOptions = TONCENTER_MODE) -> AsyncIterator[DevnetChain]:
    """A devnet on a free port with its state and log in ``folder``, stopped on exit."""
    process = DevnetProcess(0, state_file=folder / "devnet.json", log_file=folder / "devnet.log", options=options)
    await process.start()
    try:
        async with DevnetClient(process.base_url) as devnet, ToncenterClient(process.base_url, TEST_API_KEY) as chain:
            yield DevnetChain(devnet, chain, process)
    finally:
        await process.stop()
