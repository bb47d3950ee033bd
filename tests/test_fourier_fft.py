"""aitom.fourier.fft: centred FFTs against NumPy, frequency grids against fftfreq, radial averages."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aitom.fourier import (
    fftn_centered,
    frequency_grid,
    hermitian_half_to_centered,
    ifftn_centered,
    irfftn_centered,
    nyquist_samples,
    radial_average,
    radial_frequency,
    rfftn_centered,
    shell_index,
)

SHAPES = [(8, 8, 8), (5, 6, 7), (9, 4, 10)]


@pytest.mark.parametrize("shape", SHAPES)
def test_fftn_centered_matches_numpy_and_inverts(device, rng, shape):
    x = torch.randn(2, *shape, generator=rng, dtype=torch.float64)
    expected = np.fft.fftshift(
        np.fft.fftn(np.fft.ifftshift(x.numpy(), axes=(1, 2, 3)), axes=(1, 2, 3)), axes=(1, 2, 3)
    )
    spectrum = fftn_centered(x.to(device))
    np.testing.assert_allclose(spectrum.cpu().numpy(), expected, rtol=0, atol=1e-10)
    np.testing.assert_allclose(ifftn_centered(spectrum).real.cpu().numpy(), x.numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_rfftn_centered_matches_numpy_and_inverts(device, rng, shape):
    x = torch.randn(*shape, generator=rng, dtype=torch.float64)
    expected = np.fft.fftshift(np.fft.rfftn(np.fft.ifftshift(x.numpy())), axes=(0, 1))
    spectrum = rfftn_centered(x.to(device))
    np.testing.assert_allclose(spectrum.cpu().numpy(), expected, rtol=0, atol=1e-10)
    np.testing.assert_allclose(irfftn_centered(spectrum, shape).cpu().numpy(), x.numpy(), rtol=0, atol=1e-12)


def test_fftn_centered_of_centred_delta_is_flat(device):
    # A delta at the box centre (voxel N // 2) has phase 0 everywhere: the spectrum is real and constant.
    x = torch.zeros(7, 8, 9, device=device)
    x[3, 4, 4] = 1.0
    spectrum = fftn_centered(x)
    torch.testing.assert_close(spectrum, torch.ones_like(spectrum), rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(6, 7, 8), (7, 8), (5, 5, 5)])
@pytest.mark.parametrize("rfft", [False, True])
@pytest.mark.parametrize("centered", [False, True])
def test_frequency_grid_matches_fftfreq(device, shape, rfft, centered):
    voxel_size_a = 2.5
    axes = []
    for i, n in enumerate(shape):
        if rfft and i == len(shape) - 1:
            axes.append(np.fft.rfftfreq(n, d=voxel_size_a))
        else:
            axis = np.fft.fftfreq(n, d=voxel_size_a)
            axes.append(np.fft.fftshift(axis) if centered else axis)
    expected = np.stack(np.meshgrid(*axes, indexing="ij")[::-1], axis=-1)  # (kx, ky[, kz]) last
    grid = frequency_grid(
        shape, voxel_size_a=voxel_size_a, rfft=rfft, centered=centered, device=device, dtype=torch.float64
    )
    assert grid.device.type == device.type
    np.testing.assert_allclose(grid.cpu().numpy(), expected, rtol=0, atol=1e-15)
    radius = radial_frequency(shape, voxel_size_a=voxel_size_a, rfft=rfft, centered=centered, device=device)
    np.testing.assert_allclose(radius.cpu().numpy(), np.linalg.norm(expected, axis=-1), rtol=1e-6)


def test_frequency_grid_centre_is_zero_and_vector_order_is_xyz():
    grid = frequency_grid((4, 6, 8))
    assert torch.all(grid[2, 3, 4] == 0)
    assert grid[2, 3, 5, 0] == pytest.approx(1 / 8)  # one step along X changes kx
    assert grid[2, 4, 4, 1] == pytest.approx(1 / 6)  # along Y: ky
    assert grid[3, 3, 4, 2] == pytest.approx(1 / 4)  # along Z: kz


def test_shell_index_is_rounded_radius_times_n_for_cubes():
    n = 10
    k = np.fft.fftshift(np.fft.fftfreq(n))
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    expected = np.round(np.sqrt(kx**2 + ky**2 + kz**2) * n)
    np.testing.assert_array_equal(shell_index((n, n, n)).numpy(), expected)


@pytest.mark.parametrize("shape", [(16, 16, 16), (12, 16, 20)])
def test_radial_average_matches_bincount_reference(device, rng, shape):
    values = torch.randn(3, *shape, generator=rng, dtype=torch.float64)
    n = min(shape)
    axes = [np.fft.fftshift(np.fft.fftfreq(m)) for m in shape]
    radius = np.sqrt(sum(a**2 for a in np.meshgrid(*axes, indexing="ij")))
    index = np.floor(radius * n + 0.5).astype(int).ravel()  # half up: shells of any parity alike
    keep = index < n // 2 + 1
    expected = np.stack(
        [np.bincount(index[keep], weights=v.ravel()[keep]) / np.bincount(index[keep]) for v in values.numpy()]
    )
    result = radial_average(values.to(device))
    assert result.shape == (3, n // 2 + 1)
    np.testing.assert_allclose(result.cpu().numpy(), expected, rtol=1e-12, atol=1e-12)


def test_radial_average_recovers_radial_function(device):
    # A smooth radial profile f(|k|) is recovered at the shell centres i / N to 1% of its peak (shells >= 2;
    # the rest is the lattice's uneven sampling of each shell, measured 0.0074 at 64^3), and exactly for a
    # profile constant on each shell.
    n = 64
    radius = radial_frequency((n, n, n), device=device, dtype=torch.float64)
    profile = lambda k: torch.exp(-((k / 0.2) ** 2))  # noqa: E731
    recovered = radial_average(profile(radius))
    expected = profile(torch.arange(n // 2 + 1, device=device, dtype=torch.float64) / n)
    torch.testing.assert_close(recovered[2:], expected[2:], rtol=0, atol=0.01)
    stepped = torch.cos(shell_index((n, n, n), device=device).double())
    torch.testing.assert_close(
        radial_average(stepped),
        torch.cos(torch.arange(n // 2 + 1, device=device).double()),
        rtol=0,
        atol=1e-12,
    )


def test_radial_average_2d_uncentred_and_empty_shells(device):
    values = torch.ones(2, 9, 12, device=device)
    torch.testing.assert_close(
        radial_average(values, spatial_dims=2, centered=False), torch.ones(2, 5, device=device)
    )
    beyond_corners = radial_average(values, n_shells=12, spatial_dims=2)
    assert torch.isnan(beyond_corners[..., -1]).all()
    with pytest.raises(ValueError):
        radial_average(torch.ones(4, 4), spatial_dims=3)


def test_radial_average_gradient(device):
    values = torch.randn(5, 6, 7, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: radial_average(v), (values,))


@pytest.mark.parametrize("rfft", [False, True])
@pytest.mark.parametrize("centered", [False, True])
def test_nyquist_samples_are_the_half_cycle_frequencies_of_even_axes(device, rfft, centered):
    shape = (6, 7, 8)
    grid = frequency_grid(shape, rfft=rfft, centered=centered, dtype=torch.float64)
    expected = grid.abs() == 0.5
    expected[..., 1] = False  # Y is odd: 7 samples never reach 1/2 cycle
    nyquist = nyquist_samples(shape, rfft=rfft, centered=centered, device=device)
    assert nyquist.dtype == torch.bool and nyquist.device.type == device.type
    torch.testing.assert_close(nyquist.cpu(), expected)


@pytest.mark.parametrize("shape", [(8, 8, 8), (9, 9, 9), (6, 7, 10), (5, 6, 7)])
def test_hermitian_half_to_centered_matches_the_full_numpy_power_spectrum(shape):
    # |F|² of a real volume is real and centrosymmetric: its rfft half, completed, is numpy's full one.
    volume = np.random.default_rng(0).standard_normal(shape)
    expected = np.fft.fftshift(np.abs(np.fft.fftn(volume)) ** 2)
    half = torch.from_numpy(np.abs(np.fft.rfftn(volume)) ** 2)
    np.testing.assert_allclose(hermitian_half_to_centered(half, shape[-1]).numpy(), expected, rtol=1e-10)
    with pytest.raises(ValueError, match="size_x // 2 \\+ 1"):
        hermitian_half_to_centered(half, shape[-1] + 2)
