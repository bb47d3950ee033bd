"""Awkward inputs to ``aitom average`` and ``aitom extract`` beyond the first hunt
(test_cli_awkward_inputs.py, test_cli_extract.py), mostly combinations of options: each must either work
(with a one-line warning where the input is odd) or stop with exit code 2, one line on stderr naming the
file or option and the problem, and no output written."""

from __future__ import annotations

import shutil
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import torch

from aitom.cli import main
from aitom.commands.average import AverageWarning
from aitom.commands.extract import ExtractWarning
from aitom.io import (
    HeaderWarning,
    particles_table,
    read_particles,
    read_volume,
    write_particles,
    write_volume,
)
from aitom.io.relion5 import resolve_relative
from aitom.ops.averaging import symmetric_average, wedge_compensated_average
from tests.align_fixtures import blob_volume, posed_subtomograms
from tests.test_cli_awkward_inputs import _one_error_line

VOXEL_A = 10.0


def _particle_set(folder: Path, n: int = 4, voxel_size_a: float = VOXEL_A) -> Path:
    """``n`` noisy posed 16³ blobs in folder/subtomograms, named by folder/particles.star; ``voxel_size_a``
    may be 0 or 1 (an unset header, which write_volume refuses to write)."""
    volumes, _, _ = posed_subtomograms(blob_volume(16), n, seed=1, max_shift=1.0, snr=4.0)
    (folder / "subtomograms").mkdir(parents=True)
    names = [f"subtomograms/{index:06d}.mrc" for index in range(n)]
    for name, volume in zip(names, volumes):
        with mrcfile.new(folder / name) as mrc:
            mrc.set_data(volume.numpy())
            mrc.voxel_size = voxel_size_a
    return write_particles(folder / "particles.star", pd.DataFrame({"rlnImageName": names}))


def _average(star: Path, out: Path, *extra: str) -> int:
    fast = ["--iterations", "1", "--step", "60", "--max-shift", "1"]
    return main(["average", "--particles", str(star), "--out", str(out), *fast, *extra])


# --- aitom average ----------------------------------------------------------------------------------------


def test_average_of_2d_particle_tilt_series_points_to_reconstruct(tmp_path, capsys):
    """A WarpTools / RELION 5 table names 2-D particle tilt series (.mrcs): the message said only that a
    3-D volume was needed; it now names the command that makes subtomograms from them."""
    (tmp_path / "stacks").mkdir()
    names = [f"stacks/{index:06d}.mrcs" for index in range(2)]
    for index, name in enumerate(names):
        write_volume(
            tmp_path / name, torch.randn(5, 16, 16, generator=torch.Generator().manual_seed(index)), 12.0
        )
    star = write_particles(tmp_path / "particles.star", pd.DataFrame({"rlnImageName": names}))
    assert _average(star, tmp_path / "out") == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"{tmp_path / names[0]}: is an image stack of 5 images; a 3-D volume is needed")
    assert f"`aitom reconstruct --particles {star} --tomograms TOMOGRAMS.star --out DIR`" in line
    assert not (tmp_path / "out").exists()


def test_average_faml_with_as_many_classes_as_particles_writes_finite_maps(tmp_path):
    """FAML's random start could leave a class without particles; its all-zero weights made a NaN model
    (0/0 in the wedge-compensated average), and the run died with a traceback writing the maps."""
    star = _particle_set(tmp_path / "data", n=3)
    out = tmp_path / "out"
    assert _average(star, out, "--method", "faml", "--classes", "3") == 0
    for index in (1, 2, 3):
        assert torch.isfinite(read_volume(out / f"average_class{index}.mrc")[0]).all()
    volumes, rotations, shifts = posed_subtomograms(blob_volume(8), 2, seed=0)
    average, coverage = wedge_compensated_average(volumes, rotations, shifts, weights=torch.zeros(2))
    assert not average.any() and not coverage.any()


def test_faml_starts_no_class_empty(monkeypatch):
    """With as many classes as particles, FAML's random subsets mostly left a class empty: its initial model
    was a zero map (before the fix above, NaN), which never wins a particle."""
    from aitom.ops import faml

    sizes = []

    def recording(volumes, rotations, shifts, mask, **options):
        sizes.append(float(options["weights"].sum()) if options.get("weights") is not None else None)
        return symmetric_average(volumes, rotations, shifts, mask, **options)

    monkeypatch.setattr(faml, "symmetric_average", recording)
    volumes, _, _ = posed_subtomograms(blob_volume(12), 3, seed=0, snr=4.0)
    generator = torch.Generator().manual_seed(0)
    faml.faml_average(volumes, n_classes=3, iterations=1, angular_step_deg=60.0, generator=generator)
    assert sizes[:3] == [1.0, 1.0, 1.0]  # the three initial models, one particle each


@pytest.mark.parametrize("duplicate", ["same_row", "same_voxels"])
def test_average_refuses_a_particle_listed_twice(tmp_path, capsys, duplicate):
    """Two rows naming one subtomogram (or a copy of it) made the half sets share it: an FSC at Nyquist."""
    star = _particle_set(tmp_path / "data")
    table = read_particles(star, require=())
    if duplicate == "same_row":
        table.loc[3, "rlnImageName"] = table.loc[1, "rlnImageName"]
    else:
        shutil.copy(tmp_path / "data" / table.loc[1, "rlnImageName"], tmp_path / "data" / "copy.mrc")
        table.loc[3, "rlnImageName"] = "copy.mrc"
    write_particles(star, table, overwrite=True)
    assert _average(star, tmp_path / "out") == 2
    message = _one_error_line(capsys)
    assert message.startswith(f"{star}: rows 2 and 4 name ") and "inflates the half-set FSC" in message
    assert ("copy.mrc" in message) == (duplicate == "same_voxels")
    assert not (tmp_path / "out").exists()


def test_average_unset_voxel_sizes_one_warning_and_zero_refused_first(tmp_path, capsys):
    """1 Å headers (unset) gave one warning per particle; 0 Å headers ran the whole alignment and then
    failed writing the maps with a message naming no file."""
    star = _particle_set(tmp_path / "one", voxel_size_a=1.0)
    with pytest.warns(HeaderWarning) as record:
        assert _average(star, tmp_path / "out1") == 0
    unset = [str(warning.message) for warning in record if "looks unset" in str(warning.message)]
    assert len(unset) == 1 and unset[0].endswith("(as in 4 of 4 subtomograms)"), unset

    star = _particle_set(tmp_path / "zero", voxel_size_a=0.0)
    assert _average(star, tmp_path / "out0") == 2
    message = _one_error_line(capsys)
    first = tmp_path / "zero" / "subtomograms" / "000000.mrc"
    assert message == f"{first}: voxel size 0 Å in the header is not positive; pass --voxel-size"
    assert not (tmp_path / "out0").exists()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            ["--particle-diameter", "inf"],
            "--particle-diameter must be a positive, finite number of Å, got inf",
        ),
        (["--classes", "2", "--max-classes", "3"], "--max-classes works with --classes auto only"),
        (["--merge-threshold", "0.5"], "--merge-threshold works with --classes auto only"),
        (["--invert-reference", "yes"], "--invert-reference inverts --reference: give a --reference"),
    ],
)
def test_average_options_that_would_be_ignored_or_are_infinite_exit_2(tmp_path, capsys, extra, expected):
    """An infinite diameter gave no mask, and these options were silently ignored without their partner."""
    star = _particle_set(tmp_path / "data")
    assert _average(star, tmp_path / "out", *extra) == 2
    assert _one_error_line(capsys).startswith(expected)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("diameter", "expected"), [("1000", "wider than the 16³ box"), ("5", "under 2 voxels")]
)
def test_average_particle_diameter_in_another_unit_is_warned_about(tmp_path, diameter, expected):
    star = _particle_set(tmp_path / "data")
    with pytest.warns(AverageWarning, match=f"--particle-diameter {diameter} Å is {expected}"):
        assert _average(star, tmp_path / "out", "--particle-diameter", diameter) == 0


# --- aitom extract ----------------------------------------------------------------------------------------


@pytest.fixture
def tomogram(tmp_path) -> Path:
    values = np.random.default_rng(0).normal(size=(20, 30, 40)).astype(np.float32)
    return write_volume(tmp_path / "tomogram.mrc", values, 7.5)


def _extract(tomogram: Path, star: Path, out: Path, *extra: str) -> int:
    return main(["extract", "--tomogram", str(tomogram), "--particles", str(star), "--out", str(out), *extra])


def _star(path: Path, coordinates_xyz: list, **columns) -> Path:
    table = particles_table(np.asarray(coordinates_xyz, dtype=float))
    return write_particles(path, table.assign(**columns))


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            ["--size", "21"],
            "tomogram.mrc: --size 21 is larger than the tomogram's smallest side (20 × 30 × 40",
        ),
        (["--voxel-size", "inf"], "--voxel-size must be a positive, finite number of Å, got inf"),
        (["--voxel-size", "nan"], "--voxel-size must be a positive, finite number of Å, got nan"),
        (
            ["--coordinate-pixel-size", "inf"],
            "--coordinate-pixel-size must be a positive, finite number of Å",
        ),
    ],
)
def test_extract_impossible_sizes_name_the_option_exit_2(tomogram, tmp_path, capsys, extra, expected):
    star = _star(tmp_path / "particles.star", [[20, 15, 10]])
    out = tmp_path / "out"
    assert _extract(tomogram, star, out, *(extra if "--size" in extra else ["--size", "8", *extra])) == 2
    assert expected in _one_error_line(capsys)
    assert not out.exists()


def test_extract_refuses_a_tomogram_without_voxel_size_before_any_work(tmp_path, capsys):
    """A 0 Å header extracted every box and then failed writing one, in a message naming no file."""
    path = tmp_path / "unset.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.random.default_rng(1).normal(size=(16, 16, 16)).astype(np.float32))
        mrc.voxel_size = 0.0
    star = _star(tmp_path / "particles.star", [[8, 8, 8]])
    assert _extract(path, star, tmp_path / "out", "--size", "8") == 2  # no "looks unset" warning before it
    assert (
        _one_error_line(capsys) == f"{path}: voxel size 0 Å in the header is not positive; pass --voxel-size"
    )
    assert not (tmp_path / "out").exists()
    assert _extract(path, star, tmp_path / "out", "--size", "8", "--voxel-size", "5") == 0


def test_extract_warns_about_repeated_centres_and_boxes_of_one_value(tmp_path):
    """Duplicate rows gave identical subtomograms, and positions in a zero-filled region constant boxes
    (which ``aitom average`` refuses), both silently."""
    values = np.random.default_rng(0).normal(size=(20, 30, 40)).astype(np.float32)
    values[:, :, :12] = 0.0  # outside the reconstructed region
    path = write_volume(tmp_path / "tomogram.mrc", values, 7.5)
    star = _star(tmp_path / "particles.star", [[20, 15, 10], [5, 15, 10], [20.2, 14.9, 10]])
    with pytest.warns(ExtractWarning) as record:
        assert _extract(path, star, tmp_path / "out", "--size", "6", "--normalise") == 0
    messages = [str(warning.message) for warning in record]
    assert messages == [
        f"{star}: 1 of 3 particles repeat the box centre of another (first: (x, y, z) (20, 15, 10)): their "
        "subtomograms are identical (a table concatenated twice?)",
        f"{path}: 1 of 3 boxes hold one value only (first: particle 2 at (x, y, z) (5.0, 15.0, 10.0)): "
        "outside the reconstructed region? `aitom average` refuses such subtomograms",
    ]


def test_extract_output_table_names_the_ctf_volumes_from_the_output_folder(tomogram, tmp_path):
    """rlnCtfImage was copied verbatim into DIR/particles.star, where a relative name points elsewhere."""
    (tmp_path / "ctf").mkdir()
    for name in ("a.mrc", "b.mrc"):
        write_volume(tmp_path / "ctf" / name, torch.ones(8, 8, 8), 7.5)
    star = _star(
        tmp_path / "particles.star", [[20, 15, 10], [12, 12, 10]], rlnCtfImage=["ctf/a.mrc", "ctf/b.mrc"]
    )
    out = tmp_path / "jobs" / "extract"
    assert _extract(tomogram, star, out, "--size", "8") == 0
    written = out / "particles.star"
    named = [resolve_relative(name, written).resolve() for name in read_particles(written)["rlnCtfImage"]]
    assert named == [tmp_path / "ctf" / "a.mrc", tmp_path / "ctf" / "b.mrc"]
