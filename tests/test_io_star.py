"""STAR particle tables: exact round trips, RELION 3.1 and RELION 5 files, bad files, missing columns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from aitom.errors import InputError
from aitom.io import (
    particles_table,
    read_particles,
    table_angles_deg,
    table_coordinates,
    write_particles,
)

DATA = Path(__file__).parent / "data"
RELION5_PARTICLES = DATA / "warptools_test_4-tomos_10-ptcls_box-32_angpix-12.star"

RELION31_TWO_BLOCKS = """
# version 30001

data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnImagePixelSize #3
opticsGroup1 1 10.000000

# version 30001

data_particles

loop_
_rlnCoordinateX #1
_rlnCoordinateY #2
_rlnCoordinateZ #3
_rlnAngleRot #4
_rlnAngleTilt #5
_rlnAnglePsi #6
_rlnMicrographName #7
_rlnOpticsGroup #8
_rlnClassNumber #9
  120.500000   88.000000   31.250000  -45.000000  90.000000  10.000000  tomo_01.mrc  1  2
   12.000000  200.000000   64.000000  170.000000  15.500000 -99.000000  tomo_01.mrc  1  1
"""


@pytest.fixture
def table(device) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    coordinates = torch.from_numpy(rng.uniform(0, 200, (6, 3))).to(device)
    coordinates[0] = torch.tensor([3.0, 4.0, 5.0])  # integral values must come back as floats
    return particles_table(
        coordinates,
        angles_deg=rng.uniform(-180, 180, (6, 3)),
        class_number=[1, 2, 2, 3, 1, 1],
        score=rng.normal(size=6).astype(np.float32),
        tomo_name="tomo 01",
        extra={"rlnTomoParticleId": np.arange(1, 7)},
    )


def test_particles_table_columns(table):
    assert list(table.columns) == [
        "rlnCoordinateX",
        "rlnCoordinateY",
        "rlnCoordinateZ",
        "rlnAngleRot",
        "rlnAngleTilt",
        "rlnAnglePsi",
        "rlnClassNumber",
        "rlnAutopickFigureOfMerit",
        "rlnTomoName",
        "rlnMicrographName",
        "rlnTomoParticleId",
    ]
    assert table["rlnClassNumber"].dtype == np.int64
    assert table.loc[0, "rlnCoordinateX"] == 3.0


def test_round_trip_is_exact(tmp_path, table):
    path = write_particles(tmp_path / "particles.star", table)
    read = read_particles(path)
    pd.testing.assert_frame_equal(read, table, check_dtype=False)
    for column in ("rlnCoordinateX", "rlnAngleRot", "rlnAutopickFigureOfMerit"):
        assert read[column].dtype == np.float64
        np.testing.assert_array_equal(read[column].to_numpy(), table[column].to_numpy())
    assert read["rlnClassNumber"].dtype == np.int64
    assert read.loc[1, "rlnTomoName"] == "tomo 01"  # quoted on disk because of the space
    np.testing.assert_array_equal(table_coordinates(read), table_coordinates(table))
    np.testing.assert_array_equal(table_angles_deg(read), table_angles_deg(table))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["particles.star"]


def test_write_with_optics_block(tmp_path, table):
    optics = pd.DataFrame(
        {"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], "rlnImagePixelSize": [10.0]}
    )
    path = write_particles(tmp_path / "with_optics.star", table, optics=optics)
    text = path.read_text()
    assert text.index("data_optics") < text.index("data_particles")
    pd.testing.assert_frame_equal(read_particles(path), table, check_dtype=False)


def test_relion31_file_with_optics_and_particles(tmp_path):
    path = tmp_path / "relion31.star"
    path.write_text(RELION31_TWO_BLOCKS)
    table = read_particles(path)
    assert len(table) == 2
    np.testing.assert_array_equal(table_coordinates(table), [[120.5, 88.0, 31.25], [12.0, 200.0, 64.0]])
    np.testing.assert_array_equal(table_angles_deg(table), [[-45.0, 90.0, 10.0], [170.0, 15.5, -99.0]])
    assert table["rlnClassNumber"].tolist() == [2, 1]


def test_single_unnamed_block(tmp_path):
    path = tmp_path / "plain.star"
    path.write_text("data_\n\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n_rlnCoordinateZ\n1 2 3\n4 5 6\n")
    np.testing.assert_array_equal(table_coordinates(read_particles(path)), [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(table_angles_deg(read_particles(path)), np.zeros((2, 3)))


@pytest.mark.parametrize(
    ("columns", "missing"),
    [
        (("rlnAngleRot", "rlnAnglePsi"), "rlnAngleTilt"),
        (("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnTomoSubtomogramRot"), "rlnTomoSubtomogramTilt"),
    ],
)
def test_some_euler_angles_without_the_others_are_refused(tmp_path, columns, missing):
    # an absent angle used to read as 0: a made-up pose (all three absent: no orientation, zeros)
    path = tmp_path / "partial.star"
    header = "".join(
        f"_{name}\n" for name in ("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ", *columns)
    )
    path.write_text("data_particles\n\nloop_\n" + header + " ".join(["10"] * (3 + len(columns))) + "\n")
    with pytest.raises(InputError, match=f"no {missing}.*all three Euler angles or none") as error:
        table_angles_deg(read_particles(path))
    assert str(path) in str(error.value)


def test_missing_column_is_named(tmp_path):
    path = tmp_path / "no_z.star"
    path.write_text("data_particles\n\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n1 2\n")
    with pytest.raises(InputError, match=r"lacks column.* rlnCoordinateZ") as error:
        read_particles(path)
    assert str(path) in str(error.value)
    with pytest.raises(InputError, match="rlnImageName"):
        read_particles(path, require=("rlnCoordinateX", "rlnImageName"))


def test_relion5_centred_coordinates_get_a_hint(tmp_path):
    path = tmp_path / "centred.star"
    columns = "".join(f"_rlnCenteredCoordinate{axis}Angst\n" for axis in "XYZ")
    path.write_text(f"data_particles\n\nloop_\n_rlnTomoName\n{columns}t1 10.0 -20.0 5.5\n")
    with pytest.raises(InputError, match="rlnCenteredCoordinate"):
        read_particles(path)
    assert len(read_particles(path, require=("rlnCenteredCoordinateXAngst",))) == 1


def test_empty_table(tmp_path):
    path = write_particles(
        tmp_path / "empty.star", particles_table(np.zeros((0, 3)), angles_deg=np.zeros((0, 3)))
    )
    table = read_particles(path)
    assert len(table) == 0
    assert list(table.columns[:3]) == ["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]
    assert table_coordinates(table).shape == (0, 3) and table_angles_deg(table).shape == (0, 3)


@pytest.mark.parametrize(
    "content",
    [b"just some words\nnot a star file\n", bytes(range(256)) * 16, b""],
    ids=["text", "binary", "empty"],
)
def test_not_a_star_file(tmp_path, content):
    path = tmp_path / "bad.star"
    path.write_bytes(content)
    with pytest.raises(InputError, match="not a") as error:
        read_particles(path)
    assert str(path) in str(error.value)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_particles(tmp_path / "absent.star")


def test_file_without_a_particles_table(tmp_path):
    path = tmp_path / "tomograms.star"
    path.write_text("data_global\n\nloop_\n_rlnTomoName\nt1\n\ndata_t1\n\nloop_\n_rlnTomoProjX\n[1,0,0,0]\n")
    with pytest.raises(InputError, match="no particles table"):
        read_particles(path, require=())


def test_existing_output_is_protected(tmp_path, table):
    path = tmp_path / "particles.star"
    path.write_text("keep me")
    with pytest.raises(InputError, match="exists; pass --overwrite"):
        write_particles(path, table)
    assert path.read_text() == "keep me"
    write_particles(path, table, overwrite=True)
    assert len(read_particles(path)) == len(table)


def test_real_relion5_particle_file():
    table = read_particles(RELION5_PARTICLES, require=())
    assert len(table) == 40
    assert {"rlnTomoName", "rlnAngleRot", "rlnTomoVisibleFrames", "rlnOriginXAngst"} <= set(table.columns)
    assert sorted(table["rlnTomoName"].unique()) == [f"Unt_0{n}.tomostar" for n in (50, 76, 83, 88)]
    # independent parse of the data_particles loop: whitespace-split rows, columns in header order
    lines = RELION5_PARTICLES.read_text().split("data_particles", 1)[1].splitlines()
    header = [line.split()[0][1:] for line in lines if line.startswith("_rln")]
    rows = [line.split() for line in lines if line.strip() and not line.startswith(("_", "loop_", "#"))]
    expected = np.array(
        [
            [float(row[header.index(c)]) for c in ("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ")]
            for row in rows
        ]
    )
    np.testing.assert_allclose(table_coordinates(table), expected, rtol=0, atol=0)
    psi = np.array([float(row[header.index("rlnAnglePsi")]) for row in rows])
    np.testing.assert_array_equal(table_angles_deg(table)[:, 2], psi)


def test_particles_table_validates_shapes_and_classes():
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        particles_table(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="angles_deg"):
        particles_table(np.zeros((4, 3)), angles_deg=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="1-based"):
        particles_table(np.zeros((2, 3)), class_number=[0, 1])
    with pytest.raises(ValueError, match="score"):
        particles_table(np.zeros((2, 3)), score=[0.5])


RAGGED_HEADER = (
    "data_particles\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n_rlnCoordinateZ #3\n_rlnImageName #4\n"
)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            '10 20 30 a.mrc\n11 21 31\n12 22 32 "c d.mrc"\n',
            "row 2 of the data_particles table has 3 values for its 4",
        ),
        ("10 20 30 a.mrc\n11 21 31 b.mrc 7\n", "row 2 of the data_particles table has 5 values for its 4"),
    ],
    ids=["short row", "long row"],
)
def test_ragged_rows_are_refused_not_read_as_nan(tmp_path, rows, message):
    # pandas would fill a short row's missing values with NaN (a particle at z = NaN, or with no image)
    path = tmp_path / "ragged.star"
    path.write_text(RAGGED_HEADER + rows)
    with pytest.raises(InputError, match=message) as error:
        read_particles(path, require=())
    assert str(path) in str(error.value)


def test_quoted_values_with_spaces_count_once(tmp_path):
    path = tmp_path / "quoted.star"
    path.write_text(RAGGED_HEADER + '10 20 30 "my data/a b.mrc"\n11 21 31 \'c d.mrc\'\n12 22 32 ""\n')
    table = read_particles(path)
    assert list(table["rlnCoordinateZ"]) == [30, 31, 32]
    assert list(table["rlnImageName"])[:2] == ["my data/a b.mrc", "c d.mrc"]


LOOP = "loop_\n_rlnCoordinateX\n_rlnCoordinateY\n_rlnCoordinateZ\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"data_\n{LOOP}1 2 3\n\ndata_\n{LOOP}4 5 6\n", "the file has more than one data_ block"),
        (
            f"data_particles\n{LOOP}1 2 3\n\ndata_particles\n{LOOP}4 5 6\n",
            "the file has more than one data_particles block",
        ),
        (
            f"data_particles\n{LOOP}_rlnCoordinateX\n1 2 3 4\n",
            "the data_particles table names column rlnCoordinateX twice",
        ),
        (f"data_particles\n{LOOP}1 2 3 # checked\n", "row 1 of the data_particles table holds a '#'"),
        (
            f"data_particles\nloop_\n_rlnMicrographName\n{LOOP[6:]}TS#1.mrc 1 2 3\n",
            "row 1 of the data_particles table holds a '#'",
        ),
    ],
    ids=["two unnamed blocks", "two particle blocks", "column twice", "comment after a row", "# in a value"],
)
def test_tables_starfile_would_read_wrong_are_refused(tmp_path, text, message):
    """A block named twice kept only the second (particles lost without a word); a column named twice made
    the coordinates four wide; a '#' in a row (a comment, or in a name) cut the row (a cryptic pandas error
    or a miscount)."""
    path = tmp_path / "odd.star"
    path.write_text(text)
    with pytest.raises(InputError) as error:
        read_particles(path)
    assert str(error.value).startswith(f"{path}: {message}")


def test_a_quoted_value_may_hold_a_hash(tmp_path):
    path = tmp_path / "quoted.star"
    path.write_text(f"data_particles\nloop_\n_rlnMicrographName\n{LOOP[6:]}'TS#1 a.mrc' 1 2 3\n")
    assert read_particles(path)["rlnMicrographName"].tolist() == ["TS#1 a.mrc"]
