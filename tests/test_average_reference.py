"""``aitom average --reference``: averaging refined from a given map or atomic model, against the simulated
ground-truth orientations, and ``aitom hand`` with an atomic-model reference."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import mrcfile
import pandas as pd
import pytest
import torch

from aitom.cli import main
from aitom.geometry import relion_angles_to_matrix, rotation_angle_between
from aitom.io import read_particles, write_particles, write_volume
from aitom.ops.handedness import mirror_volume
from aitom.simulate.library import class_potential
from tests.align_fixtures import _BLOBS, blob_volume, posed_subtomograms

VOXEL_A = 10.0
SHIPPED_MODEL = Path(str(files("aitom") / "data" / "structures" / "1s3x.pdb.gz"))  # the hsp70_atpase class


def _write_particle_set(folder: Path, volumes: torch.Tensor, voxel_size_a: float = VOXEL_A) -> Path:
    names = []
    for index, volume in enumerate(volumes):
        names.append(f"subtomograms/{index:06d}.mrc")
        write_volume(folder / names[-1], volume, voxel_size_a)
    write_particles(folder / "particles.star", pd.DataFrame({"rlnImageName": names}))
    return folder / "particles.star"


def _errors_deg(out: Path, true_rotations: torch.Tensor) -> torch.Tensor:
    """Angle between each found orientation (particles.star) and the true one, degrees. The reference is in
    the frame of the truth, so no global rotation is fitted."""
    columns = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
    table = read_particles(out / "particles.star", require=columns)
    angles = torch.tensor(table[columns].to_numpy(), dtype=torch.float32)
    return torch.rad2deg(rotation_angle_between(relion_angles_to_matrix(angles), true_rotations))


def _fine_blobs(size: int, scale: float) -> torch.Tensor:
    """The "a" test object drawn directly on a grid ``scale`` times finer (centres and widths times scale)."""
    axis = torch.arange(size, dtype=torch.float64) - size // 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    volume = torch.zeros(size, size, size, dtype=torch.float64)
    for (cx, cy, cz), sigma in _BLOBS["a"]:
        distance2 = (x - scale * cx) ** 2 + (y - scale * cy) ** 2 + (z - scale * cz) ** 2
        volume += torch.exp(-distance2 / (2 * (scale * sigma) ** 2))
    return volume.float()


# the orientations found against the reference in the joint rounds (no gold-standard rounds, which re-align
# each half set of 5-6 toy particles against its own half map)
OPTIONS = ["--iterations", "2", "--step", "20", "--max-shift", "2", "--gold-standard-iterations", "0"]


def test_reference_map_of_another_grid_and_contrast_gives_the_true_orientations(tmp_path, capsys) -> None:
    # 12 noisy (SNR 1), wedge-filtered copies of the test object at 10 Å; the reference is the same object
    # drawn at 5 Å in a 40³ box with protein dark. --invert-reference auto flips it, and every particle's
    # orientation comes out within 5° of the truth (measured: 1-2°). Forced not to flip, the alignment
    # matches the particles to the negative of the object and the orientations are wrong (measured: median
    # error 174°).
    volumes, rotations, _ = posed_subtomograms(blob_volume(20), 12, seed=7, max_shift=1.0, snr=1.0)
    star = _write_particle_set(tmp_path / "data", volumes)
    reference = write_volume(tmp_path / "dark_fine.mrc", -_fine_blobs(40, 2.0), VOXEL_A / 2)
    arguments = ["average", "--particles", str(star), "--reference", str(reference), *OPTIONS]
    with pytest.warns(UserWarning, match="reference resampled from 40×40×40 voxels of 5 Å"):
        assert main([*arguments, "--lowpass", "25", "--out", str(tmp_path / "auto")]) == 0
    assert "low-passed to 25 Å, contrast inverted" in capsys.readouterr().out
    errors = _errors_deg(tmp_path / "auto", rotations)
    assert float(errors.max()) < 5.0, errors
    report = json.loads((tmp_path / "auto" / "fsc.json").read_text())
    assert report["reference_inverted"] is True and report["reference_lowpass_a"] == 25.0
    assert report["reference"] == str(reference)

    with pytest.warns(UserWarning, match="resampled"):
        assert main([*arguments, "--invert-reference", "no", "--out", str(tmp_path / "as_is")]) == 0
    assert "low-passed to 40 Å, contrast as it is" in capsys.readouterr().out  # the default low-pass
    assert float(_errors_deg(tmp_path / "as_is", rotations).median()) > 45.0


def test_atomic_model_reference_gives_the_true_orientations_and_its_hand(tmp_path, capsys) -> None:
    # Particles of the hsp70 ATPase (1S3X) at 6 Å, 20³, SNR 2; the reference is the model file itself,
    # built at the particles' voxel size in their box. Every orientation within 8° of the truth (measured
    # at most 2.2°). ``aitom hand`` with the same model finds the mirrored average mirrored (margin 0.125).
    voxel_a = 6.0
    potential = class_potential("hsp70_atpase", voxel_a, box_size=20)
    volumes, rotations, _ = posed_subtomograms(potential, 10, seed=3, max_shift=1.0, snr=2.0)
    star = _write_particle_set(tmp_path / "data", volumes, voxel_a)
    arguments = ["average", "--particles", str(star), "--reference", str(SHIPPED_MODEL), *OPTIONS]
    assert main([*arguments, "--lowpass", "15", "--out", str(tmp_path / "o")]) == 0
    errors = _errors_deg(tmp_path / "o", rotations)
    assert float(errors.max()) < 8.0, errors

    mirrored = write_volume(tmp_path / "mirrored.mrc", mirror_volume(potential), voxel_a)
    capsys.readouterr()
    assert main(["hand", str(mirrored), str(SHIPPED_MODEL), "--lowpass", "15", "--step", "15"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["better"] == "mirrored" and result["margin"] > 0.05, result


@pytest.fixture
def particle_set(tmp_path: Path) -> Path:
    volumes, _, _ = posed_subtomograms(blob_volume(16), 4, seed=1, max_shift=1.0, snr=4.0)
    return _write_particle_set(tmp_path / "data", volumes)


def test_reference_bad_inputs_are_refused_in_one_line(particle_set: Path, tmp_path: Path, capsys) -> None:
    good = write_volume(tmp_path / "good.mrc", blob_volume(16), VOXEL_A)
    nan = blob_volume(16).numpy()
    nan[3, 4, 5] = float("nan")
    not_a_number = tmp_path / "nan.mrc"
    with mrcfile.new(not_a_number) as mrc:
        mrc.set_data(nan)
        mrc.voxel_size = VOXEL_A
    unset = write_volume(tmp_path / "unset.mrc", _fine_blobs(32, 2.0), 1.0)
    constant = write_volume(tmp_path / "constant.mrc", torch.ones(16, 16, 16), VOXEL_A)
    out = tmp_path / "out"
    arguments = ["average", "--particles", str(particle_set), "--out", str(out), *OPTIONS]
    cases = [
        (["--reference", str(good), "--classes", "2"], "does not combine with --classes"),
        (["--reference", str(good), "--method", "faml"], "does not combine with --method faml"),
        (["--reference", str(good), "--starts", "3"], "does not combine with --starts"),
        (["--reference", str(good), "--annealing-iterations", "4"], "does not combine with --annealing"),
        (["--reference", str(tmp_path / "missing.mrc")], "missing.mrc: reference not found"),
        (["--lowpass", "40"], "--lowpass is the low-pass of --reference"),
        (["--reference", str(good), "--lowpass", "15"], "finer than Nyquist (20 Å)"),
        (["--reference", str(good), "--lowpass", "-3"], "--lowpass must be a positive"),
        (["--reference", str(not_a_number)], "nan.mrc: "),
        (["--reference", str(unset)], "unset.mrc: voxel size 1 Å in the header looks unset"),
        (["--reference", str(constant)], "constant.mrc: "),
        (["--reference", str(particle_set)], "particles.star: "),  # not a map
    ]
    for options, message in cases:
        assert main([*arguments, *options]) == 2, options
        error = capsys.readouterr().err
        assert message in error and len(error.strip().splitlines()) == 1, (options, error)
        assert not out.exists()


def test_reference_on_subtomograms_whose_voxel_size_looks_unset(tmp_path: Path, capsys) -> None:
    """Subtomograms whose headers say 1 Å and a 10 Å reference: the reference was resampled onto a 16 Å box
    and refused as 'constant after the 40 Å low-pass'. The error now names what is missing; with the
    subtomograms' --voxel-size the same run works."""
    volumes, _, _ = posed_subtomograms(blob_volume(16), 4, seed=1, max_shift=1.0, snr=4.0)
    star = _write_particle_set(tmp_path / "data", volumes, voxel_size_a=1.0)
    reference = write_volume(tmp_path / "reference.mrc", blob_volume(16), VOXEL_A)
    out = tmp_path / "out"
    arguments = [
        "average",
        "--particles",
        str(star),
        "--out",
        str(out),
        *OPTIONS,
        "--reference",
        str(reference),
    ]
    assert main(arguments) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1] == (
        f"aitom: error: {reference}: this reference's header gives 10 Å voxels, while the data's 1 Å looks "
        "unset: pass the data's --voxel-size (Å)"
    )
    assert not out.exists()
    assert main([*arguments, "--voxel-size", str(VOXEL_A), "--lowpass", "25"]) == 0


def test_class_number_averages_one_class_of_a_classified_table(tmp_path, capsys) -> None:
    # Two structures (test objects "a" and "c"), 8 particles each, labelled 1 and 2 in rlnClassNumber as a
    # classification would leave them. --class-number 2 refines class 2 only, from its own map: the output
    # table holds exactly class 2's particles, each within 5° of its true orientation.
    first, _, _ = posed_subtomograms(blob_volume(20, "a"), 8, seed=1, max_shift=1.0, snr=1.0)
    second, rotations, _ = posed_subtomograms(blob_volume(20, "c"), 8, seed=2, max_shift=1.0, snr=1.0)
    star = _write_particle_set(tmp_path / "data", torch.cat([first, second]))
    table = read_particles(star, require=())
    table["rlnClassNumber"] = [1] * 8 + [2] * 8
    write_particles(star, table, overwrite=True)
    reference = write_volume(tmp_path / "class2.mrc", blob_volume(20, "c"), VOXEL_A)
    arguments = ["average", "--particles", str(star), *OPTIONS, "--lowpass", "25"]
    out = tmp_path / "class2"
    assert main([*arguments, "--class-number", "2", "--reference", str(reference), "--out", str(out)]) == 0
    written = read_particles(out / "particles.star", require=("rlnImageName",))
    assert [Path(name).name for name in written["rlnImageName"]] == [f"{i:06d}.mrc" for i in range(8, 16)]
    # class 2 keeps its number: table, map and FSC report (it was renumbered 1)
    assert set(written["rlnClassNumber"]) == {2}
    assert (out / "average_class2.mrc").is_file() and not (out / "average_class1.mrc").exists()
    report = json.loads((out / "fsc.json").read_text())
    assert [c["class"] for c in report["classes"]] == [2]
    assert report["classes"][0]["half_maps"] == ["average_class2_half1.mrc", "average_class2_half2.mrc"]
    errors = _errors_deg(out, rotations)
    assert float(errors.max()) < 5.0, errors

    capsys.readouterr()
    unlabelled = _write_particle_set(tmp_path / "plain", first)
    for bad_star, options, message in (
        (
            star,
            ["--class-number", "3"],
            "0 particle(s) in class(es) 3: need at least 2 (the table's classes: 1, 2)",
        ),
        (unlabelled, ["--class-number", "1"], "--class-number needs an rlnClassNumber column"),
    ):
        argv = ["average", "--particles", str(bad_star), *OPTIONS, *options, "--out", str(tmp_path / "bad")]
        assert main(argv) == 2
        error = capsys.readouterr().err
        assert message in error and len(error.strip().splitlines()) == 1, error
        assert not (tmp_path / "bad").exists()
    with pytest.raises(SystemExit) as exit_info:  # argparse refuses it, exit 2
        main([*arguments, "--class-number", "0", "--out", str(tmp_path / "bad")])
    assert exit_info.value.code == 2 and "class numbers start at 1" in capsys.readouterr().err
