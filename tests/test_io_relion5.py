"""RELION 5 / WarpTools tomography STAR files: the real 70S set, round trips, units, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from aitom.errors import InputError
from aitom.geometry import relion_angles_to_matrix
from aitom.io.relion5 import (
    centered_angstrom_to_voxels,
    check_particles_against_tomograms,
    format_visible_frames,
    parse_visible_frames,
    particle_positions_centered_a,
    read_optimisation_set,
    read_relion5_particles,
    read_tomograms_star,
    relion5_optics_table,
    relion5_particles_table,
    voxels_to_centered_angstrom,
    write_relion5_particles,
)

DATA = Path(__file__).parent / "data" / "relion5"
STEM = "warptools_test_4-tomos_10-ptcls_box-32_angpix-12"
PARTICLES = DATA / f"{STEM}.star"
TOMOGRAMS = DATA / f"{STEM}_tomograms.star"
OPTIMISATION_SET = DATA / f"{STEM}_optimisation_set.star"


def test_real_tomogram_set():
    tomograms = read_tomograms_star(TOMOGRAMS)
    assert list(tomograms) == ["Unt_083.tomostar", "Unt_050.tomostar", "Unt_076.tomostar", "Unt_088.tomostar"]
    for series in tomograms.values():
        assert series.n_tilts == 37
        assert series.projection_matrices.shape == (37, 4, 4)
        assert series.pixel_size_a == pytest.approx(1.667)
        assert (series.voltage_kv, series.cs_mm, series.amplitude_contrast) == (300.0, 2.7, 0.07)
        assert series.hand == -1.0
        assert series.size_xyz == (4400.0, 6000.0, 1400.0)
        rotations = series.rotations
        # orthonormal, right-handed (the file stores 8 significant digits)
        np.testing.assert_allclose(
            rotations @ rotations.transpose(0, 2, 1), np.broadcast_to(np.eye(3), (37, 3, 3)), atol=1e-6
        )
        np.testing.assert_allclose(np.linalg.det(rotations), 1.0, atol=1e-6)
        np.testing.assert_array_equal(
            series.projection_matrices[:, 3], np.broadcast_to([0, 0, 0, 1], (37, 4))
        )
        assert series.pre_exposure_e_per_a2.min() == 0.0  # the first tilt recorded
    first = tomograms["Unt_083.tomostar"]
    assert first.defocus_u_a[0] == 33350.7 and first.defocus_v_a[0] == 28632.1
    assert first.defocus_angle_deg[0] == 41.271 and first.pre_exposure_e_per_a2[0] == 92.019
    np.testing.assert_allclose(first.projection_matrices[0, 0], [0.10915412, -0.99366254, 0.026835253, 0])
    assert first.size_voxels(12.0) == pytest.approx(np.array([4400, 6000, 1400]) * 1.667 / 12)


def test_relion5_layout_with_tilt_series_files(tmp_path):
    """RELION 5's own layout (angles in per-series files) gives the same rotations as the matrices.

    The angles come from the WarpTools matrices by RELION's Tomogram::getProjectionAnglesFromMatrix
    (x = atan2(R21, R22), y = asin(-R20), z = atan2(R10, R00)), so this checks Rz(z) Ry(y) Rx(x).
    """
    series = read_tomograms_star(TOMOGRAMS)["Unt_083.tomostar"]
    rotations = series.rotations
    angles = {
        "rlnTomoXTilt": np.degrees(np.arctan2(rotations[:, 2, 1], rotations[:, 2, 2])),
        "rlnTomoYTilt": np.degrees(np.arcsin(-rotations[:, 2, 0])),
        "rlnTomoZRot": np.degrees(np.arctan2(rotations[:, 1, 0], rotations[:, 0, 0])),
    }
    tilts = pd.DataFrame(
        {
            **angles,
            "rlnTomoXShiftAngst": 16.67,
            "rlnTomoYShiftAngst": 0.0,
            "rlnDefocusU": series.defocus_u_a,
            "rlnDefocusV": series.defocus_v_a,
            "rlnDefocusAngle": series.defocus_angle_deg,
            "rlnMicrographPreExposure": series.pre_exposure_e_per_a2,
        }
    )
    starfile.write({"Unt_083": tilts}, tmp_path / "Unt_083.star")
    global_table = pd.DataFrame(
        {
            "rlnTomoName": ["Unt_083"],
            "rlnTomoTiltSeriesStarFile": ["Unt_083.star"],
            "rlnTomoSizeX": [4400],
            "rlnTomoSizeY": [6000],
            "rlnTomoSizeZ": [1401],
            "rlnTomoTiltSeriesPixelSize": [1.667],
            "rlnVoltage": [300.0],
            "rlnSphericalAberration": [2.7],
            "rlnAmplitudeContrast": [0.07],
        }
    )
    starfile.write({"global": global_table}, tmp_path / "tomograms.star")
    native = read_tomograms_star(tmp_path / "tomograms.star")["Unt_083"]
    np.testing.assert_allclose(native.rotations, rotations, atol=1e-6)
    np.testing.assert_allclose(native.pre_exposure_e_per_a2, series.pre_exposure_e_per_a2)
    # the tomogram centre (2200, 3000, 700) projects onto the image centre, shifted by 16.67 A = 10 pixels
    projected = native.projection_matrices @ np.array([2200.0, 3000.0, 700.0, 1.0])
    np.testing.assert_allclose(projected[:, :2], np.broadcast_to([10.0, 0.0], (37, 2)), atol=1e-6)


def test_depth_dependent_defocus_offset():
    """RELION's Tomogram::getCtf: defocus += hand * slope * (depth along each tilt's beam), in A."""
    series = read_tomograms_star(TOMOGRAMS)["Unt_083.tomostar"]
    offsets = series.defocus_offsets_a(np.array([[0.0, 0.0, 100.0], [0.0, 0.0, 0.0]]))
    assert offsets.shape == (2, 37)
    np.testing.assert_allclose(offsets[0], -1.0 * 100.0 * series.rotations[:, 2, 2])  # hand -1
    assert np.all(offsets[1] == 0.0)


def test_real_particle_set():
    particles, optics, general = read_relion5_particles(PARTICLES)
    assert len(particles) == 40 and len(optics) == 4
    assert general == {"rlnTomoSubTomosAre2DStacks": 1}
    assert particles["rlnTomoName"].value_counts().to_dict() == {
        name: 10 for name in ("Unt_083.tomostar", "Unt_050.tomostar", "Unt_076.tomostar", "Unt_088.tomostar")
    }
    assert optics["rlnImagePixelSize"].tolist() == [12.0] * 4 and optics["rlnImageSize"].tolist() == [32] * 4
    assert optics["rlnCtfDataAreCtfPremultiplied"].tolist() == [1] * 4
    mask = particles["rlnTomoVisibleFrames"].iloc[0]
    assert mask.dtype == bool and mask.shape == (37,)
    assert np.flatnonzero(~mask).tolist() == [0, 5, 35]
    assert particles["rlnImageName"].iloc[0].endswith("Unt_083/Unt_083_12.00A_000001.mrcs")
    check_particles_against_tomograms(
        particles, optics, read_tomograms_star(TOMOGRAMS), particles_path=PARTICLES
    )


def test_optimisation_set():
    files = read_optimisation_set(OPTIMISATION_SET)
    assert files["particles"] == PARTICLES and files["tomograms"] == TOMOGRAMS


def test_visible_frames_text():
    assert parse_visible_frames("[0,1,1]").tolist() == [False, True, True]
    assert format_visible_frames(np.array([True, False])) == "[1,0]"
    with pytest.raises(ValueError):
        parse_visible_frames("[0,2]")


def test_centered_angstrom_voxels_hand_example_and_round_trip():
    # tomogram 100 x 100 x 50 voxels of 10 A: centre (50, 50, 25); 100 A right of it is voxel x = 60
    voxels = centered_angstrom_to_voxels(
        np.array([[100.0, 0.0, -50.0], [0.0, 0.0, 0.0]]), (100, 100, 50), 10.0
    )
    np.testing.assert_array_equal(voxels, [[60.0, 50.0, 20.0], [50.0, 50.0, 25.0]])
    rng = np.random.default_rng(0)
    centered = rng.uniform(-3000, 3000, size=(20, 3))
    size = (611.2, 833.5, 194.5)
    back = voxels_to_centered_angstrom(centered_angstrom_to_voxels(centered, size, 12.0), size, 12.0)
    np.testing.assert_allclose(back, centered, atol=1e-9)


def test_particle_positions_units():
    """rlnCoordinate: pixels from the corner (of the given pixel size); centred ones: A from the centre."""
    particles, _, _ = read_relion5_particles(PARTICLES)
    tomograms = read_tomograms_star(TOMOGRAMS)
    first = particles.iloc[:1]
    # default: tilt-series pixels (RELION's convention): (494.521 - 4400 / 2) * 1.667 A
    default = particle_positions_centered_a(first, tomograms)
    np.testing.assert_allclose(default[0], (np.array([494.521, 564.065, 28.146]) - [2200, 3000, 700]) * 1.667)
    # the WarpTools export counts them in 12 A pixels of a 4400 * 1.667 / 12 = 611.23-voxel-wide tomogram
    binned = particle_positions_centered_a(first, tomograms, coordinate_pixel_size_a=12.0)
    centre = np.array([4400, 6000, 1400]) * 1.667 / 12 / 2
    np.testing.assert_allclose(binned[0], (np.array([494.521, 564.065, 28.146]) - centre) * 12.0)
    # centred columns win, and RELION's origin shift is subtracted (position = coordinate - origin)
    centred = first.assign(
        rlnCenteredCoordinateXAngst=10.0,
        rlnCenteredCoordinateYAngst=-20.0,
        rlnCenteredCoordinateZAngst=30.0,
        rlnOriginXAngst=1.0,
    )
    np.testing.assert_allclose(particle_positions_centered_a(centred, tomograms)[0], [9.0, -20.0, 30.0])


def test_voxel_positions_subtract_origin_shifts_in_every_layout():
    """RELION: position = coordinate - origin. A plain voxel table (no optics), a RELION 4/5 table in 5 Å
    tilt-series pixels and a RELION 5 centred one, each with rlnOriginXAngst 20 Å, on a 10 Å tomogram."""
    from aitom.io.star import particle_voxel_positions

    size, voxel = (40, 30, 20), 10.0
    plain = pd.DataFrame({"rlnCoordinateX": [12.0], "rlnCoordinateY": [7.0], "rlnCoordinateZ": [3.0]})
    positions, notes = particle_voxel_positions(plain, pd.DataFrame(), size, voxel)
    assert notes == [] and positions.tolist() == [[12.0, 7.0, 3.0]]
    shifted = plain.assign(rlnOriginXAngst=20.0, rlnOriginZAngst=-10.0)
    positions, notes = particle_voxel_positions(shifted, pd.DataFrame(), size, voxel)
    assert notes and positions.tolist() == [[10.0, 7.0, 4.0]]
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnTomoTiltSeriesPixelSize": [5.0]})
    positions, _ = particle_voxel_positions(shifted.assign(rlnOpticsGroup=1), optics, size, voxel)
    np.testing.assert_allclose(positions, [[12.0 * 5 / 10 - 2, 7.0 * 5 / 10, 3.0 * 5 / 10 + 1]])
    centred = pd.DataFrame(
        {
            "rlnCenteredCoordinateXAngst": [0.0],
            "rlnCenteredCoordinateYAngst": [0.0],
            "rlnCenteredCoordinateZAngst": [0.0],
            "rlnOriginXAngst": [20.0],
        }
    )
    positions, _ = particle_voxel_positions(centred, pd.DataFrame(), size, voxel)
    np.testing.assert_allclose(positions, [[20.0 - 2, 15.0, 10.0]])  # centre of 40 × 30 × 20 is (20, 15, 10)


def test_centred_positions_turn_origins_along_pseudo_subtomogram_axes():
    """RELION 4: an origin shift is along the pseudo-subtomogram's axes. With rlnTomoSubtomogramRot 90° (a
    quarter turn about z), rlnOriginXAngst 20 Å moves the particle 20 Å along -y of the tomogram."""
    geometry = {"t": None}
    table = pd.DataFrame(
        {
            "rlnTomoName": ["t"],
            "rlnCenteredCoordinateXAngst": [100.0],
            "rlnCenteredCoordinateYAngst": [50.0],
            "rlnCenteredCoordinateZAngst": [0.0],
            "rlnOriginXAngst": [20.0],
            "rlnTomoSubtomogramRot": [90.0],
            "rlnTomoSubtomogramTilt": [0.0],
            "rlnTomoSubtomogramPsi": [0.0],
        }
    )
    quarter_turn = relion_angles_to_matrix(torch.tensor([90.0, 0.0, 0.0], dtype=torch.float64)).numpy()
    turned = quarter_turn @ [20.0, 0.0, 0.0]
    np.testing.assert_allclose(turned, [0.0, -20.0, 0.0], atol=1e-9)  # RELION's A for rot 90°: x -> -y
    centre = particle_positions_centered_a(table, geometry)[0]
    np.testing.assert_allclose(centre, [100.0, 70.0, 0.0], atol=1e-9)


def test_write_read_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    centered = rng.uniform(-2000, 2000, size=(5, 3))
    angles = rng.uniform(-180, 180, size=(5, 3))
    masks = [rng.random(7) > 0.2 for _ in range(5)]
    table = relion5_particles_table(
        centered,
        ["TS_01"] * 3 + ["TS_02"] * 2,
        angles,
        extra={"rlnImageName": [f"stacks/{i}.mrcs" for i in range(5)], "rlnTomoVisibleFrames": masks},
    )
    optics = relion5_optics_table(image_pixel_size_a=12.0, tilt_series_pixel_size_a=1.5, image_size=32)
    path = write_relion5_particles(
        tmp_path / "particles.star", table, optics=optics, general={"rlnTomoSubTomosAre2DStacks": 1}
    )
    particles, optics_read, general = read_relion5_particles(path)
    assert general == {"rlnTomoSubTomosAre2DStacks": 1}
    pd.testing.assert_frame_equal(optics_read, optics)
    pd.testing.assert_frame_equal(
        particles.drop(columns="rlnTomoVisibleFrames"), table.drop(columns="rlnTomoVisibleFrames")
    )
    for read_mask, mask in zip(particles["rlnTomoVisibleFrames"], masks):
        np.testing.assert_array_equal(read_mask, mask)
    assert optics_read["rlnTomoSubtomogramBinning"].iloc[0] == 8.0
    with pytest.raises(InputError, match="exists"):
        write_relion5_particles(path, table, optics=optics)


def _edit(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new)


def test_missing_columns_name_the_file(tmp_path):
    tomograms = tmp_path / "tomograms.star"
    tomograms.write_text(_edit(TOMOGRAMS.read_text(), "_rlnTomoProjX #1", "_rlnSomethingElse #1"))
    with pytest.raises(InputError, match="rlnTomoProjX") as error:
        read_tomograms_star(tomograms)
    assert error.value.path == tomograms
    particles = tmp_path / "particles.star"
    particles.write_text(_edit(PARTICLES.read_text(), "_rlnCoordinateY #4", "_rlnSomethingElse #4"))
    with pytest.raises(InputError, match="positions") as error:
        read_relion5_particles(particles)
    assert error.value.path == particles
    with pytest.raises(InputError, match="not found"):
        read_tomograms_star(tmp_path / "absent.star")


def test_particles_against_tomograms_errors(tmp_path):
    tomograms = read_tomograms_star(TOMOGRAMS)
    particles, optics, _ = read_relion5_particles(PARTICLES)
    renamed = particles.copy()
    renamed.loc[3, "rlnTomoName"] = "Unt_999.tomostar"
    with pytest.raises(InputError, match="Unt_999") as error:
        check_particles_against_tomograms(renamed, optics, tomograms, particles_path=PARTICLES)
    assert error.value.path == PARTICLES
    wrong_pixel = optics.assign(rlnTomoTiltSeriesPixelSize=1.5)
    with pytest.raises(InputError, match="pixel size"):
        check_particles_against_tomograms(particles, wrong_pixel, tomograms, particles_path=PARTICLES)
    wrong_binning = optics.assign(rlnTomoSubtomogramBinning=8.0)
    with pytest.raises(InputError, match="binning"):
        check_particles_against_tomograms(particles, wrong_binning, tomograms, particles_path=PARTICLES)
    short = particles.copy()
    short["rlnTomoVisibleFrames"] = [mask[:30] for mask in short["rlnTomoVisibleFrames"]]
    with pytest.raises(InputError, match="30 rlnTomoVisibleFrames"):
        check_particles_against_tomograms(short, optics, tomograms, particles_path=PARTICLES)


def test_ragged_tomograms_star_names_the_block_and_row(tmp_path):
    # a tilt-series block whose third row lost its last value
    lines = TOMOGRAMS.read_text().splitlines()
    start = lines.index("data_Unt_050.tomostar")
    rows = [i for i in range(start, len(lines)) if lines[i].lstrip()[:1] == "["]
    broken = lines.copy()
    broken[rows[2]] = broken[rows[2]].rsplit(maxsplit=1)[0]
    path = tmp_path / "tomograms.star"
    path.write_text("\n".join(broken) + "\n")
    with pytest.raises(
        InputError, match=r"row 3 of the data_Unt_050.tomostar table has \d+ values for its \d+"
    ):
        read_tomograms_star(path)
