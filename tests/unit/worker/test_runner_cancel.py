"""The runner stops a job at the proxy's cancel and signs a receipt for exactly what it produced before it."""

from __future__ import annotations

import asyncio

import msgpack

from cocoon.crypto import NodeKeys, ResponseDigest, receipt_signature_valid
from cocoon.engines import EngineSettings, SyntheticEngine
from cocoon.engines.synthetic import SYNTHETIC_MODEL_HASH
from cocoon.protocol import Chunk, Job, JobEnd, JobError, ResponseSealer, random_salt, seal_request
from cocoon.protocol.payload import ChunkPayload, RequestPayload, SealedMessage, SealedParams
from cocoon.worker.runner import JobRunner

MAX_TOKENS = 2_000


def sealed_job(keys: NodeKeys, salt: bytes, job_id: str = "job-1") -> tuple[Job, bytes]:
    payload = RequestPayload(
        kind="chat",
        model="m",
        salt=salt,
        messages=[SealedMessage(role="user", content="tell me everything")],
        params=SealedParams(max_tokens=MAX_TOKENS),
    )
    plaintext = msgpack.packb(payload.model_dump(mode="python"), use_bin_type=True)
    sealed, content_key = seal_request("req-" + job_id, plaintext, {keys.node_id: keys.sealing.public})
    key = sealed.keys[0]
    job = Job(
        job_id=job_id,
        request_id=sealed.request_id,
        model="m",
        kind="chat",
        max_tokens=MAX_TOKENS,
        enc=key.enc,
        wrapped_key=key.wrapped,
        ciphertext=sealed.ciphertext,
    )
    return job, content_key


def slow_runner(keys: NodeKeys, slots: int = 1) -> JobRunner:
    engine = SyntheticEngine(EngineSettings(kind="synthetic", model="m", synthetic_tokens_per_s=200))
    return JobRunner(keys, {"m": engine}, slots=slots, max_queue=8)


async def test_a_cancelled_job_stops_and_signs_a_receipt_for_the_tokens_its_chunks_carried() -> None:
    keys, salt = NodeKeys.generate(), random_salt()
    runner = slow_runner(keys)
    job, content_key = sealed_job(keys, salt)
    frames: list[Chunk | JobEnd | JobError] = []
    five_chunks = asyncio.Event()

    async def send(frame: Chunk | JobEnd | JobError) -> None:
        frames.append(frame)
        if len(frames) == 5:
            five_chunks.set()

    task = asyncio.create_task(runner.run(job, send))
    await asyncio.wait_for(five_chunks.wait(), 5)
    runner.cancelled[job.job_id] = "closed"  # what the link does on a Cancel frame
    task.cancel()
    await asyncio.wait_for(task, 2)

    chunks = [f for f in frames if isinstance(f, Chunk)]
    end = frames[-1]
    assert isinstance(end, JobEnd), frames[-1]
    receipt = end.receipt
    assert receipt_signature_valid(keys.signing.public, receipt, end.signature)
    assert receipt.finish_reason == "cancelled"
    assert receipt.model_hash == SYNTHETIC_MODEL_HASH
    opener = ResponseSealer(content_key, job.request_id, keys.node_id, chunks[0].key_nonce)
    digest, carried = ResponseDigest(salt), 0
    for chunk in chunks:
        plain = opener.open(chunk.seq, chunk.data)
        digest.update(plain)
        carried += ChunkPayload.model_validate(msgpack.unpackb(plain, raw=False)).tokens
    assert 0 < receipt.completion_tokens == carried < MAX_TOKENS
    assert receipt.response_sha256 == digest.hexdigest()
    assert receipt.prompt_tokens == 3  # the synthetic engine counts words
    assert runner.board.running == 0 and runner.cancelled == {}


async def test_a_job_cancelled_while_it_waits_for_a_slot_ends_with_an_error_and_no_receipt() -> None:
    keys = NodeKeys.generate()
    runner = slow_runner(keys, slots=1)
    first, _ = sealed_job(keys, random_salt(), "job-1")
    queued, _ = sealed_job(keys, random_salt(), "job-2")
    frames: list[Chunk | JobEnd | JobError] = []
    streaming = asyncio.Event()

    async def send(frame: Chunk | JobEnd | JobError) -> None:
        frames.append(frame)
        streaming.set()

    running = asyncio.create_task(runner.run(first, send))
    await asyncio.wait_for(streaming.wait(), 5)  # the first job holds the only slot
    waiting = asyncio.create_task(runner.run(queued, send))
    await asyncio.sleep(0)
    assert runner.board.waiting == 1
    runner.cancelled[queued.job_id] = "closed"
    waiting.cancel()
    await asyncio.wait_for(waiting, 2)
    running.cancel()  # a dropped link: no receipt for anyone
    await asyncio.gather(running, return_exceptions=True)

    errors = [f for f in frames if isinstance(f, JobError)]
    assert [(e.job_id, e.error.code) for e in errors] == [("job-2", "cancelled")]
    assert not [f for f in frames if isinstance(f, JobEnd)]
