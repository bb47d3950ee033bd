"""Template matching: FLCF against a direct NumPy sum; planted rotated copies found with their angles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage
import torch

from aitom.errors import InputError
from aitom.fourier import apply_missing_wedge, frequency_grid, missing_wedge_mask
from aitom.geometry import matrix_to_relion_angles, rotate_volume, so3_grid, sphere_mask
from aitom.io import particles_table, write_volume
from aitom.ops import template_matching
from aitom.ops.filters import gaussian_filter3d
from aitom.ops.peaks import (
    false_alarm_threshold,
    local_maxima,
    non_maximum_suppression,
    peak_local_max,
    thin_peaks,
)
from aitom.ops.pick_evaluation import evaluate_picks
from aitom.ops.template_matching import (
    TemplateFilter,
    match_template,
    padded_rfftn,
    spectral_whitening_filter,
    template_filter_kernel,
)
from aitom.tasks.pick import TemplateMatchingPicker

STEP_DEG = 40.0
NO_FILTER = TemplateFilter(tilt_range_deg=None)


def asymmetric_template(size: int = 16) -> torch.Tensor:
    """Three Gaussian blobs of different sizes on different axes: no rotational symmetry."""
    z, y, x = torch.meshgrid(*[torch.arange(size, dtype=torch.float32) - size // 2] * 3, indexing="ij")
    blobs = [
        ((0.0, 0.0, 0.0), 2.2, 1.0),
        ((5.0, 0.0, 0.0), 1.5, 0.9),
        ((0.0, 3.0, 0.0), 1.0, 0.5),
        ((-1.0, -1.0, 4.0), 1.2, 0.7),
    ]
    volume = torch.zeros(size, size, size)
    for (bx, by, bz), sigma, weight in blobs:
        volume += weight * torch.exp(-((x - bx) ** 2 + (y - by) ** 2 + (z - bz) ** 2) / (2 * sigma**2))
    return volume


@pytest.fixture(scope="module")
def planted():
    """A 48³ tomogram with 4 rotated copies of the template (3 on grid rotations, 1 random), wedge, noise."""
    template = asymmetric_template()
    grid = so3_grid(STEP_DEG)
    generator = torch.Generator().manual_seed(3)
    random_rotation = torch.linalg.qr(torch.randn(3, 3, generator=generator))[0]
    random_rotation = random_rotation * torch.sign(torch.det(random_rotation))
    rotations = torch.stack([grid[5], grid[77], grid[150], random_rotation])
    centres_zyx = [(12, 12, 12), (12, 35, 35), (35, 13, 34), (35, 35, 12)]
    tomogram = torch.zeros(48, 48, 48)
    for rotation, (z, y, x) in zip(rotations, centres_zyx):
        tomogram[z - 8 : z + 8, y - 8 : y + 8, x - 8 : x + 8] += rotate_volume(template, rotation)
    tomogram = apply_missing_wedge(tomogram, tilt_min_deg=-60.0, tilt_max_deg=60.0)
    tomogram = tomogram + 0.05 * torch.randn(tomogram.shape, generator=generator)
    truth = particles_table(
        [(x, y, z) for z, y, x in centres_zyx], angles_deg=matrix_to_relion_angles(rotations.double())
    )
    return tomogram, template, grid, truth


def direct_flcf(tomogram: np.ndarray, template: np.ndarray, mask: np.ndarray, centre_zyx) -> float:
    """Roseman's FLCF at one voxel, summed directly (identity rotation, no filter)."""
    size = template.shape[0]
    z, y, x = (c - size // 2 for c in centre_zyx)
    patch = tomogram[z : z + size, y : y + size, x : x + size]
    inside = mask > 0
    reference = (template - template[inside].mean()) / template[inside].std()
    data = patch[inside]
    return float(np.sum((data - data.mean()) * reference[inside]) / (inside.sum() * data.std()))


def test_flcf_equals_direct_sum(device):
    generator = torch.Generator().manual_seed(0)
    tomogram = torch.randn(24, 20, 22, generator=generator, dtype=torch.float64)
    template = torch.randn(8, 8, 8, generator=generator, dtype=torch.float64)
    identity = torch.eye(3, dtype=torch.float64)[None]
    score, index = match_template(
        tomogram.to(device), template.to(device), identity.to(device), template_filter=NO_FILTER
    )
    mask = sphere_mask((8, 8, 8), radius_voxels=4.0, dtype=torch.float64).numpy()
    data = ((tomogram - tomogram.mean()) / tomogram.std()).numpy()
    for centre in [(10, 10, 10), (5, 12, 16), (18, 4, 7)]:
        expected = direct_flcf(data, template.numpy(), mask, centre)
        assert float(score[centre]) == pytest.approx(expected, abs=1e-9)
    assert score.device.type == device.type and int(index.max()) == 0


def test_exact_copy_scores_one(device):
    template = asymmetric_template()
    rotation = so3_grid(60.0)[7]
    tomogram = torch.zeros(32, 32, 32)
    tomogram[8:24, 8:24, 8:24] = rotate_volume(template, rotation)
    score, index = match_template(
        tomogram.to(device), template.to(device), so3_grid(60.0).to(device), template_filter=NO_FILTER
    )
    assert float(score[16, 16, 16]) == pytest.approx(1.0, abs=1e-4)
    assert int(index[16, 16, 16]) == 7
    assert float(score.max()) <= 1.0 + 1e-4


def test_planted_particles_positions_and_angles(planted):
    tomogram, template, grid, truth = planted
    score, index = match_template(tomogram, template, grid, template_filter=TemplateFilter())
    coordinates, values = peak_local_max(
        score, min_distance=8, threshold_abs=false_alarm_threshold(score, 1e-4), exclude_border=8
    )
    angles = matrix_to_relion_angles(grid[index[tuple(coordinates.T)]].double())
    picks = particles_table(coordinates.flip(-1).numpy(), angles_deg=angles, score=values.numpy())
    result = evaluate_picks(picks, truth, tolerance_voxels=2.0, angle_tolerance_deg=STEP_DEG)
    assert result["recall"] >= 0.9
    assert result["precision"] >= 0.9
    assert result["orientation_fraction"] == 1.0  # every angle within the grid's covering radius
    # Three of the four particles are on grid rotations: recovered exactly (to interpolation round-off).
    assert result["median_orientation_error_deg"] < 1e-3


def test_pure_noise_gives_few_picks():
    generator = torch.Generator().manual_seed(5)
    noise = torch.randn(40, 40, 40, generator=generator)
    score, _ = match_template(noise, asymmetric_template(), so3_grid(60.0), template_filter=TemplateFilter())
    coordinates, _ = peak_local_max(
        score, min_distance=8, threshold_abs=false_alarm_threshold(score, 1e-5), exclude_border=8
    )
    assert len(coordinates) <= 3


def test_bad_input():
    with pytest.raises(InputError, match="larger than the tomogram"):
        match_template(torch.randn(10, 10, 10), torch.randn(12, 12, 12), so3_grid(90.0))
    with pytest.raises(InputError, match="constant"):
        match_template(torch.zeros(20, 20, 20), torch.randn(8, 8, 8), so3_grid(90.0))
    with pytest.raises(InputError):
        so3_grid(0.0)
    assert math.isfinite(STEP_DEG)


def test_rotated_search_matches_scipy_reference():
    """Best score and rotation over 5 rotations == a plain SciPy search (affine_transform rotation)."""
    generator = np.random.default_rng(2)
    tomogram = generator.normal(size=(20, 22, 24))
    template = generator.normal(size=(10, 10, 10))
    rotations = so3_grid(60.0, dtype=torch.float64)[[0, 9, 20, 33, 51]]
    mask = sphere_mask((10, 10, 10), radius_voxels=5.0, dtype=torch.float64).numpy() > 0
    data = (tomogram - tomogram.mean()) / tomogram.std()
    centre = np.full(3, 5.0)
    expected = np.full(data.shape, -np.inf)
    for rotation in rotations.numpy():
        matrix_zyx = rotation[::-1, ::-1]  # (x, y, z) -> array axes (z, y, x)
        rotated = scipy.ndimage.affine_transform(
            template, matrix_zyx.T, offset=centre - matrix_zyx.T @ centre, order=1, mode="grid-constant"
        )
        padded = np.pad(data, 5, mode="wrap")
        for z, y, x in [(10, 11, 12), (4, 17, 6), (15, 3, 20)]:
            patch = padded[z : z + 10, y : y + 10, x : x + 10][mask]
            reference = (rotated[mask] - rotated[mask].mean()) / rotated[mask].std()
            value = np.sum((patch - patch.mean()) * reference) / (mask.sum() * patch.std())
            expected[z, y, x] = max(expected[z, y, x], value)
    score, _ = match_template(
        torch.from_numpy(tomogram), torch.from_numpy(template), rotations, template_filter=NO_FILTER
    )
    for voxel in [(10, 11, 12), (4, 17, 6), (15, 3, 20)]:
        assert float(score[voxel]) == pytest.approx(expected[voxel], abs=1e-9)


def test_template_filter_kernel_wedge_ctf_and_whitening():
    shape = (12, 12, 12)
    wedge_only = template_filter_kernel(shape, TemplateFilter(tilt_range_deg=(-45.0, 45.0)))
    expected = missing_wedge_mask(shape, tilt_min_deg=-45.0, tilt_max_deg=45.0, rfft=True, centered=False)
    torch.testing.assert_close(wedge_only, expected)
    with_ctf = template_filter_kernel(
        shape, TemplateFilter(tilt_range_deg=None, voxel_size_a=10.0, defocus_um=3.0, amplitude_contrast=0.07)
    )
    # Protein-bright data: the template's CTF is positive (+A) at k = 0, oscillates beyond.
    assert float(with_ctf[0, 0, 0]) == pytest.approx(0.07, abs=1e-6)
    assert float(with_ctf.min()) < 0
    # Whitening: a volume with a 1/k-like coloured spectrum becomes flat (radial power within 20 %).
    generator = torch.Generator().manual_seed(0)
    coloured = gaussian_filter3d(torch.randn(32, 32, 32, generator=generator, dtype=torch.float64), 1.0)
    whitening = spectral_whitening_filter(coloured)
    k = frequency_grid((32, 32, 32), rfft=True, centered=False, dtype=torch.float64).norm(dim=-1)
    whitened_power = (torch.fft.rfftn(coloured) * whitening(k)).abs().square()
    shells = [(whitened_power[(k > low) & (k <= low + 0.05)]).mean() for low in (0.05, 0.15, 0.25, 0.35)]
    assert float(max(shells) / min(shells)) < 1.2


def test_padded_rfftn_equals_full_transform(device):
    generator = torch.Generator().manual_seed(6)
    small = torch.randn(2, 6, 6, 6, generator=generator, dtype=torch.float64).to(device)
    expected = torch.fft.rfftn(small, s=(14, 12, 10), dim=(-3, -2, -1))
    torch.testing.assert_close(padded_rfftn(small, (14, 12, 10)), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("spherical", [True, False])
def test_scipy_dispatch_equals_torch_fft(monkeypatch, spherical):
    """The CPU path through scipy.fft (pocketfft) gives the torch.fft result to 1e-5 (float32)."""
    generator = torch.Generator().manual_seed(7)
    template = asymmetric_template(12)
    tomogram = torch.randn(30, 28, 32, generator=generator)
    tomogram[8:20, 10:22, 12:24] += 2 * rotate_volume(template, so3_grid(60.0)[3])
    mask = None if spherical else sphere_mask((12, 12, 12), radius_voxels=5.0)
    rotations = so3_grid(60.0)[:10]
    arguments = {"mask": mask, "template_filter": TemplateFilter(), "whiten": True, "rotation_batch": 4}
    scipy_score, scipy_index = match_template(tomogram, template, rotations, **arguments)
    monkeypatch.setattr(template_matching, "_scipy_path", lambda tensor: False)
    torch_score, torch_index = match_template(tomogram, template, rotations, **arguments)
    torch.testing.assert_close(scipy_score, torch_score, rtol=0, atol=1e-5)
    assert float((scipy_index == torch_index).float().mean()) > 0.99  # near-ties may swap


def two_shapes() -> tuple[torch.Tensor, torch.Tensor]:
    """A large elongated template (18³ box) and a small compact one (10³ box), protein bright."""
    large = torch.zeros(18, 18, 18)
    grid = torch.stack(torch.meshgrid(*[torch.arange(18.0) - 9] * 3, indexing="ij"), -1)
    for z, y, x, sigma in [(0, 0, -4.5, 2.5), (0, 0, 4.5, 2.5), (0, 3.5, 0, 2.0), (-3, 0, 0, 1.5)]:
        large += torch.exp(-((grid - torch.tensor([z, y, x])) ** 2).sum(-1) / (2 * sigma**2))
    small = torch.exp(-(grid[4:14, 4:14, 4:14] ** 2).sum(-1) / 4.5)
    return large, small


LARGE_CENTRES = [(14, 14, 14), (14, 48, 46), (48, 16, 44), (47, 47, 15)]
SMALL_CENTRES = [(14, 14, 46), (15, 47, 14), (48, 15, 14), (48, 48, 48), (31, 31, 31)]


def two_shapes_picker(tmp_path) -> tuple[torch.Tensor, TemplateMatchingPicker]:
    """A 64³ tomogram holding rotated copies of both :func:`two_shapes` (wedge, noise), and a picker with
    the two templates (classes 1 and 2, 60° rotation grid)."""
    large, small = two_shapes()
    grid = so3_grid(60.0)
    generator = torch.Generator().manual_seed(8)
    tomogram = torch.zeros(64, 64, 64)
    for number, (z, y, x) in enumerate(LARGE_CENTRES):
        tomogram[z - 9 : z + 9, y - 9 : y + 9, x - 9 : x + 9] += rotate_volume(large, grid[7 * number + 3])
    for number, (z, y, x) in enumerate(SMALL_CENTRES):
        tomogram[z - 5 : z + 5, y - 5 : y + 5, x - 5 : x + 5] += rotate_volume(small, grid[5 * number + 1])
    tomogram = apply_missing_wedge(tomogram, tilt_min_deg=-60.0, tilt_max_deg=60.0)
    tomogram = tomogram + 0.05 * torch.randn(tomogram.shape, generator=generator)
    for name, volume in (("large", large), ("small", small)):
        write_volume(tmp_path / f"{name}.mrc", volume, 10.0)
    picker = TemplateMatchingPicker(
        [str(tmp_path / "large.mrc"), str(tmp_path / "small.mrc")],
        angular_step_deg=60.0,
        class_number=[1, 2],
        false_alarm_rate=1e-4,
    )
    return tomogram, picker


def test_calibrated_multi_template_assigns_the_right_class(tmp_path):
    """Two planted shapes of different sizes: each pick carries the class of its shape (F1 >= 0.9 each)."""
    tomogram, picker = two_shapes_picker(tmp_path)
    large_centres, small_centres = LARGE_CENTRES, SMALL_CENTRES
    picks = picker.pick_tile(tomogram)
    # Circular correlation: scores within half a template of the faces are unreliable (wrap-around).
    inside = ((picks["coordinates_zyx"] >= 5) & (picks["coordinates_zyx"] < 59)).all(-1)
    table = particles_table(
        picks["coordinates_zyx"][inside].flip(-1).numpy(),
        class_number=picks["class_number"][inside].numpy(),
        score=picks["scores"][inside].numpy(),
    )
    truth = particles_table(
        [(x, y, z) for z, y, x in large_centres + small_centres],
        class_number=[1] * len(large_centres) + [2] * len(small_centres),
    )
    result = evaluate_picks(table, truth, tolerance_voxels=2.0)
    for label in ("1", "2"):
        assert result["per_class"][label]["f1"] >= 0.9, result["per_class"]
    # Without calibration (raw FLCF arg-max) the small template would claim parts of the large particles:
    # the calibrated score of each class is a z-score, so both classes' peaks stand well above 3.
    assert float(picks["scores"].min()) > 3.0


def test_several_templates_picks_are_the_maxima_of_the_whole_calibrated_map(tmp_path):
    """The picker calibrates each template only once the statistics are pooled, and decides from each
    template's maxima over the cube whether a candidate is a maximum of the best calibrated score: its picks
    equal those of the plain route, the local maxima of the whole calibrated best-template map
    (``match_templates``) thresholded at its false-alarm level (below 64³ voxels the pooled sample is every
    voxel, so the calibrations are the same)."""
    tomogram, picker = two_shapes_picker(tmp_path)
    picks = picker.pick_tile(tomogram)
    score, which, rotation = template_matching.match_templates(
        tomogram, picker.templates, picker.rotations, template_filter=picker.template_filter
    )
    coordinates = torch.nonzero(local_maxima(score, picker.maxima_distance))
    values = score[tuple(coordinates.T)]
    threshold = false_alarm_threshold(score, 1e-4)
    kept = thin_peaks(coordinates, values, picker.min_distance, threshold)
    radii = picker.suppression_radii[which[tuple(coordinates[kept].T)]]
    kept = kept[
        non_maximum_suppression(coordinates[kept].double(), values[kept], picker.min_distance, radii=radii)
    ]
    at = tuple(coordinates[kept].T)
    assert len(kept) >= len(LARGE_CENTRES) + len(SMALL_CENTRES)
    assert picks["coordinates_zyx"].tolist() == coordinates[kept].tolist()
    assert picks["class_number"].tolist() == (which[at] + 1).tolist()
    torch.testing.assert_close(picks["scores"], score[at], rtol=0, atol=1e-5)
    angles = matrix_to_relion_angles(picker.rotations[rotation[at]].double()).float()
    torch.testing.assert_close(picks["angles_deg"], angles, rtol=0, atol=1e-3)


@pytest.mark.parametrize(("size", "edge"), [(67, 36), (64, 35), (64, 36), (35, 20)])
def test_crop_template_keeps_the_centre_voxel(size, edge):
    """Voxel N // 2 (the rotation centre) of the template lands on edge // 2 of the crop."""
    from aitom.ops.template_matching import crop_template

    template = torch.randn(size, size, size, generator=torch.Generator().manual_seed(size + edge))
    cropped = crop_template(template, edge)
    assert cropped.shape == (edge, edge, edge)
    assert cropped[edge // 2, edge // 2, edge // 2] == template[size // 2, size // 2, size // 2]
    start = size // 2 - edge // 2
    assert torch.equal(cropped, template[start : start + edge, start : start + edge, start : start + edge])


def test_template_signal_outside_against_numpy():
    """Share of Σ (t − median of the faces)² outside the central crop, against a plain NumPy version."""
    from aitom.ops.template_matching import template_signal_outside

    generator = torch.Generator().manual_seed(2)
    template = 0.3 + torch.randn(30, 30, 30, generator=generator).abs() ** 3
    array = template.double().numpy()
    planes = [array[0], array[-1], array[:, 0], array[:, -1], array[:, :, 0], array[:, :, -1]]
    faces = np.concatenate([plane.ravel() for plane in planes])
    signal = (array - np.sort(faces)[(faces.size - 1) // 2]) ** 2  # the lower median, as torch's
    inside = signal[15 - 10 : 15 + 10, 5:25, 5:25].sum()
    assert template_signal_outside(template, 20) == pytest.approx(1 - inside / signal.sum(), rel=1e-9)
    assert template_signal_outside(template, 30) == pytest.approx(0.0, abs=1e-12)
    assert template_signal_outside(torch.ones(8, 8, 8), 4) == 0.0
