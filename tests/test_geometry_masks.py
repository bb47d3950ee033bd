"""Sphere masks and box coordinates against analytic volumes and profiles."""

from __future__ import annotations

import math

import pytest
import torch

from aitom.geometry import box_centre_xyz, soft_sphere_mask, sphere_mask, voxel_coordinates_xyz


@pytest.mark.parametrize("radius", [6.0, 10.0, 13.5])
def test_sphere_mask_volume(device, radius):
    mask = sphere_mask((32, 32, 32), radius, device=device)
    assert mask.device.type == device.type and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    analytic = 4 / 3 * math.pi * radius**3
    assert abs(mask.sum().item() - analytic) / analytic < 0.03


def test_sphere_mask_centre_and_convention(device):
    mask = sphere_mask((9, 10, 11), 0.5, device=device)
    # Only the centre voxel, index N // 2 on each axis, is within half a voxel.
    assert mask.sum() == 1 and mask[4, 5, 5] == 1
    moved = sphere_mask((9, 10, 11), 0.5, centre_xyz=torch.tensor([1.0, 2.0, 3.0]), device=device)
    assert moved[3, 2, 1] == 1 and moved.sum() == 1
    torch.testing.assert_close(box_centre_xyz((9, 10, 11)), torch.tensor([5.0, 5.0, 4.0]))
    coordinates = voxel_coordinates_xyz((9, 10, 11), device=device)
    assert coordinates.shape == (9, 10, 11, 3)
    torch.testing.assert_close(coordinates[0, 0, 0].cpu(), torch.tensor([-5.0, -5.0, -4.0]))


def test_soft_sphere_mask_profile(device):
    radius, edge = 8.0, 4.0
    mask = soft_sphere_mask((33, 33, 33), radius, edge, dtype=torch.float64, device=device)
    distance = voxel_coordinates_xyz((33, 33, 33), dtype=torch.float64, device=device).norm(dim=-1)
    expected = torch.where(
        distance <= radius,
        1.0,
        torch.where(
            distance >= radius + edge, 0.0, 0.5 + 0.5 * torch.cos(math.pi * (distance - radius) / edge)
        ),
    )
    torch.testing.assert_close(mask, expected, atol=1e-12, rtol=0)
    # Half-way down the edge (distance 10 along x) the mask is exactly 0.5.
    assert abs(mask[16, 16, 26].item() - 0.5) < 1e-12
    torch.testing.assert_close(
        soft_sphere_mask((16, 16, 16), 5.0, 0.0, device=device), sphere_mask((16, 16, 16), 5.0, device=device)
    )


def test_masks_bad_input():
    with pytest.raises(ValueError, match="radius_voxels"):
        sphere_mask((8, 8, 8), -1.0)
    with pytest.raises(ValueError, match="edge_width_voxels"):
        soft_sphere_mask((8, 8, 8), 3.0, -1.0)
    with pytest.raises(ValueError, match="shape"):
        sphere_mask((8, 8), 3.0)
