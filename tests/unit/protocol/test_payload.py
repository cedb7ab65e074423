"""Padded chunk plaintexts: sizes fall on bucket multiples, and the padding reads back as nothing."""

from __future__ import annotations

import msgpack
import pytest

from cocoon.protocol.payload import ChunkPayload


@pytest.mark.parametrize("bucket", [32, 128, 1024])
def test_every_chunk_pads_to_its_bucket_whatever_its_text(bucket: int) -> None:
    sizes = {len(ChunkPayload(text="x" * n, tokens=1).encode(bucket)) for n in range(0, 3 * bucket)}
    assert all(size % bucket == 0 for size in sizes)
    assert len(ChunkPayload(text="a", tokens=1).encode(bucket)) == len(ChunkPayload(text="abcdefgh").encode(bucket))


def test_a_padded_chunk_reads_back_as_the_same_chunk() -> None:
    chunk = ChunkPayload(text="Rome", tokens=2, finish_reason="stop")
    fields = msgpack.unpackb(chunk.encode(128), raw=False)
    assert ChunkPayload.model_validate(fields).model_copy(update={"pad": b""}) == chunk
    assert chunk.encode(0) == msgpack.packb(chunk.model_dump(exclude_defaults=True), use_bin_type=True)
