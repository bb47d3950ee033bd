"""Anisotropic diffusion against a straightforward NumPy implementation of the same equations.

The reference (``numpy_diffusion_step``) uses scipy.ndimage.gaussian_filter for the smoothings,
``numpy.linalg.eigh`` for the structure tensor and ``np.pad(mode="symmetric")`` for the mirror boundary;
scripts/bench_filters.py times it too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from aitom.errors import InputError
from aitom.io import read_volume
from aitom.modules import AnisotropicDiffusion3d
from aitom.ops import (
    anisotropic_diffusion,
    anisotropic_diffusion_tiled,
    diffusion_contrast_k,
    diffusion_halo_voxels,
    gaussian_filter3d,
    symmetric_eigen3,
)

# ---------------------------------------------------------------------------------------------------------
# NumPy reference: the module docstring of aitom.ops.diffusion, written out plainly.


def _pad(field: np.ndarray, axis: int, width: int, odd: bool = False) -> np.ndarray:
    """Mirror (half-sample symmetric) padding; ``odd``: the padded samples change sign."""
    widths = [(0, 0)] * field.ndim
    widths[axis] = (width, width)
    padded = np.pad(field, widths, mode="symmetric")
    if odd and width:
        index = [slice(None)] * field.ndim
        index[axis] = slice(0, width)
        padded[tuple(index)] *= -1
        index[axis] = slice(padded.shape[axis] - width, None)
        padded[tuple(index)] *= -1
    return padded


def _smooth(field: np.ndarray, sigma: float, odd_axes: tuple[int, ...] = ()) -> np.ndarray:
    radius = int(4 * sigma + 0.5)
    if radius == 0:
        return field.copy()
    for axis in range(3):
        sigmas = [0.0, 0.0, 0.0]
        sigmas[axis] = sigma
        crop = [slice(None)] * 3
        crop[axis] = slice(radius, radius + field.shape[axis])
        field = ndi.gaussian_filter(_pad(field, axis, radius, axis in odd_axes), sigmas)[tuple(crop)]
    return field


def _central(field: np.ndarray, axis: int, odd: bool = False) -> np.ndarray:
    padded = _pad(field, axis, 1, odd)
    n = field.shape[axis]
    return 0.5 * (np.take(padded, np.arange(2, n + 2), axis) - np.take(padded, np.arange(n), axis))


def numpy_diffusion_step(u, mode, tau, sigma, rho, k, alpha, c):
    """One explicit step of EED/CED in float64 NumPy (axes 0, 1, 2 = z, y, x; tensor indices x, y, z)."""
    smoothed = _smooth(u, sigma)
    g = [_central(smoothed, 2), _central(smoothed, 1), _central(smoothed, 0)]  # gx, gy, gz
    axis_of = (2, 1, 0)
    tensor = np.empty((*u.shape, 3, 3))
    for i in range(3):
        for j in range(i, 3):
            odd = () if i == j else (axis_of[i], axis_of[j])
            tensor[..., i, j] = tensor[..., j, i] = _smooth(g[i] * g[j], rho, odd)
    mu, vectors = np.linalg.eigh(tensor)  # ascending: mu[..., 2] is the largest
    lam = np.ones_like(mu)
    if mode == "edge":
        s2 = g[0] ** 2 + g[1] ** 2 + g[2] ** 2
        with np.errstate(divide="ignore"):
            lam[..., 2] = np.where(s2 > 0, 1 - np.exp(-3.31488 / (s2 / k**2) ** 4), 1.0)
    else:
        kappa = (mu[..., 2] - mu[..., 0]) ** 2
        lam[...] = alpha
        with np.errstate(divide="ignore"):
            lam[..., 0] = np.where(kappa > 0, alpha + (1 - alpha) * np.exp(-c / kappa), alpha)
    d = np.einsum("...ik,...k,...jk->...ij", vectors, lam, vectors)
    divergence = np.zeros_like(u)
    for i, axis in enumerate(axis_of):
        n = u.shape[axis]
        up, dp = _pad(u, axis, 1), _pad(d[..., i, i], axis, 1)
        upper, lower = np.arange(1, n + 2), np.arange(0, n + 1)
        flux = 0.5 * (np.take(dp, upper, axis) + np.take(dp, lower, axis))
        flux = flux * (np.take(up, upper, axis) - np.take(up, lower, axis))
        divergence += np.take(flux, np.arange(1, n + 1), axis) - np.take(flux, np.arange(n), axis)
    du = [_central(u, 2), _central(u, 1), _central(u, 0)]
    for i, axis in enumerate(axis_of):
        mixed = sum(d[..., i, j] * du[j] for j in range(3) if j != i)
        divergence += _central(mixed, axis, odd=True)
    return u + tau * divergence


# ---------------------------------------------------------------------------------------------------------


def _relative_error(result: np.ndarray, expected: np.ndarray, start: np.ndarray) -> float:
    """Max deviation relative to the largest change the diffusion made."""
    return float(np.abs(result - expected).max() / np.abs(expected - start).max())


@pytest.mark.parametrize("mode", ["edge", "coherence"])
def test_agrees_with_numpy_reference(device, mode):
    rng = np.random.default_rng(3)
    start = ndi.gaussian_filter(rng.standard_normal((14, 16, 18)), 1.0) * 5  # some structure
    k, alpha, c = 0.4, 0.01, 1e-4
    expected = start
    for _ in range(3):
        expected = numpy_diffusion_step(
            expected, mode, 0.15, 1.0, 1.5 if mode == "edge" else 2.5, k, alpha, c
        )
    rho = 1.5 if mode == "edge" else 2.5  # kernel radius 6: shifted slices; 10: banded matrix products
    options = {"mode": mode, "n_iterations": 3, "time_step": 0.15, "sigma_voxels": 1.0, "rho_voxels": rho}
    options |= {"contrast_k": k, "alpha": alpha, "coherence_c": c}
    result64 = anisotropic_diffusion(torch.from_numpy(start).to(device), **options).cpu().numpy()
    assert _relative_error(result64, expected, start) < 1e-10
    result32 = anisotropic_diffusion(torch.from_numpy(start).float().to(device), **options).cpu().numpy()
    assert _relative_error(result32, expected, start) < 1e-4


def test_closed_form_eigenvalues_match_numpy():
    rng = np.random.default_rng(4)
    components = rng.standard_normal((6, 5, 6, 7))
    components[:3] = np.abs(components[:3]) * 3  # mostly positive definite, like structure tensors
    xx, yy, zz, xy, xz, yz = components
    matrices = np.stack(
        [np.stack([xx, xy, xz], -1), np.stack([xy, yy, yz], -1), np.stack([xz, yz, zz], -1)], -1
    )
    expected = np.linalg.eigvalsh(matrices)[..., ::-1]
    mu = torch.stack(symmetric_eigen3(torch.from_numpy(components)), -1).numpy()
    np.testing.assert_allclose(mu, expected, atol=1e-12)


@pytest.mark.parametrize("scale", [1e-20, 1e-30, 1e30])
def test_closed_form_eigenvalues_of_tiny_and_huge_float32_matrices(scale):
    # Structure tensors of the flat solvent of real maps reach 1e-20 and below: the squares in p underflow
    # in float32 unless each matrix is scaled first.
    rng = np.random.default_rng(5)
    components = rng.standard_normal((6, 4, 4, 4))
    components[:3] = np.abs(components[:3]) * 3
    xx, yy, zz, xy, xz, yz = components
    matrices = np.stack(
        [np.stack([xx, xy, xz], -1), np.stack([xy, yy, yz], -1), np.stack([xz, yz, zz], -1)], -1
    )
    expected = np.linalg.eigvalsh(matrices)[..., ::-1] * scale
    mu = torch.stack(symmetric_eigen3(torch.from_numpy(components * scale).float()), -1).double().numpy()
    np.testing.assert_allclose(mu, expected, rtol=1e-4, atol=1e-4 * scale * np.abs(components).max())


@pytest.mark.parametrize("name", ["beta-tubulin.mrc", "emd_1832.map.gz"])
@pytest.mark.parametrize("mode", ["edge", "coherence"])
def test_real_maps_with_flat_solvent_stay_finite(name, mode):
    # Real EMDB maps whose solvent is flat (zero up to float32 residues): the default 10 steps used to turn
    # every voxel into NaN.
    volume, _ = read_volume(Path(__file__).parent / "data" / "maps" / name)
    result = anisotropic_diffusion(volume, mode=mode, n_iterations=10)
    assert torch.isfinite(result).all()
    assert float(result.mean()) == pytest.approx(float(volume.mean()), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("mode", ["edge", "coherence"])
def test_mean_is_conserved_and_constant_is_fixed(mode):
    volume = torch.randn(12, 13, 14, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    result = anisotropic_diffusion(volume, mode=mode, n_iterations=4, time_step=1 / 6)
    assert abs(float(result.mean() - volume.mean())) < 1e-13
    constant = torch.full((10, 10, 10), 2.0)
    torch.testing.assert_close(anisotropic_diffusion(constant, mode=mode, n_iterations=2), constant)


@pytest.mark.parametrize("mode", ["edge", "coherence"])
def test_tiled_equals_untiled(mode):
    volume = torch.randn(64, 64, 64, generator=torch.Generator().manual_seed(5))
    options = {"mode": mode, "n_iterations": 2, "sigma_voxels": 0.8, "rho_voxels": 1.0}
    whole = anisotropic_diffusion(volume, **options)
    tiled = anisotropic_diffusion_tiled(volume.numpy(), tile_shape=(24, 32, 40), **options)
    assert float((whole - tiled).abs().max()) < 1e-5
    assert float((whole - volume).abs().max()) > 0.1  # it did something
    assert diffusion_halo_voxels(0.8, 1.0, 2) == 2 * (3 + 4 + 2)


def test_large_cpu_volumes_are_stepped_in_tiles_with_the_same_result(monkeypatch):
    from aitom.ops import diffusion

    batch = torch.randn(2, 40, 44, 48, generator=torch.Generator().manual_seed(9))
    whole = anisotropic_diffusion(batch, n_iterations=2)
    monkeypatch.setattr(diffusion, "_CPU_BLOCK_BYTES", 2 * 4 * 30**3)  # 2 items of <= 30³ float32 per block
    assert diffusion._automatic_tile_shape(batch, diffusion_halo_voxels(1.0, 1.0)) != (40, 44, 48)
    torch.testing.assert_close(anisotropic_diffusion(batch, n_iterations=2), whole, rtol=0, atol=1e-5)


def test_batch_items_are_independent():
    rng = torch.Generator().manual_seed(6)
    batch = torch.randn(2, 12, 12, 12, generator=rng) * torch.tensor([1.0, 10.0])[:, None, None, None]
    together = anisotropic_diffusion(batch, n_iterations=2)
    torch.testing.assert_close(together[1], anisotropic_diffusion(batch[1], n_iterations=2))
    assert diffusion_contrast_k(batch).shape == (2, 1, 1, 1)


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum()))


def _blob_phantom(n: int, generator: torch.Generator) -> torch.Tensor:
    grid = torch.arange(n, dtype=torch.float64)
    z, y, x = torch.meshgrid(grid, grid, grid, indexing="ij")
    volume = torch.zeros(n, n, n, dtype=torch.float64)
    for _ in range(12):
        centre = torch.rand(3, generator=generator, dtype=torch.float64) * (n - 12) + 6
        radius = 2 + 3 * float(torch.rand(1, generator=generator))
        volume += torch.exp(
            -((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2) / (2 * radius**2)
        )
    return volume


def _filament_phantom(n: int) -> torch.Tensor:
    grid = torch.arange(n, dtype=torch.float64)
    z, y, x = torch.meshgrid(grid, grid, grid, indexing="ij")
    volume = torch.zeros(n, n, n, dtype=torch.float64)
    for cy, cz in [(12, 12), (30, 20), (20, 36), (38, 38)]:  # along x
        volume += torch.exp(-((y - cy) ** 2 + (z - cz) ** 2) / (2 * 1.5**2))
    return volume + torch.exp(-(((x + y) / 2**0.5 - 34) ** 2 + (z - 28) ** 2) / (2 * 1.5**2))  # diagonal


# Measured (48³, seed 7, 30 steps of 1/6): blobs EED cc 0.305 -> 0.940 at SNR 0.1, 0.103 -> 0.814 at 0.01;
# filaments CED cc 0.305 -> 0.731 at SNR 0.1, 0.103 -> 0.380 at 0.01. A Gaussian σ = 1.5 gives 0.95, 0.72
# (EED is as good, better at SNR 0.01) and 0.87, 0.59 (CED with default parameters is not).
@pytest.mark.parametrize(
    ("phantom", "mode", "snr", "iterations", "min_gain"),
    [
        ("blobs", "edge", 0.1, 30, 0.5),
        ("blobs", "edge", 0.01, 30, 0.5),
        ("filaments", "coherence", 0.1, 30, 0.3),
        ("filaments", "coherence", 0.01, 30, 0.15),
    ],
)
def test_diffusion_denoises_phantoms(phantom, mode, snr, iterations, min_gain):
    generator = torch.Generator().manual_seed(7)
    clean = _blob_phantom(48, generator) if phantom == "blobs" else _filament_phantom(48)
    noise = torch.randn(clean.shape, generator=generator, dtype=torch.float64)
    noisy = (clean + noise * clean.std() / snr**0.5).float()
    result = anisotropic_diffusion(
        noisy,
        mode=mode,
        n_iterations=iterations,
        time_step=1 / 6,
        rho_voxels=2.0 if mode == "coherence" else 1.0,
    )
    before, after = _correlation(noisy.double(), clean), _correlation(result.double(), clean)
    assert after - before > min_gain, (before, after)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"time_step": 0.2}, "1/6"),
        ({"time_step": 0.0}, "1/6"),
        ({"mode": "perona"}, "mode"),
        ({"n_iterations": -1}, "iterations"),
        ({"sigma_voxels": -1.0}, "sigma"),
        ({"alpha": 0.0}, "alpha"),
        ({"contrast_k": 0.0}, "contrast"),
        ({"mode": "coherence", "coherence_c": -1.0}, "coherence"),
    ],
)
def test_bad_parameters_raise_input_error(options, message):
    with pytest.raises(InputError, match=message):
        anisotropic_diffusion(torch.zeros(8, 8, 8), **options)


def test_module_equals_function(device):
    volume = torch.randn(10, 11, 12, generator=torch.Generator().manual_seed(8)).to(device)
    module = AnisotropicDiffusion3d(mode="coherence", n_iterations=2, rho_voxels=1.5)
    torch.testing.assert_close(
        module(volume), anisotropic_diffusion(volume, mode="coherence", n_iterations=2, rho_voxels=1.5)
    )


def test_gradcheck():
    volume = gaussian_filter3d(torch.randn(5, 6, 7, dtype=torch.float64), 1.0).requires_grad_()
    for mode in ("edge", "coherence"):
        assert torch.autograd.gradcheck(
            lambda v, mode=mode: anisotropic_diffusion(
                v, mode=mode, n_iterations=1, sigma_voxels=0.7, rho_voxels=0.7, contrast_k=0.1
            ),
            (volume,),
            fast_mode=True,
        )
