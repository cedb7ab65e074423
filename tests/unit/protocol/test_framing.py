"""Framing: frames survive any chunking of the byte stream; other protocol versions are named."""

from __future__ import annotations

import msgpack
import pytest

from cocoon.errors import BadRequest, UnsupportedVersion
from cocoon.protocol import WORKER_TO_PROXY, FrameReader, Heartbeat, frame, pack, unpack


def test_frames_are_recovered_whatever_the_chunking() -> None:
    payloads = [b"a", b"", b"x" * 70000, b"hello"]
    stream = b"".join(frame(p) for p in payloads)
    for size in (1, 3, 4096, len(stream)):
        reader = FrameReader()
        got = [p for i in range(0, len(stream), size) for p in reader.feed(stream[i : i + size])]
        assert got == payloads
        assert reader.pending == 0


def test_messages_round_trip() -> None:
    beat = Heartbeat(free_slots=1, queue_depth=2, active_jobs=1, tokens_per_s=60.0)
    assert unpack(pack(beat), WORKER_TO_PROXY) == beat


def test_another_protocol_version_gets_a_clear_error() -> None:
    data = msgpack.packb({"t": "heartbeat", "v": 2})
    with pytest.raises(UnsupportedVersion, match="v2"):
        unpack(data, WORKER_TO_PROXY)


def test_garbage_is_a_bad_request() -> None:
    with pytest.raises(BadRequest):
        unpack(b"\xc1\xc1", WORKER_TO_PROXY)
    with pytest.raises(BadRequest, match="heartbeat"):
        unpack(msgpack.packb({"t": "heartbeat", "free_slots": "many"}), WORKER_TO_PROXY)
