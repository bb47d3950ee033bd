"""Physics of the tilt-series simulator, the packing and whole simulated tomograms.

References: analytic Fourier transforms of Gaussian blobs (Fourier slice theorem), the phantom itself
(WBP of a complete series), the analytic missing-wedge geometry, the analytic CTF zeros
(:func:`aitom.fourier.ctf_zeros_a_inv`), NumPy pairwise distances (packing), and the ground truth round-trip
through a STAR file.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from aitom.fourier import ctf_zeros_a_inv, fftn_centered, frequency_grid, lowpass, radial_average
from aitom.io import read_particles, table_coordinates, write_particles
from aitom.simulate import (
    PackingWarning,
    acquisition_order,
    back_project,
    form_tilt_images,
    load_recipe,
    pack_particles,
    pre_exposure_e_per_a2,
    project_tilt_series,
    simulate_tomogram,
    tilt_angles_deg,
    tilt_transfer,
    weighted_back_projection,
)
from aitom.simulate.library import class_radius_a


def gaussian_blobs(
    shape: tuple[int, int, int], n: int, sigma: float, seed: int, margin: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sum of ``n`` Gaussian blobs (float64): volume, centres (x, y, z) from the box centre, amplitudes."""
    generator = torch.Generator().manual_seed(seed)
    size_z, size_y, size_x = shape
    extent = torch.tensor([size_x, size_y, size_z], dtype=torch.float64) - 2 * margin
    centres = (torch.rand(n, 3, generator=generator, dtype=torch.float64) - 0.5) * extent
    amplitudes = 0.5 + torch.rand(n, generator=generator, dtype=torch.float64)
    z, y, x = torch.meshgrid(*(torch.arange(s, dtype=torch.float64) - s // 2 for s in shape), indexing="ij")
    volume = torch.zeros(shape, dtype=torch.float64)
    for (cx, cy, cz), amplitude in zip(centres.tolist(), amplitudes.tolist()):
        volume += amplitude * torch.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma**2))
    return volume, centres, amplitudes


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


# ---------------------------------------------------------------------------------------------- tilt series


def test_tilt_angles_and_dose_symmetric_order():
    angles = tilt_angles_deg(-60, 60, 3)
    assert angles.numel() == 41 and float(angles[0]) == -60 and float(angles[-1]) == 60
    angles = tilt_angles_deg(-6, 6, 3)
    order = acquisition_order(angles, "dose_symmetric")
    assert angles[order].tolist() == [0, 3, -3, -6, 6]  # Hagen et al. 2017
    assert angles[acquisition_order(angles, "bidirectional")].tolist() == [0, 3, 6, -3, -6]
    exposure = pre_exposure_e_per_a2(angles, 2.0, "dose_symmetric")
    assert exposure.tolist() == [6.0, 4.0, 0.0, 2.0, 8.0]  # for tilts -6, -3, 0, 3, 6


@pytest.mark.parametrize("angle_deg", [0.0, 30.0, 60.0, -60.0, 80.0])
def test_projection_puts_a_point_at_cos_x_plus_sin_z(device, angle_deg):
    """The tilt image at α is the projection along Z of the volume rotated actively by Ry(α)."""
    shape = (32, 6, 48)
    z, y, x = torch.meshgrid(*(torch.arange(s, dtype=torch.float64) - s // 2 for s in shape), indexing="ij")
    blob = torch.exp(-((x - 6.0) ** 2 + y**2 + (z - 4.0) ** 2) / (2 * 1.5**2)).to(device)
    image = project_tilt_series(blob, [angle_deg])[0]
    profile = image.sum(dim=0).cpu()
    centroid = float((profile * torch.arange(48)).sum() / profile.sum()) - 24
    alpha = math.radians(angle_deg)
    assert centroid == pytest.approx(math.cos(alpha) * 6.0 + math.sin(alpha) * 4.0, abs=0.01)
    assert float(image.sum()) == pytest.approx(float(blob.sum()), rel=2e-3)  # line integrals keep the mass


def test_projection_of_a_slab_is_thickness_over_cos(device):
    slab = torch.ones(20, 4, 96, device=device)
    angles = [0.0, 30.0, 45.0, 60.0]
    images = project_tilt_series(slab, angles)
    for image, angle in zip(images, angles):
        assert float(image[2, 48]) == pytest.approx(20 / math.cos(math.radians(angle)), rel=3e-3)


def test_batched_projection_and_back_projection_match_single(device):
    volume, _, _ = gaussian_blobs((12, 10, 16), 5, 1.5, 7, 3)
    volumes = torch.stack((volume, 2 * volume.flip(-1))).to(device)
    angles = tilt_angles_deg(-60, 60, 20)
    batched = project_tilt_series(volumes, angles, chunk_voxels=100)
    single = project_tilt_series(volumes[1], angles)
    torch.testing.assert_close(batched[1], single)
    torch.testing.assert_close(back_project(batched, angles, 12)[1], back_project(single, angles, 12))


def test_projector_and_wbp_are_differentiable():
    volume = torch.randn(2, 5, 3, 6, dtype=torch.float64, requires_grad=True)
    tilts = torch.randn(3, 3, 6, dtype=torch.float64, requires_grad=True)
    angles = [-60.0, 10.0, 50.0]
    assert torch.autograd.gradcheck(lambda v: project_tilt_series(v, angles), (volume,))
    assert torch.autograd.gradcheck(lambda t: weighted_back_projection(t, angles, 5), (tilts,))


def test_fourier_slice_theorem(device):
    """2-D FFT of a projection = 3-D FT of the volume on the plane (cos α·kx, ky, sin α·kx) (analytic FT)."""
    sigma = 2.0
    volume, centres, amplitudes = gaussian_blobs((32, 32, 32), 12, sigma, 0, 8)
    kxy = frequency_grid((32, 32), dtype=torch.float64)
    kx, ky = kxy[..., 0], kxy[..., 1]

    def analytic_ft(k: torch.Tensor) -> torch.Tensor:
        phase = torch.exp(-2j * math.pi * (k @ centres.T))
        envelope = (2 * math.pi * sigma**2) ** 1.5 * torch.exp(-2 * math.pi**2 * sigma**2 * (k**2).sum(-1))
        return (amplitudes * phase).sum(-1) * envelope

    for angle in (0.0, 25.0, 55.0, -70.0):
        image = project_tilt_series(volume.to(device), [angle])[0].cpu()
        measured = fftn_centered(image, dim=(-2, -1))
        c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        predicted = analytic_ft(torch.stack((c * kx, ky, s * kx), dim=-1))
        mirrored = analytic_ft(torch.stack((c * kx, ky, -s * kx), dim=-1))
        score = float((measured * predicted.conj()).sum().real / (measured.norm() * predicted.norm()))
        wrong = float((measured * mirrored.conj()).sum().real / (measured.norm() * mirrored.norm()))
        assert score > 0.999
        if angle:
            assert wrong < 0.9  # the plane's tilt direction matters


def test_back_projection_is_the_adjoint_of_projection(device):
    """<P v, t> = <v, B t> up to discretisation (B voxel-driven, P ray-driven): within 3 %."""
    volume = gaussian_blobs((24, 16, 40), 10, 2.0, 5, 6)[0].to(device)
    generator = torch.Generator().manual_seed(3)
    tilts = torch.randn(41, 16, 40, generator=generator, dtype=torch.float64)
    tilts = lowpass(tilts, 4.0, 1.0, spatial_dims=2).to(device)
    angles = tilt_angles_deg()
    forward = float((project_tilt_series(volume, angles) * tilts).sum())
    backward = float((volume * back_project(tilts, angles, 24)).sum())
    assert backward == pytest.approx(forward, rel=0.03)


def test_wbp_of_a_complete_series_recovers_the_phantom(device):
    volume = gaussian_blobs((48, 48, 48), 20, 2.5, 1, 12)[0].float().to(device)
    angles = tilt_angles_deg(-90, 89, 1)
    reconstruction = weighted_back_projection(project_tilt_series(volume, angles), angles, 48)
    z, _, x = torch.meshgrid(*(torch.arange(48) - 24 for _ in range(3)), indexing="ij")
    inside = ((x**2 + z**2) < 20**2).to(device)
    assert correlation(reconstruction[inside], volume[inside]) > 0.95
    centred = volume[inside] - volume[inside].mean()
    slope = float(
        ((reconstruction[inside] - reconstruction[inside].mean()) * centred).sum() / (centred**2).sum()
    )
    assert 0.8 < slope < 1.1  # on the phantom's scale (the cosine roll-off costs a little)


def test_wbp_of_a_limited_series_leaves_the_missing_wedge_empty(device):
    """±60°: |F| of the reconstruction relative to the phantom's is < 5 % beyond 70° and > 50 % below 50°."""
    size = 48
    volume = gaussian_blobs((size,) * 3, 30, 1.2, 1, 10)[0].float().to(device)
    angles = tilt_angles_deg(-60, 60, 3)
    reconstruction = (
        weighted_back_projection(project_tilt_series(volume, angles), angles, size).double().cpu()
    )
    hann = torch.hann_window(size, periodic=False, dtype=torch.float64)
    window = hann[:, None, None] * hann[None, :, None] * hann[None, None, :]  # no box-truncation leakage
    spectrum = fftn_centered(reconstruction * window).abs()
    phantom = fftn_centered(volume.double().cpu() * window).abs()
    k = frequency_grid((size,) * 3, dtype=torch.float64)
    kx, kz, radius = k[..., 0], k[..., 2], k.norm(dim=-1)
    band = (radius > 0.1) & (radius < 0.4) & (kx.abs() >= 2 / size)  # away from the axes
    elevation = torch.rad2deg(torch.atan(kz.abs() / kx.abs()))
    inside, outside = band & (elevation > 70), band & (elevation < 50)
    transfer_inside = spectrum[inside].sum() / phantom[inside].sum()
    transfer_outside = spectrum[outside].sum() / phantom[outside].sum()
    assert float(transfer_inside / transfer_outside) < 0.05
    assert float(transfer_outside) > 0.5
    assert float(spectrum[inside].mean() / spectrum[outside].mean()) < 0.05


def test_thon_rings_at_the_analytic_ctf_zeros(device):
    """Radial power spectrum of a noise-free tilt image of a random volume: minima at the CTF zeros ±1 bin."""
    size, pixel_a, defocus_um = 256, 2.0, 1.5
    generator = torch.Generator().manual_seed(0)
    volume = torch.randn(8, size, size, generator=generator, dtype=torch.float64).to(device)
    projected = project_tilt_series(volume, [0.0]) * pixel_a
    transfer = tilt_transfer(
        (size, size),
        pixel_size_a=pixel_a,
        defocus_u_um=torch.tensor([defocus_um]),
        device=device,
        dtype=torch.float64,
    )
    image = form_tilt_images(projected, transfer)[0]
    profile = radial_average(fftn_centered(image, dim=(-2, -1)).abs() ** 2, spatial_dims=2).cpu()
    zeros_bins = ctf_zeros_a_inv(12, defocus_um=defocus_um, dtype=torch.float64) * pixel_a * size
    checked = 0
    for expected in zeros_bins.tolist():
        if not 10 <= expected <= size // 2 - 4:
            continue
        low = round(expected) - 3
        minimum = low + int(torch.argmin(profile[low : low + 7]))
        assert abs(minimum - expected) <= 1.0
        checked += 1
    assert checked >= 10


# ---------------------------------------------------------------------------------------------- packing


def test_packing_has_no_overlaps_and_stays_inside():
    shape = (40, 90, 100)
    radii = [6.0, 4.5, 3.0]
    packing = pack_particles(shape, radii, number=60, margin_voxels=1.0, seed=4)
    assert len(packing) == 60
    assert np.bincount(packing.class_ids).tolist() == [20, 20, 20]
    positions, r = packing.positions_xyz, packing.radii_voxels
    distances = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    limits = r[:, None] + r[None] + 1.0
    np.fill_diagonal(distances, np.inf)
    assert (distances >= limits - 1e-9).all()
    size_xyz = np.array(shape[::-1])
    assert (positions >= r[:, None] - 1e-9).all() and (positions <= size_xyz - 1 - r[:, None] + 1e-9).all()
    rotations = torch.as_tensor(packing.rotations)
    torch.testing.assert_close(
        rotations @ rotations.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(60, 3, 3)
    )


def test_packing_reaches_the_crowding_fraction():
    shape = (50, 80, 80)
    packing = pack_particles(shape, [5.0, 3.0], crowding_fraction=0.2, seed=1)
    occupied = (4 / 3 * np.pi * packing.radii_voxels**3).sum() / np.prod(shape)
    assert occupied == pytest.approx(0.2, rel=0.05)


def test_packing_warns_when_the_box_is_too_full():
    with pytest.warns(PackingWarning, match="box too full"):
        packing = pack_particles((20, 30, 30), [5.0], number=200, seed=0, max_attempts_per_particle=200)
    assert 0 < len(packing) < 200
    distances = np.linalg.norm(packing.positions_xyz[:, None] - packing.positions_xyz[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    assert distances.min() >= 10.0 + 1.0 - 1e-9


def test_packing_is_reproducible():
    first = pack_particles((30, 60, 60), [4.0, 3.0], number=20, seed=9)
    second = pack_particles((30, 60, 60), [4.0, 3.0], number=20, seed=9)
    np.testing.assert_array_equal(first.positions_xyz, second.positions_xyz)
    np.testing.assert_array_equal(first.angles_rad, second.angles_rad)


# ---------------------------------------------------------------------------------------------- tomograms

TINY = [
    "voxel_size_a=20",
    "shape_zyx_voxels=[24,64,64]",
    "classes=[ribosome_30s,apoferritin,hsp90]",
    "crowding_fraction=null",
    "number_of_particles=9",
]


@pytest.fixture(scope="module")
def tiny_clean_simulation():
    recipe = load_recipe(None, [*TINY, "noise_model=none", "ice.enabled=false"], kind="tomogram")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PackingWarning)
        return recipe, simulate_tomogram(recipe)


def test_truth_round_trips_through_star_and_particles_are_there(tiny_clean_simulation, tmp_path):
    """Truth → STAR → truth; each particle's potential has its centre of mass at its truth position."""
    recipe, simulation = tiny_clean_simulation
    truth = simulation.truth
    assert len(truth) == 9 and sorted(set(truth["aitomClassName"])) == sorted(recipe.classes)
    path = write_particles(tmp_path / "truth.star", truth)
    back = read_particles(path)
    np.testing.assert_allclose(table_coordinates(back), table_coordinates(truth), rtol=0, atol=1e-9)
    for column in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnClassNumber"):
        np.testing.assert_allclose(back[column].to_numpy(), truth[column].to_numpy(), rtol=0, atol=1e-9)

    clean = simulation.clean.double()
    z, y, x = torch.meshgrid(*(torch.arange(s, dtype=torch.float64) for s in clean.shape), indexing="ij")
    for (px, py, pz), name in zip(table_coordinates(back), back["aitomClassName"]):
        radius = class_radius_a(name) / recipe.voxel_size_a + 0.5
        inside = ((x - px) ** 2 + (y - py) ** 2 + (z - pz) ** 2) <= radius**2
        weights = clean * inside
        centre = [float((weights * axis).sum() / weights.sum()) for axis in (x, y, z)]
        np.testing.assert_allclose(centre, [px, py, pz], atol=0.3)


def test_tomogram_is_protein_bright_and_normalised(tiny_clean_simulation):
    _, simulation = tiny_clean_simulation
    tomogram = simulation.tomogram
    assert tomogram.shape == (24, 64, 64) and tomogram.dtype == torch.float32
    assert float(tomogram.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(tomogram.std()) == pytest.approx(1.0, abs=1e-4)
    # the CTF band-passes; at low resolution the reconstruction follows the (positive) potential
    smooth_tomogram = lowpass(tomogram, 80.0, 20.0)
    smooth_clean = lowpass(simulation.clean, 80.0, 20.0)
    assert correlation(smooth_tomogram, smooth_clean) > 0.5
    assert simulation.tilt_series.shape == (41, 64, 64) and math.isinf(simulation.snr)


def test_tomogram_snr_and_noise_models():
    recipe = load_recipe(None, [*TINY, "snr=0.2"], kind="tomogram")
    first = simulate_tomogram(recipe)
    assert first.snr == pytest.approx(0.2, rel=1e-4)
    torch.testing.assert_close(simulate_tomogram(recipe).tomogram, first.tomogram, rtol=0, atol=0)
    other_seed = simulate_tomogram(load_recipe(None, [*TINY, "snr=0.2", "seed=1"], kind="tomogram"))
    assert not torch.equal(other_seed.tomogram, first.tomogram)
    low_dose = simulate_tomogram(
        load_recipe(
            None,
            [*TINY, "noise_model=dose", "tilt.dose_per_tilt_e_per_a2=0.5", "tilt.dose_weighting=false"],
            kind="tomogram",
        )
    )
    high_dose = simulate_tomogram(
        load_recipe(
            None,
            [*TINY, "noise_model=dose", "tilt.dose_per_tilt_e_per_a2=8", "tilt.dose_weighting=false"],
            kind="tomogram",
        )
    )
    assert high_dose.snr == pytest.approx(16 * low_dose.snr, rel=0.1)  # shot noise variance ∝ 1/dose
