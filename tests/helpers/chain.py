"""Chain clients for tests that answer as toncenter does without a network."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from cocoon.chain import ToncenterClient


def mock_toncenter(url: str, handle: Callable[[httpx.Request], httpx.Response]) -> ToncenterClient:
    """A ``ToncenterClient`` of ``url`` whose requests ``handle`` answers; keyed, so not held to toncenter's
    keyless 1 request/s, and retrying at once instead of backing off."""
    return ToncenterClient(
        url, api_key="test-key", rps=10_000, retry_backoff=0.001, transport=httpx.MockTransport(handle)
    )
