"""aitom.fourier.wedge: the missing-wedge geometry of the common conventions, checked three ways.

1. Against an independent NumPy statement of the rule (observed iff atan(kz/kx) in [min, max]).
2. At points of known angle, symmetric and asymmetric ranges, Friedel symmetry, observed fraction.
3. Physically: a tilt image at angle α (projection along Z of the volume rotated actively by Ry(α), done with
   scipy.ndimage) sees a plane wave exactly when the mask says that the wave's frequency is observed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage
import torch

from aitom.errors import InputError
from aitom.fourier import apply_missing_wedge, missing_wedge_mask, wedge_observed_fraction


def _numpy_mask(shape, tilt_min_deg, tilt_max_deg, rfft=False, centered=True):
    axes = []
    for i, n in enumerate(shape):
        if rfft and i == 2:
            axes.append(np.fft.rfftfreq(n))
        else:
            axes.append(np.fft.fftshift(np.fft.fftfreq(n)) if centered else np.fft.fftfreq(n))
    kz, _, kx = np.meshgrid(*axes, indexing="ij")

    def rule(kx, kz):
        with np.errstate(divide="ignore", invalid="ignore"):
            angle = np.degrees(np.arctan(kz / kx))
        observed = (kx != 0) & (angle >= tilt_min_deg) & (angle <= tilt_max_deg)
        observed |= (kx == 0) & (kz == 0)
        observed |= (kx == 0) & (kz != 0) & ((tilt_max_deg >= 90) | (tilt_min_deg <= -90))
        return observed

    # Samples on the Nyquist plane of an even axis stand for +-1/2 and must see both angles.
    at_nyquist = ((np.abs(kz) == 0.5) & (shape[0] % 2 == 0)) | ((np.abs(kx) == 0.5) & (shape[2] % 2 == 0))
    observed = np.where(at_nyquist, rule(kx, kz) & rule(kx, -kz), rule(kx, kz))
    return observed.astype(np.float32)


@pytest.mark.parametrize("tilt_range", [(-60, 60), (-40, 60), (-45, 45), (0, 30), (-90, 90), (-90, -70)])
@pytest.mark.parametrize("shape", [(16, 16, 16), (15, 12, 18)])
def test_mask_matches_numpy_rule(device, tilt_range, shape):
    for rfft, centered in [(False, True), (False, False), (True, False), (True, True)]:
        mask = missing_wedge_mask(
            shape,
            tilt_min_deg=tilt_range[0],
            tilt_max_deg=tilt_range[1],
            rfft=rfft,
            centered=centered,
            device=device,
        )
        expected = _numpy_mask(shape, *tilt_range, rfft=rfft, centered=centered)
        np.testing.assert_array_equal(mask.cpu().numpy(), expected)


def _value_at(mask, kx, kz, n):
    """Mask value at integer frequency indices (kx, ky=0, kz) of a centred full n^3 mask."""
    return float(mask[n // 2 + kz, n // 2, n // 2 + kx])


def test_mask_at_points_of_known_angle(device):
    n = 64
    symmetric = missing_wedge_mask((n, n, n), device=device)
    asymmetric = missing_wedge_mask((n, n, n), tilt_min_deg=-40, tilt_max_deg=60, device=device)
    assert math.degrees(math.atan(12 / 10)) == pytest.approx(50.19, abs=0.01)
    assert math.degrees(math.atan(27 / 10)) == pytest.approx(69.68, abs=0.01)
    assert _value_at(symmetric, 10, 12, n) == 1  # +50°: observed by ±60
    assert _value_at(symmetric, 10, -12, n) == 1  # −50°
    assert _value_at(symmetric, 10, 27, n) == 0  # +70°: in the wedge
    assert _value_at(symmetric, 10, -27, n) == 0
    assert _value_at(asymmetric, 10, 12, n) == 1  # +50° in (−40, 60)
    assert _value_at(asymmetric, 10, -12, n) == 0  # −50° not
    assert _value_at(asymmetric, -10, 12, n) == 0  # atan(12 / −10) = −50°
    assert _value_at(asymmetric, 10, -8, n) == 1  # −38.7°
    assert _value_at(symmetric, 0, 5, n) == 0  # kx = 0: only a ±90° tilt sees it
    assert float(symmetric[n // 2, :, n // 2].min()) == 1  # the ky line (kx = kz = 0) is always observed


@pytest.mark.parametrize("tilt_range", [(-60, 60), (-40, 60)])
def test_mask_is_friedel_symmetric(device, tilt_range):
    n = 16  # uncentred full layout: -k of index i is index (-i) mod n
    mask = missing_wedge_mask(
        (n, n, n), tilt_min_deg=tilt_range[0], tilt_max_deg=tilt_range[1], centered=False, device=device
    )
    mirrored = torch.roll(torch.flip(mask, dims=(0, 1, 2)), shifts=(1, 1, 1), dims=(0, 1, 2))
    torch.testing.assert_close(mask, mirrored)


@pytest.mark.parametrize(("tilt_range", "width_deg"), [((-60, 60), 120), ((-40, 60), 100), ((-30, 30), 60)])
def test_observed_fraction_is_angular_width_over_180(tilt_range, width_deg):
    fraction = wedge_observed_fraction((32, 32, 32), tilt_min_deg=tilt_range[0], tilt_max_deg=tilt_range[1])
    assert fraction == pytest.approx(width_deg / 180, rel=0.02)


def test_apply_missing_wedge_zeroes_the_wedge_and_keeps_the_rest(device, rng):
    volumes = torch.randn(2, 20, 20, 20, generator=rng, dtype=torch.float64).to(device)
    wedged = apply_missing_wedge(volumes, -40.0, 60.0)
    assert wedged.shape == volumes.shape and wedged.dtype == volumes.dtype
    mask = missing_wedge_mask(
        (20, 20, 20), tilt_min_deg=-40, tilt_max_deg=60, device=device, dtype=torch.bool
    )
    spectrum = torch.fft.fftshift(torch.fft.fftn(wedged, dim=(-3, -2, -1)), dim=(-3, -2, -1))
    original = torch.fft.fftshift(torch.fft.fftn(volumes, dim=(-3, -2, -1)), dim=(-3, -2, -1))
    assert spectrum[:, ~mask].abs().max() < 1e-10 * original.abs().max()
    torch.testing.assert_close(spectrum[:, mask], original[:, mask], rtol=0, atol=1e-9)


def test_soft_edge_lies_between_hard_masks(device):
    shape = (24, 24, 24)
    hard = missing_wedge_mask(shape, device=device)
    wider = missing_wedge_mask(shape, tilt_min_deg=-70, tilt_max_deg=70, device=device)
    soft = missing_wedge_mask(shape, edge_deg=10.0, device=device)
    assert torch.all(soft[hard == 1] == 1)
    assert torch.all(soft[wider == 0] == 0)
    between = (wider == 1) & (hard == 0)
    assert torch.all((soft[between] > 0) & (soft[between] < 1))


def _rotation_y(alpha_deg):
    c, s = math.cos(math.radians(alpha_deg)), math.sin(math.radians(alpha_deg))
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])  # on (x, y, z)


def _tilt_image(volume_zyx, alpha_deg):
    """Projection along Z of the volume rotated actively by Ry(alpha): out(x) = in(Ry^T x) about N // 2."""
    rotation_xyz = _rotation_y(alpha_deg)
    flip = np.eye(3)[::-1]  # (x, y, z) <-> (z, y, x) index order
    matrix_zyx = flip @ rotation_xyz.T @ flip
    centre = np.array(volume_zyx.shape) // 2
    rotated = scipy.ndimage.affine_transform(
        volume_zyx, matrix_zyx, offset=centre - matrix_zyx @ centre, order=1
    )
    return rotated.sum(axis=0)


@pytest.mark.parametrize("wave_angle_deg", [50.0, -50.0])
def test_tilt_images_see_exactly_the_observed_frequencies(device, wave_angle_deg):
    # A Gaussian-windowed plane wave with wave vector at angle θ = atan(kz / kx) in the kx-kz plane.
    n, sigma = 48, 6.0
    k = 5 / n
    kx, kz = k * math.cos(math.radians(wave_angle_deg)), k * math.sin(math.radians(wave_angle_deg))
    z, y, x = (np.arange(n) - n // 2 for _ in range(3))
    z, y, x = np.meshgrid(z, y, x, indexing="ij")
    wave = np.cos(2 * np.pi * (kx * x + kz * z)) * np.exp(-(x**2 + y**2 + z**2) / (2 * sigma**2))
    # The tilt at α = θ projects the wave to full strength; the mirror tilt α = −θ wipes it out.
    seen = np.abs(_tilt_image(wave, wave_angle_deg)).max()
    unseen = np.abs(_tilt_image(wave, -wave_angle_deg)).max()
    assert unseen < 0.02 * seen
    # So (−40, 60) observes the +50° wave and not the −50° one, as the mask says at that frequency.
    mask = missing_wedge_mask((n, n, n), tilt_min_deg=-40, tilt_max_deg=60, device=device)
    wave_index = np.round(np.array([kz, 0, kx]) * n).astype(int) + n // 2
    assert float(mask[tuple(wave_index)]) == (1.0 if wave_angle_deg == 50.0 else 0.0)


@pytest.mark.parametrize(
    "kwargs", [{"tilt_min_deg": 60, "tilt_max_deg": -60}, {"tilt_min_deg": -100}, {"edge_deg": -1.0}]
)
def test_bad_tilt_range_raises_input_error(kwargs):
    with pytest.raises(InputError):
        missing_wedge_mask((8, 8, 8), **kwargs)
