"""``aitom extract``: boxes equal plain NumPy slicing, the table is carried over, bad input exits 2."""

from __future__ import annotations

import numpy as np
import pytest

from aitom.cli import main
from aitom.io import particles_table, read_particles, read_volume, write_particles, write_volume

SHAPE_ZYX = (20, 30, 40)
VOXEL_SIZE_A = 7.5


@pytest.fixture()
def tomogram(tmp_path):
    values = np.random.default_rng(0).normal(size=SHAPE_ZYX).astype(np.float32)
    path = write_volume(tmp_path / "tomogram.mrc", values, VOXEL_SIZE_A)
    return path, values


def _star(tmp_path, coordinates_xyz, name="particles.star", **columns):
    table = particles_table(np.asarray(coordinates_xyz, dtype=float), class_number=[1] * len(coordinates_xyz))
    for column, values in columns.items():
        table[column] = values
    return write_particles(tmp_path / name, table)


def test_boxes_equal_numpy_slices_and_table_is_kept(tomogram, tmp_path):
    path, values = tomogram
    star = _star(tmp_path, [[20, 15, 10], [9.6, 8.2, 6.4]])
    assert main(["extract", "--tomogram", str(path), "--particles", str(star), "--size", "8", "--out",
                 str(tmp_path / "out")]) == 0  # fmt: skip
    table = read_particles(tmp_path / "out" / "particles.star", require=("rlnImageName", "rlnClassNumber"))
    assert len(table) == 2
    for (x, y, z), name in zip([(20, 15, 10), (10, 8, 6)], table["rlnImageName"]):
        box, header = read_volume(tmp_path / "out" / name)
        assert header.voxel_size_a[0] == pytest.approx(VOXEL_SIZE_A)
        np.testing.assert_array_equal(box.numpy(), values[z - 4 : z + 4, y - 4 : y + 4, x - 4 : x + 4])


def test_border_box_is_mean_padded(tomogram, tmp_path):
    path, values = tomogram
    star = _star(tmp_path, [[1, 2, 3]])
    assert main(["extract", "--tomogram", str(path), "--particles", str(star), "--size", "8", "--out",
                 str(tmp_path / "out")]) == 0  # fmt: skip
    box, _ = read_volume(tmp_path / "out" / "subtomograms" / "000000.mrc")
    inside = values[0:7, 0:6, 0:5]
    np.testing.assert_array_equal(box.numpy()[1:, 2:, 3:], inside)
    np.testing.assert_allclose(box.numpy()[0], inside.mean(), rtol=1e-5)


def test_normalise_and_invert(tomogram, tmp_path):
    path, values = tomogram
    star = _star(tmp_path, [[20, 15, 10]])
    assert main(["extract", "--tomogram", str(path), "--particles", str(star), "--size", "8", "--out",
                 str(tmp_path / "out"), "--normalise", "--invert"]) == 0  # fmt: skip
    box = read_volume(tmp_path / "out" / "subtomograms" / "000000.mrc")[0].numpy().astype(np.float64)
    expected = -values[6:14, 11:19, 16:24].astype(np.float64)
    expected = (expected - expected.mean()) / expected.std(ddof=1)
    np.testing.assert_allclose(box, expected, atol=1e-5)


def test_selects_one_tomogram_by_name(tomogram, tmp_path):
    path, _ = tomogram
    star = _star(tmp_path, [[20, 15, 10], [10, 10, 10]], rlnTomoName=["a", "b"])
    code = main(["extract", "--tomogram", str(path), "--particles", str(star), "--size", "8", "--out",
                 str(tmp_path / "out")])  # fmt: skip
    assert code == 2 and not (tmp_path / "out").exists()
    assert main(["extract", "--tomogram", str(path), "--particles", str(star), "--size", "8", "--out",
                 str(tmp_path / "out"), "--tomo-name", "b"]) == 0  # fmt: skip
    assert len(read_particles(tmp_path / "out" / "particles.star")) == 1


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("outside", "outside the tomogram"),
        ("too_big", "larger than the tomogram"),
        ("empty", "empty"),
        ("no_columns", "rlnCoordinateX"),
        ("not_mrc", "tomogram.txt"),
        ("tiny_box", "--size"),
        ("text_coordinate", "particles rlnCoordinateX: 'abc' (row 1) is not a finite number"),
        ("nan_coordinate", "particles rlnCoordinateY: nan (row 1) is not a finite number"),
    ],
)
def test_bad_input_exits_2_without_output(tomogram, tmp_path, capsys, case, message):
    path, _ = tomogram
    size = "8"
    star = _star(tmp_path, [[400.0, 150.0, 100.0]] if case == "outside" else [[20, 15, 10]])  # Å for voxels
    if case == "too_big":
        size = "24"
    elif case == "empty":
        star = _star(tmp_path, np.zeros((0, 3)), name="empty.star")
    elif case == "no_columns":
        (tmp_path / "bad.star").write_text("data_particles\n\nloop_\n_rlnAngleRot #1\n10.0\n")
        star = tmp_path / "bad.star"
    elif case == "not_mrc":
        path = tmp_path / "tomogram.txt"
        path.write_text("not a volume")
    elif case == "tiny_box":
        size = "2"
    elif case in ("text_coordinate", "nan_coordinate"):
        loop = "abc 15 10" if case == "text_coordinate" else "20 nan 10"
        header = "data_particles\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n_rlnCoordinateZ #3\n"
        (tmp_path / "bad.star").write_text(header + loop + "\n")
        star = tmp_path / "bad.star"
    code = main(["extract", "--tomogram", str(path), "--particles", str(star), "--size", size, "--out",
                 str(tmp_path / "out")])  # fmt: skip
    error = capsys.readouterr().err
    assert code == 2
    assert message in error and error.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_overwrite(tomogram, tmp_path):
    path, _ = tomogram
    star = _star(tmp_path, [[20, 15, 10]])
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["extract", "--tomogram", str(path), "--particles", str(star), "--size", "8", "--out", str(out)]
    assert main(args) == 2
    assert (out / "keep.txt").read_text() == "mine"
    assert main([*args, "--overwrite"]) == 0
    assert (out / "particles.star").is_file()


def _relion5_star(tmp_path, particles, pixel_size_a=2.5):
    import pandas as pd

    from aitom.io.relion5 import write_relion5_particles

    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnTomoTiltSeriesPixelSize": [pixel_size_a],
            "rlnImagePixelSize": [VOXEL_SIZE_A],
            "rlnImageSize": [8],
        }
    )
    return write_relion5_particles(tmp_path / "relion5.star", particles, optics=optics)


@pytest.mark.parametrize("columns", ["centred_angstrom", "tilt_series_pixels"])
def test_relion5_positions_are_converted_to_voxels_of_the_tomogram(tomogram, tmp_path, capsys, columns):
    from aitom.io.relion5 import relion5_particles_table, voxels_to_centered_angstrom

    path, values = tomogram
    voxels = np.array([[20.0, 15.0, 10.0], [10.0, 8.0, 6.0]])  # (x, y, z)
    size_xyz = SHAPE_ZYX[::-1]
    centred = voxels_to_centered_angstrom(voxels, size_xyz, VOXEL_SIZE_A)  # RELION 5: centre at size / 2
    particles = relion5_particles_table(centred, ["tomo1", "tomo1"])
    if columns == "tilt_series_pixels":  # RELION 4 style: unbinned 2.5 Å pixels from the corner
        particles = particles.drop(columns=[f"rlnCenteredCoordinate{a}Angst" for a in "XYZ"])
        for axis, name in enumerate("XYZ"):
            particles[f"rlnCoordinate{name}"] = voxels[:, axis] * VOXEL_SIZE_A / 2.5
    star = _relion5_star(tmp_path, particles)
    out = tmp_path / "out"
    assert (
        main(["extract", "--tomogram", str(path), "--particles", str(star), "--size", "8", "--out", str(out)])
        == 0
    )
    assert (
        "converted with the tomogram's size (40, 30, 20)" in capsys.readouterr().err
        or columns != "centred_angstrom"
    )
    table = read_particles(out / "particles.star", require=("rlnImageName",))
    np.testing.assert_allclose(
        table[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]], voxels, atol=1e-9
    )
    for (x, y, z), name in zip(voxels.astype(int), table["rlnImageName"]):
        box, _ = read_volume(out / name)
        np.testing.assert_array_equal(box.numpy(), values[z - 4 : z + 4, y - 4 : y + 4, x - 4 : x + 4])


def test_relion5_angstrom_positions_need_a_voxel_size(tmp_path, capsys):
    from aitom.io.relion5 import relion5_particles_table

    unset = write_volume(tmp_path / "unset.mrc", np.zeros(SHAPE_ZYX, dtype=np.float32) + 1, 1.0)
    star = _relion5_star(tmp_path, relion5_particles_table(np.zeros((1, 3)), ["tomo1"]))
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="looks unset"):
        code = main(
            ["extract", "--tomogram", str(unset), "--particles", str(star), "--size", "8", "--out", str(out)]
        )
    assert code == 2 and "pass --voxel-size" in capsys.readouterr().err and not out.exists()
    argv = ["extract", "--tomogram", str(unset), "--particles", str(star), "--size", "8", "--out", str(out)]
    assert main([*argv, "--voxel-size", "7.5"]) == 0
    table = read_particles(out / "particles.star")
    np.testing.assert_allclose(table[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]], [[20, 15, 10]])


def test_half_voxel_coordinates_round_the_same_way_whatever_their_parity(tomogram, tmp_path):
    """10.5 and 11.5 both round up (np.rint sent 10.5 down to 10 and 11.5 up to 12)."""
    path, values = tomogram
    star = _star(tmp_path, [[10.5, 8.5, 6.5], [11.5, 9.5, 7.5]])
    out = tmp_path / "out"
    assert main(["extract", "--tomogram", str(path), "--particles", str(star), "--size", "8", "--out",
                 str(out)]) == 0  # fmt: skip
    for index, (x, y, z) in enumerate([(11, 9, 7), (12, 10, 8)]):
        box = read_volume(out / "subtomograms" / f"{index:06d}.mrc")[0].numpy()
        np.testing.assert_array_equal(box, values[z - 4 : z + 4, y - 4 : y + 4, x - 4 : x + 4])


def test_real_warptools_table_with_visible_frames_and_its_coordinate_pixel_size(tmp_path, capsys):
    """The tomodrgn 70S RELION 5 set: rlnTomoVisibleFrames is written back as text (it crashed the STAR
    writer), and --coordinate-pixel-size 12 reads its rlnCoordinate* as 12 Å pixels."""
    from pathlib import Path

    name = "warptools_test_4-tomos_10-ptcls_box-32_angpix-12.star"
    star = Path(__file__).parent / "data" / "relion5" / name
    original = read_particles(star)
    original = original[original["rlnTomoName"] == "Unt_050.tomostar"].reset_index(drop=True)
    values = np.random.default_rng(1).normal(size=(20, 84, 62)).astype(np.float32)
    path = write_volume(tmp_path / "tomogram.mrc", values, 120.0)
    out = tmp_path / "out"
    argv = ["extract", "--tomogram", str(path), "--particles", str(star), "--size", "6", "--out", str(out)]
    assert main([*argv, "--tomo-name", "Unt_050.tomostar", "--coordinate-pixel-size", "12"]) == 0
    table = read_particles(out / "particles.star")
    assert list(table["rlnTomoVisibleFrames"]) == list(original["rlnTomoVisibleFrames"])
    expected = original[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy() * 12.0 / 120.0
    np.testing.assert_allclose(table[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]], expected)
    x, y, z = np.floor(expected[0] + 0.5).astype(int)
    box = read_volume(out / table["rlnImageName"][0])[0].numpy()
    np.testing.assert_array_equal(box, values[z - 3 : z + 3, y - 3 : y + 3, x - 3 : x + 3])


def test_relion5_origin_shifts_are_applied_once_and_reset(tomogram, tmp_path):
    """rlnOriginXAngst moves the box centre (RELION: position = coordinate - origin); the output's particles
    sit at their box centres, so its shifts are 0 (a reader must not apply them a second time)."""
    from aitom.io.relion5 import relion5_particles_table, voxels_to_centered_angstrom

    path, values = tomogram
    centred = voxels_to_centered_angstrom(np.array([[20.0, 15.0, 10.0]]), SHAPE_ZYX[::-1], VOXEL_SIZE_A)
    particles = relion5_particles_table(centred, ["tomo1"])
    particles["rlnOriginXAngst"] = [2 * VOXEL_SIZE_A]  # the particle is 2 voxels to the left: x = 18
    particles["rlnOriginYAngst"] = [0.0]
    particles["rlnOriginZAngst"] = [-VOXEL_SIZE_A]  # and 1 voxel up: z = 11
    star = _relion5_star(tmp_path, particles)
    out = tmp_path / "out"
    assert main(["extract", "--tomogram", str(path), "--particles", str(star), "--size", "8", "--out",
                 str(out)]) == 0  # fmt: skip
    table = read_particles(out / "particles.star")
    np.testing.assert_allclose(table[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]], [[18, 15, 11]])
    assert table[["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]].to_numpy().tolist() == [[0, 0, 0]]
    box = read_volume(out / "subtomograms" / "000000.mrc")[0].numpy()
    np.testing.assert_array_equal(box, values[7:15, 11:19, 14:22])


def test_overwrite_refuses_the_folder_that_holds_the_inputs(tomogram, tmp_path, capsys):
    path, _ = tomogram  # in tmp_path
    star = _star(tmp_path, [[20, 15, 10]])
    code = main(["extract", "--tomogram", str(path), "--particles", str(star), "--size", "8",
                 "--out", str(tmp_path), "--overwrite"])  # fmt: skip
    error = capsys.readouterr().err
    assert code == 2 and "holds the input" in error and error.count("\n") == 1
    assert path.is_file() and star.is_file()


def test_the_working_directory_is_refused_as_output(tomogram, tmp_path, capsys, monkeypatch):
    path, _ = tomogram
    star = _star(tmp_path, [[20, 15, 10]])
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code = main(["extract", "--tomogram", str(path), "--particles", str(star), "--size", "8", "--out", "."])
    error = capsys.readouterr().err
    assert code == 2 and "working directory" in error and error.count("\n") == 1
    assert list(work.iterdir()) == []
