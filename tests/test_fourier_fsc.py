"""aitom.fourier.fsc: FSC against a NumPy full-spectrum reference and against statistics of known SNR."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aitom.fourier import (
    fourier_shell_correlation,
    fsc_resolutions,
    resolution_at,
    shell_index,
    ssnr_from_fsc,
)


def _numpy_fsc(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Full-spectrum reference: returns (fsc, number of Fourier voxels) per shell."""
    n = min(a.shape)
    axes = [np.fft.fftfreq(m) for m in a.shape]
    radius = np.sqrt(sum(k**2 for k in np.meshgrid(*axes, indexing="ij")))
    index = np.round(radius * n).astype(int).ravel()
    keep = index < n // 2 + 1
    fa, fb = np.fft.fftn(a).ravel()[keep], np.fft.fftn(b).ravel()[keep]
    index = index[keep]
    cross = np.bincount(index, weights=(fa * fb.conj()).real)
    power_a = np.bincount(index, weights=np.abs(fa) ** 2)
    power_b = np.bincount(index, weights=np.abs(fb) ** 2)
    return cross / np.sqrt(power_a * power_b), np.bincount(index)


@pytest.mark.parametrize("shape", [(16, 16, 16), (12, 14, 15), (11, 13, 9)])
def test_fsc_matches_numpy_reference(device, rng, shape):
    a = torch.randn(*shape, generator=rng, dtype=torch.float64)
    b = a + torch.randn(*shape, generator=rng, dtype=torch.float64)
    frequency, fsc = fourier_shell_correlation(a.to(device), b.to(device))
    expected, _ = _numpy_fsc(a.numpy(), b.numpy())
    n = min(shape)
    np.testing.assert_allclose(frequency.cpu().numpy(), np.arange(n // 2 + 1) / n)
    np.testing.assert_allclose(fsc.cpu().numpy(), expected, rtol=0, atol=1e-12)


def test_fsc_of_volume_with_itself_is_one(device, rng):
    volume = torch.randn(2, 24, 24, 24, generator=rng).to(device)
    _, fsc = fourier_shell_correlation(volume, volume)
    assert fsc.shape == (2, 13)
    torch.testing.assert_close(fsc, torch.ones_like(fsc), rtol=0, atol=1e-5)
    _, negated = fourier_shell_correlation(volume, -2.0 * volume)
    torch.testing.assert_close(negated, -torch.ones_like(negated), rtol=0, atol=1e-5)


def test_fsc_of_independent_noise_is_zero_within_statistics(device, rng):
    n = 64
    a = torch.randn(n, n, n, generator=rng, dtype=torch.float64)
    b = torch.randn(n, n, n, generator=rng, dtype=torch.float64)
    _, fsc = fourier_shell_correlation(a.to(device), b.to(device))
    fsc = fsc.cpu().numpy()
    _, counts = _numpy_fsc(a.numpy(), b.numpy())
    assert abs(fsc[1:].mean()) < 0.05
    # The FSC of independent noise has standard deviation 1 / sqrt(voxels in the shell). Beyond shell 4 (28
    # shells): at most one outside 3 sigma (all 28 inside 3 sigma: ~93% of seeds; at most one: ~99.7%) and
    # none outside 4 sigma. Measured with this seed: largest 2.96 sigma.
    sigmas = np.abs(fsc[5:]) * np.sqrt(counts[5:])
    assert np.sum(sigmas > 3) <= 1 and np.all(sigmas < 4)


def test_fsc_of_signal_plus_noise_is_snr_over_one_plus_snr(device, rng):
    n, snr = 48, 0.5
    signal = torch.randn(n, n, n, generator=rng, dtype=torch.float64)
    noise_sigma = math.sqrt(1 / snr)
    a = signal + noise_sigma * torch.randn(n, n, n, generator=rng, dtype=torch.float64)
    b = signal + noise_sigma * torch.randn(n, n, n, generator=rng, dtype=torch.float64)
    _, fsc = fourier_shell_correlation(a.to(device), b.to(device))
    expected = snr / (1 + snr)
    _, counts = _numpy_fsc(a.numpy(), b.numpy())
    shells = slice(4, None)
    # Per shell within 4 standard deviations (about (1 - FSC^2) / sqrt(voxels)); the voxel-weighted mean
    # (standard deviation ~0.0015) within 0.01; the spectral SNR back within 5%.
    fsc, counts = fsc[shells].cpu().numpy(), counts[shells]
    deviation = (fsc - expected) * np.sqrt(counts) / (1 - expected**2)
    assert np.all(np.abs(deviation) < 4)
    assert np.average(fsc, weights=counts) == pytest.approx(expected, abs=0.01)
    ssnr = ssnr_from_fsc(torch.as_tensor(fsc)).numpy()
    assert np.average(ssnr, weights=counts) == pytest.approx(snr, rel=0.05)


def test_fsc_with_mask_equals_fsc_of_masked_volumes(device, rng):
    a = torch.randn(16, 16, 16, generator=rng).to(device)
    b = torch.randn(16, 16, 16, generator=rng).to(device)
    mask = torch.zeros(16, 16, 16, device=device)
    mask[4:12, 4:12, 4:12] = 1.0
    _, masked = fourier_shell_correlation(a, b, mask=mask)
    _, reference = fourier_shell_correlation(a * mask, b * mask)
    torch.testing.assert_close(masked, reference)


def test_resolution_at_known_crossing():
    # FSC = 1 - 2 f on shells f = i / 32: crosses 0.143 at f = 0.4285 and 0.5 at f = 0.25 exactly.
    frequency = torch.arange(17, dtype=torch.float64) / 32
    fsc = 1 - 2 * frequency
    assert float(resolution_at(frequency, fsc, 0.143, voxel_size_a=3.0)) == pytest.approx(3.0 / 0.4285)
    assert float(resolution_at(frequency, fsc, 0.5, voxel_size_a=3.0)) == pytest.approx(3.0 / 0.25)
    curves = torch.stack(
        [fsc, torch.ones(17, dtype=torch.float64), torch.full((17,), 0.1, dtype=torch.float64)]
    )
    resolutions = resolution_at(frequency, curves, 0.143, voxel_size_a=3.0)
    assert resolutions.shape == (3,)
    assert float(resolutions[1]) == 6.0  # never crosses: Nyquist
    assert math.isinf(float(resolutions[2]))  # below already at shell 1


def test_fsc_resolutions_of_band_limited_copies(device, rng):
    # Two copies sharing a signal that fills shells 0..8 (|k| < 8.5 / 32 cycles/voxel), independent noise
    # beyond: both thresholds are crossed between shell 8 (8 Å at 2 Å/voxel) and shell 9 (7.11 Å).
    n = 32
    signal = torch.randn(n, n, n, generator=rng, dtype=torch.float64)
    band = shell_index((n, n, n), centered=False) <= 8
    band_limited = torch.fft.ifftn(torch.fft.fftn(signal) * band).real
    a = band_limited + 0.01 * torch.randn(n, n, n, generator=rng, dtype=torch.float64)
    b = band_limited + 0.01 * torch.randn(n, n, n, generator=rng, dtype=torch.float64)
    result = fsc_resolutions(a.to(device), b.to(device), voxel_size_a=2.0)
    assert set(result) == {"fsc_0.5_a", "fsc_0.143_a"}
    assert 2.0 / (9 / 32) < result["fsc_0.143_a"] < result["fsc_0.5_a"] < 2.0 / (8 / 32)


def test_ssnr_from_fsc_values_and_clamping():
    fsc = torch.tensor([0.5, 1 / 3, -0.2, 1.0])
    torch.testing.assert_close(ssnr_from_fsc(fsc), torch.tensor([1.0, 0.5, 0.0, 999.0]), rtol=1e-4, atol=1e-5)


def test_shells_of_non_cubic_boxes_are_spherical():
    # 8 x 16 x 32 box: shell 2 (of width 1/8 cycles/voxel) reaches 2 samples along Z, 4 along Y, 8 along X.
    index = shell_index((8, 16, 32), centered=False)
    assert index[2, 0, 0] == 2 and index[0, 4, 0] == 2 and index[0, 0, 8] == 2


def test_fsc_gradient(device):
    a = torch.randn(6, 6, 6, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(6, 6, 6, dtype=torch.float64, device=device)
    assert torch.autograd.gradcheck(lambda v: fourier_shell_correlation(v, b)[1], (a,))


def test_fsc_rejects_mismatched_volumes():
    with pytest.raises(ValueError):
        fourier_shell_correlation(torch.zeros(8, 8, 8), torch.zeros(8, 8, 9))
