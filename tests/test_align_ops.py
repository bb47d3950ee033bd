"""Alignment ops: constrained correlation vs NumPy, FFT translation map, rotational search, refinement."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aitom.fourier import apply_missing_wedge, missing_wedge_mask
from aitom.geometry import fourier_shift, rotate_volume, rotation_about_axis, rotation_angle_between, so3_grid
from aitom.ops.alignment import (
    align_subtomograms,
    constrained_correlation,
    constrained_correlation_map,
    phase_rotational_search,
    refine_alignment,
    rotational_search,
    shift_lattice,
    translation_search,
)
from tests.align_fixtures import blob_volume, posed_subtomograms


def _numpy_constrained_cc(a: np.ndarray, b: np.ndarray, mask: np.ndarray, max_frequency: float) -> float:
    """Pearson correlation of the two volumes filtered by the centred mask inside the band (NumPy)."""
    axes = [np.fft.fftshift(np.fft.fftfreq(n)) for n in a.shape]
    kz, ky, kx = np.meshgrid(*axes, indexing="ij")
    radius = np.sqrt(kx**2 + ky**2 + kz**2)
    keep = np.fft.ifftshift(mask * (radius <= max_frequency) * (radius > 0))
    fa, fb = np.fft.fftn(a) * keep, np.fft.fftn(b) * keep
    return float(np.real(np.sum(fa * np.conj(fb))) / np.sqrt(np.sum(abs(fa) ** 2) * np.sum(abs(fb) ** 2)))


def test_constrained_correlation_matches_numpy(device):
    generator = torch.Generator().manual_seed(3)
    a, b = torch.randn(2, 12, 12, 12, generator=generator, dtype=torch.float64)
    mask_a = missing_wedge_mask((12,) * 3, tilt_min_deg=-50, tilt_max_deg=60, dtype=torch.float64)
    mask_b = missing_wedge_mask((12,) * 3, tilt_min_deg=-60, tilt_max_deg=45, dtype=torch.float64)
    score = constrained_correlation(
        a.to(device), b.to(device), mask_a.to(device), mask_b.to(device), max_frequency=0.4
    )
    expected = _numpy_constrained_cc(a.numpy(), b.numpy(), (mask_a * mask_b).numpy(), 0.4)
    assert score.device.type == device.type
    assert abs(float(score) - expected) < 1e-10


def test_constrained_correlation_ignores_missing_wedge_content():
    reference = blob_volume(16, dtype=torch.float64)
    mask = missing_wedge_mask((16,) * 3, dtype=torch.float64)
    # Anything added in the missing wedge of the subtomogram does not change the score.
    junk = torch.randn(16, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    junk_in_wedge = junk - torch.fft.ifftn(torch.fft.fftn(junk) * torch.fft.ifftshift(mask)).real
    clean = constrained_correlation(reference, reference, None, mask)
    spoiled = constrained_correlation(reference, reference + 5 * junk_in_wedge, None, mask)
    assert abs(float(clean) - 1.0) < 1e-12
    assert abs(float(spoiled) - 1.0) < 1e-10


def test_correlation_map_equals_shifted_correlation(device):
    generator = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 10, 10, 10, generator=generator, dtype=torch.float64, device="cpu").to(device)
    mask = missing_wedge_mask((10,) * 3, dtype=torch.float64, device=device)
    maps = constrained_correlation_map(a, b, mask, mask, max_frequency=0.45)
    for shift in [(0, 0, 0), (2, -3, 1), (-4, 4, -5)]:
        rolled = torch.roll(a, shifts=(shift[2], shift[1], shift[0]), dims=(-3, -2, -1))
        expected = constrained_correlation(rolled, b, mask, mask, max_frequency=0.45)
        assert abs(float(maps[shift[2] % 10, shift[1] % 10, shift[0] % 10]) - float(expected)) < 1e-10


def test_translation_search_finds_integer_shift(device):
    reference = blob_volume(24).to(device)
    rotation = rotation_about_axis(torch.tensor([1.0, 2.0, 3.0]), 0.7).to(device)
    shift = torch.tensor([2.0, -3.0, 1.0], device=device)
    subtomogram = fourier_shift(rotate_volume(reference, rotation), shift)
    found, score = translation_search(reference, subtomogram[None], rotation[None], max_shift_voxels=6)
    assert torch.equal(found[0].cpu(), shift.cpu())
    assert float(score[0]) > 0.99


def test_rotational_search_ranks_truth_first(device):
    reference = blob_volume(32).to(device)
    mask = missing_wedge_mask((32,) * 3, device=device)
    volumes, rotations, _ = posed_subtomograms(reference.cpu(), 3, seed=2)
    grid = torch.cat((so3_grid(30.0), rotations)).to(device)
    scores = rotational_search(reference, volumes.to(device), grid, None, mask)
    assert scores.shape == (3, grid.shape[0])
    best = grid[scores.argmax(dim=1)].cpu()
    assert torch.rad2deg(rotation_angle_between(best, rotations)).max() < 1e-3


def test_rotational_search_is_translation_invariant():
    reference = blob_volume(32)
    volumes, _, _ = posed_subtomograms(reference, 2, seed=5, max_shift=0.0)
    shifted = fourier_shift(volumes, torch.tensor([3.0, -2.0, 4.0]))
    grid = so3_grid(45.0)
    assert torch.allclose(
        rotational_search(reference, volumes, grid), rotational_search(reference, shifted, grid), atol=1e-4
    )


def test_shift_lattice_counts_integer_points_in_ball():
    shifts = shift_lattice(2.0)
    brute = [
        (x, y, z)
        for x in range(-2, 3)
        for y in range(-2, 3)
        for z in range(-2, 3)
        if x * x + y * y + z * z <= 4
    ]
    assert shifts.shape == (len(brute), 3) == (33, 3)
    assert torch.equal(shifts[0], torch.zeros(3))
    assert {tuple(int(v) for v in row) for row in shifts} == set(brute)
    assert shift_lattice(0.0).shape == (1, 3)
    with pytest.raises(ValueError):
        shift_lattice(-1.0)


def test_phase_search_equals_refinement_score_at_each_rotation_and_shift():
    """Every (rotation, shift) score is refine_alignment's constrained correlation at that pose (steps=0)."""
    generator = torch.Generator().manual_seed(0)
    reference = blob_volume(20, dtype=torch.float64)
    volumes = torch.randn(3, 20, 20, 20, generator=generator, dtype=torch.float64)
    mask = missing_wedge_mask((20,) * 3, dtype=torch.float64)
    rotations = so3_grid(60.0, dtype=torch.float64)[:6]
    shifts = shift_lattice(1.0, dtype=torch.float64)
    scores, shift_index = phase_rotational_search(
        reference, volumes, rotations, mask, mask, shifts_xyz=shifts, min_frequency=0.05, max_frequency=0.3
    )
    expected = torch.full((3, 6, shifts.shape[0]), -math.inf, dtype=torch.float64)
    for r in range(6):
        for t in range(shifts.shape[0]):
            expected[:, r, t] = refine_alignment(
                reference,
                volumes,
                rotations[r].expand(3, 3, 3),
                shifts[t].expand(3, 3),
                mask,
                mask,
                steps=0,
                min_frequency=0.05,
                max_frequency=0.3,
            ).score
    assert torch.allclose(scores, expected.amax(-1), atol=1e-10)
    assert torch.equal(shift_index, expected.argmax(-1))


def test_phase_search_finds_pose_of_noisy_centred_subtomograms(device):
    """At SNR 0.1 the phase search (integer shifts up to 2 voxels) ranks the true rotation first, with an
    integer shift less than one voxel from the true sub-voxel shift."""
    reference = blob_volume(32)
    mask = missing_wedge_mask((32,) * 3)
    volumes, rotations, shifts = posed_subtomograms(reference, 6, seed=3, max_shift=1.0, snr=0.1)
    grid = torch.cat((so3_grid(30.0), rotations))
    scores, shift_index = phase_rotational_search(
        reference.to(device),
        volumes.to(device),
        grid.to(device),
        None,
        mask.to(device),
        shifts_xyz=shift_lattice(2.0),
        min_frequency=0.05,
        max_frequency=0.3,
    )
    best = scores.argmax(dim=1).cpu()
    truth = torch.arange(grid.shape[0] - 6, grid.shape[0])
    assert torch.equal(best, truth)
    found_shift = shift_lattice(2.0)[shift_index.cpu()[torch.arange(6), best]]
    assert (found_shift - shifts).norm(dim=1).max() < 1.0


def test_refinement_converges_from_nearby_start(device):
    reference = blob_volume(24).to(device)
    mask = missing_wedge_mask((24,) * 3, device=device)
    volumes, rotations, shifts = posed_subtomograms(reference.cpu(), 2, seed=4)
    perturbation = rotation_about_axis(torch.tensor([[0.3, -1.0, 0.5], [1.0, 0.2, 0.1]]), math.radians(6.0))
    start_rotation = perturbation @ rotations
    start_shift = shifts + torch.tensor([0.8, -0.6, 0.5])
    result = refine_alignment(
        reference, volumes.to(device), start_rotation.to(device), start_shift.to(device), None, mask, steps=30
    )
    error_deg = torch.rad2deg(rotation_angle_between(result.rotation.cpu(), rotations))
    assert error_deg.max() < 1.0
    assert (result.shift_xyz.cpu() - shifts).norm(dim=1).max() < 0.2
    assert result.score.min() > 0.98


def test_align_recovers_random_poses_noise_free(device):
    reference = blob_volume(32).to(device)
    mask = missing_wedge_mask((32,) * 3, device=device)
    volumes, rotations, shifts = posed_subtomograms(reference.cpu(), 3, seed=7)
    result = align_subtomograms(
        reference, volumes.to(device), None, mask, angular_step_deg=20.0, max_shift_voxels=6, refine_steps=30
    )
    error_deg = torch.rad2deg(rotation_angle_between(result.rotation.cpu(), rotations))
    assert error_deg.max() <= 2.0, error_deg
    assert (result.shift_xyz.cpu() - shifts).norm(dim=1).max() <= 0.5
    assert result.angles_rad.shape == (3, 3)


def test_align_with_phase_search_recovers_poses():
    reference = blob_volume(32)
    mask = missing_wedge_mask((32,) * 3)
    volumes, rotations, shifts = posed_subtomograms(reference, 3, seed=8, max_shift=2.0)
    result = align_subtomograms(
        reference, volumes, None, mask, angular_step_deg=20.0, max_shift_voxels=3, rotation_search="phase"
    )
    error_deg = torch.rad2deg(rotation_angle_between(result.rotation, rotations))
    assert error_deg.max() <= 2.0, error_deg
    assert (result.shift_xyz - shifts).norm(dim=1).max() <= 0.5
    with pytest.raises(ValueError, match="max_shift_voxels"):
        align_subtomograms(reference, volumes, rotation_search="phase")
    with pytest.raises(ValueError, match="rotation_search"):
        align_subtomograms(reference, volumes, max_shift_voxels=2, rotation_search="phases")


def test_align_two_subtomograms_both_with_wedges():
    reference = blob_volume(24)
    mask = missing_wedge_mask((24,) * 3)
    first_rotation = rotation_about_axis(torch.tensor([0.0, 1.0, 0.0]), 1.0)
    a = apply_missing_wedge(rotate_volume(reference, first_rotation))
    volumes, rotations, shifts = posed_subtomograms(reference, 1, seed=11)
    result = align_subtomograms(a, volumes, mask, mask, angular_step_deg=20.0, max_shift_voxels=6)
    # b = R_b ref, a = R_a ref, so b = (R_b R_aᵀ) a.
    expected = rotations[0] @ first_rotation.T
    assert float(torch.rad2deg(rotation_angle_between(result.rotation[0], expected))) <= 2.0
    assert float((result.shift_xyz[0] - shifts[0]).norm()) <= 0.5


def test_bad_inputs_raise():
    reference = blob_volume(16)
    with pytest.raises(ValueError, match="differ in size"):
        constrained_correlation(reference, blob_volume(12))
    with pytest.raises(ValueError, match="mask"):
        constrained_correlation(reference, reference, torch.ones(12, 12, 12))
    with pytest.raises(ValueError, match="differ in size"):
        align_subtomograms(reference, blob_volume(12)[None])
    with pytest.raises(ValueError, match="min_frequency"):
        constrained_correlation(reference, reference, max_frequency=0.0)


def test_constrained_correlation_gradcheck():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, 6, 6, generator=generator, dtype=torch.float64)
    mask = missing_wedge_mask((6,) * 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: constrained_correlation(x, b, mask, mask), (a,))


def test_align_batched_pairs_with_their_own_masks():
    # Two independent pairs, each with its own reference and its own (asymmetric) wedges.
    references = torch.stack((blob_volume(24, "a"), blob_volume(24, "c")))
    wedges = [(-60.0, 60.0), (-45.0, 65.0)]
    masks = torch.stack(
        [missing_wedge_mask((24,) * 3, tilt_min_deg=low, tilt_max_deg=high) for low, high in wedges]
    )
    volumes, rotations, shifts = [], [], []
    for index, (low, high) in enumerate(wedges):
        volume, rotation, shift = posed_subtomograms(
            references[index], 1, seed=20 + index, tilt_range_deg=(low, high)
        )
        volumes.append(volume[0])
        rotations.append(rotation[0])
        shifts.append(shift[0])
    result = align_subtomograms(
        references, torch.stack(volumes), None, masks, angular_step_deg=20.0, max_shift_voxels=6
    )
    error_deg = torch.rad2deg(rotation_angle_between(result.rotation, torch.stack(rotations)))
    assert float(error_deg.max()) <= 2.0, error_deg
    assert float((result.shift_xyz - torch.stack(shifts)).norm(dim=1).max()) <= 0.5


def test_refinement_keeps_the_shift_inside_max_shift():
    """The true shift lies 2 voxels away; refined with max_shift_voxels 0.5, the shift stays on the 0.5 ball
    (the unconstrained refinement goes to the true shift)."""
    reference = blob_volume(24)
    volumes, rotations, _ = posed_subtomograms(reference, 1, seed=4)
    shift = torch.tensor([[1.2, -1.2, 1.0]])
    volumes = fourier_shift(rotate_volume(reference, rotations[0]), shift[0])[None]
    start = torch.zeros(1, 3)
    free = refine_alignment(reference, volumes, rotations, start, steps=40)
    bounded = refine_alignment(reference, volumes, rotations, start, steps=40, max_shift_voxels=0.5)
    assert (free.shift_xyz - shift).norm() < 0.2
    assert bounded.shift_xyz.norm() <= 0.5 + 1e-5
    assert bounded.score < free.score
