"""Real networks on loopback: proxy, workers and client sidecar started as processes by ``LocalNetwork``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from cocoon.local import LocalNetwork
from tests.helpers.network import start_network


@pytest.fixture(scope="session")
def network(tmp_path_factory: pytest.TempPathFactory, bundled_model_path: Path) -> Iterator[LocalNetwork]:
    """One shared network of two llama.cpp workers; the proxy records every byte it sees."""
    home = tmp_path_factory.mktemp("net")
    net = start_network(home, workers=2, model_path=bundled_model_path, capture_wire=home / "proxy-wire.bin")
    yield net
    net.stop()


@pytest.fixture
def oai(network: LocalNetwork) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=network.base_url, api_key="unused", max_retries=0, timeout=60)
    yield client
    client.close()
