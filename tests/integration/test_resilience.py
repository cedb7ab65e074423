"""Workers fail, freeze, vanish and come back; apps see complete answers anyway."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from cocoon.crypto import SigningKey
from cocoon.engines.config import DEFAULT_MODEL
from cocoon.local import LocalNetwork
from tests.helpers.network import directory, start_network, wait_for, worker_process

PROMPT = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]


@pytest.fixture
def fresh(tmp_path: Path, bundled_model_path: Path) -> Iterator[LocalNetwork]:
    net = start_network(tmp_path, workers=2, model_path=bundled_model_path)
    yield net
    for child in net.children:  # a test may leave a worker stopped
        if child.process.poll() is None:
            os.kill(child.process.pid, signal.SIGCONT)
    net.stop()


def _client(net: LocalNetwork) -> openai.OpenAI:
    return openai.OpenAI(base_url=net.base_url, api_key="unused", max_retries=0, timeout=60)


def test_requests_fail_over_when_a_worker_freezes_before_its_first_byte(fresh: LocalNetwork) -> None:
    frozen = fresh.child("worker-1").process
    os.kill(frozen.pid, signal.SIGSTOP)
    frozen_at = time.monotonic()
    oai = _client(fresh)

    def ask(i: int) -> str:
        reply = oai.chat.completions.create(
            model=DEFAULT_MODEL, messages=[{"role": "user", "content": f"Count to {i}."}], max_tokens=6
        )
        return reply.choices[0].message.content or ""

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, range(4)))
    assert all(answers)
    # The frozen worker leaves the pool (missed heartbeats) within the proxy's 2 s timeout (+ a sweep and a poll),
    # whether or not a request was routed to it.
    left = max(0.05, frozen_at + 2.6 - time.monotonic())
    wait_for(lambda: len(directory(fresh)) == 1, left, "the frozen worker to leave the pool")


def test_stream_resumes_on_another_worker_when_its_worker_is_killed(fresh: LocalNetwork) -> None:
    oai = _client(fresh)
    stream = oai.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=PROMPT,
        max_tokens=120,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = []
    killed = None
    for chunk in stream:
        chunks.append(chunk)
        if killed is None and len(chunks) == 5:
            busy = [w for w in directory(fresh) if w["inflight"]]
            assert len(busy) == 1
            killed = str(busy[0]["worker_id"])
            worker_process(fresh, killed).kill()
    assert killed is not None
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage
    assert usage is not None
    workers = (usage.model_extra or {})["workers"]
    # The survivor signed for its own tokens only; the killed worker never signed, so it is not paid.
    assert workers == [w["worker_id"] for w in directory(fresh)]
    assert killed not in workers
    assert usage.completion_tokens == 120  # together they wrote exactly what was asked for
    assert len(text) > 100


def test_workers_come_back_after_the_proxy_restarts(fresh: LocalNetwork) -> None:
    proxy = fresh.child("proxy")
    proxy.process.terminate()
    proxy.process.wait(10)
    fresh.children.remove(proxy)
    fresh._spawn("proxy", "proxy.toml")
    wait_for(lambda: _safe_len(fresh) == 2, 30, "both workers to re-register")
    reply = _client(fresh).chat.completions.create(model=DEFAULT_MODEL, messages=PROMPT, max_tokens=4)
    assert reply.choices[0].message.content


def _safe_len(net: LocalNetwork) -> int:
    try:
        return len(directory(net))
    except httpx.HTTPError:
        return 0


def test_client_hanging_up_cancels_the_job_on_the_worker(fresh: LocalNetwork) -> None:
    body = {"model": DEFAULT_MODEL, "messages": PROMPT, "max_tokens": 400, "stream": True}
    with httpx.stream("POST", f"{fresh.base_url}/chat/completions", json=body, timeout=30) as response:
        lines = response.iter_lines()
        for _ in range(6):
            next(lines)
        assert any(w["inflight"] for w in directory(fresh))
    # 400 tokens take ~7 s at 60 tok/s; the slot frees far sooner because the job was cancelled.
    wait_for(
        lambda: all(w["inflight"] == 0 and w["free_slots"] == w["slots"] for w in directory(fresh)),
        3,
        "the cancelled job to free its slot",
    )


def test_a_worker_attested_by_an_unknown_authority_is_refused(fresh: LocalNetwork) -> None:
    rogue = fresh.add_worker(3, authority=SigningKey.generate())
    log = fresh.home / "logs" / "proxy.log"
    wait_for(lambda: b"worker refused" in log.read_bytes(), 30, "the proxy to refuse the rogue worker")
    assert len(directory(fresh)) == 2
    assert rogue.process.poll() is None  # it keeps retrying with backoff, but never gets in
