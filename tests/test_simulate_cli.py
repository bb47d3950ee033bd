"""``aitom simulate tomogram|subtomograms`` on tiny recipes: outputs, reproducibility, refusals, errors."""

from __future__ import annotations

import pytest
import torch

from aitom import cli
from aitom.io import read_particles, read_volume, table_coordinates

TINY_TOMOGRAM = [
    "voxel_size_a=20",
    "shape_zyx_voxels=[20,48,48]",
    "classes=[ribosome_30s,apoferritin]",
    "crowding_fraction=null",
    "number_of_particles=4",
    "tilt.tilt_step_deg=5",
]
TINY_SUBTOMOGRAMS = [
    "voxel_size_a=20",
    "box_size_voxels=16",
    "classes=[ribosome_30s,apoferritin,hsp90]",
    "particles_per_class=2",
]


def star_body(path) -> str:
    """A STAR file without its first line (starfile's time stamp)."""
    return path.read_text().split("\n", 1)[1]


@pytest.fixture(autouse=True)
def simulate_command(monkeypatch):
    """Make sure the dispatcher knows the subcommand (whether or not cli.py lists it yet)."""
    monkeypatch.setitem(cli.TOOL_COMMANDS, "simulate", "aitom.commands.simulate")


@pytest.mark.parametrize("argv", [["simulate"], ["simulate", "tomogram"], ["simulate", "subtomograms"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_tomogram_command_writes_everything_reproducibly(tmp_path, capsys):
    out = tmp_path / "tomo"
    assert (
        cli.main(
            ["simulate", "tomogram", "--out", str(out), "--seed", "3", "--save-tilt-series", *TINY_TOMOGRAM]
        )
        == 0
    )
    names = {path.relative_to(out).as_posix() for path in out.rglob("*")}
    expected = {
        "tomogram.mrc",
        "ground_truth.star",
        "tomogram.png",
        "recipe.yaml",
        "tilt_series.mrcs",
        "tilt_series.tlt",
        "templates",
        "templates/ribosome_30s.mrc",
        "templates/apoferritin.mrc",
    }
    assert names == expected
    tomogram, header = read_volume(out / "tomogram.mrc")
    assert tomogram.shape == (20, 48, 48) and header.voxel_size_a == pytest.approx((20.0, 20.0, 20.0))
    truth = read_particles(out / "ground_truth.star")
    assert len(truth) == 4 and set(truth["aitomClassName"]) == {"ribosome_30s", "apoferritin"}
    assert (table_coordinates(truth) >= 0).all()
    assert "4 particles" in capsys.readouterr().out
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]  # no temporary left

    again = tmp_path / "again"
    assert cli.main(["simulate", "tomogram", "--out", str(again), "--seed", "3", *TINY_TOMOGRAM]) == 0
    assert torch.equal(
        read_volume(again / "tomogram.mrc")[0], tomogram
    )  # bytes differ: mrcfile dates its label
    assert star_body(again / "ground_truth.star") == star_body(out / "ground_truth.star")


def test_existing_output_is_refused_then_replaced_with_overwrite(tmp_path, capsys):
    out = tmp_path / "tomo"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert cli.main(["simulate", "tomogram", "--out", str(out), *TINY_TOMOGRAM]) == 2
    assert "exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "precious"
    assert cli.main(["simulate", "tomogram", "--out", str(out), "--overwrite", *TINY_TOMOGRAM]) == 0
    assert (out / "tomogram.mrc").is_file() and not (out / "keep.txt").exists()


def test_subtomograms_command(tmp_path):
    out = tmp_path / "sub"
    argv = ["simulate", "subtomograms", "--out", str(out), *TINY_SUBTOMOGRAMS, "paired=true"]
    assert cli.main(argv) == 0
    table = read_particles(out / "particles.star", require=("rlnImageName",))
    assert len(table) == 6
    for name, pair_name in zip(table["rlnImageName"], table["aitomPairedImageName"]):
        volume, header = read_volume(out / name)
        assert volume.shape == (16, 16, 16) and header.voxel_size_a[0] == pytest.approx(20.0)
        assert (out / pair_name).is_file()
    assert {"rlnClassNumber", "rlnAngleRot", "rlnOriginX", "aitomClassName"} <= set(table.columns)
    assert (out / "montage.png").stat().st_size > 1000
    assert len(list((out / "templates").glob("*.mrc"))) == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["simulate", "tomogram", "snr=-1"], "override 'snr=-1': snr: must be positive"),
        (["simulate", "tomogram", "bogus=1"], "bogus: unknown key"),
        (["simulate", "subtomograms", "--config", "missing.yaml"], "missing.yaml: recipe file not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, argv, message):
    assert cli.main([*argv, "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("aitom: error:") and message in error and "\n" not in error
    assert not (tmp_path / "out").exists()
