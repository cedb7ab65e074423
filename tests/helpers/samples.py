"""Where the recorded attestation evidence lives: the project's shared folder, never copied into the repository.

``COCOON_ATTESTATION_SAMPLES`` names the folder; by default it is ``../shared/attestation-samples`` from the
repository root. Tests that need it skip, saying why, when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def samples_dir() -> Path:
    """The attestation-samples folder; skips the calling test when it does not exist."""
    folder = Path(os.environ.get("COCOON_ATTESTATION_SAMPLES") or REPO_ROOT / ".." / "shared" / "attestation-samples")
    if not folder.is_dir():
        pytest.skip(
            f"recorded attestation evidence not found at {folder}; set COCOON_ATTESTATION_SAMPLES to the "
            "attestation-samples folder (the project's shared/attestation-samples)"
        )
    return folder
