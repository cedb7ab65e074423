"""Bytes on the wire: msgpack encoding of messages, and length-prefixed frames for HTTP streams.

Decoding checks the protocol version first, so a peer speaking another version gets an error that says so
instead of a validation dump.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any, TypeVar

import msgpack
from pydantic import BaseModel, TypeAdapter, ValidationError

from cocoon.errors import BadRequest, UnsupportedVersion, first_problem
from cocoon.protocol.messages import PROTOCOL_VERSION, ProxyToWorker, StreamFrame, WorkerToProxy

M = TypeVar("M", bound=BaseModel)

_LEN = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024

# What one worker may stream for one job, by its max_tokens: a chunk per token at most plus its finish (and one
# spare), and bytes for a generous chunk each (padding buckets included). Embeddings come as one chunk of vectors.
CHUNK_BYTES_PER_TOKEN = 2048
BASE_JOB_BYTES = 64 * 1024


def job_caps(kind: str, max_tokens: int) -> tuple[int, int]:
    """``(chunks, bytes)`` of sealed chunk data one worker may stream for one job of ``kind`` and ``max_tokens``.

    The proxy cuts off a worker past either; the client refuses a stream past them.
    """
    if kind == "embedding":
        return 2, MAX_FRAME
    if kind == "score":  # one chunk of at most SCORE_MAX_TOKENS logprobs, and the finish
        return 2, BASE_JOB_BYTES
    return max_tokens + 2, BASE_JOB_BYTES + CHUNK_BYTES_PER_TOKEN * max_tokens


WORKER_TO_PROXY: TypeAdapter[Any] = TypeAdapter(WorkerToProxy)
PROXY_TO_WORKER: TypeAdapter[Any] = TypeAdapter(ProxyToWorker)
STREAM_FRAME: TypeAdapter[Any] = TypeAdapter(StreamFrame)


def pack(message: BaseModel) -> bytes:
    return msgpack.packb(message.model_dump(mode="python"), use_bin_type=True)


def unpack_raw(data: bytes) -> dict[str, Any]:
    try:
        raw = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise BadRequest(f"malformed msgpack message: {exc}") from exc
    if not isinstance(raw, dict):
        raise BadRequest("a cocoon message must be a msgpack map")
    version = raw.get("v", PROTOCOL_VERSION)
    if version != PROTOCOL_VERSION:
        raise UnsupportedVersion(
            f"peer speaks cocoon protocol v{version}, this node speaks v{PROTOCOL_VERSION}; upgrade the older side"
        )
    return raw


def unpack(data: bytes, adapter: TypeAdapter[Any]) -> Any:
    """Decode one message of the union ``adapter`` describes; ``BadRequest`` on anything malformed."""
    raw = unpack_raw(data)
    try:
        return adapter.validate_python(raw)
    except ValidationError as exc:
        raise BadRequest(f"invalid {raw.get('t', 'untagged')!r} message: {exc.errors()[0]['msg']}") from exc


def unpack_as(data: bytes, model: type[M]) -> M:
    raw = unpack_raw(data)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        where, message = first_problem(exc)
        raise BadRequest(f"invalid {model.__name__}: {where}: {message}") from exc


def frame(payload: bytes) -> bytes:
    """One length-prefixed frame: 4-byte big-endian length, then the payload."""
    return _LEN.pack(len(payload)) + payload


class FrameReader:
    """Incremental parser of length-prefixed frames from a byte stream of arbitrary chunking."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._buf += data
        while len(self._buf) >= 4:
            (size,) = _LEN.unpack_from(self._buf)
            if size > MAX_FRAME:
                raise BadRequest(f"frame of {size} bytes exceeds the {MAX_FRAME} byte limit")
            if len(self._buf) < 4 + size:
                return
            payload = bytes(self._buf[4 : 4 + size])
            del self._buf[: 4 + size]
            yield payload

    @property
    def pending(self) -> int:
        return len(self._buf)
