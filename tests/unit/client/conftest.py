"""Every sidecar in these tests keeps its API keys under the test's own folder, never in the user's home."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def own_key_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COCOON_CLIENT_DATA_DIR", str(tmp_path / "sidecar"))
