"""Work nobody wants is stopped: an app that hangs up, or a request past its timeout before the first byte, is
cancelled on its worker at once, and only the tokens produced before the cancel are billed (with a receipt)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from cocoon.chain.pricing import cost_of
from cocoon.engines.config import DEFAULT_MODEL
from cocoon.local import LocalNetwork
from tests.helpers.money import COEFFICIENT, PRICES, books, start_paid_network
from tests.helpers.network import directory, wait_for

TOKENS_PER_S = 20  # max_tokens=400 would hold the worker's only slot for 20 s
MAX_TOKENS = 400


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    network = start_paid_network(
        tmp_path_factory.mktemp("cancel"), workers=1, engine={"synthetic_tokens_per_s": TOKENS_PER_S}, slots=1
    )
    yield network
    network.stop()


def chat(max_tokens: int, **extra: object) -> dict[str, object]:
    return {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "Tell me a long story"}]} | {
        "max_tokens": max_tokens,
        **extra,
    }


def worker_idle(net: LocalNetwork) -> bool:
    (worker,) = directory(net)
    return worker["free_slots"] == 1 and worker["queue_depth"] == 0


def charged(net: LocalNetwork) -> int:
    clients = books(net)["clients"]
    return sum(int(c["charged"]) for c in clients)


def hang_up_after(net: LocalNetwork, seconds: float, body: dict[str, object]) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{net.base_url}/chat/completions", json=body, timeout=httpx.Timeout(seconds, connect=5))


def test_an_app_that_hangs_up_on_a_whole_answer_stops_its_job_and_pays_only_the_tokens_made(
    net: LocalNetwork,
) -> None:
    before = charged(net)
    hang_up_after(net, 0.5, chat(MAX_TOKENS))
    hung_up = time.monotonic()
    wait_for(lambda: worker_idle(net), 3, "the worker to stop the job nobody waits for")
    assert time.monotonic() - hung_up < 2.0  # a heartbeat (0.5 s) after it stopped, not 20 s of tokens
    wait_for(lambda: charged(net) > before, 5, "the cancelled job's receipt to be booked")
    whole = cost_of(1, 0, MAX_TOKENS, PRICES, COEFFICIENT).total
    assert 0 < charged(net) - before < whole  # the prefill and a few tokens, not max_tokens

    # The next request runs at once: nothing is left running to max_tokens on the worker.
    started = time.monotonic()
    reply = httpx.post(f"{net.base_url}/chat/completions", json=chat(3), timeout=30)
    assert reply.status_code == 200, reply.text
    assert time.monotonic() - started < 3.0


def test_a_request_past_its_timeout_before_the_first_byte_is_cancelled_on_the_worker(net: LocalNetwork) -> None:
    # The worker's only slot is taken by a long streamed answer, so the next request waits in its queue.
    with httpx.stream(
        "POST", f"{net.base_url}/chat/completions", json=chat(MAX_TOKENS, stream=True), timeout=30
    ) as busy:
        assert busy.status_code == 200
        next(busy.iter_raw())
        reply = httpx.post(f"{net.base_url}/chat/completions", json=chat(MAX_TOKENS, timeout=1.0), timeout=30)
        assert reply.status_code == 504, reply.text  # the SDK's timeout, before any byte of an answer
        wait_for(lambda: directory(net)[0]["queue_depth"] == 0, 2, "the timed-out job to leave the worker's queue")
    # The streaming app hung up too: the worker is free within a heartbeat, not after 20 s of either job.
    wait_for(lambda: worker_idle(net), 3, "the worker to stop both jobs")
