"""Gaussian, DoG and band-pass filters against scipy.ndimage and aitom.fourier."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from aitom.errors import InputError
from aitom.fourier import bandpass
from aitom.modules import BandpassFilter3d, DifferenceOfGaussians3d, GaussianFilter3d
from aitom.ops import bandpass_filter, difference_of_gaussians, gaussian_filter3d, gaussian_kernel1d

METHODS = ["separable", "fourier"]
#: float64 agreement with scipy (same kernel, same boundary): round-off only.
TOL64 = 1e-12


@pytest.fixture
def volume() -> np.ndarray:
    """Odd and even axes of different lengths: axis-order mistakes cannot hide."""
    return np.random.default_rng(0).standard_normal((13, 18, 23))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("sigma", [0.5, 1.7, 3.0, 8.0])
def test_gaussian_equals_scipy(volume, device, method, sigma):
    # sigma 8 has radius 32 > every axis: the reflection folds several times.
    expected = ndi.gaussian_filter(volume, sigma)
    result = gaussian_filter3d(torch.from_numpy(volume).to(device), sigma, method=method)
    np.testing.assert_allclose(result.cpu().numpy(), expected, atol=TOL64)


@pytest.mark.parametrize("method", METHODS)
def test_anisotropic_sigma_is_in_xyz_order_and_zero_skips_an_axis(volume, method):
    sigma_xyz = (0.0, 1.2, 2.5)
    expected = ndi.gaussian_filter(volume, sigma_xyz[::-1])
    result = gaussian_filter3d(torch.from_numpy(volume), sigma_xyz, method=method)
    np.testing.assert_allclose(result.numpy(), expected, atol=TOL64)


def test_boundary_is_scipy_reflect_not_torch_reflect():
    # A step at the edge tells the modes apart: scipy "reflect" repeats the edge voxel, "mirror" (torch's
    # "reflect") does not.
    volume = np.zeros((9, 9, 9))
    volume[..., 0] = 1.0
    result = gaussian_filter3d(torch.from_numpy(volume), 1.0).numpy()
    np.testing.assert_allclose(result, ndi.gaussian_filter(volume, 1.0, mode="reflect"), atol=TOL64)
    assert np.abs(result - ndi.gaussian_filter(volume, 1.0, mode="mirror")).max() > 0.05


def test_kernel_is_scipys():
    kernel = gaussian_kernel1d(2.0, truncate=3.0)
    impulse = np.zeros(31)
    impulse[15] = 1.0
    expected = ndi.gaussian_filter1d(impulse, 2.0, truncate=3.0)[15 - 6 : 15 + 7]
    np.testing.assert_allclose(kernel.numpy(), expected, atol=1e-15)
    assert kernel.numel() == 13 and torch.isclose(kernel.sum(), torch.tensor(1.0, dtype=kernel.dtype))


@pytest.mark.parametrize("method", METHODS)
def test_batch_dims_and_float32(device, method):
    rng = np.random.default_rng(1)
    batch = rng.standard_normal((2, 3, 10, 12, 14)).astype(np.float32)
    result = gaussian_filter3d(torch.from_numpy(batch).to(device), 1.5, method=method)
    assert result.shape == batch.shape and result.dtype == torch.float32 and result.device.type == device.type
    for i in range(2):
        for j in range(3):
            expected = ndi.gaussian_filter(batch[i, j].astype(np.float64), 1.5)
            np.testing.assert_allclose(result[i, j].cpu().numpy(), expected, atol=2e-6)


def test_chunked_cpu_path_equals_scipy():
    # Large enough to take the cache-sized chunk loops on every axis (both chunk layouts).
    volume = np.random.default_rng(2).standard_normal((140, 40, 30)).astype(np.float32)
    result = gaussian_filter3d(torch.from_numpy(volume), 1.3, method="separable")
    np.testing.assert_allclose(result.numpy(), ndi.gaussian_filter(volume.astype(np.float64), 1.3), atol=2e-6)


def test_auto_equals_scipy_for_short_and_long_kernels(volume):
    tensor = torch.from_numpy(volume)
    for sigma in (1.0, 6.0, 30.0):
        auto = gaussian_filter3d(tensor, sigma)
        np.testing.assert_allclose(auto.numpy(), ndi.gaussian_filter(volume, sigma), atol=TOL64)


def test_gaussian_preserves_the_sum_and_a_constant():
    constant = torch.full((8, 9, 10), 3.5, dtype=torch.float64)
    for method in METHODS:
        np.testing.assert_allclose(gaussian_filter3d(constant, 2.0, method=method).numpy(), 3.5, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_dog_equals_difference_of_scipy_gaussians(volume, device, method):
    expected = ndi.gaussian_filter(volume, 1.0) - ndi.gaussian_filter(volume, 1.6)
    result = difference_of_gaussians(torch.from_numpy(volume).to(device), 1.0, method=method)
    np.testing.assert_allclose(result.cpu().numpy(), expected, atol=TOL64)
    expected = ndi.gaussian_filter(volume, 1.0) - ndi.gaussian_filter(volume, 3.0)
    result = difference_of_gaussians(torch.from_numpy(volume).to(device), 1.0, 3.0, method=method)
    np.testing.assert_allclose(result.cpu().numpy(), expected, atol=TOL64)


def test_dog_peaks_on_a_blob_of_matching_size():
    # A Gaussian blob of width s: G(s1) - G(s2) at its centre is largest for s near s1 (positive response).
    grid = torch.arange(33, dtype=torch.float64) - 16
    z, y, x = torch.meshgrid(grid, grid, grid, indexing="ij")
    blob = torch.exp(-(x**2 + (y - 2) ** 2 + (z + 3) ** 2) / (2 * 2.0**2))
    response = difference_of_gaussians(blob, 2.0)
    peak = np.unravel_index(int(response.argmax()), response.shape)
    assert peak == (13, 18, 16) and float(response.max()) > 0


def test_bandpass_delegates_to_fourier(volume, device):
    tensor = torch.from_numpy(volume).to(device)
    expected = bandpass(tensor, voxel_size_a=5.0, highpass_a=60.0, lowpass_a=15.0, edge_width_frac=0.1)
    result = bandpass_filter(tensor, 5.0, 60.0, 15.0, 0.1)
    torch.testing.assert_close(result, expected)
    torch.testing.assert_close(BandpassFilter3d(5.0, 60.0, 15.0, 0.1)(tensor), expected)


def test_modules_equal_functions(volume, device):
    tensor = torch.from_numpy(volume).to(device)
    torch.testing.assert_close(
        GaussianFilter3d((1.0, 2.0, 0.5))(tensor), gaussian_filter3d(tensor, (1.0, 2.0, 0.5))
    )
    torch.testing.assert_close(
        DifferenceOfGaussians3d(1.0, 2.0)(tensor), difference_of_gaussians(tensor, 1.0, 2.0)
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda v: gaussian_filter3d(v, -1.0), "sigma"),
        (lambda v: gaussian_filter3d(v, (1.0, 2.0)), "three"),
        (lambda v: gaussian_filter3d(v, float("nan")), "finite"),
        (lambda v: gaussian_filter3d(v, 1.0, truncate=0.0), "truncate"),
        (lambda v: difference_of_gaussians(v, 2.0, 1.0), "sigma2"),
        (lambda v: bandpass_filter(v, 5.0, 10.0, 20.0), "high-pass"),
        (lambda v: bandpass_filter(v, 5.0, None, 8.0), "Nyquist"),
    ],
)
def test_bad_parameters_raise_input_error(call, message):
    with pytest.raises(InputError, match=message):
        call(torch.zeros(8, 8, 8))


def test_bad_tensors_raise_value_error():
    with pytest.raises(ValueError, match="Z, Y, X"):
        gaussian_filter3d(torch.zeros(8, 8), 1.0)
    with pytest.raises(ValueError, match="floating"):
        gaussian_filter3d(torch.zeros(8, 8, 8, dtype=torch.int64), 1.0)
    with pytest.raises(ValueError, match="method"):
        gaussian_filter3d(torch.zeros(8, 8, 8), 1.0, method="spline")


@pytest.mark.parametrize("method", METHODS)
def test_gradcheck(method):
    volume = torch.randn(5, 6, 7, dtype=torch.float64, requires_grad=True)
    for sigma in (1.0, 2.6):  # radius 4: shifted slices; 10: banded products
        assert torch.autograd.gradcheck(
            lambda v, s=sigma: gaussian_filter3d(v, s, method=method), (volume,), fast_mode=True
        )
    assert torch.autograd.gradcheck(
        lambda v: difference_of_gaussians(v, 0.7, 1.2, method=method), (volume,), fast_mode=True
    )
