"""Peaks: peak_local_max against a brute-force NumPy reference of scikit-image's semantics; NMS; FAR."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from aitom.errors import InputError
from aitom.ops.peaks import (
    false_alarm_threshold,
    non_maximum_suppression,
    otsu_threshold,
    peak_local_max,
    robust_mean_std,
)


def reference_peak_local_max(volume: np.ndarray, min_distance: int, threshold: float, border: int) -> set:
    """scikit-image's definition, brute force: cube maximum, threshold, border, greedy Chebyshev spacing."""
    nz, ny, nx = volume.shape
    candidates = []
    for z, y, x in itertools.product(range(nz), range(ny), range(nx)):
        if min(z, y, x, nz - 1 - z, ny - 1 - y, nx - 1 - x) < border or volume[z, y, x] <= threshold:
            continue
        window = volume[
            max(0, z - min_distance) : z + min_distance + 1,
            max(0, y - min_distance) : y + min_distance + 1,
            max(0, x - min_distance) : x + min_distance + 1,
        ]
        if volume[z, y, x] == window.max():
            candidates.append((volume[z, y, x], (z, y, x)))
    candidates.sort(key=lambda item: -item[0])
    kept: list[tuple[int, int, int]] = []
    for _, point in candidates:
        if all(max(abs(a - b) for a, b in zip(point, other)) > min_distance for other in kept):
            kept.append(point)
    return set(kept)


@pytest.mark.parametrize(("min_distance", "border"), [(1, 0), (2, 2), (3, 1)])
def test_peak_local_max_matches_reference(device, min_distance, border):
    rng = np.random.default_rng(min_distance)
    volume = rng.normal(size=(14, 12, 16)).astype(np.float32)
    threshold = 0.5
    coordinates, values = peak_local_max(
        torch.from_numpy(volume).to(device),
        min_distance=min_distance,
        threshold_abs=threshold,
        exclude_border=border,
    )
    expected = reference_peak_local_max(volume, min_distance, threshold, border)
    assert {tuple(c) for c in coordinates.cpu().tolist()} == expected
    assert coordinates.device.type == device.type
    assert torch.all(values[:-1] >= values[1:])  # highest first
    np.testing.assert_array_equal(values.cpu().numpy(), volume[tuple(coordinates.cpu().numpy().T)])


def test_peak_local_max_plateau_num_peaks_and_doctest_case():
    volume = torch.zeros(9, 9, 9)
    volume[4, 4, 4:6] = 1.0  # a two-voxel plateau gives one peak
    volume[1, 1, 1] = 0.5
    coordinates, _ = peak_local_max(volume, min_distance=2, exclude_border=False)
    assert coordinates.tolist() == [[4, 4, 4], [1, 1, 1]]
    assert peak_local_max(volume, min_distance=2, exclude_border=False, num_peaks=1)[0].tolist() == [
        [4, 4, 4]
    ]
    assert peak_local_max(volume, min_distance=2)[0].tolist() == [[4, 4, 4]]  # border 2 drops (1, 1, 1)
    assert len(peak_local_max(volume, min_distance=2, threshold_rel=0.6, exclude_border=False)[0]) == 1


def test_peak_local_max_bad_input():
    with pytest.raises(InputError):
        peak_local_max(torch.zeros(4, 4, 4), min_distance=0)
    with pytest.raises(ValueError):
        peak_local_max(torch.zeros(4, 4))


def test_non_maximum_suppression_greedy():
    points = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 3.0], [0.0, 0.0, 5.0], [10.0, 0.0, 0.0]])
    scores = torch.tensor([1.0, 3.0, 2.0, 0.5])
    # 1 (best) suppresses 0 and 2 (distances 3 and 2 <= 3); 3 is far.
    assert non_maximum_suppression(points, scores, 3.0).tolist() == [1, 3]
    assert non_maximum_suppression(points, scores, 1.0).tolist() == [1, 2, 0, 3]


def test_false_alarm_threshold_on_gaussian_noise(device):
    generator = torch.Generator().manual_seed(1)
    noise = (2.0 + 3.0 * torch.randn(64, 64, 64, generator=generator)).to(device)
    mean, std = robust_mean_std(noise)
    assert abs(mean - 2.0) < 0.02 and abs(std - 3.0) < 0.02
    rate = 1e-3
    threshold = false_alarm_threshold(noise, rate)
    assert threshold == pytest.approx(2.0 + 3.0 * 3.0902, abs=0.1)  # Φ⁻¹(0.999) = 3.0902
    observed = float((noise > threshold).float().mean())
    assert observed == pytest.approx(rate, rel=0.2)
    # Pure noise: few local-maximum picks above a 1e-5 threshold (expected ≈ 2.6 voxels, fewer maxima).
    picks, _ = peak_local_max(noise, min_distance=2, threshold_abs=false_alarm_threshold(noise, 1e-5))
    assert len(picks) <= 10
    with pytest.raises(InputError):
        false_alarm_threshold(noise, 0.0)
    assert not math.isnan(threshold)


def test_non_maximum_suppression_per_point_radii():
    """With radii, points conflict within max(min_distance, r_i, r_j): brute-force greedy reference."""
    rng = np.random.default_rng(4)
    points = torch.from_numpy(rng.uniform(0, 40, size=(60, 3)))
    scores = torch.from_numpy(rng.normal(size=60))
    radii = torch.from_numpy(rng.choice([3.0, 8.0], size=60))
    kept_reference: list[int] = []
    for index in np.argsort(-scores.numpy(), kind="stable"):
        distances = [float((points[index] - points[other]).norm()) for other in kept_reference]
        reaches = [max(2.0, float(radii[index]), float(radii[other])) for other in kept_reference]
        if all(d > r for d, r in zip(distances, reaches)):
            kept_reference.append(int(index))
    assert non_maximum_suppression(points, scores, 2.0, radii=radii).tolist() == kept_reference
    # A large particle's pick suppresses a weaker small-template pick inside it, and the other way round.
    pair = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 6.0]])
    assert non_maximum_suppression(
        pair, torch.tensor([1.0, 2.0]), 1.0, radii=torch.tensor([8.0, 3.0])
    ).tolist() == [1]
    with pytest.raises(InputError):
        non_maximum_suppression(pair, torch.tensor([1.0, 2.0]), 1.0, radii=torch.tensor([-1.0, 3.0]))


def test_otsu_threshold_matches_brute_force():
    """Every split of the sorted values scored by w0 w1 (m0 - m1)^2 in plain NumPy: same split."""
    values = np.random.default_rng(0).gamma(2.0, size=97)
    ordered = np.sort(values)
    best, expected = -1.0, None
    for split in range(1, len(ordered)):
        lower, upper = ordered[:split], ordered[split:]
        w0, w1 = split / len(ordered), 1 - split / len(ordered)
        between = w0 * w1 * (lower.mean() - upper.mean()) ** 2
        if between > best:
            best, expected = between, (ordered[split - 1] + ordered[split]) / 2
    assert otsu_threshold(torch.from_numpy(values)) == pytest.approx(expected, rel=1e-12)


def test_otsu_threshold_separates_two_groups():
    generator = torch.Generator().manual_seed(1)
    low = 1.0 + 0.1 * torch.randn(200, generator=generator)
    high = 5.0 + 0.1 * torch.randn(20, generator=generator)
    threshold = otsu_threshold(torch.cat((low, high))[torch.randperm(220, generator=generator)])
    assert float(low.max()) < threshold < float(high.min())
    with pytest.raises(ValueError):
        otsu_threshold(torch.ones(1))
