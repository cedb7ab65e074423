"""Where the recorded real attestation evidence is (``../shared/attestation-samples``, never copied here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def samples_dir() -> Path:
    """The samples folder: ``$COCOON_ATTESTATION_SAMPLES`` or ``../shared/attestation-samples`` beside the
    repository; the test is skipped, saying so, when it is absent."""
    folder = Path(os.environ.get("COCOON_ATTESTATION_SAMPLES") or REPO.parent / "shared" / "attestation-samples")
    if not folder.is_dir():
        pytest.skip(f"no recorded attestation evidence at {folder} (set COCOON_ATTESTATION_SAMPLES)")
    return folder
