"""Pose normalisation: centre of mass against scipy, principal axes against numpy's eigh, pose invariance."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch

from aitom.geometry import random_rotations, rotate_volume
from aitom.ops.pose_normalisation import pose_normalise

SIZE = 32


def blob(size: int = SIZE, centre_xyz: tuple[float, float, float] | None = None) -> torch.Tensor:
    """``(S, S, S)`` ellipsoid (semi-axes 9, 5, 3 voxels along x, y, z) with a bump off both long axes.

    The bump at (+5, +3, 0) from the centre gives positive third moments along x and y, so the pose is unique.
    """
    axis = torch.arange(size, dtype=torch.float64)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    cx, cy, cz = centre_xyz if centre_xyz is not None else (size // 2,) * 3
    ellipsoid = torch.sigmoid(2 * (1 - ((x - cx) / 9) ** 2 - ((y - cy) / 5) ** 2 - ((z - cz) / 3) ** 2) * 4)
    bump = torch.exp(-((x - cx - 5) ** 2 + (y - cy - 3) ** 2 + (z - cz) ** 2) / (2 * 1.5**2))
    return (ellipsoid + bump).float()


def weights_by_hand(volume: np.ndarray) -> np.ndarray:
    return np.maximum(volume - volume.mean(), 0)


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / (a.norm() * b.norm()))


def test_centre_of_mass_matches_scipy(device):
    generator = torch.Generator().manual_seed(1)
    volumes = torch.stack([blob(centre_xyz=(13.3, 17.8, 15.1)), torch.rand((SIZE,) * 3, generator=generator)])
    _, _, shift_xyz = pose_normalise(volumes.to(device))
    for volume, shift in zip(volumes.numpy(), shift_xyz.cpu().numpy()):
        expected_zyx = np.asarray(scipy.ndimage.center_of_mass(weights_by_hand(volume.astype(np.float64))))
        np.testing.assert_allclose(SIZE // 2 - shift, expected_zyx[::-1], atol=1e-4)


def test_principal_axes_match_numpy_eigh(device):
    generator = torch.Generator().manual_seed(2)
    volume = rotate_volume(
        blob(), random_rotations(1, generator=generator)[0], torch.tensor([1.5, -2.0, 0.7])
    )
    _, rotation, _ = pose_normalise(volume[None].to(device))
    rotation = rotation[0].cpu().double().numpy()
    weights = weights_by_hand(volume.double().numpy())
    z, y, x = np.meshgrid(*(np.arange(SIZE),) * 3, indexing="ij")
    positions = np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1).astype(np.float64)
    w = weights.ravel() / weights.sum()
    offsets = positions - w @ positions
    inertia = (w[:, None] * offsets).T @ offsets
    eigenvalues, eigenvectors = np.linalg.eigh(inertia)
    assert eigenvalues[2] > 1.5 * eigenvalues[1] > 1.5 * 1.5 * eigenvalues[0]  # well separated axes
    for row, column in zip(range(3), (2, 1, 0)):  # largest variance on x
        assert abs(rotation[row] @ eigenvectors[:, column]) == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-5)
    assert np.linalg.det(rotation) == pytest.approx(1.0, abs=1e-5)
    third_moments = ((offsets @ rotation.T) ** 3 * w[:, None]).sum(axis=0)
    assert third_moments[0] > 0 and third_moments[1] > 0


def test_rotated_and_shifted_copies_normalise_to_one_volume(device):
    generator = torch.Generator().manual_seed(3)
    reference = blob()
    rotations = random_rotations(4, generator=generator)
    shifts = (torch.rand((4, 3), generator=generator) - 0.5) * 6
    copies = rotate_volume(reference, rotations, shifts)
    volumes = torch.cat([reference[None], copies])[:, None].to(device)  # (5, 1, S, S, S)
    normalised, rotation, _ = pose_normalise(volumes)
    assert normalised.shape == volumes.shape and rotation.shape == (5, 3, 3)
    for copy in normalised[1:, 0]:
        assert correlation(copy.cpu(), normalised[0, 0].cpu()) > 0.95
    # the reference's long axis is x already (tilted ~5° by the bump): its rotation is diagonal up to signs
    assert (rotation[0].diagonal().abs() > 0.99).all()


def test_noisy_copies_get_the_pose_of_the_clean_ones_with_low_pass_and_threshold():
    generator = torch.Generator().manual_seed(4)
    reference = blob()
    copies = torch.cat([reference[None], rotate_volume(reference, random_rotations(3, generator=generator))])
    noisy = copies + 0.3 * torch.randn(copies.shape, generator=generator)
    _, rotation, shift_xyz = pose_normalise(noisy, sigma_voxels=1.5, threshold_std=0.5)
    clean_normalised, _, _ = pose_normalise(reference[None], sigma_voxels=1.5, threshold_std=0.5)
    posed = rotate_volume(copies, rotation, (rotation @ shift_xyz[..., None])[..., 0])
    for volume in posed:
        assert correlation(volume, clean_normalised[0]) > 0.95


def test_empty_volume_is_left_alone():
    volumes = torch.zeros(2, 8, 8, 8)
    volumes[1, 2, 3, 4] = 1.0
    normalised, rotation, shift_xyz = pose_normalise(volumes)
    assert torch.equal(normalised[0], volumes[0]) and torch.equal(rotation[0], torch.eye(3))
    assert torch.equal(shift_xyz[0], torch.zeros(3))
    torch.testing.assert_close(shift_xyz[1], torch.tensor([0.0, 1.0, 2.0]))
    assert normalised[1, 4, 4, 4] == pytest.approx(1.0)


def test_gradients_flow_to_the_volume():
    volume = blob(16).double()[None].requires_grad_()
    normalised, _, _ = pose_normalise(volume)
    normalised.square().sum().backward()
    assert torch.isfinite(volume.grad).all() and volume.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "shape, message",
    [((8, 8, 8), "real"), ((2, 3, 8, 8, 8), "one channel")],
)
def test_bad_shapes_are_refused(shape, message):
    with pytest.raises(ValueError, match=message):
        pose_normalise(torch.zeros(shape))


def test_negative_sigma_is_refused():
    with pytest.raises(ValueError, match="sigma_voxels"):
        pose_normalise(torch.zeros(1, 8, 8, 8), sigma_voxels=-1.0)
