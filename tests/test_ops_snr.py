"""SNR from paired copies: synthetic pairs at known SNR, correlations against NumPy, spectral SNR."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aitom.errors import InputError
from aitom.ops import gaussian_filter3d, pair_correlations, snr_from_cc, snr_from_pairs, ssnr_from_pairs


def make_pairs(snr: float, n_pairs: int, size: int, seed: int, device: torch.device | str = "cpu"):
    """Blob-field signals (one per pair) plus independent white noise with var(noise) = var(signal) / snr."""
    generator = torch.Generator().manual_seed(seed)
    signal = gaussian_filter3d(torch.randn(n_pairs, size, size, size, generator=generator), 1.5)
    signal = (signal - signal.mean((-3, -2, -1), keepdim=True)) / signal.std(dim=(-3, -2, -1), keepdim=True)
    noise_std = 1 / snr**0.5
    a = signal + noise_std * torch.randn(signal.shape, generator=generator)
    b = signal + noise_std * torch.randn(signal.shape, generator=generator)
    return a.to(device), b.to(device)


# Per-pair cc scatter is about 1/sqrt(voxels) = 0.0055 at 32³: 64 pairs make SNR 0.01 good to ~7% (1 sigma).
@pytest.mark.parametrize(("snr", "n_pairs"), [(0.01, 64), (0.1, 16), (1.0, 8)])
def test_snr_within_20_percent(device, snr, n_pairs):
    a, b = make_pairs(snr, n_pairs, 32, seed=int(snr * 1000), device=device)
    result = snr_from_pairs(a, b)
    assert abs(result["snr"] - snr) < 0.2 * snr, result
    assert result["ci_low"] <= result["snr"] <= result["ci_high"]
    assert result["n_pairs"] == n_pairs
    assert result["cc_mean"] == pytest.approx(snr / (1 + snr), rel=0.2)


def test_bootstrap_interval_covers_the_truth_and_is_seeded():
    a, b = make_pairs(0.1, 32, 24, seed=1)
    first, second = snr_from_pairs(a, b, seed=3), snr_from_pairs(a, b, seed=3)
    assert first == second
    assert first["ci_low"] < 0.1 < first["ci_high"]


def test_single_pair_uses_fisher_interval():
    a, b = make_pairs(1.0, 1, 32, seed=2)
    result = snr_from_pairs(a, b)
    assert result["n_pairs"] == 1 and result["ci_low"] < result["snr"] < result["ci_high"]
    assert result["snr"] == pytest.approx(1.0, rel=0.1)


def test_pair_correlations_match_numpy_and_mask_selects_voxels():
    a, b = make_pairs(0.5, 3, 12, seed=3)
    expected = [np.corrcoef(a[i].flatten().numpy(), b[i].flatten().numpy())[0, 1] for i in range(3)]
    np.testing.assert_allclose(pair_correlations(a, b).numpy(), expected, atol=1e-5)
    mask = torch.zeros(12, 12, 12)
    mask[2:9, 3:10, 1:7] = 1.0
    inside = mask.bool()
    expected = [np.corrcoef(a[i][inside].numpy(), b[i][inside].numpy())[0, 1] for i in range(3)]
    np.testing.assert_allclose(pair_correlations(a, b, mask).numpy(), expected, atol=1e-5)


def test_snr_from_cc_clamps():
    assert snr_from_cc(0.5) == pytest.approx(1.0)
    assert snr_from_cc(-0.2) == 0.0
    torch.testing.assert_close(snr_from_cc(torch.tensor([0.5, -1.0])), torch.tensor([1.0, 0.0]))


def test_spectral_snr_is_flat_for_white_signal():
    # White signal and white noise: every shell has the same SNR (here 0.5); shells beyond 2 have >= 100
    # samples, so the FSC scatter is below ~0.1 / sqrt(n_pairs).
    generator = torch.Generator().manual_seed(4)
    signal = torch.randn(8, 24, 24, 24, generator=generator)
    a = signal + 2**0.5 * torch.randn(signal.shape, generator=generator)
    b = signal + 2**0.5 * torch.randn(signal.shape, generator=generator)
    frequency, ssnr = ssnr_from_pairs(a, b)
    assert frequency.shape == ssnr.shape == (13,)
    np.testing.assert_allclose(ssnr[3:].numpy(), 0.5, rtol=0.2)


def test_bad_input():
    with pytest.raises(InputError, match="same shape"):
        snr_from_pairs(torch.zeros(2, 8, 8, 8), torch.zeros(3, 8, 8, 8))
    with pytest.raises(InputError, match="P, Z, Y, X"):
        snr_from_pairs(torch.zeros(8, 8, 8), torch.zeros(8, 8, 8))
    with pytest.raises(InputError, match="no voxel"):
        snr_from_pairs(torch.ones(2, 8, 8, 8), torch.ones(2, 8, 8, 8), torch.zeros(8, 8, 8))
    with pytest.raises(InputError, match="confidence"):
        snr_from_pairs(torch.ones(2, 8, 8, 8), torch.ones(2, 8, 8, 8), confidence=1.5)
