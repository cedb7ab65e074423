"""A proxy reached over the network is reached over TLS: it serves HTTPS and WSS with its certificate, workers
and the sidecar verify it against the operator's CA (``tls_ca_file``), and readiness says when each role can
serve (the worker's on its ``status_port``). Real processes; the certificate is made here, self-signed for
127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from cocoon.engines.config import DEFAULT_MODEL
from cocoon.local import LocalNetwork
from cocoon.protocol.tls import trust_context
from tests.helpers.network import free_port, start_network
from tests.helpers.tls import self_signed


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory, bundled_model_path: Path) -> Iterator[LocalNetwork]:
    home = tmp_path_factory.mktemp("tls")
    engine = {"kind": "synthetic", "synthetic_tokens_per_s": 400}
    status = {"status_port": free_port()}
    net = start_network(
        home, workers=1, model_path=bundled_model_path, engine=engine, tls=self_signed(home), worker_options=status
    )
    yield net
    net.stop()


def test_workers_and_the_sidecar_reach_the_proxy_over_tls(network: LocalNetwork) -> None:
    assert network.proxy_url.startswith("https://")
    oai = openai.OpenAI(base_url=network.base_url, api_key="unused", max_retries=0, timeout=30)
    reply = oai.chat.completions.create(model=DEFAULT_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert reply.choices[0].message.content
    assert network.tls is not None
    ready = httpx.get(f"{network.proxy_url}/readyz", verify=trust_context(network.tls[0]), timeout=5)
    assert ready.status_code == 200 and ready.json()["workers"] == 1
    assert httpx.get(f"http://127.0.0.1:{network.client_port}/readyz", timeout=10).json()["ready"] is True


def test_the_proxy_speaks_no_plain_http_and_an_unknown_certificate_is_refused(network: LocalNetwork) -> None:
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{network.proxy_port}/healthz", timeout=5)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{network.proxy_url}/healthz", timeout=5)  # the system's roots alone do not know it


def test_a_worker_says_it_is_ready_once_a_proxy_accepted_it(network: LocalNetwork) -> None:
    port = network.worker_options["status_port"]
    assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()["ok"] is True
    ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
    assert ready.status_code == 200
    assert ready.json()["proxies"] == [f"wss://127.0.0.1:{network.proxy_port}/v1/worker/connect"]
