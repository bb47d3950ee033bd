"""SO(3) grids: covering radius, size versus AITom's naive angle grid; uniformity of random rotations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from aitom.errors import InputError
from aitom.geometry import (
    quaternion_to_matrix,
    random_rotations,
    rotation_angle_between,
    so3_covering_radius_deg,
    so3_grid,
    so3_grid_size,
)


def naive_grid_size(step_deg: float) -> int:
    """AITom's (phi, theta, psi) box grid: 360/step values per angle."""
    return round(360 / step_deg) ** 3


@pytest.mark.parametrize("step_deg", [30.0, 15.0, pytest.param(10.0, marks=pytest.mark.slow)])
def test_grid_covering_radius_within_step(step_deg):
    grid = so3_grid(step_deg, dtype=torch.float64)
    covering = so3_covering_radius_deg(grid, n_probe=20000, generator=torch.Generator().manual_seed(0))
    assert grid.shape == (so3_grid_size(step_deg), 3, 3)
    assert covering <= step_deg
    # Not wastefully dense either: the covering radius is close to the requested step ...
    assert covering > 0.8 * step_deg
    # ... and the grid is several times smaller than AITom's naive grid (1728 rotations at 30°).
    assert grid.shape[0] < naive_grid_size(step_deg) / 3


def test_grid_size_table():
    sizes = {step: so3_grid_size(step) for step in (30.0, 20.0, 15.0, 10.0, 7.5)}
    assert sizes == {30.0: 486, 20.0: 1560, 15.0: 3621, 10.0: 12454, 7.5: 28968}
    steps = [90.0, 45.0, 30.0, 20.0, 10.0, 5.0]
    assert all(so3_grid_size(a) <= so3_grid_size(b) for a, b in itertools.pairwise(steps))


def test_grid_rotations_are_valid_and_distinct(device):
    grid = so3_grid(30.0, device=device, dtype=torch.float64)
    assert grid.device.type == device.type and grid.dtype == torch.float64
    identity = torch.eye(3, dtype=torch.float64, device=device).expand_as(grid)
    torch.testing.assert_close(grid @ grid.transpose(-1, -2), identity, atol=1e-12, rtol=0)
    distances = rotation_angle_between(grid[:, None], grid[None, :])
    distances.fill_diagonal_(math.inf)
    assert distances.min() > math.radians(5.0)


@pytest.mark.parametrize("step_deg", [0.0, -5.0, 181.0, math.nan])
def test_bad_step_raises(step_deg):
    with pytest.raises(InputError, match="angular step"):
        so3_grid(step_deg)
    with pytest.raises(InputError):
        so3_grid_size(step_deg)


def test_covering_radius_estimator_on_known_sets():
    generator = torch.Generator().manual_seed(5)
    identity = torch.eye(3, dtype=torch.float64)[None]
    assert so3_covering_radius_deg(identity, n_probe=5000, generator=generator) > 179.0
    # Identity and the half turns about x, y, z: the farthest rotations are (1, 1, 1, 1)/2, at 120°.
    klein = quaternion_to_matrix(torch.eye(4, dtype=torch.float64))
    assert abs(so3_covering_radius_deg(klein, n_probe=5000, generator=generator) - 120.0) < 0.5


def test_random_rotations_are_uniform(device):
    generator = torch.Generator().manual_seed(6)
    rotations = random_rotations(20000, generator=generator, dtype=torch.float64, device=device)
    assert rotations.shape == (20000, 3, 3) and rotations.device.type == device.type
    # Haar measure: every matrix entry has mean 0 and variance 1/3 (standard error 0.004 here).
    assert rotations.mean(dim=0).abs().max() < 0.02
    assert (rotations.var(dim=0) - 1 / 3).abs().max() < 0.02
    # The rotation angle has density (1 − cos θ)/π on [0, π], i.e. CDF (θ − sin θ)/π.
    identity = torch.eye(3, dtype=torch.float64, device=device)
    angles = rotation_angle_between(identity, rotations).cpu().numpy()
    result = stats.kstest(angles, lambda theta: (theta - np.sin(theta)) / math.pi)
    assert result.pvalue > 0.01


def test_random_rotations_reproducible():
    first = random_rotations(5, generator=torch.Generator().manual_seed(7))
    second = random_rotations(5, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    assert first.dtype == torch.float32
