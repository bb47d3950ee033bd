"""Missing-wedge estimation on wedge-masked noise with known tilt ranges."""

from __future__ import annotations

import math

import pytest
import torch

from aitom.errors import InputError
from aitom.fourier import apply_missing_wedge
from aitom.ops import estimate_missing_wedge, wedge_angle_profile


def wedge_noise(shape, tilt_min_deg, tilt_max_deg, seed=0, device="cpu"):
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(shape, generator=generator).to(device)
    return apply_missing_wedge(noise, tilt_min_deg, tilt_max_deg)


@pytest.mark.parametrize(("tilt_min", "tilt_max"), [(-50, 50), (-60, 60), (-70, 70), (-45, 60)])
def test_recovers_the_tilt_range_within_3_degrees(device, tilt_min, tilt_max):
    volume = wedge_noise((48, 48, 48), tilt_min, tilt_max, seed=tilt_max, device=device)
    result = estimate_missing_wedge(volume)
    assert abs(result["tilt_min_deg"] - tilt_min) <= 3 and abs(result["tilt_max_deg"] - tilt_max) <= 3, result
    assert result["axis"] == "y" and result["score"] > 0.9 and result["wedge_detected"]
    assert result["half_angle_deg"] == pytest.approx((result["tilt_max_deg"] - result["tilt_min_deg"]) / 2)
    assert result["missing_wedge_deg"] == pytest.approx(180 - 2 * result["half_angle_deg"])


def test_non_cubic_symmetric_search_and_filtered_signal():
    # A non-white signal (smooth blobs + a little noise) in a slab-shaped box: whitening by shells copes.
    generator = torch.Generator().manual_seed(1)
    from aitom.ops import gaussian_filter3d

    volume = gaussian_filter3d(torch.randn(32, 64, 56, generator=generator), 1.0)
    volume = apply_missing_wedge(volume + 0.05 * torch.randn(volume.shape, generator=generator), -55, 55)
    result = estimate_missing_wedge(volume, asymmetric=False)
    assert result["tilt_min_deg"] == -result["tilt_max_deg"] and abs(result["tilt_max_deg"] - 55) <= 3, result


def test_finds_an_x_tilt_axis():
    volume = wedge_noise((40, 40, 40), -60, 60, seed=2).transpose(-1, -2)  # swap X and Y: tilt axis X
    result = estimate_missing_wedge(volume, axes=("y", "x"))
    assert result["axis"] == "x" and abs(result["tilt_max_deg"] - 60) <= 3, result


def test_anisotropic_voxels_give_the_physical_tilt_range():
    """Voxels twice as long in Z: a physical tilt θ lies at atan(2 tan θ) in cycles/voxel, so a wedge masked
    at those index angles is the microscope's -50..60°; read per voxel it looks like -67..74°."""
    physical = (-50.0, 60.0)
    index_angles = [math.degrees(math.atan(2 * math.tan(math.radians(a)))) for a in physical]
    volume = wedge_noise((48, 48, 48), *index_angles, seed=5)
    per_voxel = estimate_missing_wedge(volume)
    assert abs(per_voxel["tilt_min_deg"] - index_angles[0]) <= 3 and abs(per_voxel["tilt_max_deg"] - 74) <= 3
    result = estimate_missing_wedge(volume, voxel_size_xyz_a=(10.0, 10.0, 20.0))
    assert abs(result["tilt_min_deg"] - physical[0]) <= 3 and abs(result["tilt_max_deg"] - physical[1]) <= 3
    assert result["score"] > 0.9, result
    angle, profile = wedge_angle_profile(volume, bin_deg=5.0, voxel_size_xyz_a=(10.0, 10.0, 20.0))
    assert float(profile[(angle > -45) & (angle < 55)].min()) > float(profile[angle.abs() > 65].max())


def test_no_wedge_is_not_detected():
    volume = torch.randn(32, 32, 32, generator=torch.Generator().manual_seed(3))
    result = estimate_missing_wedge(volume)
    assert result["score"] < 0.1 and not result["wedge_detected"], result


def test_angle_profile_drops_in_the_wedge():
    angle, profile = wedge_angle_profile(wedge_noise((32, 32, 32), -60, 60, seed=4), bin_deg=5.0)
    inside, outside = profile[angle.abs() < 55], profile[angle.abs() > 65]
    assert float(inside.min()) > float(outside.max())


@pytest.mark.parametrize(
    ("volume", "options", "message"),
    [
        (torch.zeros(15, 32, 32), {}, "too small for a wedge estimate"),
        (torch.zeros(2, 32, 32, 32), {}, "one \\(Z, Y, X\\)"),
        (torch.zeros(32, 32, 32), {"candidate_tilt_max_deg": [100]}, "candidate"),
        (torch.zeros(32, 32, 32), {"axes": ("z",)}, "axes"),
        (torch.zeros(32, 32, 32), {"frequency_band": (0.3, 0.2)}, "band"),
        (torch.zeros(32, 32, 32), {"voxel_size_xyz_a": (10.0, 0.0, 10.0)}, "voxel sizes"),
    ],
)
def test_bad_input(volume, options, message):
    with pytest.raises(InputError, match=message):
        estimate_missing_wedge(volume, **options)


@pytest.mark.parametrize("tilt_max", [40, 60])
def test_a_range_from_minus_90_is_found_as_its_mirror_is(tilt_max):
    # kz alone (kx = 0) folds to +90°, which a range starting at −90° observes: (−90, b) must be found as
    # exactly as its mirror (−b, 90), with the same score (it was −87° and 0.825 against 0.984 at b = 40)
    low = estimate_missing_wedge(wedge_noise((48, 48, 48), -90, tilt_max, seed=3))
    high = estimate_missing_wedge(wedge_noise((48, 48, 48), -tilt_max, 90, seed=3))
    assert (low["tilt_min_deg"], low["tilt_max_deg"]) == (-90, tilt_max), low
    assert (high["tilt_min_deg"], high["tilt_max_deg"]) == (-tilt_max, 90), high
    assert low["score"] == pytest.approx(high["score"], abs=0.01)
