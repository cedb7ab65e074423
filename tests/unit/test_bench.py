"""``bench/`` holds together: every script starts (its imports resolve and its options parse: a bench broken by a
rename elsewhere shows here, not when someone needs its figures), and the one quantile all of them report with
reads the measured values as documented."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if p.name != "quantiles.py")


def quantiles() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_quantiles", BENCH / "quantiles.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_bench_script_starts_and_explains_its_options(script: str) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


def test_the_quantile_is_a_measured_value_by_the_nearest_rank() -> None:
    quantile = quantiles().quantile
    values = [5.0, 1.0, 4.0, 2.0, 3.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    assert quantile(values, 0.5) == 6.0  # the 6th of 10: half the values lie below it
    assert quantile(values, 0.99) == 10.0
    assert quantile(values, 0.0) == 1.0 and quantile(values, 1.0) == 10.0
    assert quantile(values, 0.1) == 2.0
    assert quantile([0.0123], 0.5, scale=1000) == pytest.approx(12.3)  # seconds read as milliseconds
    assert quantile(iter(values), 0.5) == 6.0  # any iterable, read once


def test_no_values_have_no_quantile_and_a_bad_q_is_refused() -> None:
    quantile = quantiles().quantile
    assert math.isnan(quantile([], 0.5))
    with pytest.raises(ValueError, match="between 0 and 1"):
        quantile([1.0], 99)
