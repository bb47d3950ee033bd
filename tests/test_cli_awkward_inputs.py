"""Awkward inputs to ``aitom average``, ``align``, ``hand`` and ``reconstruct``: each must either work or stop
with exit code 2, one line on stderr naming the file and the problem, and no output written."""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from aitom.cli import main
from aitom.io import read_volume, write_particles, write_volume
from tests.align_fixtures import blob_volume, posed_subtomograms

RELION5 = Path(__file__).parent / "data" / "relion5"
STEM = "warptools_test_4-tomos_10-ptcls_box-32_angpix-12"


def _one_error_line(capsys) -> str:
    """The command's stderr, which must be one ``aitom: error:`` line; returned without the prefix."""
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("aitom: error:")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(lines), lines
    return errors[0].removeprefix("aitom: error: ")


@pytest.fixture
def particle_set(tmp_path) -> Path:
    """Four noisy posed 16³ blobs at 10 Å in tmp_path/data, named by data/particles.star."""
    volumes, _, _ = posed_subtomograms(blob_volume(16), 4, seed=1, max_shift=1.0, snr=4.0)
    names = []
    for index, volume in enumerate(volumes):
        names.append(f"subtomograms/{index:06d}.mrc")
        write_volume(tmp_path / "data" / names[-1], volume, 10.0)
    write_particles(tmp_path / "data" / "particles.star", pd.DataFrame({"rlnImageName": names}))
    return tmp_path / "data" / "particles.star"


def _average(star: Path, out: Path, *extra: str) -> int:
    fast = ["--iterations", "1", "--step", "60", "--max-shift", "1"]
    return main(["average", "--particles", str(star), "--out", str(out), *fast, *extra])


# --- aitom average ----------------------------------------------------------------------------------------


def test_average_reads_n_at_stack_of_volumes_and_explains_an_image_stack(tmp_path, capsys):
    """``N@STACK`` (RELION's stack notation) names volume N of a stack of volumes; on a stack of 2-D images
    it says that subtomograms are needed instead of 'file not found'."""
    volumes, _, _ = posed_subtomograms(blob_volume(16), 3, seed=2, max_shift=1.0, snr=4.0)
    with mrcfile.new(tmp_path / "volumes.mrc") as stack:
        stack.set_data(volumes.numpy())  # (3, 16, 16, 16): a stack of volumes
        stack.voxel_size = 10.0
    star = tmp_path / "particles.star"
    write_particles(star, pd.DataFrame({"rlnImageName": ["3@volumes.mrc", "1@volumes.mrc", "2@volumes.mrc"]}))
    assert _average(star, tmp_path / "out") == 0
    assert read_volume(tmp_path / "out" / "average_class1.mrc")[0].shape == (16, 16, 16)

    write_volume(tmp_path / "images.mrcs", volumes[0], 10.0)  # 16 images of 16²
    write_particles(star, pd.DataFrame({"rlnImageName": ["1@images.mrcs", "2@images.mrcs"]}), overwrite=True)
    assert _average(star, tmp_path / "out2") == 2
    message = _one_error_line(capsys)
    assert message.startswith(f"1@{tmp_path / 'images.mrcs'}:") and "aitom reconstruct" in message
    write_particles(star, pd.DataFrame({"rlnImageName": ["1@volumes.mrc", "7@volumes.mrc"]}), overwrite=True)
    assert _average(star, tmp_path / "out2") == 2
    assert "holds only 3 volumes" in _one_error_line(capsys)
    assert not (tmp_path / "out2").exists()


def test_average_resolves_names_relative_to_the_working_directory(particle_set, tmp_path, monkeypatch):
    """A STAR file in a job folder whose rlnImageName is relative to the project folder (RELION's layout)."""
    table = starfile.read(particle_set)
    table["rlnImageName"] = [f"data/{name}" for name in table["rlnImageName"]]
    job = tmp_path / "Average" / "job001"
    job.mkdir(parents=True)
    write_particles(job / "particles.star", table)
    monkeypatch.chdir(tmp_path)
    assert _average(Path("Average/job001/particles.star"), Path("out")) == 0
    assert (tmp_path / "out" / "average_class1.mrc").is_file()


def test_average_fsc_json_is_strict_json_when_the_fsc_never_crosses(tmp_path, capsys):
    """Pure noise: the FSC is below 0.5 from the first shell (resolution inf); fsc.json must still be JSON
    that strict parsers read (null, not Infinity). (Half sets of the joint poses: gold-standard half sets of
    2 noise particles share their start below 0.175 cycles/voxel and can cross there.)"""
    generator = torch.Generator().manual_seed(0)
    names = []
    for index in range(4):
        names.append(f"{index}.mrc")
        write_volume(tmp_path / names[-1], torch.randn(8, 8, 8, generator=generator), 10.0)
    write_particles(tmp_path / "particles.star", pd.DataFrame({"rlnImageName": names}))
    assert _average(tmp_path / "particles.star", tmp_path / "out", "--gold-standard-iterations", "0") == 0

    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    report = json.loads((tmp_path / "out" / "fsc.json").read_text(), parse_constant=refuse)
    resolutions = [entry[key] for entry in report["classes"] for key in ("fsc_0.5_a", "fsc_0.143_a")]
    assert None in resolutions
    assert all(value is None or math.isfinite(value) for value in resolutions)
    assert "inf" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--max-shift", "-1"], "--max-shift must be >= 0"),
        (["--max-frequency", "0.04"], "--max-frequency must be in (0.05, 0.5]"),
        (["--method", "faml", "--classes", "auto"], "--classes auto works with --method align only"),
        (["--classes", "auto", "--max-classes", "1"], "--max-classes must be >= 2"),
    ],
)
def test_average_impossible_parameters_exit_2(particle_set, tmp_path, capsys, extra, expected):
    assert _average(particle_set, tmp_path / "out", *extra) == 2
    assert expected in _one_error_line(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("problem", ["constant", "tiny"])
def test_average_degenerate_subtomograms_exit_2(particle_set, tmp_path, capsys, problem):
    folder = particle_set.parent / "subtomograms"
    if problem == "constant":  # e.g. a box extracted wholly outside its tomogram
        write_volume(folder / "000002.mrc", torch.zeros(16, 16, 16), 10.0, overwrite=True)
    else:
        for path in folder.iterdir():
            write_volume(path, torch.randn(5, 5, 5), 10.0, overwrite=True)
    assert _average(particle_set, tmp_path / "out") == 2
    message = _one_error_line(capsys)
    assert (
        ("000002.mrc: subtomogram is constant" in message)
        if problem == "constant"
        else "too small" in message
    )
    assert not (tmp_path / "out").exists()


def test_average_output_table_names_the_files_from_the_output_folder(particle_set, tmp_path):
    """The new particles.star lies in --out: its rlnImageName must still find the subtomograms from there,
    its data_optics must survive, and RELION 3.1's rlnOrigin*Angst must agree with the new rlnOrigin*."""
    table = starfile.read(particle_set)
    table = table.assign(rlnOpticsGroup=1, rlnOriginXAngst=5.0, rlnOriginYAngst=5.0, rlnOriginZAngst=5.0)
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [10.0], "rlnImageSize": [16]})
    write_particles(particle_set, table, optics=optics, overwrite=True)
    out = tmp_path / "jobs" / "average"
    assert _average(particle_set, out) == 0
    blocks = starfile.read(out / "particles.star", always_dict=True)
    assert set(blocks) == {"optics", "particles"}
    written = blocks["particles"]
    assert all((out / name).is_file() for name in written["rlnImageName"])
    for axis in "XYZ":
        np.testing.assert_allclose(written[f"rlnOrigin{axis}Angst"], written[f"rlnOrigin{axis}"] * 10.0)
    # the output table is itself a valid input, from any working directory
    assert _average(out / "particles.star", tmp_path / "again") == 0


def test_average_overwrite_refuses_the_folder_that_holds_the_inputs(particle_set, capsys):
    """``--out DATA --overwrite`` would replace DATA, deleting the subtomograms the new table names."""
    data = particle_set.parent
    before = sorted(path.name for path in data.rglob("*"))
    assert _average(particle_set, data, "--overwrite") == 2
    assert "--overwrite would delete it" in _one_error_line(capsys)
    assert sorted(path.name for path in data.rglob("*")) == before


# --- aitom align ------------------------------------------------------------------------------------------


def test_align_low_max_frequency_runs(tmp_path):
    """--max-frequency below the rotational search band's 0.05 start used to crash (band (0.05, 0.04))."""
    write_volume(tmp_path / "a.mrc", blob_volume(32), 10.0)
    write_volume(tmp_path / "b.mrc", blob_volume(32), 10.0)
    argv = ["align", str(tmp_path / "a.mrc"), str(tmp_path / "b.mrc"), "--step", "40", "--max-shift", "1"]
    assert main([*argv, "--max-frequency", "0.04"]) == 0


@pytest.mark.parametrize(
    ("problem", "expected"),
    [
        ("negative_shift", "--max-shift must be >= 0"),
        ("below_first_shell", "below the first Fourier shell"),
        ("constant", "b.mrc: subtomogram is constant"),
        ("zero_mask", "mask.mrc: mask is zero everywhere"),
    ],
)
def test_align_impossible_inputs_exit_2(tmp_path, capsys, problem, expected):
    write_volume(tmp_path / "a.mrc", blob_volume(16), 10.0)
    write_volume(
        tmp_path / "b.mrc", torch.zeros(16, 16, 16) if problem == "constant" else blob_volume(16), 10.0
    )
    write_volume(tmp_path / "mask.mrc", torch.zeros(16, 16, 16), 1.0)
    argv = ["align", str(tmp_path / "a.mrc"), str(tmp_path / "b.mrc")]
    extra = {
        "negative_shift": ["--max-shift", "-1"],
        "below_first_shell": ["--max-frequency", "0.05"],  # 16³: the first shell is at 1/16
        "constant": [],
        "zero_mask": ["--mask-a", str(tmp_path / "mask.mrc")],
    }[problem]
    assert main([*argv, *extra]) == 2
    assert expected in _one_error_line(capsys)


# --- aitom hand -------------------------------------------------------------------------------------------


def test_hand_zero_mask_exits_2(tmp_path, capsys):
    """An all-zero mask gave NaN correlations and the verdict 'matches AS IT IS'."""
    write_volume(tmp_path / "average.mrc", blob_volume(16), 10.0)
    write_volume(tmp_path / "mask.mrc", torch.zeros(16, 16, 16), 10.0)
    argv = ["hand", str(tmp_path / "average.mrc"), str(tmp_path / "average.mrc")]
    out = tmp_path / "matching.mrc"
    assert main([*argv, "--mask", str(tmp_path / "mask.mrc"), "--mirrored-out", str(out)]) == 2
    assert "mask.mrc: mask weights must be >= 0 and not all zero" in _one_error_line(capsys)
    for lowpass in ("-5", "inf"):
        assert main([*argv, "--lowpass", lowpass]) == 2
        assert "--lowpass must be a positive, finite resolution" in _one_error_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize(
    ("command", "whose"),
    [("hand", "the average's"), ("fsc", "the maps'"), ("snr", "the volumes'")],
)
def test_a_mask_on_another_grid_is_refused(tmp_path, capsys, command, whose):
    """A real-space mask is used on the maps' grid: hand took the average's voxel size silently, estimate
    ignored the mask's. A set voxel size that differs (20 against 10 Å) or another box is refused; an unset
    one (1 Å) is taken as the maps'."""
    generator = torch.Generator().manual_seed(4)
    write_volume(
        tmp_path / "a.mrc", blob_volume(16) + 0.1 * torch.randn(16, 16, 16, generator=generator), 10.0
    )
    write_volume(
        tmp_path / "b.mrc", blob_volume(16) + 0.1 * torch.randn(16, 16, 16, generator=generator), 10.0
    )
    for folder, name in (("pairs_a", "a.mrc"), ("pairs_b", "b.mrc")):
        (tmp_path / folder).mkdir()
        shutil.copy(tmp_path / name, tmp_path / folder / "000000.mrc")
    argv = {
        "hand": ["hand", str(tmp_path / "a.mrc"), str(tmp_path / "b.mrc"), "--step", "40"],
        "fsc": ["estimate", "fsc", str(tmp_path / "a.mrc"), str(tmp_path / "b.mrc")],
        "snr": [
            "estimate",
            "snr",
            "--pairs-a",
            str(tmp_path / "pairs_a"),
            "--pairs-b",
            str(tmp_path / "pairs_b"),
        ],
    }[command]
    inside = (blob_volume(16) > 0.1 * blob_volume(16).max()).float()
    coarse = write_volume(tmp_path / "coarse_mask.mrc", inside, 20.0)
    assert main([*argv, "--mask", str(coarse)]) == 2
    assert _one_error_line(capsys).startswith(
        f"{coarse}: mask voxel size 20 Å differs from {whose} 10 Å: a mask on another grid covers "
        "another region"
    )
    small = write_volume(tmp_path / "small_mask.mrc", inside[:8], 10.0)
    assert main([*argv, "--mask", str(small)]) == 2
    assert _one_error_line(capsys) == f"{small}: mask shape (8, 16, 16) differs from {whose} (16, 16, 16)"
    unset = write_volume(tmp_path / "unset_mask.mrc", inside, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no warning about the mask's unset voxel size
        assert main([*argv, "--mask", str(unset)]) == 0
    capsys.readouterr()


def test_hand_json_is_strict_json(tmp_path, capsys):
    """Noise maps: FSC-0.5 is never reached (inf); stdout must still be strict JSON."""
    generator = torch.Generator().manual_seed(3)
    write_volume(tmp_path / "a.mrc", torch.randn(8, 8, 8, generator=generator), 10.0)
    write_volume(tmp_path / "b.mrc", torch.randn(8, 8, 8, generator=generator), 10.0)
    assert main(["hand", str(tmp_path / "a.mrc"), str(tmp_path / "b.mrc"), "--step", "40"]) == 0

    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    report = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert None in (report["fsc_0.5_a_as_is"], report["fsc_0.5_a_mirrored"])


# --- aitom reconstruct ------------------------------------------------------------------------------------


@pytest.fixture
def relion5_set(tmp_path) -> dict:
    """The particles of the real 70S set whose stacks are in tests/data/relion5, as a project folder."""
    project = tmp_path / "project"
    shutil.copytree(RELION5, project)
    blocks = starfile.read(project / f"{STEM}.star", always_dict=True)
    particles = blocks["particles"]
    keep = [(project / name).is_file() for name in particles["rlnImageName"]]
    blocks["particles"] = particles[keep].reset_index(drop=True)
    starfile.write(blocks, project / f"{STEM}.star", overwrite=True)
    return {
        "project": project,
        "blocks": blocks,
        "particles": project / f"{STEM}.star",
        "tomograms": project / f"{STEM}_tomograms.star",
        "optimisation_set": project / f"{STEM}_optimisation_set.star",
    }


def _reconstruct(particles: Path, tomograms: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "reconstruct",
            "--particles",
            str(particles),
            "--tomograms",
            str(tomograms),
            "--out",
            str(out),
            *extra,
        ]
    )


@pytest.mark.parametrize(
    ("problem", "expected"),
    [
        ("no_visible_frame", "particle 1 (Unt_083_12.00A_000001.mrcs) has no visible frame"),
        ("nan_coordinate", "data_particles rlnCoordinateX: nan (row 1) is not a finite number"),
        ("text_angle", "data_particles rlnAngleTilt: 'abc' (row 2) is not a finite number"),
        ("outside", "particle 1 lies outside tomogram Unt_083.tomostar"),
        ("no_optics_group", "several optics groups but the particles have no rlnOpticsGroup column"),
    ],
)
def test_reconstruct_bad_particles_exit_2(relion5_set, tmp_path, capsys, problem, expected):
    blocks = {name: block.copy() for name, block in relion5_set["blocks"].items()}
    particles = blocks["particles"]
    if problem == "no_visible_frame":
        particles.loc[0, "rlnTomoVisibleFrames"] = "[" + ",".join(["0"] * 37) + "]"
    elif problem == "nan_coordinate":
        particles.loc[0, "rlnCoordinateX"] = np.nan
    elif problem == "text_angle":
        particles["rlnAngleTilt"] = particles["rlnAngleTilt"].astype(object)
        particles.loc[1, "rlnAngleTilt"] = "abc"
    elif problem == "outside":  # 1e6 tilt-series pixels: far outside the 4400-pixel tomogram
        particles.loc[0, "rlnCoordinateX"] = 1e6
    else:
        blocks["particles"] = particles.drop(columns="rlnOpticsGroup")
    bad = relion5_set["project"] / "bad.star"
    starfile.write(blocks, bad)
    out = tmp_path / "out"
    assert _reconstruct(bad, relion5_set["tomograms"], out) == 2
    message = _one_error_line(capsys)
    assert message.startswith(f"{bad}: ") and expected in message
    assert not out.exists()


@pytest.mark.parametrize(
    ("problem", "expected"),
    [
        ("nan_defocus", "data_Unt_083.tomostar rlnDefocusU: nan (row 3) is not a finite number"),
        ("zero_projection", "tilt series Unt_083.tomostar, frame 1: rlnTomoProjX/Y/Z/W is not a rotation"),
        ("duplicate_name", "data_global lists tilt series Unt_083.tomostar more than once"),
        ("zero_pixel", "data_global rlnTomoTiltSeriesPixelSize must be positive (Å), got 0"),
    ],
)
def test_reconstruct_bad_tomograms_exit_2(relion5_set, tmp_path, capsys, problem, expected):
    blocks = starfile.read(relion5_set["tomograms"], always_dict=True)
    tilts = blocks["Unt_083.tomostar"]
    if problem == "nan_defocus":
        tilts.loc[2, "rlnDefocusU"] = np.nan
    elif problem == "zero_projection":
        tilts.loc[0, ["rlnTomoProjX", "rlnTomoProjY"]] = "[0,0,0,0]"
    elif problem == "duplicate_name":
        blocks["global"] = pd.concat([blocks["global"], blocks["global"].iloc[:1]], ignore_index=True)
    else:
        blocks["global"].loc[0, "rlnTomoTiltSeriesPixelSize"] = 0.0
    bad = tmp_path / "tomograms.star"
    starfile.write(blocks, bad)
    out = tmp_path / "out"
    assert _reconstruct(relion5_set["particles"], bad, out) == 2
    message = _one_error_line(capsys)
    assert message.startswith(f"{bad}: ") and expected in message
    assert not out.exists()


def test_reconstruct_overwrite_refuses_the_folder_that_holds_the_inputs(relion5_set, capsys, monkeypatch):
    project = relion5_set["project"]
    before = sorted(str(path) for path in project.rglob("*"))
    elsewhere = project.parent / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not the output folder (refused for that reason alone)
    argv = ["reconstruct", "--optimisation-set", str(relion5_set["optimisation_set"]), "--out", str(project)]
    assert main([*argv, "--overwrite"]) == 2
    assert "--overwrite would delete it" in _one_error_line(capsys)
    assert sorted(str(path) for path in project.rglob("*")) == before


def test_reconstruct_infinite_wiener_constant_exits_2(relion5_set, tmp_path, capsys):
    """--wiener-constant inf divided every coefficient by inf: all-zero subtomograms, exit code 0."""
    out = tmp_path / "out"
    arguments = (relion5_set["particles"], relion5_set["tomograms"], out, "--wiener-constant", "inf")
    assert _reconstruct(*arguments) == 2
    assert "--wiener-constant must be positive and finite" in _one_error_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--padding", "0"], "--padding must be 1 to 4"),
        (["--padding", "50"], "--padding must be 1 to 4"),  # (50 · 32)³ samples per particle
        (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    ],
)
def test_reconstruct_impossible_padding_or_batch_exits_2(relion5_set, tmp_path, capsys, options, message):
    out = tmp_path / "out"
    assert _reconstruct(relion5_set["particles"], relion5_set["tomograms"], out, *options) == 2
    assert message in _one_error_line(capsys)
    assert not out.exists()


def test_reconstruct_warns_when_all_particles_sit_in_one_corner(relion5_set, tmp_path):
    """WarpTools writes rlnCoordinateX/Y/Z in the particles' 12 Å pixels; read in the tilt series' 1.667 Å
    pixels (RELION's convention, the default) every particle lies within the first 13 % of its tomogram on
    each axis, which picks spread over a sample never do: a warning points to --coordinate-pixel-size. In
    12 Å pixels they spread over the tomograms, and nothing is said."""
    import warnings

    from aitom.commands.reconstruct import CORNER_PARTICLES, ReconstructWarning

    assert len(relion5_set["blocks"]["particles"]) >= CORNER_PARTICLES
    for pixel, warned in ((None, True), ("12", False)):
        out = tmp_path / f"out_{pixel}"
        extra = () if pixel is None else ("--coordinate-pixel-size", pixel)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert _reconstruct(relion5_set["particles"], relion5_set["tomograms"], out, *extra) == 0
        corner = [
            str(warning.message)
            for warning in caught
            if issubclass(warning.category, ReconstructWarning)
            and "lie within the first" in str(warning.message)
        ]
        assert len(corner) == int(warned), corner
        assert all("pass --coordinate-pixel-size" in message for message in corner)
