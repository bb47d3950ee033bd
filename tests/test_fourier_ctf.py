"""aitom.fourier.ctf: wavelength, CTF sign and zeros against theory, astigmatism, corrections, dose."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aitom.errors import InputError
from aitom.fourier import (
    apply_fourier_filter,
    ctf_1d,
    ctf_2d,
    ctf_3d,
    ctf_zeros_a_inv,
    dose_weights,
    electron_wavelength_a,
    frequency_grid,
    nyquist_samples,
    phase_flip,
    radial_frequency,
    wiener_filter,
)


def test_electron_wavelength():
    assert electron_wavelength_a(300.0) == pytest.approx(0.01969, abs=5e-6)
    assert electron_wavelength_a(200.0) == pytest.approx(0.02508, abs=5e-6)
    # SI form h / sqrt(2 m e V (1 + e V / (2 m c^2))) with CODATA 2018 constants
    h, m, e, c = 6.62607015e-34, 9.1093837015e-31, 1.602176634e-19, 299792458.0
    for kv in (100.0, 200.0, 300.0):
        si = h / math.sqrt(2 * m * e * kv * 1e3 * (1 + e * kv * 1e3 / (2 * m * c**2))) * 1e10
        assert electron_wavelength_a(kv) == pytest.approx(si, rel=1e-9)
    # RELION's closed form (older constants) agrees to 1e-5 relative
    relion_300 = 12.2643247 / math.sqrt(300e3 * (1 + 300e3 * 0.978466e-6))
    assert electron_wavelength_a(300.0) == pytest.approx(relion_300, rel=1e-5)
    torch.testing.assert_close(
        electron_wavelength_a(torch.tensor([200.0, 300.0], dtype=torch.float64)),
        torch.tensor([electron_wavelength_a(200.0), electron_wavelength_a(300.0)], dtype=torch.float64),
    )


def _numerical_zeros(values: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Sign changes of sampled values, located by linear interpolation."""
    change = np.nonzero(np.sign(values[:-1]) * np.sign(values[1:]) < 0)[0]
    return k[change] - values[change] * (k[change + 1] - k[change]) / (values[change + 1] - values[change])


CTF_CASES = [
    {"defocus_um": 1.0},
    {"defocus_um": 2.5},
    {"defocus_um": 4.0, "voltage_kv": 200.0},
    {"defocus_um": 2.0, "cs_mm": 0.0},
    {"defocus_um": 2.0, "amplitude_contrast": 0.0},
    {"defocus_um": 3.0, "cs_mm": 0.0, "amplitude_contrast": 0.0},
    {"defocus_um": 0.5, "amplitude_contrast": 0.1, "phase_shift_deg": 90.0},
    {"defocus_um": -1.0},  # overfocus: zeros come from the Cs term going negative
    {"defocus_um": -1.5, "cs_mm": 0.0, "amplitude_contrast": 0.2},
]


@pytest.mark.parametrize("params", CTF_CASES)
def test_ctf_zeros_match_sign_changes(device, params):
    k = torch.linspace(0.0, 0.4, 400_001, dtype=torch.float64, device=device)  # 1e-6 Å⁻¹ steps
    values = ctf_1d(k, **params).cpu().numpy()
    numerical = _numerical_zeros(values, k.cpu().numpy())
    assert len(numerical) >= 3
    analytic = ctf_zeros_a_inv(len(numerical) + 1, device=device, dtype=torch.float64, **params).cpu().numpy()
    np.testing.assert_allclose(analytic[: len(numerical)], numerical, rtol=0, atol=1e-4)
    assert analytic[len(numerical)] > 0.4  # no zero missed below the end of the grid
    assert np.all(np.diff(analytic) > 0)


def test_ctf_zeros_past_the_top_of_chi():
    # Large Cs and small defocus: χ peaks at u = Δf / (Cs λ²) and the zeros continue on its falling side.
    params = {"defocus_um": 0.3, "cs_mm": 20.0, "amplitude_contrast": 0.07}
    k = torch.linspace(0.0, 1.5, 1_500_001, dtype=torch.float64)
    numerical = _numerical_zeros(ctf_1d(k, **params).numpy(), k.numpy())
    peak = math.sqrt(0.3e4 / (20e7 * electron_wavelength_a(300.0) ** 2))
    assert numerical.min() < peak < numerical.max()
    np.testing.assert_allclose(
        ctf_zeros_a_inv(len(numerical), dtype=torch.float64, **params).numpy(), numerical, atol=1e-4
    )


def test_ctf_at_zero_frequency_is_minus_amplitude_contrast(device):
    zero = torch.zeros(1, device=device)
    assert float(ctf_1d(zero, defocus_um=2.0, amplitude_contrast=0.07)) == pytest.approx(-0.07, abs=1e-6)
    assert float(ctf_1d(zero, defocus_um=2.0, amplitude_contrast=0.0, phase_shift_deg=90.0)) == pytest.approx(
        -1.0
    )
    # First lobe of an underfocused image is negative (dense objects dark), overfocus positive
    assert float(ctf_1d(torch.tensor([0.02], device=device), defocus_um=2.0)) < -0.07
    assert float(ctf_1d(torch.tensor([0.02], device=device), defocus_um=-2.0)) > 0


def test_ctf_formula_and_bfactor_envelope(device):
    k = torch.linspace(0.0, 0.3, 301, dtype=torch.float64, device=device)
    wavelength = electron_wavelength_a(300.0)
    chi = math.pi * wavelength * 2.0e4 * k**2 - math.pi / 2 * 2.7e7 * wavelength**3 * k**4
    a = 0.07
    expected = -(math.sqrt(1 - a**2) * torch.sin(chi) + a * torch.cos(chi))
    torch.testing.assert_close(ctf_1d(k, defocus_um=2.0), expected, rtol=0, atol=1e-12)
    damped = ctf_1d(k, defocus_um=2.0, b_factor_a2=150.0)
    torch.testing.assert_close(damped, expected * torch.exp(-150.0 * k**2 / 4), rtol=0, atol=1e-12)


def test_ctf_float32_agrees_with_float64(device):
    k = torch.linspace(0.0, 0.3, 1001, dtype=torch.float64, device=device)
    params = {"defocus_um": 3.0, "b_factor_a2": 20.0, "phase_shift_deg": 10.0}
    single = ctf_1d(k.float(), **params)
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), ctf_1d(k, **params), rtol=0, atol=1e-4)
    torch.testing.assert_close(
        electron_wavelength_a(torch.tensor(300.0)), torch.tensor(0.0196875), rtol=1e-6, atol=0
    )


def test_ctf_parameters_broadcast_as_batches(device):
    k = torch.linspace(0, 0.2, 50, device=device)
    defocus = torch.tensor([[1.0], [2.0], [3.0]], device=device)
    batched = ctf_1d(k, defocus_um=defocus)
    assert batched.shape == (3, 50)
    torch.testing.assert_close(batched[1], ctf_1d(k, defocus_um=2.0))


@pytest.mark.parametrize("angle_deg", [0.0, 90.0, 45.0, -45.0])
def test_astigmatic_ctf_2d_along_u_and_v(device, angle_deg):
    n, pixel_a, defocus_u, defocus_v = 64, 2.0, 1.5, 2.5
    ctf = ctf_2d(
        (n, n),
        pixel_size_a=pixel_a,
        defocus_u_um=defocus_u,
        defocus_v_um=defocus_v,
        astigmatism_angle_deg=angle_deg,
        rfft=False,
        centered=True,
        device=device,
        dtype=torch.float64,
    )
    grid = frequency_grid((n, n), voxel_size_a=pixel_a, device=device, dtype=torch.float64)
    direction = torch.atan2(grid[..., 1], grid[..., 0])
    radius = torch.linalg.vector_norm(grid, dim=-1)
    for axis_deg, defocus in ((angle_deg, defocus_u), (angle_deg + 90.0, defocus_v)):
        offset = torch.remainder(direction - math.radians(axis_deg), math.pi)
        along = (offset < 1e-9) | (math.pi - offset < 1e-9)
        on_axis = along & (radius > 0) & ~nyquist_samples((n, n), device=device).any(dim=-1)
        assert on_axis.sum() >= n // 2
        torch.testing.assert_close(
            ctf[on_axis], ctf_1d(radius[on_axis], defocus_um=defocus), rtol=0, atol=1e-12
        )


@pytest.mark.parametrize("shape", [(32, 32), (31, 30)])
def test_astigmatic_ctf_2d_is_friedel_symmetric_on_the_grid(device, shape):
    # Uncentred full layout: -k of index (i, j) is ((-i) mod Y, (-j) mod X), Nyquist lines included.
    ctf = ctf_2d(
        shape,
        pixel_size_a=2.0,
        defocus_u_um=1.0,
        defocus_v_um=2.0,
        astigmatism_angle_deg=30.0,
        rfft=False,
        device=device,
        dtype=torch.float64,
    )
    mirrored = torch.roll(torch.flip(ctf, dims=(0, 1)), shifts=(1, 1), dims=(0, 1))
    torch.testing.assert_close(ctf, mirrored, rtol=0, atol=1e-12)


def test_ctf_2d_batched_and_rfft_layout(device):
    defocus = torch.tensor([1.0, 2.0, 3.0], device=device)
    half = ctf_2d((32, 30), pixel_size_a=3.0, defocus_u_um=defocus, device=device, dtype=torch.float64)
    assert half.shape == (3, 32, 16)
    radius = radial_frequency(
        (32, 30), voxel_size_a=3.0, rfft=True, centered=False, device=device, dtype=torch.float64
    )
    torch.testing.assert_close(half[2], ctf_1d(radius, defocus_um=3.0))


def test_ctf_3d_is_radial_ctf(device):
    defocus = torch.tensor([2.0, 4.0])
    ctf = ctf_3d((16, 18, 20), voxel_size_a=5.0, defocus_um=defocus, device=device, dtype=torch.float64)
    assert ctf.shape == (2, 16, 18, 11)
    radius = radial_frequency(
        (16, 18, 20), voxel_size_a=5.0, rfft=True, centered=False, device=device, dtype=torch.float64
    )
    torch.testing.assert_close(ctf[1], ctf_1d(radius, defocus_um=4.0))


def test_phase_flip_makes_transfer_non_negative(device, rng):
    image = torch.randn(2, 48, 48, generator=rng, dtype=torch.float64).to(device)
    ctf = ctf_2d(
        (48, 48),
        pixel_size_a=2.0,
        defocus_u_um=2.0,
        defocus_v_um=2.6,
        astigmatism_angle_deg=30.0,
        device=device,
        dtype=torch.float64,
    )
    observed = apply_fourier_filter(image, ctf, spatial_dims=2)
    flipped = phase_flip(observed, ctf, spatial_dims=2)
    transfer = torch.fft.rfftn(flipped, dim=(-2, -1)) / torch.fft.rfftn(image, dim=(-2, -1))
    torch.testing.assert_close(transfer.real, ctf.abs().expand_as(transfer.real), rtol=0, atol=1e-9)
    assert transfer.real.min() >= -1e-9 and transfer.imag.abs().max() < 1e-9


def test_wiener_filter_transfer(device, rng):
    volume = torch.randn(20, 20, 20, generator=rng, dtype=torch.float64).to(device)
    ctf = ctf_3d((20, 20, 20), voxel_size_a=4.0, defocus_um=3.0, device=device, dtype=torch.float64)
    corrected = wiener_filter(apply_fourier_filter(volume, ctf), ctf, snr=10.0)
    transfer = torch.fft.rfftn(corrected) / torch.fft.rfftn(volume)
    torch.testing.assert_close(transfer.real, ctf**2 / (ctf**2 + 0.1), rtol=0, atol=1e-9)
    with pytest.raises(InputError):
        wiener_filter(volume, ctf, snr=0.0)


def test_dose_weights_grant_grigorieff(device):
    k = torch.tensor([0.0, 0.05, 0.1, 0.2], dtype=torch.float64, device=device)
    critical = 0.245 * np.array([0.05, 0.1, 0.2]) ** -1.665 + 2.81  # e/Å² at 300 kV
    weights = dose_weights(k, 20.0).cpu().numpy()
    assert weights[0] == 1.0
    np.testing.assert_allclose(weights[1:], np.exp(-20.0 / (2 * critical)), rtol=1e-12)
    np.testing.assert_allclose(
        dose_weights(k, 20.0, 200.0).cpu().numpy()[1:], np.exp(-20.0 / (1.6 * critical))
    )
    per_tilt = dose_weights(k, torch.tensor([[0.0], [10.0], [40.0]], dtype=torch.float64, device=device))
    assert per_tilt.shape == (3, 4) and torch.all(per_tilt[0] == 1)
    assert torch.all(per_tilt[2, 1:] < per_tilt[1, 1:]) and torch.all(per_tilt[1, 2:] < per_tilt[1, 1:-1])
    with pytest.raises(InputError):
        dose_weights(k, 20.0, voltage_kv=120.0)


@pytest.mark.parametrize(
    "kwargs",
    [{"amplitude_contrast": 1.0}, {"amplitude_contrast": -0.1}, {"cs_mm": -1.0}, {"voltage_kv": 0.0}],
)
def test_bad_ctf_parameters_raise_input_error(kwargs):
    with pytest.raises(InputError):
        ctf_1d(torch.zeros(3), defocus_um=1.0, **kwargs)
    with pytest.raises(InputError):
        ctf_zeros_a_inv(3, defocus_um=1.0, **kwargs)


def test_ctf_without_defocus_or_cs_has_no_zeros():
    with pytest.raises(InputError):
        ctf_zeros_a_inv(1, defocus_um=0.0, cs_mm=0.0)


def test_ctf_gradient_in_defocus(device):
    defocus = torch.tensor([2.0], dtype=torch.float64, device=device, requires_grad=True)
    k = torch.linspace(0.01, 0.2, 20, dtype=torch.float64, device=device)
    assert torch.autograd.gradcheck(lambda d: ctf_1d(k, defocus_um=d, b_factor_a2=50.0), (defocus,))
