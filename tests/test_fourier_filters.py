"""aitom.fourier.filters: band-pass kernel shape, filtering of analytic sinusoids, input validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aitom.errors import InputError
from aitom.fourier import apply_fourier_filter, bandpass, bandpass_filter_kernel, lowpass

VOXEL_A = 2.0  # Nyquist 0.25 cycles/Å


def _radius_a_inv(shape, voxel_size_a):
    axes = [np.fft.fftfreq(n, d=voxel_size_a) for n in shape[:-1]] + [
        np.fft.rfftfreq(shape[-1], d=voxel_size_a)
    ]
    return np.sqrt(sum(a**2 for a in np.meshgrid(*axes, indexing="ij")))


def test_kernel_is_one_in_band_zero_outside_cosine_in_edges(device):
    shape = (32, 32, 32)
    highpass_a, lowpass_a, edge_frac = 40.0, 8.0, 0.1
    kernel = (
        bandpass_filter_kernel(
            shape,
            voxel_size_a=VOXEL_A,
            highpass_a=highpass_a,
            lowpass_a=lowpass_a,
            edge_width_frac=edge_frac,
            device=device,
            dtype=torch.float64,
        )
        .cpu()
        .numpy()
    )
    k = _radius_a_inv(shape, VOXEL_A)
    half_edge = edge_frac * 0.25 / 2
    low, high = 1 / highpass_a, 1 / lowpass_a
    assert kernel.shape == (32, 32, 17)
    np.testing.assert_array_equal(kernel[(k >= low + half_edge) & (k <= high - half_edge)], 1.0)
    np.testing.assert_array_equal(kernel[(k <= low - half_edge) | (k >= high + half_edge)], 0.0)
    in_edge = (np.abs(k - high) < half_edge * 0.99) | (np.abs(k - low) < half_edge * 0.99)
    assert np.all((kernel[in_edge] > 0) & (kernel[in_edge] < 1))
    # raised cosine: 0.5 (1 + cos(pi (k - (cutoff - half_edge)) / edge)) on the low-pass edge
    upper_edge = np.abs(k - high) < half_edge
    expected = 0.5 * (1 + np.cos(math.pi * (k[upper_edge] - (high - half_edge)) / (2 * half_edge)))
    np.testing.assert_allclose(kernel[upper_edge], expected, atol=1e-12)


def test_hard_edges_are_binary_and_inclusive(device):
    kernel = bandpass_filter_kernel(
        (16, 16, 16), voxel_size_a=1.0, highpass_a=8.0, lowpass_a=4.0, edge_width_frac=0.0, device=device
    )
    k = torch.as_tensor(_radius_a_inv((16, 16, 16), 1.0), dtype=torch.float32, device=device)
    expected = ((k >= 1 / 8.0) & (k <= 1 / 4.0)).float()
    torch.testing.assert_close(kernel, expected)


def _sinusoid(cycles_per_box: int, n: int, device) -> torch.Tensor:
    x = torch.arange(n, device=device, dtype=torch.float64)
    return torch.cos(2 * math.pi * cycles_per_box * x / n).expand(n, n, n)


def test_bandpass_keeps_in_band_sinusoid_and_kills_others(device):
    # 32^3 at 2 Å: 2 cycles/box = 32 Å period, 5 cycles = 12.8 Å, 12 cycles = 5.3 Å.
    n = 32
    coarse, middle, fine = (_sinusoid(c, n, device) for c in (2, 5, 12))
    filtered = bandpass(coarse + middle + fine, voxel_size_a=VOXEL_A, highpass_a=20.0, lowpass_a=8.0)
    torch.testing.assert_close(filtered, middle, rtol=0, atol=1e-10)
    low = lowpass(coarse + fine, 10.0, VOXEL_A)
    torch.testing.assert_close(low, coarse, rtol=0, atol=1e-10)


def test_bandpass_batched_2d_and_dtype(device, rng):
    images = torch.randn(3, 24, 20, generator=rng).to(device)
    out = bandpass(images, voxel_size_a=VOXEL_A, lowpass_a=6.0, spatial_dims=2)
    assert out.shape == images.shape and out.dtype == torch.float32
    one_by_one = torch.stack(
        [bandpass(im, voxel_size_a=VOXEL_A, lowpass_a=6.0, spatial_dims=2) for im in images]
    )
    torch.testing.assert_close(out, one_by_one)
    assert out.var() < images.var()


def test_apply_fourier_filter_identity_and_shape_check(device, rng):
    volume = torch.randn(2, 6, 7, 8, generator=rng).to(device)
    torch.testing.assert_close(apply_fourier_filter(volume, torch.ones(6, 7, 5, device=device)), volume)
    with pytest.raises(ValueError, match="half-spectrum"):
        apply_fourier_filter(volume, torch.ones(6, 7, 8, device=device))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lowpass_a": 3.9}, "Nyquist"),
        ({"highpass_a": 10.0, "lowpass_a": 10.0}, "coarser"),
        ({"highpass_a": 8.0, "lowpass_a": 10.0}, "coarser"),
        ({"highpass_a": -1.0}, "positive"),
        ({"lowpass_a": 10.0, "edge_width_frac": -0.1}, "edge"),
    ],
)
def test_bad_parameters_raise_input_error(kwargs, match):
    with pytest.raises(InputError, match=match):
        bandpass_filter_kernel((8, 8, 8), voxel_size_a=VOXEL_A, **kwargs)


def test_bandpass_gradient(device):
    volume = torch.randn(6, 6, 6, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda v: bandpass(v, voxel_size_a=1.0, highpass_a=5.0, lowpass_a=2.5, edge_width_frac=0.2), (volume,)
    )
