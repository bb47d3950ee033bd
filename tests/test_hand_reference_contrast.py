"""`aitom hand` with a reference of the opposite contrast (protein dark against a protein-bright average, as
an EMDB map or an atomic model against an average of raw, un-inverted subtomograms): the hand must still be
found, as `aitom average --reference` does, instead of "neither hand: is it the same structure?"."""

from __future__ import annotations

import json
import math

import pytest
import torch

from aitom.geometry import voxel_coordinates_xyz
from aitom.ops.handedness import mirror_volume
from tests.test_handedness import _hand_argv

SIZE = 16
VOXEL_SIZE_A = 10.0


def _helix(z_sign: float = 1.0) -> torch.Tensor:
    """A helix of 14 Gaussian blobs (1.5 turns, radius 3.5, height 9, width 1.1 voxels): chiral."""
    points = voxel_coordinates_xyz((SIZE, SIZE, SIZE), dtype=torch.float64)
    volume = torch.zeros(SIZE, SIZE, SIZE, dtype=torch.float64)
    for t in torch.linspace(0, 3 * math.pi, 14).tolist():
        centre = torch.tensor([3.5 * math.cos(t), 3.5 * math.sin(t), z_sign * (-4.5 + 9 * t / (3 * math.pi))])
        volume += torch.exp(-(points - centre).square().sum(-1) / (2 * 1.1**2))
    return volume.float()


@pytest.mark.parametrize("mirrored", [False, True])
def test_hand_finds_the_hand_of_a_reference_of_opposite_contrast(tmp_path, capsys, mirrored: bool) -> None:
    from aitom.cli import main
    from aitom.io import read_volume, write_volume
    from aitom.ops.handedness import masked_correlation

    helix = _helix()
    average = write_volume(tmp_path / "average.mrc", helix, VOXEL_SIZE_A)
    dark = -(mirror_volume(helix, "z") if mirrored else helix)  # protein dark
    reference = write_volume(tmp_path / "dark.mrc", dark, VOXEL_SIZE_A)
    out = tmp_path / "right_hand.mrc"
    assert main(_hand_argv(average, reference, out)) == 0
    printed = capsys.readouterr()
    result = json.loads(printed.out)
    assert result["better"] == ("mirrored" if mirrored else "as_is")
    assert result["margin"] > 0.25
    assert result["reference_inverted"] is True
    assert "contrast inverted" in printed.err
    hand = "MIRRORED along z" if mirrored else "AS IT IS"
    assert result["verdict"].startswith(f"the reference matches {hand}")
    # the reference written in the matching hand lies on the average, in its contrast
    assert float(masked_correlation(read_volume(out)[0], helix)) > 0.95


def test_hand_invert_reference_no_keeps_the_reference_as_it_is(tmp_path, capsys) -> None:
    from aitom.cli import main
    from aitom.io import write_volume

    helix = _helix()
    average = write_volume(tmp_path / "average.mrc", helix, VOXEL_SIZE_A)
    reference = write_volume(tmp_path / "bright.mrc", helix, VOXEL_SIZE_A)
    argv = ["hand", str(average), str(reference), "--lowpass", "25", "--step", "20"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["reference_inverted"] is False and result["better"] == "as_is"
    dark = write_volume(tmp_path / "dark.mrc", -helix, VOXEL_SIZE_A)
    assert (
        main(["hand", str(average), str(dark), "--lowpass", "25", "--step", "20", "--invert-reference", "no"])
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["reference_inverted"] is False
    assert max(result["correlation_as_is"], result["correlation_mirrored"]) < 0.5
