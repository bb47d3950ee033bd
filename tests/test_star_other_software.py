"""Particle STAR files written by other programs (RELION 3.0 / 3.1 / 4 / 5, Warp), as they write them.

Each table places one particle on a bright blob of a small tomogram; ``aitom extract`` must cut the box
centred on the blob (or refuse the table in one line, exit code 2, writing nothing) and ``aitom show`` must
draw it there. RELION's convention throughout: the particle centre is the coordinate minus the origin shift,
the shift along the axes of a RELION 4/5 pseudo-subtomogram (``ParticleSet::getPosition``), and the rotation
in the tomogram ``A(subtomogram) · A(rlnAngle*)`` (``ParticleSet::getMatrix3x3``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from aitom.cli import main
from aitom.errors import InputError
from aitom.io import read_particles, read_volume, write_volume
from aitom.io.star import particle_voxel_positions, table_angles_deg, table_coordinates

SHAPE_ZYX = (16, 20, 24)
VOXEL_A = 10.0
BLOB_XYZ = np.array([10.0, 8.0, 6.0])  # voxels
BOX = 6  # the blob must land on voxel (3, 3, 3) of the box


def _relion_matrix(rot: float, tilt: float, psi: float) -> np.ndarray:
    """RELION's Euler matrix A (``Euler_angles2matrix``), computed with SciPy independently of aitom."""
    return Rotation.from_euler("ZYZ", [rot, tilt, psi], degrees=True).as_matrix().T


@pytest.fixture()
def tomogram(tmp_path) -> Path:
    z, y, x = np.mgrid[: SHAPE_ZYX[0], : SHAPE_ZYX[1], : SHAPE_ZYX[2]]
    distance2 = (x - BLOB_XYZ[0]) ** 2 + (y - BLOB_XYZ[1]) ** 2 + (z - BLOB_XYZ[2]) ** 2
    noise = np.random.default_rng(0).normal(scale=0.01, size=SHAPE_ZYX)
    return write_volume(tmp_path / "tomo.mrc", (np.exp(-distance2 / 2.0) + noise).astype(np.float32), VOXEL_A)


def _star(tmp_path: Path, text: str, name: str = "particles.star") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode())
    return path


def _extract(tomogram: Path, star: Path, out: Path, *extra: str) -> int:
    argv = ["extract", "--tomogram", str(tomogram), "--particles", str(star), "--size", str(BOX)]
    return main([*argv, "--out", str(out), *extra])


def _assert_centred_on_the_blob(out: Path) -> None:
    """The one subtomogram's brightest voxel is its centre; the output table gives the blob's voxel."""
    box = read_volume(out / "subtomograms" / "000000.mrc")[0].numpy()
    assert np.unravel_index(box.argmax(), box.shape) == (BOX // 2,) * 3
    table = read_particles(out / "particles.star")
    np.testing.assert_allclose(table_coordinates(table, VOXEL_A), [BLOB_XYZ], atol=1e-4)


def _one_error_line(capsys) -> str:
    error = capsys.readouterr().err
    assert error.count("\n") == 1, error
    return error.strip()


# --- RELION 3.0: origins in pixels of the particle images -----------------------------------------------

RELION30 = """
data_

loop_
_rlnCoordinateX #1
_rlnCoordinateY #2
_rlnCoordinateZ #3
_rlnOriginX #4
_rlnOriginY #5
_rlnOriginZ #6
_rlnAngleRot #7
_rlnAngleTilt #8
_rlnAnglePsi #9
_rlnMicrographName #10
{pixel_columns} {x:.4f} {y:.4f} {z:.4f} {ox:.4f} {oy:.4f} {oz:.4f} 10.0 20.0 30.0 tomo.mrc {pixel_values}
"""


@pytest.mark.parametrize(
    ("image_pixel_a", "origin_voxels"),
    [(10.0, (2.0, -1.0, 0.0)), (5.0, (2.0, -1.0, 0.5)), (None, (-3.0, 2.0, 1.0))],
)
def test_relion30_pixel_origins_are_subtracted(tomogram, tmp_path, image_pixel_a, origin_voxels):
    """rlnOriginX/Y/Z (RELION 3.0: pixels of the subtomograms, rlnDetectorPixelSize · 10⁴ /
    rlnMagnification Å; voxels when no size is stated) were ignored: the box was cut at the coordinate."""
    coordinate = BLOB_XYZ + np.array(origin_voxels)  # centre = coordinate - origin
    pixels = VOXEL_A / (image_pixel_a or VOXEL_A)  # origin pixels per voxel
    ox, oy, oz = np.array(origin_voxels) * pixels
    columns, values = "", ""
    if image_pixel_a is not None:  # detector 5 or 10 µm at 10000×
        columns, values = "_rlnMagnification #11\n_rlnDetectorPixelSize #12\n", f"10000.0 {image_pixel_a}"
    text = RELION30.format(
        pixel_columns=columns, x=coordinate[0], y=coordinate[1], z=coordinate[2], ox=ox, oy=oy, oz=oz,
        pixel_values=values,
    )  # fmt: skip
    # 5 Å subtomograms of a 10 Å tomogram: the coordinates' unit is not stated, the user gives it
    extra = ["--coordinate-pixel-size", "10"] if image_pixel_a == 5.0 else []
    assert _extract(tomogram, _star(tmp_path, text), tmp_path / "out", *extra) == 0
    _assert_centred_on_the_blob(tmp_path / "out")
    table = read_particles(tmp_path / "out" / "particles.star")
    assert table[["rlnOriginX", "rlnOriginY", "rlnOriginZ"]].to_numpy().tolist() == [[0.0, 0.0, 0.0]]


# --- RELION 3.1: data_optics, origins in Å, coordinates in micrograph pixels ----------------------------

RELION31 = """# version 30001

data_optics

loop_
_rlnOpticsGroup #1
_rlnOpticsGroupName #2
_rlnImagePixelSize #3
_rlnImageSize #4
_rlnImageDimensionality #5
{optics_columns}1 opticsGroup1 10.000000 32 3 {optics_values}

# version 30001

data_particles

loop_
_rlnCoordinateX #1
_rlnCoordinateY #2
_rlnCoordinateZ #3
_rlnOriginXAngst #4
_rlnOriginYAngst #5
_rlnOriginZAngst #6
_rlnMicrographName #7
_rlnOpticsGroup #8
 {x:.6f} {y:.6f} {z:.6f} 20.000000 -10.000000 5.000000 tomo.mrc 1
"""


def test_relion31_coordinates_in_micrograph_pixels_are_scaled(tomogram, tmp_path, capsys):
    """rlnMicrographPixelSize 5 Å (the tomogram the coordinates were picked in was binned 2× less) was
    ignored: the coordinates, inside this tomogram, were cut as 10 Å voxels, 2× too far from the corner."""
    centre_a = BLOB_XYZ * VOXEL_A
    x, y, z = (centre_a + np.array([20.0, -10.0, 5.0])) / 5.0  # micrograph pixels of 5 Å
    text = RELION31.format(optics_columns="_rlnMicrographPixelSize #6\n", optics_values="5.0", x=x, y=y, z=z)
    assert _extract(tomogram, _star(tmp_path, text), tmp_path / "out") == 0
    _assert_centred_on_the_blob(tmp_path / "out")
    assert "rlnMicrographPixelSize pixels of 5 Å scaled" in capsys.readouterr().err


# --- Warp / M exports: unbinned coordinates, binned tomogram -------------------------------------------

WARP_OPTICS = """data_optics

loop_
_rlnOpticsGroup #1
_rlnOpticsGroupName #2
_rlnMicrographOriginalPixelSize #3
_rlnVoltage #4
_rlnSphericalAberration #5
_rlnAmplitudeContrast #6
_rlnImagePixelSize #7
_rlnImageSize #8
_rlnImageDimensionality #9
1 opticsGroup1 5.000000 300.000000 2.700000 0.070000 10.000000 32 3

data_particles

loop_
_rlnCoordinateX #1
_rlnCoordinateY #2
_rlnCoordinateZ #3
_rlnAngleRot #4
_rlnAngleTilt #5
_rlnAnglePsi #6
_rlnMicrographName #7
_rlnImageName #8
_rlnOpticsGroup #9
20.000000 16.000000 12.000000 10.0 20.0 30.0 TS_01.tomostar particles/TS_01_000001_10.00A.mrc 1
"""
WARP_NO_OPTICS = """data_

loop_
_rlnMagnification #1
_rlnDetectorPixelSize #2
_rlnCoordinateX #3
_rlnCoordinateY #4
_rlnCoordinateZ #5
_rlnAngleRot #6
_rlnAngleTilt #7
_rlnAnglePsi #8
_rlnImageName #9
_rlnMicrographName #10
10000.000000 5.000000 20.000000 16.000000 12.000000 10.0 20.0 30.0 subtomo/TS_01_0001_5.00A.mrc TS_01.tomostar
"""


@pytest.mark.parametrize(
    ("text", "stated"),
    [
        (WARP_OPTICS, "rlnMicrographOriginalPixelSize 5 Å"),
        (WARP_NO_OPTICS, "rlnDetectorPixelSize × 10⁴ / rlnMagnification 5 Å"),
    ],
)
def test_warp_unbinned_coordinates_need_their_pixel_size(tomogram, tmp_path, capsys, text, stated):
    """Coordinates in unbinned 5 Å pixels over a 10 Å tomogram fitted inside it and were cut, silently, at
    twice the blob's position. Their unit is not stated: refused, unless --coordinate-pixel-size gives it;
    the output table then states the subtomograms' 10 Å, so it reads back without the option."""
    star = _star(tmp_path, text)
    out = tmp_path / "out"
    assert _extract(tomogram, star, out) == 2
    message = _one_error_line(capsys)
    assert message.startswith(f"aitom: error: {star}: the unit of rlnCoordinateX/Y/Z is not stated")
    assert stated in message and "--coordinate-pixel-size" in message
    assert not out.exists()
    assert _extract(tomogram, star, out, "--coordinate-pixel-size", "5") == 0
    _assert_centred_on_the_blob(out)
    again = tmp_path / "again"
    assert _extract(tomogram, out / "particles.star", again) == 0
    _assert_centred_on_the_blob(again)


# --- RELION 4: tilt-series pixels, pseudo-subtomogram orientation --------------------------------------

RELION4 = """data_optics

loop_
_rlnOpticsGroup #1
_rlnOpticsGroupName #2
_rlnTomoTiltSeriesPixelSize #3
_rlnImagePixelSize #4
_rlnImageSize #5
_rlnImageDimensionality #6
_rlnTomoSubtomogramBinning #7
1 opticsGroup1 2.500000 10.000000 32 3 4.000000

data_particles

loop_
_rlnTomoName #1
_rlnCoordinateX #2
_rlnCoordinateY #3
_rlnCoordinateZ #4
_rlnOriginXAngst #5
_rlnOriginYAngst #6
_rlnOriginZAngst #7
_rlnAngleRot #8
_rlnAngleTilt #9
_rlnAnglePsi #10
_rlnTomoSubtomogramRot #11
_rlnTomoSubtomogramTilt #12
_rlnTomoSubtomogramPsi #13
_rlnAngleTiltPrior #14
_rlnAnglePsiPrior #15
_rlnOpticsGroup #16
TS_01 {x:.6f} {y:.6f} {z:.6f} {ox} {oy} {oz} {rot} {tilt} {psi} {srot} {stilt} {spsi} 90.000000 0.000000 1
"""


def test_relion4_subtomogram_orientation_turns_the_origin_and_the_angles(tomogram, tmp_path):
    """RELION 4's rlnTomoSubtomogramRot/Tilt/Psi were ignored: the origin shift was subtracted along the
    tomogram's axes instead of the pseudo-subtomogram's (the box missed the blob), and the particle's
    rotation in the tomogram, A(subtomogram) · A(particle), was read as A(particle) alone. The output
    table (boxes cut along the tomogram's axes) carries the composed rotation and subtomogram angles of 0."""
    origin_a, particle, subtomogram = np.array([40.0, -30.0, 20.0]), (15.0, 100.0, -40.0), (30.0, 60.0, -45.0)
    coordinate = (BLOB_XYZ * VOXEL_A + _relion_matrix(*subtomogram) @ origin_a) / 2.5  # tilt-series pixels
    text = RELION4.format(
        x=coordinate[0], y=coordinate[1], z=coordinate[2], ox=origin_a[0], oy=origin_a[1], oz=origin_a[2],
        rot=particle[0], tilt=particle[1], psi=particle[2],
        srot=subtomogram[0], stilt=subtomogram[1], spsi=subtomogram[2],
    )  # fmt: skip
    star = _star(tmp_path, text)
    out = tmp_path / "out"
    assert _extract(tomogram, star, out) == 0
    _assert_centred_on_the_blob(out)
    expected = _relion_matrix(*subtomogram) @ _relion_matrix(*particle)
    np.testing.assert_allclose(
        _relion_matrix(*table_angles_deg(read_particles(star))[0]), expected, atol=1e-9
    )
    table = read_particles(out / "particles.star")
    angles = table[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()[0]
    np.testing.assert_allclose(_relion_matrix(*angles), expected, atol=1e-9)
    subtomogram_columns = ["rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt", "rlnTomoSubtomogramPsi"]
    assert table[subtomogram_columns].to_numpy().tolist() == [[0.0, 0.0, 0.0]]
    assert "rlnAngleTiltPrior" not in table.columns


# --- RELION 5: centred Å ------------------------------------------------------------------------------

RELION5 = """
# version 50001

data_general

_rlnTomoSubTomosAre2DStacks                       1

data_optics

loop_
_rlnOpticsGroup #1
_rlnOpticsGroupName #2
_rlnTomoTiltSeriesPixelSize #3
_rlnImagePixelSize #4
1 opticsGroup1 2.500000 10.000000

data_particles

loop_
_rlnTomoName #1
_rlnCenteredCoordinateXAngst #2
_rlnCenteredCoordinateYAngst #3
_rlnCenteredCoordinateZAngst #4
_rlnOriginXAngst #5
_rlnOriginYAngst #6
_rlnOriginZAngst #7
_rlnOpticsGroup #8
TS_01 {x:.6f} {y:.6f} {z:.6f} 20.000000 -10.000000 0.000000 1
"""


def test_relion5_output_reads_back_at_the_same_centre(tomogram, tmp_path):
    """RELION 5 positions: Å from the centre of the tomogram (size / 2 voxels of its header's voxel size).
    The output table set the origin shifts to 0 but kept rlnCenteredCoordinate*Angst, which readers
    prefer: extracting from it again missed the blob by the shift."""
    x, y, z = (BLOB_XYZ - np.array(SHAPE_ZYX[::-1]) / 2) * VOXEL_A + [20.0, -10.0, 0.0]
    out = tmp_path / "out"
    assert _extract(tomogram, _star(tmp_path, RELION5.format(x=x, y=y, z=z)), out) == 0
    _assert_centred_on_the_blob(out)
    again = tmp_path / "again"
    assert _extract(tomogram, out / "particles.star", again) == 0
    _assert_centred_on_the_blob(again)


# --- aitom show: the same positions -------------------------------------------------------------------


def test_show_draws_other_programs_picks_where_extract_cuts(tomogram, tmp_path, monkeypatch, capsys):
    """aitom show read positions as extract did, with the same faults (RELION 3.0 origins ignored, Warp's
    unbinned coordinates drawn at twice their place); it now shares extract's reading and its option."""
    import aitom.io

    drawn = {}
    monkeypatch.setattr(aitom.io, "save_montage", lambda volume, path, **options: drawn.update(options))
    relion30 = RELION30.format(
        pixel_columns="", x=12.0, y=7.0, z=6.0, ox=2.0, oy=-1.0, oz=0.0, pixel_values=""
    )
    argv = ["show", str(tomogram), "--out", str(tmp_path / "picks.png"), "--picks"]
    assert main([*argv, str(_star(tmp_path, relion30, "relion30.star"))]) == 0
    np.testing.assert_allclose(drawn["picks_xyz"], [BLOB_XYZ])
    warp = _star(tmp_path, WARP_OPTICS, "warp.star")
    assert main([*argv, str(warp), "--overwrite"]) == 2
    assert "--coordinate-pixel-size" in _one_error_line(capsys)
    assert main([*argv, str(warp), "--overwrite", "--coordinate-pixel-size", "5"]) == 0
    np.testing.assert_allclose(drawn["picks_xyz"], [BLOB_XYZ])


# --- formats that were read right, kept so --------------------------------------------------------------


def test_unnamed_block_comments_unknown_columns_quotes_crlf_and_a_trailing_block(tomogram, tmp_path):
    """A single unnamed data_ block with comments, an unknown text column, integer coordinates, a quoted
    name with spaces and Windows line endings was read right; followed by a block of other columns it was
    refused ("no particles table"): the one table with positions is now taken."""
    text = (
        "# written by hand\ndata_\n\nloop_\n_rlnCoordinateX #1\n_aitomUnknown #2\n_rlnCoordinateY #3\n"
        "_rlnCoordinateZ #4\n_rlnMicrographName #5\n# the one particle\n10 abc 8 6 'my tomo.mrc'\n\n"
        "data_extra\n\nloop_\n_rlnFoo #1\n_rlnBar #2\n1 2\n"
    ).replace("\n", "\r\n")
    out = tmp_path / "out"
    assert _extract(tomogram, _star(tmp_path, text), out) == 0
    _assert_centred_on_the_blob(out)
    assert read_particles(out / "particles.star")["rlnMicrographName"].tolist() == ["my tomo.mrc"]


# --- the reading functions -------------------------------------------------------------------------------


def test_table_coordinates_subtracts_origins_for_pick_evaluation(tmp_path):
    """table_coordinates (the positions `aitom pick --truth` scores against) returned the coordinates
    without their origin shifts; Å shifts need the voxel size, and are refused without it, naming the file."""
    plain = _star(tmp_path, RELION30.format(
        pixel_columns="", x=12.0, y=7.0, z=6.0, ox=2.0, oy=-1.0, oz=0.0, pixel_values=""
    ), "relion30.star")  # fmt: skip
    np.testing.assert_allclose(table_coordinates(read_particles(plain)), [BLOB_XYZ])
    text = RELION31.format(optics_columns="", optics_values="", x=12.0, y=7.0, z=6.5)
    relion31 = read_particles(_star(tmp_path, text, "relion31.star"))
    np.testing.assert_allclose(table_coordinates(relion31, voxel_size_a=VOXEL_A), [BLOB_XYZ])
    with pytest.raises(InputError, match=r"relion31\.star: rlnOriginX/Y/ZAngst shifts \(Å\) need the"):
        table_coordinates(relion31)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("10 nan 6 0", "particles rlnCoordinateY: nan (row 1) is not a finite number"),
        ("10 8 inf 0", "particles rlnCoordinateZ: inf (row 1) is not a finite number"),
        ("10 8 6 abc", "particles rlnAngleRot: 'abc' (row 1) is not a finite number"),
        ("10 8 6 NaN", "particles rlnAngleRot: nan (row 1) is not a finite number"),
    ],
)
def test_values_that_are_not_numbers_are_refused_when_read(tmp_path, row, message):
    """NaN positions and angles were returned as NaN (a pick never matched, an orientation error of NaN);
    text raised a bare ValueError (a traceback)."""
    header = "data_particles\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n_rlnCoordinateZ\n_rlnAngleRot\n"
    star = _star(tmp_path, header + row + "\n")
    with pytest.raises(InputError) as caught:
        read_particles(star)
    assert str(caught.value) == f"{star}: {message}"


def test_positions_without_a_voxel_size_are_refused_only_when_they_need_it():
    """An unset header voxel size (None) refuses centred Å and stated pixel sizes, not plain voxels."""
    import pandas as pd

    plain = pd.DataFrame({"rlnCoordinateX": [1.0], "rlnCoordinateY": [2.0], "rlnCoordinateZ": [3.0]})
    positions, notes = particle_voxel_positions(plain, None, (24, 20, 16), None)
    assert positions.tolist() == [[1.0, 2.0, 3.0]] and notes == []
    with pytest.raises(InputError, match="unknown \\(pass --voxel-size\\)"):
        particle_voxel_positions(plain, pd.DataFrame({"rlnImagePixelSize": [10.0]}), (24, 20, 16), None)
    centred = pd.DataFrame({f"rlnCenteredCoordinate{axis}Angst": [0.0] for axis in "XYZ"})
    with pytest.raises(InputError, match="leaves it unset\\): pass --voxel-size"):
        particle_voxel_positions(centred, None, (24, 20, 16), None)
    positions, _ = particle_voxel_positions(centred, None, (24, 20, 16), VOXEL_A)
    assert positions.tolist() == [[12.0, 10.0, 8.0]]
