"""Benchmark scripts are files beside each other, not a package: import one by its name."""

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    # The scripts import each other (scaling imports step_time) and their helpers (common,
    # planted) by plain name from their folder: one module object per script, as when run.
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


@pytest.fixture(scope="session")
def load_benchmark():
    """``load_benchmark("step_time")`` -> the module of ``benchmarks/step_time.py``."""
    return _load
