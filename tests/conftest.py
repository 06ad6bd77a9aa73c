"""Shared test settings: hypothesis profiles (no deadlines on a shared CPU)."""

import os

import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("thorough", deadline=None, max_examples=400, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_report_header(config) -> str:
    """The thread count the kernels ran with: fp32 results round differently with 1 and with 2."""
    return f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s) (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})"
