"""Wedge-compensated averaging and iterative reference-free averaging on small synthetic subtomograms."""

from __future__ import annotations

import pytest
import torch

from aitom.fourier import apply_missing_wedge, fourier_shell_correlation, fsc_resolutions, missing_wedge_mask
from aitom.geometry import random_rotations, rotation_angle_between
from aitom.ops.alignment import align_subtomograms
from aitom.ops.averaging import (
    align_to_reference_frame,
    annealed_initial_reference,
    half_set_averages,
    reference_free_average,
    wedge_compensated_average,
)
from aitom.ops.handedness import superpose_map
from tests.align_fixtures import blob_volume, posed_subtomograms


def test_align_to_reference_frame_inverts_pose(device):
    reference = blob_volume(24).to(device)
    volumes, rotations, shifts = posed_subtomograms(reference.cpu(), 2, seed=1, tilt_range_deg=None)
    back = align_to_reference_frame(volumes.to(device), rotations.to(device), shifts.to(device))
    correlation = torch.corrcoef(torch.stack((back[0].flatten(), reference.flatten())))[0, 1]
    assert float(correlation) > 0.99


def test_wedge_compensation_fills_the_wedge():
    reference = blob_volume(24)
    mask = missing_wedge_mask((24,) * 3)
    volumes, rotations, shifts = posed_subtomograms(reference, 24, seed=2)
    compensated, coverage = wedge_compensated_average(volumes, rotations, shifts, mask)
    plain = align_to_reference_frame(volumes, rotations, shifts).mean(0)
    # With true poses and many orientations, compensation recovers the full-spectrum map far better than
    # the plain mean, which is damped where few subtomograms observed.
    error_compensated = (compensated - reference).norm() / reference.norm()
    error_plain = (plain - reference).norm() / reference.norm()
    assert float(error_compensated) < 0.6 * float(error_plain)
    assert float(coverage.max()) <= 1.0 + 1e-6
    # A single subtomogram's "average" is its wedge-filtered self in the reference frame.
    single, _ = wedge_compensated_average(volumes[:1], torch.eye(3)[None], torch.zeros(1, 3), mask)
    assert torch.allclose(single, apply_missing_wedge(volumes[0]), atol=1e-4)


def test_half_set_averages_are_the_even_and_odd_averages_and_agree_for_noise_free_data():
    reference = blob_volume(24)
    mask = missing_wedge_mask((24,) * 3)
    volumes, rotations, shifts = posed_subtomograms(reference, 8, seed=3)
    halves = half_set_averages(volumes, rotations, shifts, mask)
    assert halves.shape == (2, 24, 24, 24)
    for parity in (0, 1):
        alone, _ = wedge_compensated_average(
            volumes[parity::2], rotations[parity::2], shifts[parity::2], mask
        )
        torch.testing.assert_close(halves[parity], alone)
    frequency, fsc = fourier_shell_correlation(halves[0], halves[1])
    assert frequency.shape == fsc.shape == (13,)
    assert float(fsc[1:6].min()) > 0.95
    assert not half_set_averages(volumes[:1], rotations[:1], shifts[:1], mask).any()  # no half sets


def _consistent_fraction(
    true_rotations: torch.Tensor, found_rotations: torch.Tensor, tolerance_deg: float
) -> float:
    """Largest fraction of subtomograms whose found poses agree with the truth up to one global rotation."""
    relative = true_rotations.transpose(-1, -2) @ found_rotations
    pairwise = torch.rad2deg(rotation_angle_between(relative[:, None], relative[None, :]))
    return float((pairwise < tolerance_deg).float().mean(1).max())


def _check_average(result, volumes, rotations, shifts, reference, mask, factor: float) -> None:
    # The average is the truth up to a global pose: align it back and compare with the true-pose average.
    found = align_subtomograms(reference, result.average, angular_step_deg=15.0, max_shift_voxels=8)
    back = align_to_reference_frame(result.average[None], found.rotation, found.shift_xyz)[0]
    truth_pose_average, _ = wedge_compensated_average(volumes, rotations, shifts, mask)
    achieved = fsc_resolutions(back, reference, voxel_size_a=10.0)["fsc_0.5_a"]
    ideal = fsc_resolutions(truth_pose_average, reference, voxel_size_a=10.0)["fsc_0.5_a"]
    assert achieved < factor * ideal, (achieved, ideal)


def test_reference_free_average_converges_from_random_start():
    reference = blob_volume(20)
    mask = missing_wedge_mask((20,) * 3)
    volumes, rotations, shifts = posed_subtomograms(reference, 10, seed=4, max_shift=1.5, snr=4.0)
    result = reference_free_average(
        volumes,
        mask,
        iterations=4,
        voxel_size_a=10.0,
        angular_step_deg=25.0,
        max_shift_voxels=3,
        refine_steps=8,
        generator=torch.Generator().manual_seed(99),
    )
    assert result.history[-1]["mean_score"] > result.history[0]["mean_score"]
    assert len(result.history[-1]["fsc"]) == 11
    _check_average(result, volumes, rotations, shifts, reference, mask, factor=1.3)
    # A few of 10 toy particles may lock onto a pseudo-symmetric pose; most must agree.
    assert _consistent_fraction(rotations, result.alignment.rotation, 15.0) >= 0.6


def test_reference_free_average_keeps_the_best_scoring_start():
    """``starts=3`` runs three starts drawn one after another from the generator and returns the one with the
    best final mean score: the same as three single starts from the same generator, best of them kept."""
    reference = blob_volume(16)
    mask = missing_wedge_mask((16,) * 3)
    volumes, _, _ = posed_subtomograms(reference, 8, seed=3, max_shift=1.0, snr=0.3)
    options = {"iterations": 2, "angular_step_deg": 30.0, "max_shift_voxels": 2, "refine_steps": 4}
    best = reference_free_average(
        volumes, mask, starts=3, generator=torch.Generator().manual_seed(5), **options
    )
    generator = torch.Generator().manual_seed(5)
    singles = [reference_free_average(volumes, mask, generator=generator, **options) for _ in range(3)]
    scores = [single.start_scores[0] for single in singles]
    assert best.start_scores == pytest.approx(scores, abs=1e-6)
    assert len(set(round(score, 6) for score in scores)) == 3  # the starts differ
    kept = max(range(3), key=scores.__getitem__)
    assert best.kept_start == kept
    torch.testing.assert_close(best.average, singles[kept].average)
    torch.testing.assert_close(best.alignment.rotation, singles[kept].alignment.rotation)
    with pytest.raises(ValueError, match="starts"):
        reference_free_average(volumes, mask, starts=0)
    with pytest.raises(ValueError, match="initial_reference"):
        reference_free_average(volumes, mask, starts=2, initial_reference=reference)


@pytest.mark.slow
def test_reference_free_average_larger_noisy_set():
    reference = blob_volume(24)
    mask = missing_wedge_mask((24,) * 3)
    volumes, rotations, shifts = posed_subtomograms(reference, 24, seed=4, max_shift=2.0, snr=0.5)
    result = reference_free_average(
        volumes,
        mask,
        iterations=5,
        voxel_size_a=10.0,
        angular_step_deg=20.0,
        max_shift_voxels=5,
        refine_steps=15,
        generator=torch.Generator().manual_seed(99),
    )
    _check_average(result, volumes, rotations, shifts, reference, mask, factor=1.3)
    assert _consistent_fraction(rotations, result.alignment.rotation, 15.0) >= 0.75


def test_annealed_start_recovers_poses_of_noisy_particles():
    """From the annealed initial model the refinement brings the poses to one global rotation of the truth."""
    reference = blob_volume(20)
    mask = missing_wedge_mask((20,) * 3)
    volumes, rotations, shifts = posed_subtomograms(reference, 24, seed=6, max_shift=1.0, snr=0.3)
    start, coverage = annealed_initial_reference(
        volumes,
        mask,
        iterations=12,
        angular_step_deg=20.0,
        max_shift_voxels=2.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert start.shape == (20, 20, 20) and float(coverage.max()) <= 1.0 + 1e-6
    # The annealed start is already the object (up to a pose); the random-rotation average is a blob.
    blob, _ = wedge_compensated_average(
        volumes, random_rotations(24, torch.Generator().manual_seed(0)), torch.zeros(24, 3), mask
    )
    annealed_fit = superpose_map(start, reference, voxel_size_a=10.0, lowpass_a=20.0)[1].score
    blob_fit = superpose_map(blob, reference, voxel_size_a=10.0, lowpass_a=20.0)[1].score
    assert float(annealed_fit) > float(blob_fit) + 0.1, (annealed_fit, blob_fit)
    result = reference_free_average(
        volumes,
        mask,
        iterations=3,
        voxel_size_a=10.0,
        angular_step_deg=20.0,
        max_shift_voxels=2,
        refine_steps=8,
        initial_reference=start,
    )
    assert _consistent_fraction(rotations, result.alignment.rotation, 15.0) >= 0.8
    _check_average(result, volumes, rotations, shifts, reference, mask, factor=1.3)
    with pytest.raises(ValueError, match="at least 2"):
        annealed_initial_reference(volumes, mask, iterations=1)
    with pytest.raises(ValueError, match="annealing_iterations"):
        reference_free_average(volumes, mask, annealing_iterations=-1)
