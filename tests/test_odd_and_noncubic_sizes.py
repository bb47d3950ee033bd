"""Odd and non-cubic sizes: box centre ``N // 2``, frequencies, half spectra, masks, alignment, picking.

Every check compares with an independent reference (``numpy.fft``, ``scipy.ndimage``, ``np.rot90``, a direct
sum, an analytic value) on boxes such as 25³, 31×32×33 or 21×26×31, where an off-by-one between ``N // 2``,
``(N - 1) / 2`` and ``N / 2`` or between even and odd half-spectrum lengths cannot hide.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage
import torch
from scipy.spatial.transform import Rotation

from aitom.fourier import (
    apply_missing_wedge,
    bandpass,
    ctf_1d,
    ctf_2d,
    ctf_3d,
    fftn_centered,
    fourier_shell_correlation,
    frequency_grid,
    hermitian_half_to_centered,
    irfftn_centered,
    lowpass,
    missing_wedge_mask,
    radial_average,
    rfftn_centered,
    shell_index,
)
from aitom.geometry import (
    box_centre_xyz,
    euler_zyz_to_matrix,
    fourier_shift,
    rescale_volume,
    rotate_volume,
    rotation_angle_between,
    soft_sphere_mask,
    sphere_mask,
    voxel_coordinates_xyz,
)
from aitom.ops.alignment import align_subtomograms, constrained_correlation, constrained_correlation_map
from aitom.ops.averaging import wedge_compensated_average
from aitom.ops.extraction import extract_subvolumes
from aitom.ops.filters import gaussian_filter3d
from aitom.ops.handedness import mirror_volume
from aitom.ops.peaks import peak_local_max
from aitom.ops.template_matching import TemplateFilter, match_template

SHAPES = [(25, 25, 25), (25, 26, 27), (31, 32, 33), (7, 9, 11), (30, 40, 50)]
NO_FILTER = TemplateFilter(tilt_range_deg=None)
F64 = torch.float64


def centre_zyx(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(n // 2 for n in shape)


def random_volume(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def numpy_frequencies(shape: tuple[int, ...], *, centred: bool, rfft: bool = False) -> list[np.ndarray]:
    """``(kz, ky, kx)`` cycles/voxel from ``np.fft.fftfreq`` (``rfftfreq`` on the last axis when ``rfft``)."""
    axes = [np.fft.fftfreq(n) for n in shape[:-1]]
    axes.append(np.fft.rfftfreq(shape[-1]) if rfft else np.fft.fftfreq(shape[-1]))
    if centred:
        axes = [np.fft.fftshift(axis) for axis in axes[:-1]] + [
            axes[-1] if rfft else np.fft.fftshift(axes[-1])
        ]
    return np.meshgrid(*axes, indexing="ij")


def blob_structure(size: int) -> torch.Tensor:
    """Four Gaussian blobs about the centre ``size // 2``: no rotational symmetry, smooth, inside the box."""
    z, y, x = torch.meshgrid(*[torch.arange(size, dtype=F64) - size // 2] * 3, indexing="ij")
    volume = torch.zeros(size, size, size, dtype=F64)
    for (bx, by, bz), sigma, weight in [
        ((0, 0, 0), 3.0, 1.0),
        ((4, 1, -2), 1.5, 1.0),
        ((-2, 4, 3), 1.2, 0.8),
        ((1, -4, 2), 1.0, 0.6),
    ]:
        volume += weight * torch.exp(-((x - bx) ** 2 + (y - by) ** 2 + (z - bz) ** 2) / (2 * sigma**2))
    return volume


# ----------------------------------------------------------------------------------------------- geometry


def test_box_centre_and_coordinates_are_n_over_2_per_axis():
    shape = (25, 26, 27)
    assert box_centre_xyz(shape).tolist() == [13.0, 13.0, 12.0]  # (x, y, z) = (27 // 2, 26 // 2, 25 // 2)
    coordinates = voxel_coordinates_xyz(shape, dtype=F64).numpy()
    z, y, x = np.indices(shape)
    expected = np.stack((x - 13, y - 13, z - 12), axis=-1)
    np.testing.assert_array_equal(coordinates, expected)


@pytest.mark.parametrize("shape", [(25, 25, 25), (25, 26, 27), (31, 32, 33), (30, 40, 50)])
def test_rotation_keeps_a_delta_on_the_centre_voxel(shape):
    volume = torch.zeros(shape, dtype=F64)
    volume[centre_zyx(shape)] = 1.0
    rotation = euler_zyz_to_matrix(torch.tensor([0.3, 0.7, 1.1], dtype=F64))
    rotated = rotate_volume(volume, rotation)
    assert float(rotated[centre_zyx(shape)]) == pytest.approx(1.0, abs=1e-12)
    others = rotated.clone()
    others[centre_zyx(shape)] = 0.0
    assert float(others.max()) < 0.99  # trilinear pull-back spreads it, but the peak stays on N // 2


# Active +90° rotations about z, x and y and the np.rot90 that is the same permutation of an odd box:
# about z, x -> y: out[k, j, i] = v[k, N-1-i, j]; about x, y -> z; about y, z -> x.
QUARTER_TURNS = [
    ([[0, -1, 0], [1, 0, 0], [0, 0, 1]], (2, 1)),
    ([[1, 0, 0], [0, 0, -1], [0, 1, 0]], (1, 0)),
    ([[0, 0, 1], [0, 1, 0], [-1, 0, 0]], (0, 2)),
]


@pytest.mark.parametrize("size", [25, 31])
@pytest.mark.parametrize(("matrix", "axes"), QUARTER_TURNS)
def test_quarter_turn_equals_rot90_exactly_on_odd_boxes(size, matrix, axes):
    """About voxel N // 2 of an odd box a 90° turn maps the grid onto itself: no interpolation at all."""
    volume = random_volume((size,) * 3)
    rotated = rotate_volume(volume, torch.tensor(matrix, dtype=F64))
    np.testing.assert_allclose(rotated.numpy(), np.rot90(volume.numpy(), k=1, axes=axes), atol=1e-12)


@pytest.mark.parametrize("shape", [(25, 30, 35), (31, 32, 33)])
def test_rotate_and_shift_match_scipy_affine_transform_with_zyz_matrix(shape):
    """Non-cubic odd box: RELION's matrix ``A = Rotation.from_euler("ZYZ", angles).as_matrix().T``, trilinear
    ``output(x) = v(Aᵀ (x − c − t) + c)`` with ``c = N // 2``, against ``scipy.ndimage.affine_transform``."""
    angles = np.array([0.3, 0.7, 1.1])
    matrix_xyz = Rotation.from_euler("ZYZ", angles).as_matrix().T
    np.testing.assert_allclose(euler_zyz_to_matrix(torch.from_numpy(angles)).numpy(), matrix_xyz, atol=1e-12)
    shift_xyz = np.array([1.0, -2.0, 0.5])
    volume = random_volume(shape)
    rotated = rotate_volume(volume, torch.from_numpy(matrix_xyz), torch.from_numpy(shift_xyz)).numpy()
    centre = np.array(centre_zyx(shape), dtype=float)
    matrix_zyx = matrix_xyz[::-1, ::-1].T  # Aᵀ acting on (z, y, x)
    offset = centre - matrix_zyx @ (centre + shift_xyz[::-1])
    expected = scipy.ndimage.affine_transform(
        volume.numpy(), matrix_zyx, offset=offset, order=1, mode="grid-constant", cval=0.0
    )
    np.testing.assert_allclose(rotated, expected, atol=1e-12)


@pytest.mark.parametrize("shape", [(25, 26, 27), (7, 9, 11)])
def test_fourier_shift_matches_numpy_phase_ramp_and_roll(shape):
    volume = random_volume(shape)
    integer = fourier_shift(volume, torch.tensor([2.0, -3.0, 5.0], dtype=F64))
    np.testing.assert_allclose(
        integer.numpy(), np.roll(volume.numpy(), (5, -3, 2), axis=(0, 1, 2)), atol=1e-12
    )
    shift_xyz = (0.3, -1.7, 2.45)
    kz, ky, kx = numpy_frequencies(shape, centred=False)
    ramp = np.exp(-2j * np.pi * (kx * shift_xyz[0] + ky * shift_xyz[1] + kz * shift_xyz[2]))
    expected = np.fft.ifftn(np.fft.fftn(volume.numpy()) * ramp).real  # odd axes: no Nyquist term
    np.testing.assert_allclose(
        fourier_shift(volume, torch.tensor(shift_xyz, dtype=F64)).numpy(), expected, atol=1e-12
    )


@pytest.mark.parametrize("shape", [(31, 31, 31), (25, 30, 35)])
def test_soft_sphere_mask_is_centred_on_n_over_2(shape):
    mask = soft_sphere_mask(shape, 5.0, 3.0, dtype=F64).numpy()
    z, y, x = np.indices(shape)
    cz, cy, cx = centre_zyx(shape)
    distance = np.sqrt((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2)
    expected = np.where(
        distance <= 5, 1.0, np.where(distance >= 8, 0.0, 0.5 * (1 + np.cos(np.pi * (distance - 5) / 3)))
    )
    np.testing.assert_allclose(mask, expected, atol=1e-12)
    np.testing.assert_allclose(scipy.ndimage.center_of_mass(mask), (cz, cy, cx), atol=1e-9)


@pytest.mark.parametrize("shape", [(25, 26, 27), (31, 33, 35)])
@pytest.mark.parametrize(("old_a", "new_a"), [(2.0, 3.0), (3.0, 2.0)])
def test_rescale_keeps_voxel_n_over_2_at_m_over_2(shape, old_a, new_a):
    """A blob ``d`` voxels from ``N // 2`` lands ``d · old / new`` voxels from ``M // 2`` (centre of mass)."""
    z, y, x = torch.meshgrid(*[torch.arange(n, dtype=F64) - n // 2 for n in shape], indexing="ij")
    offset_zyx = np.array([3.0, -1.0, 2.0])
    volume = torch.exp(-((z - 3) ** 2 + (y + 1) ** 2 + (x - 2) ** 2) / (2 * 3.0**2))
    rescaled = rescale_volume(volume, old_a, new_a)
    centre_of_mass = np.array(scipy.ndimage.center_of_mass(rescaled.numpy()))
    np.testing.assert_allclose(
        centre_of_mass - centre_zyx(rescaled.shape), offset_zyx * old_a / new_a, atol=0.03
    )


# ------------------------------------------------------------------------------------------------ fourier


@pytest.mark.parametrize("shape", SHAPES)
def test_frequency_grids_match_numpy_fftfreq(shape):
    for rfft, centred in ((False, True), (True, False), (False, False)):
        grid = frequency_grid(shape, rfft=rfft, centered=centred, voxel_size_a=2.0, dtype=F64).numpy()
        kz, ky, kx = numpy_frequencies(shape, centred=centred, rfft=rfft)
        np.testing.assert_array_equal(grid, np.stack((kx, ky, kz), axis=-1) / 2.0)


@pytest.mark.parametrize("shape", SHAPES)
def test_centred_transforms_put_origin_and_zero_frequency_at_n_over_2(shape):
    volume = random_volume(shape)
    spectrum = fftn_centered(volume).numpy()
    expected = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(volume.numpy())))
    np.testing.assert_allclose(spectrum, expected, atol=1e-9)
    assert spectrum[centre_zyx(shape)] == pytest.approx(float(volume.sum()), abs=1e-9)
    delta = torch.zeros(shape, dtype=F64)
    delta[centre_zyx(shape)] = 1.0
    np.testing.assert_allclose(fftn_centered(delta).numpy(), 1.0, atol=1e-12)  # phase origin at N // 2
    half = rfftn_centered(volume)
    assert half.shape[-1] == shape[-1] // 2 + 1
    kept = shape[-1] - shape[-1] // 2  # non-negative x frequencies that are not the (even) Nyquist
    np.testing.assert_allclose(half.numpy()[..., :kept], spectrum[..., shape[-1] // 2 :], atol=1e-9)
    np.testing.assert_allclose(irfftn_centered(half, shape).numpy(), volume.numpy(), atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_hermitian_half_to_centered_restores_the_full_spectrum(shape):
    def weight(grid: torch.Tensor) -> torch.Tensor:  # real and centrosymmetric: w(-k) = w(k)
        kx, ky, kz = grid.unbind(-1)
        return torch.cos(7 * kx * ky) + kz**2 + kx.abs()

    half = weight(frequency_grid(shape, rfft=True, centered=False, dtype=F64))
    full = hermitian_half_to_centered(half, shape[-1])
    np.testing.assert_allclose(full.numpy(), weight(frequency_grid(shape, dtype=F64)).numpy(), atol=1e-12)


@pytest.mark.parametrize("shape", [(25, 26, 27), (31, 32, 33), (7, 9, 11)])
def test_shells_and_radial_average_match_numpy(shape):
    kz, ky, kx = numpy_frequencies(shape, centred=True)
    shells = np.floor(np.sqrt(kx**2 + ky**2 + kz**2) * min(shape) + 0.5).astype(np.int64)  # half up
    np.testing.assert_array_equal(shell_index(shape).numpy(), shells)
    values = random_volume(shape, seed=1)
    expected = [values.numpy()[shells == i].mean() for i in range(min(shape) // 2 + 1)]
    np.testing.assert_allclose(radial_average(values).numpy(), expected, atol=1e-12)
    uncentred = radial_average(torch.fft.ifftshift(values), centered=False)
    np.testing.assert_allclose(uncentred.numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("shape", [(25, 26, 27), (31, 32, 33), (7, 9, 11), (24, 25, 27)])
def test_fsc_is_one_with_itself_and_matches_a_full_spectrum_numpy_sum(shape):
    """The half spectrum's Friedel weights (2, except kx = 0 and the Nyquist column of an even X) give the
    full-spectrum sums of numpy exactly, for an odd last axis too."""
    a = random_volume(shape)
    b = a + 0.5 * random_volume(shape, seed=2)
    frequency, fsc_self = fourier_shell_correlation(a, a)
    np.testing.assert_allclose(fsc_self.numpy(), 1.0, atol=1e-12)
    np.testing.assert_allclose(frequency.numpy(), np.arange(min(shape) // 2 + 1) / min(shape))
    _, fsc = fourier_shell_correlation(a, b)
    spectrum_a, spectrum_b = np.fft.fftn(a.numpy()), np.fft.fftn(b.numpy())
    kz, ky, kx = numpy_frequencies(shape, centred=False)
    shells = np.floor(np.sqrt(kx**2 + ky**2 + kz**2) * min(shape) + 0.5).astype(np.int64)  # half up
    expected = []
    for i in range(min(shape) // 2 + 1):
        fa, fb = spectrum_a[shells == i], spectrum_b[shells == i]
        expected.append((fa * fb.conj()).real.sum() / np.sqrt((abs(fa) ** 2).sum() * (abs(fb) ** 2).sum()))
    np.testing.assert_allclose(fsc.numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("shape", [(25, 26, 27), (7, 9, 11), (30, 40, 50)])
def test_lowpass_and_bandpass_match_numpy_kernels(shape):
    volume = random_volume(shape)
    kz, ky, kx = numpy_frequencies(shape, centred=False)
    radius = np.sqrt(kx**2 + ky**2 + kz**2) / 2.0  # cycles/Å at 2 Å voxels
    expected = np.fft.ifftn(np.fft.fftn(volume.numpy()) * (radius <= 1 / 8)).real
    np.testing.assert_allclose(lowpass(volume, 8.0, 2.0, edge_width_frac=0.0).numpy(), expected, atol=1e-12)

    def falling(frequency, cutoff, width):  # raised cosine, 0.5 at the cut-off
        return 0.5 * (1 + np.cos(np.pi * np.clip((frequency - (cutoff - width / 2)) / width, 0, 1)))

    width = 0.1 / 4.0  # 10 % of Nyquist (1/4 cycles/Å)
    kernel = falling(radius, 1 / 8, width) * falling(-radius, -1 / 30, width)
    expected = np.fft.ifftn(np.fft.fftn(volume.numpy()) * kernel).real
    filtered = bandpass(volume, voxel_size_a=2.0, highpass_a=30.0, lowpass_a=8.0, edge_width_frac=0.1)
    np.testing.assert_allclose(filtered.numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("shape", [(25, 26, 27), (31, 32, 33), (7, 9, 11)])
def test_wedge_mask_matches_the_tilt_geometry_and_stays_friedel_symmetric(shape):
    """Observed iff atan(kz / kx) is in the (asymmetric) tilt range; layouts agree; Hermitian on odd grids."""
    mask = missing_wedge_mask(shape, tilt_min_deg=-50.0, tilt_max_deg=40.0, dtype=F64).numpy()
    kz, _, kx = numpy_frequencies(shape, centred=True)
    angle = np.degrees(np.arctan2(kz, kx))
    angle = np.where(angle > 90, angle - 180, np.where(angle <= -90, angle + 180, angle))
    expected = ((angle >= -50 - 1e-9) & (angle <= 40 + 1e-9)) | ((kx == 0) & (kz == 0))
    on_nyquist = np.zeros(shape, dtype=bool)  # even axes: the Nyquist planes have their own rule
    if shape[0] % 2 == 0:
        on_nyquist[0] = True
    if shape[2] % 2 == 0:
        on_nyquist[..., 0] = True
    np.testing.assert_array_equal(mask[~on_nyquist], expected[~on_nyquist])
    half = missing_wedge_mask(shape, tilt_min_deg=-50.0, tilt_max_deg=40.0, rfft=True, centered=False)
    np.testing.assert_array_equal(half.numpy(), np.fft.ifftshift(mask)[..., : shape[-1] // 2 + 1])
    uncentred = np.fft.ifftshift(mask)
    mirrored = np.roll(np.flip(uncentred), 1, axis=(0, 1, 2))  # value at -k
    np.testing.assert_array_equal(uncentred, mirrored)
    volume = random_volume(shape)
    expected_volume = np.fft.ifftn(np.fft.fftn(volume.numpy()) * uncentred)
    assert np.abs(expected_volume.imag).max() < 1e-12
    np.testing.assert_allclose(
        apply_missing_wedge(volume, -50.0, 40.0).numpy(), expected_volume.real, atol=1e-12
    )


@pytest.mark.parametrize("shape", [(25, 26, 27), (7, 9, 11)])
def test_ctf_grids_match_ctf_1d_of_numpy_frequencies(shape):
    ctf = ctf_3d(shape, voxel_size_a=2.0, defocus_um=3.0, dtype=F64).numpy()
    kz, ky, kx = numpy_frequencies(shape, centred=False, rfft=True)
    radius = torch.from_numpy(np.sqrt(kx**2 + ky**2 + kz**2) / 2.0)
    np.testing.assert_allclose(ctf, ctf_1d(radius, defocus_um=3.0).numpy(), atol=1e-12)
    image_shape = shape[1:]  # odd and even (Y, X): astigmatism at angle θ from +x
    ctf = ctf_2d(
        image_shape,
        pixel_size_a=2.0,
        defocus_u_um=3.0,
        defocus_v_um=2.0,
        astigmatism_angle_deg=30.0,
        rfft=False,
        centered=True,
        dtype=F64,
    ).numpy()
    ky, kx = np.meshgrid(*[np.fft.fftshift(np.fft.fftfreq(n, 2.0)) for n in image_shape], indexing="ij")
    defocus = 2.5 + 0.5 * np.cos(2 * (np.arctan2(ky, kx) - np.radians(30.0)))
    expected = ctf_1d(torch.from_numpy(np.hypot(kx, ky)), defocus_um=torch.from_numpy(defocus)).numpy()
    on_nyquist = np.zeros(image_shape, dtype=bool)
    if image_shape[0] % 2 == 0:
        on_nyquist[0] = True
    if image_shape[1] % 2 == 0:
        on_nyquist[:, 0] = True
    np.testing.assert_allclose(ctf[~on_nyquist], expected[~on_nyquist], atol=1e-12)


# -------------------------------------------------------------------------------------------------- ops


@pytest.mark.parametrize("shape", [(7, 9, 11), (8, 9, 10)])
def test_constrained_correlation_map_equals_shifted_correlations(shape):
    """Index ``(z, y, x)`` of the map is the correlation for the shift in fftfreq order (odd, even axes)."""
    a, b = random_volume(shape), random_volume(shape, seed=1)
    mask_a = missing_wedge_mask(shape, tilt_min_deg=-50.0, tilt_max_deg=40.0, dtype=F64)
    mask_b = missing_wedge_mask(shape, tilt_min_deg=-60.0, tilt_max_deg=55.0, dtype=F64)
    band = {"min_frequency": 0.05, "max_frequency": 0.45}
    correlation_map = constrained_correlation_map(a, b, mask_a, mask_b, **band)
    frequencies = [np.fft.fftfreq(n) * n for n in shape]  # integer shifts, fftfreq order
    for z, y, x in [(0, 0, 0), (1, 2, 3), (shape[0] - 1, 4, 5), (3, shape[1] - 2, shape[2] - 1)]:
        shift = torch.tensor([frequencies[2][x], frequencies[1][y], frequencies[0][z]], dtype=F64)
        expected = constrained_correlation(fourier_shift(a, shift), b, mask_a, mask_b, **band)
        assert float(correlation_map[z, y, x]) == pytest.approx(float(expected), abs=1e-12)


@pytest.mark.parametrize("size", [25, 27])
def test_alignment_recovers_rotation_and_shift_on_odd_boxes(size):
    reference = blob_structure(size).float()
    rotation = euler_zyz_to_matrix(torch.tensor([0.5, 1.0, -0.7]))
    shift = torch.tensor([1.5, -2.0, 1.0])
    particle = apply_missing_wedge(fourier_shift(rotate_volume(reference, rotation), shift), -60.0, 60.0)
    result = align_subtomograms(
        reference,
        particle,
        None,
        missing_wedge_mask((size,) * 3),
        angular_step_deg=20.0,
        max_shift_voxels=3.0,
        refine_steps=40,
    )
    assert math.degrees(float(rotation_angle_between(result.rotation[0], rotation))) < 1.5
    np.testing.assert_allclose(result.shift_xyz[0].numpy(), shift.numpy(), atol=0.1)
    assert float(result.score[0]) > 0.99


def test_wedge_compensated_average_is_exact_for_grid_poses_on_an_odd_box():
    """Quarter turns about N // 2 of an odd box and integer shifts are exact on the grid: the average of the
    posed copies is the structure to round-off."""
    size = 25
    reference = blob_structure(size)
    about_z, about_x, about_y = (torch.tensor(matrix, dtype=F64) for matrix, _ in QUARTER_TURNS)
    rotations = torch.stack([torch.eye(3, dtype=F64), about_z, about_x, about_y @ about_z])
    shifts = torch.tensor([[0, 0, 0], [1, -2, 0], [2, 1, -1], [-1, 0, 2]], dtype=F64)
    particles = fourier_shift(rotate_volume(reference.expand(4, -1, -1, -1), rotations), shifts)
    average, coverage = wedge_compensated_average(particles, rotations, shifts)
    np.testing.assert_allclose(average.numpy(), reference.numpy(), atol=1e-12)
    np.testing.assert_allclose(coverage.numpy(), 1.0, atol=1e-12)


def planted_tomogram(
    shape: tuple[int, int, int],
    template: torch.Tensor,
    centres_zyx: list[tuple[int, int, int]],
    rotations: torch.Tensor,
    seed: int = 0,
) -> torch.Tensor:
    """Noise plus rotated copies of ``template`` whose box centre ``t // 2`` is on each centre voxel."""
    tomogram = 0.05 * torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=template.dtype)
    size = template.shape[0]
    for (z, y, x), rotation in zip(centres_zyx, rotations):
        z0, y0, x0 = z - size // 2, y - size // 2, x - size // 2
        tomogram[z0 : z0 + size, y0 : y0 + size, x0 : x0 + size] += rotate_volume(template, rotation)
    return tomogram


@pytest.mark.parametrize("size", [11, 12])
def test_template_matching_finds_exact_centres_in_an_odd_non_cubic_tomogram(size):
    """Odd (11) and even (12) templates in a 37×45×53 tomogram: peaks on the true centre voxels, with the
    planted rotations."""
    template = blob_structure(size).float()
    rotations = euler_zyz_to_matrix(
        torch.tensor([[0.0, 0.0, 0.0], [0.0, math.pi / 2, 0.0], [math.pi / 2, 0.0, 0.0]])
    )
    centres = [(8, 9, 10), (27, 30, 40), (18, 36, 17)]
    tomogram = planted_tomogram((37, 45, 53), template, centres, rotations)
    score, index = match_template(tomogram, template, rotations, template_filter=TemplateFilter())
    peaks, _ = peak_local_max(score, min_distance=4, num_peaks=3, exclude_border=False)
    found = {tuple(peak) for peak in peaks.tolist()}
    assert found == set(centres)
    assert [int(index[centre]) for centre in centres] == [0, 1, 2]


@pytest.mark.parametrize("size", [9, 10])
@pytest.mark.parametrize(
    "mask",
    [
        lambda size: sphere_mask((size,) * 3, 3.5, dtype=F64),
        lambda size: soft_sphere_mask((size,) * 3, 2.5, 1.5, dtype=F64),
    ],
    ids=["binary-rotated", "soft"],
)
def test_template_matching_perfect_match_scores_one_under_a_rotated_or_soft_mask(size, mask):
    """The FLCF is the mask-weighted Pearson correlation: exactly 1 where the tomogram holds the rotated
    template. Before the fix the template's variance was weighted by M² instead of M, so a soft mask (a
    binary one too, once trilinearly rotated) scored up to 1.15 and the rotations compared unfairly."""
    generator = torch.Generator().manual_seed(1)
    template = torch.randn(size, size, size, generator=generator, dtype=F64)
    rotation = euler_zyz_to_matrix(torch.tensor([[0.4, 0.9, -1.2]], dtype=F64))
    shape, centre = (21, 26, 31), (10, 13, 15)
    tomogram = torch.randn(shape, generator=generator, dtype=F64)
    corner = [c - size // 2 for c in centre]
    tomogram[corner[0] : corner[0] + size, corner[1] : corner[1] + size, corner[2] : corner[2] + size] = (
        rotate_volume(template, rotation[0])
    )
    score, _ = match_template(tomogram, template, rotation, mask=mask(size), template_filter=NO_FILTER)
    assert float(score[centre]) == pytest.approx(1.0, abs=1e-9)
    assert float(score.max()) <= 1.0 + 1e-9


@pytest.mark.parametrize("box", [11, 12])
def test_extraction_puts_the_centre_on_voxel_s_over_2(box):
    shape = (25, 32, 41)
    tomogram = torch.arange(math.prod(shape), dtype=F64).reshape(shape)
    centres_xyz = torch.tensor([[20.0, 16.0, 12.0], [3.4, 30.6, 1.0]])
    boxes = extract_subvolumes(tomogram, centres_xyz, box)
    assert float(boxes[0][(box // 2,) * 3]) == float(tomogram[12, 16, 20])
    start = [12 - box // 2, 16 - box // 2, 20 - box // 2]
    expected = tomogram.numpy()[
        start[0] : start[0] + box, start[1] : start[1] + box, start[2] : start[2] + box
    ]
    np.testing.assert_array_equal(boxes[0].numpy(), expected)
    assert float(boxes[1][(box // 2,) * 3]) == float(tomogram[1, 31, 3])  # rounded to the nearest voxel


@pytest.mark.parametrize("shape", [(25, 26, 27), (7, 9, 11)])
def test_gaussian_filter_matches_scipy_on_odd_non_cubic_volumes(shape):
    volume = random_volume(shape)
    for method in ("separable", "fourier"):
        filtered = gaussian_filter3d(volume, (0.8, 1.5, 2.5), method=method)
        expected = scipy.ndimage.gaussian_filter(volume.numpy(), (2.5, 1.5, 0.8))
        np.testing.assert_allclose(filtered.numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("axis", ["z", "y", "x"])
def test_mirror_is_about_voxel_n_over_2_on_odd_and_even_axes(axis):
    volume = random_volume((25, 26, 27))
    dim = {"z": 0, "y": 1, "x": 2}[axis]
    n = volume.shape[dim]
    source = (n // 2 - (np.arange(n) - n // 2)) % n  # c - d; for even n, d = -n/2 wraps onto itself
    expected = np.take(volume.numpy(), source, axis=dim)
    np.testing.assert_array_equal(mirror_volume(volume, axis).numpy(), expected)
