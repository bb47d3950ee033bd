"""Random rotated views of subtomograms: checked against scipy's affine resampling and the wedge mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from aitom.errors import InputError
from aitom.fourier.wedge import missing_wedge_mask
from aitom.geometry.euler import random_rotations
from aitom.ops.augmentation import random_rotated_views


def blob_volumes(count: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """(count, 1, S, S, S) smooth asymmetric blobs (three Gaussians each) on a constant background."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"), axis=-1).astype(np.float64)
    volumes = np.full((count, 1, size, size, size), 0.3)
    for volume in volumes:
        for _ in range(3):
            centre = size / 2 + rng.uniform(-3, 3, 3)
            volume[0] += np.exp(-((grid - centre) ** 2).sum(-1) / (2 * 1.5**2))
    return torch.from_numpy(volumes).float()


def scipy_view(volume: np.ndarray, rotation_xyz: np.ndarray, shift_xyz: np.ndarray) -> np.ndarray:
    """The view by hand: mean removed, scipy trilinear rotation about the centre + shift, wedge, mean back."""
    mean = volume.mean()
    centre = np.array(volume.shape) // 2  # the FFT / RELION box centre
    reverse = np.eye(3)[::-1]  # (x, y, z) <-> (z, y, x)
    rotation_zyx = reverse @ rotation_xyz @ reverse
    # output(o) = input(R^T (o - c - t) + c) in (z, y, x) order
    matrix = rotation_zyx.T
    offset = centre - matrix @ (centre + shift_xyz[::-1])
    moved = ndimage.affine_transform(volume - mean, matrix, offset=offset, order=1, mode="grid-constant")
    mask = missing_wedge_mask(volume.shape, tilt_min_deg=-60.0, tilt_max_deg=60.0, rfft=True, centered=False)
    spectrum = np.fft.rfftn(moved) * mask.double().numpy()
    return np.fft.irfftn(spectrum, s=volume.shape, axes=(0, 1, 2)) + mean


def test_views_match_scipy_rotation_shift_and_wedge():
    volumes = blob_volumes(3)
    views = random_rotated_views(volumes, -60.0, 60.0, 2.0, generator=torch.Generator().manual_seed(4))
    generator = torch.Generator().manual_seed(4)  # the same draws: the rotations, then the shifts
    rotations = random_rotations(3, generator).double().numpy()
    shifts = ((torch.rand(3, 3, generator=generator) * 2 - 1) * 2.0).double().numpy()
    for index in range(3):
        expected = scipy_view(volumes[index, 0].double().numpy(), rotations[index], shifts[index])
        np.testing.assert_allclose(views[index, 0].numpy(), expected, atol=2e-4)
    assert not torch.allclose(views[0], views[1])


def test_views_have_no_power_in_the_missing_wedge():
    volumes = blob_volumes(4, seed=1)
    views = random_rotated_views(volumes, -45.0, 45.0, 1.0, generator=torch.Generator().manual_seed(0))
    inside = 1 - missing_wedge_mask(
        (16, 16, 16), tilt_min_deg=-45.0, tilt_max_deg=45.0, rfft=True, centered=False
    )
    power = torch.fft.rfftn(views[:, 0]).abs() ** 2
    assert float((power * inside).sum() / power.sum()) < 1e-10


def test_noise_is_added_in_units_of_each_items_standard_deviation():
    volumes = blob_volumes(2, seed=2)
    volumes[1] *= 10.0  # a brighter item gets ten times the noise
    clean = random_rotated_views(volumes, generator=torch.Generator().manual_seed(3))
    noisy = random_rotated_views(volumes, noise_std=0.5, generator=torch.Generator().manual_seed(3))
    added = (noisy - clean).flatten(1).std(dim=1)
    expected = 0.5 * clean.flatten(1).std(dim=1)
    torch.testing.assert_close(added, expected, rtol=0.05, atol=0)


@pytest.mark.parametrize(
    ("shape", "shift", "noise"),
    [((2, 16, 16, 16), 2.0, 0.0), ((2, 1, 16, 16, 16), -1.0, 0.0), ((1, 1, 8, 8, 8), 1, -0.1)],
)
def test_bad_arguments_are_refused(shape, shift, noise):
    with pytest.raises(InputError):
        random_rotated_views(torch.zeros(shape), max_shift_voxels=shift, noise_std=noise)
