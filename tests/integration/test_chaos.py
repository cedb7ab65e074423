"""Chaos on a real network: while eight apps stream, one worker is killed and another frozen; nobody notices."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from cocoon.engines.config import DEFAULT_MODEL
from cocoon.local import LocalNetwork
from tests.helpers.network import directory, start_network, wait_for, worker_process

CLIENTS = 8
MAX_TOKENS = 40
TOPICS = ["a lighthouse", "the sea", "a fox", "a city at night", "rain", "a violin", "the moon", "a garden"]


@pytest.fixture
def three_workers(tmp_path: Path, bundled_model_path: Path) -> Iterator[LocalNetwork]:
    net = start_network(tmp_path, workers=3, model_path=bundled_model_path)
    yield net
    for child in net.children:  # wake the frozen worker, so it stops cleanly
        if child.process.poll() is None:
            os.kill(child.process.pid, signal.SIGCONT)
    net.stop()


def test_every_stream_completes_when_one_worker_is_killed_and_another_frozen(three_workers: LocalNetwork) -> None:
    net = three_workers
    oai = openai.OpenAI(base_url=net.base_url, api_key="unused", max_retries=0, timeout=120)
    streaming = threading.Semaphore(0)

    def ask(topic: str) -> list[openai.types.chat.ChatCompletionChunk]:
        stream = oai.chat.completions.create(
            model=DEFAULT_MODEL,
            messages=[{"role": "user", "content": f"Tell me a long story about {topic}."}],
            max_tokens=MAX_TOKENS,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = []
        for chunk in stream:
            chunks.append(chunk)
            if len(chunks) == 3:
                streaming.release()
        return chunks

    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(ask, topic) for topic in TOPICS]
        # Mid-run: once streams are flowing, kill one busy worker outright and freeze another one.
        for _ in range(2):
            assert streaming.acquire(timeout=120), "no stream started"
        busy = sorted(directory(net), key=lambda w: -int(str(w["inflight"])))
        assert all(int(str(w["inflight"])) > 0 for w in busy[:2])
        victim, frozen = worker_process(net, busy[0]["worker_id"]).pid, worker_process(net, busy[1]["worker_id"]).pid
        os.kill(victim, signal.SIGKILL)
        os.kill(frozen, signal.SIGSTOP)
        frozen_at = time.monotonic()
        wait_for(lambda: len(directory(net)) == 1, 5, "the killed and the frozen worker to leave the pool")
        left_after = time.monotonic() - frozen_at
        results = [f.result(timeout=180) for f in futures]

    assert left_after < 2.6  # 2 s without heartbeats (+ one sweep, + the poll)
    for chunks in results:
        assert len({c.id for c in chunks}) == 1  # one unbroken stream, one id
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert text.strip()
        assert finishes in (["length"], ["stop"])
        usage = chunks[-1].usage
        assert usage is not None and 0 < usage.completion_tokens <= MAX_TOKENS
        assert (usage.model_extra or {})["receipt_ids"]  # every answer ends with verified receipts
