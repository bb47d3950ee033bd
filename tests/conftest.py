"""Shared fixtures: devices as test parameters (CPU always, CUDA when present), per-dtype tolerances."""

from __future__ import annotations

import os

os.environ.setdefault("WANDB_MODE", "offline")
# idle OpenMP threads sleep instead of spinning: pytest-xdist workers share the cores
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10}


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(0)
