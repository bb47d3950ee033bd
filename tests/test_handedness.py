"""Handedness: mirroring about the box centre, masked correlation, the hand check on a chiral helix, and the
known-pose weighted average."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from aitom.geometry import random_rotations, rotate_volume, voxel_coordinates_xyz
from aitom.ops.handedness import hand_check, known_pose_average, masked_correlation, mirror_volume

SIZE = 16
VOXEL_SIZE_A = 10.0


def _blobs(size: int, centres: list[tuple[float, float, float]], sigma: float = 1.1) -> torch.Tensor:
    points = voxel_coordinates_xyz((size, size, size), dtype=torch.float64)
    volume = torch.zeros(size, size, size, dtype=torch.float64)
    for centre in centres:
        volume += torch.exp(-(points - torch.tensor(centre)).square().sum(-1) / (2 * sigma**2))
    return volume.float()


def _helix(size: int, scale: float = 1.0, z_sign: float = 1.0) -> torch.Tensor:
    """A helix of 14 Gaussian blobs (1.5 turns, radius 3.5, height 9, width 1.1, all times ``scale``
    voxels); ``z_sign`` -1 draws its mirror image."""
    turns = torch.linspace(0, 3 * math.pi, 14).tolist()
    centres = [
        (
            3.5 * scale * math.cos(t),
            3.5 * scale * math.sin(t),
            z_sign * scale * (-4.5 + 9 * t / (3 * math.pi)),
        )
        for t in turns
    ]
    return _blobs(size, centres, sigma=1.1 * scale)


def _hand_argv(average: Path, reference: Path, out: Path) -> list[str]:
    return [
        "hand",
        str(average),
        str(reference),
        "--lowpass",
        "25",
        "--step",
        "20",
        "--mirrored-out",
        str(out),
    ]


@pytest.fixture(scope="module")
def helix() -> torch.Tensor:
    """A right-handed helix of 14 Gaussian blobs (1.5 turns, radius 3.5, height 9 voxels): chiral."""
    return _helix(SIZE)


@pytest.mark.parametrize("size", [8, 9])
def test_mirror_volume_matches_numpy_reflection_about_the_centre(size: int, device) -> None:
    volume = torch.randn(2, size, size + 1, size + 2, generator=torch.Generator().manual_seed(1)).to(device)
    for axis, dim in (("z", 1), ("y", 2), ("x", 3)):
        n = volume.shape[dim]
        centre = n // 2
        expected = np.take(volume.cpu().numpy(), [(2 * centre - i) % n for i in range(n)], axis=dim)
        mirrored = mirror_volume(volume, axis)
        assert mirrored.device == volume.device
        np.testing.assert_array_equal(mirrored.cpu().numpy(), expected)
        torch.testing.assert_close(mirror_volume(mirrored, axis), volume)


def test_mirror_volume_keeps_the_centre_and_negates_z() -> None:
    volume = _blobs(SIZE, [(1.0, 2.0, 3.0)])
    mirrored = mirror_volume(volume, "z")
    peak = (mirrored == mirrored.max()).nonzero()[0].tolist()
    assert peak == [SIZE // 2 - 3, SIZE // 2 + 2, SIZE // 2 + 1]  # (z, y, x) with z negated


def test_mirror_volume_bad_input() -> None:
    with pytest.raises(ValueError, match="axis"):
        mirror_volume(torch.zeros(4, 4, 4), "w")
    with pytest.raises(ValueError, match="volume"):
        mirror_volume(torch.zeros(4, 4), "z")


def test_masked_correlation_equals_numpy_pearson_inside_a_binary_mask(device) -> None:
    generator = torch.Generator().manual_seed(2)
    a, b = torch.randn(2, 10, 10, 10, generator=generator)
    mask = (torch.rand(10, 10, 10, generator=generator) > 0.5).float()
    inside = mask.bool().numpy()
    expected = np.corrcoef(a.numpy()[inside], b.numpy()[inside])[0, 1]
    value = masked_correlation(a.to(device), b.to(device), mask.to(device))
    assert abs(float(value) - expected) < 1e-5
    assert abs(float(masked_correlation(a, 3 * a + 1)) - 1.0) < 1e-5


@pytest.mark.parametrize("mirrored", [False, True])
def test_hand_check_finds_the_hand_of_a_rotated_reference(
    helix: torch.Tensor, mirrored: bool, device
) -> None:
    rotation = random_rotations(1, torch.Generator().manual_seed(3))[0]
    reference = rotate_volume(helix, rotation)
    reference = mirror_volume(reference, "z") if mirrored else reference
    result = hand_check(
        helix.to(device),
        reference.to(device),
        voxel_size_a=VOXEL_SIZE_A,
        lowpass_a=25.0,
        angular_step_deg=20.0,
        refine_steps=20,
    )
    right, wrong = ("mirrored", "as_is") if mirrored else ("as_is", "mirrored")
    assert result["better"] == right
    assert result[f"correlation_{right}"] > 0.95
    assert result["margin"] > 0.25
    assert result["margin"] == pytest.approx(result[f"correlation_{right}"] - result[f"correlation_{wrong}"])
    assert result[f"fsc_0.5_a_{right}"] < result[f"fsc_0.5_a_{wrong}"]


def test_known_pose_average_undoes_the_poses(helix: torch.Tensor, device) -> None:
    rotations = random_rotations(6, torch.Generator().manual_seed(4)).to(device)
    particles = rotate_volume(helix.to(device).expand(6, -1, -1, -1), rotations)
    average, coverage = known_pose_average(particles, rotations)
    assert float(masked_correlation(average, helix.to(device))) > 0.97
    aligned = rotate_volume(particles, rotations.transpose(-1, -2))
    torch.testing.assert_close(average, aligned.mean(0), atol=1e-5, rtol=1e-4)
    assert torch.allclose(coverage, torch.ones_like(coverage))


def test_known_pose_average_weights_each_coefficient(device) -> None:
    """Identity poses: the average is Σ Wᵢ Fᵢ / max(Σ Wᵢ, ε), checked with NumPy FFTs; weights keep their
    scale (a particle weighted 3x counts 3x), and the floor is ε = 0.05 × mean of Σ Wᵢ where it is > 0."""
    generator = torch.Generator().manual_seed(5)
    volumes = torch.randn(3, 8, 8, 8, generator=generator, dtype=torch.float64)
    weights = torch.rand(3, 8, 8, 8, generator=generator, dtype=torch.float64)
    weights[0] *= 3.0
    weights[:, :2] = 0.0  # unobserved planes
    rotations = torch.eye(3, dtype=torch.float64).expand(3, 3, 3)
    average, coverage = known_pose_average(volumes.to(device), rotations.to(device), weights.to(device))
    spectra = np.fft.fftshift(np.fft.fftn(volumes.numpy(), axes=(1, 2, 3)), axes=(1, 2, 3))
    total = weights.numpy().sum(0)
    floor = 0.05 * total[total > 0].mean()
    expected = np.fft.ifftn(
        np.fft.ifftshift((weights.numpy() * spectra).sum(0) / np.maximum(total, floor))
    ).real
    np.testing.assert_allclose(average.cpu().numpy(), expected, atol=1e-10)
    np.testing.assert_allclose(coverage.cpu().numpy(), total / total.max(), atol=1e-12)
    with pytest.raises(ValueError, match="non-negative"):
        known_pose_average(volumes, rotations, -weights)


def test_hand_command_says_mirrored_and_writes_the_matching_reference(
    helix: torch.Tensor, tmp_path, capsys
) -> None:
    import json

    from aitom.cli import main
    from aitom.io import read_volume, write_volume

    average = write_volume(tmp_path / "average.mrc", helix, VOXEL_SIZE_A)
    reference = write_volume(tmp_path / "reference.mrc", mirror_volume(helix), VOXEL_SIZE_A)
    out = tmp_path / "right_hand.mrc"
    argv = _hand_argv(average, reference, out)
    assert main(argv) == 0
    printed = capsys.readouterr()
    result = json.loads(printed.out)
    assert result["better"] == "mirrored" and result["margin"] > 0.25
    assert result["verdict"].startswith("the reference matches MIRRORED along z")
    assert f"aitom: hand: {result['verdict']}" in printed.err
    assert float(masked_correlation(read_volume(out)[0], helix)) > 0.95
    assert main(argv) == 2  # exists without --overwrite
    assert "exists" in capsys.readouterr().err
    flat = write_volume(tmp_path / "flat.mrc", helix[:8], VOXEL_SIZE_A)
    assert main(["hand", str(flat), str(reference)]) == 2
    assert "the average must be a cube" in capsys.readouterr().err


def test_hand_command_resamples_a_reference_of_another_voxel_size_and_box(
    helix: torch.Tensor, tmp_path, capsys
) -> None:
    # The mirrored helix drawn directly at 5 Å voxels in a 40³ box (twice the coordinates and widths): the
    # command brings it to the average's 16³ box of 10 Å voxels and still finds the mirrored hand.
    import json

    from aitom.cli import main
    from aitom.commands.shared import ReferenceResampledWarning
    from aitom.io import read_volume, write_volume

    fine = _helix(40, scale=2.0, z_sign=-1.0)
    average = write_volume(tmp_path / "average.mrc", helix, VOXEL_SIZE_A)
    reference = write_volume(tmp_path / "fine.mrc", fine, VOXEL_SIZE_A / 2)
    out = tmp_path / "right_hand.mrc"
    argv = _hand_argv(average, reference, out)

    message = "reference resampled from 40×40×40 voxels of 5 Å to the data's 16³ of 10 Å"
    with pytest.warns(ReferenceResampledWarning, match=message):
        assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["better"] == "mirrored" and result["margin"] > 0.25
    assert float(masked_correlation(read_volume(out)[0], helix)) > 0.95
    unset = write_volume(tmp_path / "unset.mrc", fine, 1.0)
    assert main(["hand", str(average), str(unset)]) == 2
    assert "looks unset" in capsys.readouterr().err
    tiny = write_volume(
        tmp_path / "tiny.mrc", fine, 0.5
    )  # 20 Å across: a quarter of the average's box is 40 Å
    assert main(["hand", str(average), str(tiny)]) == 2
    error = capsys.readouterr().err
    assert "tiny.mrc: the reference's box spans 20 Å" in error and len(error.strip().splitlines()) == 1


def _hand_result(as_is: float, mirrored: float, fsc_as_is: float, fsc_mirrored: float) -> dict:
    return {
        "correlation_as_is": as_is,
        "correlation_mirrored": mirrored,
        "margin": abs(as_is - mirrored),
        "fsc_0.5_a_as_is": fsc_as_is,
        "fsc_0.5_a_mirrored": fsc_mirrored,
    }


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (_hand_result(0.785, 0.896, 86.5, 36.3), "the reference matches MIRRORED along z"),
        (
            _hand_result(0.90, 0.70, 40.0, 40.0),
            "the reference matches AS IT IS",
        ),  # FSC tie: correlation decides
        (_hand_result(0.80, 0.795, 40.0, 60.0), "undecided"),  # margin under 0.01
        (_hand_result(0.80, 0.85, 40.0, 60.0), "undecided"),  # correlation and FSC disagree
        (_hand_result(0.01, 0.01, 500.0, 500.0), "the reference matches the average in neither hand"),
        # the FSC never reaches 0.5 in either hand (noise-only maps): it favours neither
        (_hand_result(0.39, 0.45, math.inf, math.inf), "undecided"),
        # NaN correlations (no voxel inside the mask) must not read as a call for the reference as it is
        (
            _hand_result(math.nan, math.nan, math.inf, math.inf),
            "the reference matches the average in neither",
        ),
    ],
)
def test_hand_verdict_calls_a_hand_only_when_both_criteria_agree(result: dict, expected: str) -> None:
    from aitom.commands.hand import hand_verdict

    assert hand_verdict(result, "z").startswith(expected)
