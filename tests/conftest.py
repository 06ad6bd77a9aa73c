"""Shared test settings: hypothesis profiles (no deadlines on a shared CPU); ``t0_recipes`` importable."""

import os
import sys
from pathlib import Path

import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("thorough", deadline=None, max_examples=400, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # t0_recipes/ sits at the repository root, outside the installed package
    sys.path.insert(0, str(REPO))


def pytest_report_header(config) -> str:
    """The thread count the kernels ran with: fp32 results round differently with 1 and with 2."""
    return f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s) (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})"
