"""``aitom align`` and ``aitom average`` (run through their own parsers until cli.py registers them)."""

from __future__ import annotations

import argparse
import json
import math

import pandas as pd
import pytest
import torch

from aitom.cli import _guarded
from aitom.commands import align as align_command
from aitom.commands import average as average_command
from aitom.fourier import fourier_shell_correlation, missing_wedge_mask
from aitom.geometry import euler_zyz_to_matrix, relion_angles_to_matrix, rotation_angle_between
from aitom.io import read_particles, read_volume, write_particles, write_volume
from aitom.ops.averaging import leave_one_out_scores
from tests.align_fixtures import blob_volume, posed_subtomograms


def _main(module, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="aitom")
    module.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return _guarded(lambda: module.run(args))


def test_help_runs(capsys):
    for module, name in ((align_command, "align"), (average_command, "average")):
        with pytest.raises(SystemExit) as exit_info:
            _main(module, [name, "--help"])
        assert exit_info.value.code == 0
    assert "constrained correlation" in capsys.readouterr().out


def test_align_command_recovers_pose(tmp_path, capsys):
    reference = blob_volume(24)
    volumes, rotations, shifts = posed_subtomograms(reference, 1, seed=3, max_shift=2.0)
    write_volume(tmp_path / "a.mrc", reference, 10.0)
    write_volume(tmp_path / "b.mrc", volumes[0], 10.0)
    code = _main(
        align_command,
        [
            "align",
            str(tmp_path / "a.mrc"),
            str(tmp_path / "b.mrc"),
            "--wedge-a",
            "90",
            "--step",
            "20",
            "--json",
        ],
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    angles = report["rotation_zyz_deg"]
    found = euler_zyz_to_matrix(
        torch.tensor([math.radians(angles[key]) for key in ("rot", "tilt", "psi")])
    ).float()
    assert float(torch.rad2deg(rotation_angle_between(found, rotations[0]))) < 2.0
    assert float((torch.tensor(report["shift_xyz_voxels"]) - shifts[0]).norm()) < 0.5
    assert report["score"] > 0.9


def test_align_command_bad_inputs(tmp_path, capsys):
    write_volume(tmp_path / "a.mrc", blob_volume(16), 10.0)
    write_volume(tmp_path / "b.mrc", blob_volume(12), 10.0)
    write_volume(tmp_path / "mask.mrc", torch.ones(12, 12, 12), 10.0)
    assert _main(align_command, ["align", str(tmp_path / "a.mrc"), str(tmp_path / "b.mrc")]) == 2
    assert "differs" in capsys.readouterr().err
    arguments = [
        "align",
        str(tmp_path / "a.mrc"),
        str(tmp_path / "a.mrc"),
        "--mask-b",
        str(tmp_path / "mask.mrc"),
    ]
    assert _main(align_command, arguments) == 2
    error = capsys.readouterr().err
    assert "mask" in error and len(error.strip().splitlines()) == 1
    write_volume(tmp_path / "c.mrc", blob_volume(16), 12.0)
    assert _main(align_command, ["align", str(tmp_path / "a.mrc"), str(tmp_path / "c.mrc")]) == 2
    error = capsys.readouterr().err
    assert "c.mrc: voxel size 12 Å differs" in error and len(error.strip().splitlines()) == 1
    # a wrong header is overridden for both
    assert (
        _main(
            align_command, ["align", str(tmp_path / "a.mrc"), str(tmp_path / "c.mrc"), "--voxel-size", "10"]
        )
        == 0
    )


def _write_particle_set(folder, volumes) -> None:
    names = []
    for index, volume in enumerate(volumes):
        name = f"subtomograms/{index:06d}.mrc"
        write_volume(folder / name, volume, 10.0)
        names.append(name)
    write_particles(folder / "particles.star", pd.DataFrame({"rlnImageName": names}))


def test_average_command_writes_outputs(tmp_path):
    volumes, _, _ = posed_subtomograms(blob_volume(16), 6, seed=5, max_shift=1.0, snr=4.0)
    _write_particle_set(tmp_path / "data", volumes)
    out = tmp_path / "out"
    arguments = ["average", "--particles", str(tmp_path / "data" / "particles.star"), "--out", str(out)]
    assert _main(average_command, [*arguments, "--iterations", "1", "--step", "30", "--max-shift", "2"]) == 0
    average, header = read_volume(out / "average_class1.mrc")
    assert average.shape == (16, 16, 16) and header.voxel_size_a[0] == pytest.approx(10.0)
    table = read_particles(out / "particles.star", require=("rlnAngleRot", "rlnOriginX", "rlnClassNumber"))
    assert len(table) == 6 and set(table["rlnClassNumber"]) == {1}
    report = json.loads((out / "fsc.json").read_text())
    assert report["classes"][0]["particles"] == 6 and len(report["classes"][0]["fsc"]) == 9
    assert (out / "fsc.png").stat().st_size > 0
    _assert_half_maps_give_the_reported_fsc(out, report)
    # An existing output folder is refused without --overwrite.
    assert _main(average_command, [*arguments, "--iterations", "1"]) == 2


def _assert_half_maps_give_the_reported_fsc(out, report: dict) -> None:
    """Every class of two or more particles has two half maps whose FSC is the class's reported FSC."""
    for entry in report["classes"]:
        if entry["particles"] < 2:
            assert entry["half_maps"] is None
            continue
        assert entry["half_maps"] == [f"average_class{entry['class']}_half{half}.mrc" for half in (1, 2)]
        first, second = (read_volume(out / name)[0] for name in entry["half_maps"])
        _, fsc = fourier_shell_correlation(first, second)
        assert fsc.tolist() == pytest.approx(entry["fsc"], abs=1e-4)
        assert not torch.equal(first, second)


@pytest.mark.parametrize("method", ["align", "faml"])
def test_average_command_writes_half_maps_of_every_class(tmp_path, method):
    """--classes 2 with classification (PCA + k-means) and with FAML: each class's half maps."""
    volumes, _, _ = posed_subtomograms(blob_volume(16), 8, seed=6, max_shift=1.0, snr=2.0)
    _write_particle_set(tmp_path / "data", volumes)
    out = tmp_path / "out"
    arguments = ["average", "--particles", str(tmp_path / "data" / "particles.star"), "--out", str(out)]
    options = ["--classes", "2", "--method", method, "--iterations", "1", "--step", "30", "--max-shift", "2"]
    assert _main(average_command, [*arguments, *options]) == 0
    report = json.loads((out / "fsc.json").read_text())
    assert len(report["classes"]) == 2
    _assert_half_maps_give_the_reported_fsc(out, report)


@pytest.mark.parametrize(
    ("method", "key", "printed_as"),
    [
        ("align", "start_scores", "mean leave-one-out score"),
        ("faml", "start_log_likelihoods", "final log-likelihood"),
    ],
)
def test_average_command_several_starts(tmp_path, capsys, method, key, printed_as):
    """--starts 2: both starts' criteria printed and in fsc.json, the best one kept; bad values refused."""
    volumes, _, _ = posed_subtomograms(blob_volume(16), 6, seed=5, max_shift=1.0, snr=0.5)
    _write_particle_set(tmp_path / "data", volumes)
    arguments = ["average", "--particles", str(tmp_path / "data" / "particles.star"), "--method", method]
    # no gold-standard rounds: the table's scores are then those of the kept start's joint alignment
    options = ["--iterations", "1", "--step", "30", "--max-shift", "2", "--gold-standard-iterations", "0"]
    assert _main(average_command, [*arguments, *options, "--starts", "2", "--out", str(tmp_path / "o")]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "o" / "fsc.json").read_text())
    values = report[key]
    assert len(values) == 2 and report["kept_start"] == 1 + max(range(2), key=values.__getitem__)
    assert f"start {report['kept_start']}: {printed_as}" in printed and "(kept)" in printed
    if method == "faml":
        return
    # the kept start's score: each particle's correlation with the others' average under the written poses
    # (default --wedge 60 mask, band 0.05 to the default --max-frequency 0.35, no particle mask)
    table = read_particles(tmp_path / "o" / "particles.star", require=("rlnImageName",))
    angles = torch.tensor(
        table[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(), dtype=torch.float32
    )
    shifts = -torch.tensor(table[["rlnOriginX", "rlnOriginY", "rlnOriginZ"]].to_numpy(), dtype=torch.float32)
    scores = leave_one_out_scores(
        volumes.float(),
        relion_angles_to_matrix(angles),
        shifts,
        missing_wedge_mask((16,) * 3, tilt_min_deg=-60.0, tilt_max_deg=60.0),
        min_frequency=0.05,
        max_frequency=0.35,
    )
    assert float(scores.mean()) == pytest.approx(max(values), abs=1e-4)
    for bad in (["--starts", "0"], ["--starts", "2", "--classes", "2", "--fourier-weights", "wedge"]):
        assert _main(average_command, [*arguments, *options, *bad, "--out", str(tmp_path / "bad")]) == 2
        error = capsys.readouterr().err
        assert "--starts" in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_average_command_auto_classes_merges_one_structure(tmp_path, capsys):
    """--classes auto on one structure: the silhouette's classes merge back into one; bad values refused."""
    volumes, _, _ = posed_subtomograms(blob_volume(16), 10, seed=2, max_shift=1.0, snr=0.5)
    _write_particle_set(tmp_path / "data", volumes)
    arguments = ["average", "--particles", str(tmp_path / "data" / "particles.star"), "--classes", "auto"]
    options = ["--iterations", "2", "--step", "30", "--max-shift", "2", "--max-classes", "3"]
    no_reassignment = ["--reassignment-rounds", "0"]
    assert _main(average_command, [*arguments, *options, *no_reassignment, "--out", str(tmp_path / "o")]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "o" / "fsc.json").read_text())
    assert len(report["classes"]) == 1 and report["classes"][0]["particles"] == 10
    # a class of one particle has no estimate (null) and is merged all the same
    estimates = [m["structural_correlation"] for m in report["merges"]]
    assert estimates and all(estimate is None or estimate >= 0.9 for estimate in estimates)
    assert printed.count("merged classes") == len(report["merges"])
    # each merge names the number of classes before it and after it, down to the one class written
    merge_lines = [line for line in printed.splitlines() if line.startswith("merged classes")]
    assert f"of {len(merge_lines) + 1} ({len(merge_lines)} left)" in merge_lines[0]
    assert "of 2 (1 left)" in merge_lines[-1]
    assert report["structural_correlations"] == [[1.0]]
    table = read_particles(tmp_path / "o" / "particles.star", require=("rlnClassNumber",))
    assert set(table["rlnClassNumber"]) == {1}
    assert "reassignments" not in report
    # by default the leave-one-out reassignment runs first: the split dissolves there or merges after it
    assert _main(average_command, [*arguments, *options, "--out", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "r" / "fsc.json").read_text())
    assert len(report["classes"]) == 1 and report["classes"][0]["particles"] == 10
    assert report["reassignments"] and "leave-one-out reassignment" in printed
    assert report["reassignments"][-1]["n_classes"] == len(report["merges"]) + 1
    for option, bad in (
        ("--merge-threshold", "1.5"),
        ("--merge-threshold", "-0.1"),
        ("--reassignment-rounds", "-1"),
    ):
        bad_options = [*options, option, bad, "--out", str(tmp_path / "bad")]
        assert _main(average_command, [*arguments, *bad_options]) == 2
        error = capsys.readouterr().err
        assert option in error and len(error.strip().splitlines()) == 1
    fixed = ["average", "--particles", str(tmp_path / "data" / "particles.star"), "--classes", "2"]
    assert _main(average_command, [*fixed, "--reassignment-rounds", "2", "--out", str(tmp_path / "bad")]) == 2
    assert "--classes auto only" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_average_command_bad_inputs(tmp_path, capsys):
    write_particles(tmp_path / "empty.star", pd.DataFrame({"rlnImageName": pd.Series([], dtype=str)}))
    assert (
        _main(
            average_command,
            ["average", "--particles", str(tmp_path / "empty.star"), "--out", str(tmp_path / "o")],
        )
        == 2
    )
    assert "empty" in capsys.readouterr().err
    folder = tmp_path / "mixed"
    write_volume(folder / "a.mrc", blob_volume(16), 10.0)
    write_volume(folder / "b.mrc", blob_volume(12), 10.0)
    write_particles(folder / "particles.star", pd.DataFrame({"rlnImageName": ["a.mrc", "b.mrc"]}))
    assert (
        _main(
            average_command,
            ["average", "--particles", str(folder / "particles.star"), "--out", str(tmp_path / "o")],
        )
        == 2
    )
    error = capsys.readouterr().err
    assert "differs" in error and len(error.strip().splitlines()) == 1
    write_volume(folder / "c.mrc", blob_volume(16), 12.0)
    write_particles(folder / "voxels.star", pd.DataFrame({"rlnImageName": ["a.mrc", "c.mrc"]}))
    arguments = ["average", "--particles", str(folder / "voxels.star"), "--out", str(tmp_path / "o")]
    assert _main(average_command, arguments) == 2
    error = capsys.readouterr().err
    assert "c.mrc: voxel size 12 Å differs from the first particle's 10 Å" in error
    assert len(error.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_average_command_uses_rlnctfimage_weights(tmp_path, capsys):
    """3-D weights (rlnCtfImage) equal to a ±45° wedge give the average of ``--fourier-weights wedge
    --wedge 45``; a weight of the wrong size is refused with one line and nothing written."""
    from aitom.fourier import missing_wedge_mask

    volumes, _, _ = posed_subtomograms(
        blob_volume(16), 4, seed=6, max_shift=1.0, snr=4.0, tilt_range_deg=(-45.0, 45.0)
    )
    wedge = missing_wedge_mask((16,) * 3, tilt_min_deg=-45.0, tilt_max_deg=45.0)
    folder = tmp_path / "data"
    names, weights = [], []
    for index, volume in enumerate(volumes):
        names.append(f"subtomograms/{index}.mrc")
        weights.append(f"weights/{index}.mrc")
        write_volume(folder / names[-1], volume, 10.0)
        write_volume(folder / weights[-1], 3.0 * wedge, 10.0)  # any scale: normalised by its maximum
    write_particles(folder / "particles.star", pd.DataFrame({"rlnImageName": names, "rlnCtfImage": weights}))
    common = ["average", "--particles", str(folder / "particles.star"), "--iterations", "1", "--step", "30"]
    common += ["--max-shift", "2"]
    assert _main(average_command, [*common, "--out", str(tmp_path / "weights")]) == 0
    assert "rlnCtfImage" in capsys.readouterr().out
    wedge_args = ["--fourier-weights", "wedge", "--wedge", "45", "--out", str(tmp_path / "wedge")]
    assert _main(average_command, [*common, *wedge_args]) == 0
    capsys.readouterr()
    with_weights, _ = read_volume(tmp_path / "weights" / "average_class1.mrc")
    with_wedge, _ = read_volume(tmp_path / "wedge" / "average_class1.mrc")
    assert torch.corrcoef(torch.stack((with_weights.flatten(), with_wedge.flatten())))[0, 1] > 0.999

    # RELION 3/4 and Warp layouts: FFTW's non-centred half (16 × 16 × 9), the same with RELION 4's
    # multiplicity stacked after it along Z, and a signed CTF (negative values: squared).
    half = torch.fft.ifftshift(wedge)[..., :9]
    for index, weight in enumerate((half, torch.cat((half, 5.0 * torch.ones_like(half))), -2.0 * half)):
        write_volume(folder / weights[index], weight, 10.0, overwrite=True)
    assert _main(average_command, [*common, "--out", str(tmp_path / "relion")]) == 0
    capsys.readouterr()
    with_relion_layouts, _ = read_volume(tmp_path / "relion" / "average_class1.mrc")
    assert torch.corrcoef(torch.stack((with_relion_layouts.flatten(), with_wedge.flatten())))[0, 1] > 0.999
    # classification and FAML use the per-particle weights as well
    for method in ("align", "faml"):
        classes = [*common, "--classes", "2", "--method", method]
        assert _main(average_command, [*classes, "--out", str(tmp_path / f"{method}_weights")]) == 0
        assert _main(average_command, [*classes, *wedge_args[:-1], str(tmp_path / f"{method}_wedge")]) == 0
        capsys.readouterr()
        for k in (1, 2):
            by_weights, _ = read_volume(tmp_path / f"{method}_weights" / f"average_class{k}.mrc")
            by_wedge, _ = read_volume(tmp_path / f"{method}_wedge" / f"average_class{k}.mrc")
            assert torch.corrcoef(torch.stack((by_weights.flatten(), by_wedge.flatten())))[0, 1] > 0.999

    write_volume(folder / weights[2], torch.ones(12, 12, 12), 10.0, overwrite=True)
    assert _main(average_command, [*common, "--out", str(tmp_path / "bad")]) == 2
    error = capsys.readouterr().err
    assert "3-D weight" in error and weights[2] in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()
    assert (
        _main(average_command, [*common, "--annealing-iterations", "1", "--out", str(tmp_path / "bad")]) == 2
    )
    assert "--annealing-iterations" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_average_command_annealed_start(tmp_path):
    """--annealing-iterations: the found poses agree with the truth up to one global rotation."""
    from aitom.geometry import relion_angles_to_matrix

    volumes, rotations, _ = posed_subtomograms(blob_volume(20), 10, seed=5, max_shift=1.0, snr=4.0)
    _write_particle_set(tmp_path / "data", volumes)
    arguments = ["average", "--particles", str(tmp_path / "data" / "particles.star")]
    options = ["--iterations", "3", "--step", "20", "--max-shift", "2", "--annealing-iterations", "6"]
    assert _main(average_command, [*arguments, *options, "--out", str(tmp_path / "o")]) == 0
    table = read_particles(tmp_path / "o" / "particles.star", require=("rlnAngleRot",))
    angles = torch.tensor(
        table[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(), dtype=torch.float32
    )
    relative = rotations.transpose(-1, -2) @ relion_angles_to_matrix(angles)
    agree = torch.rad2deg(rotation_angle_between(relative[:, None], relative[None, :])) < 15.0
    # as in the random-start test, a few toy particles may lock onto a pseudo-symmetric pose; most agree
    assert float(agree.float().mean(1).max()) >= 0.6


def test_average_command_symmetry(tmp_path, capsys):
    """--symmetry C2: the written average is C2-symmetric about the axis found in it (self-correlation
    under the 2-fold 0.99 up to interpolation, 0.77 for C1) and fsc.json names the group; unknown groups are
    refused."""
    from aitom.ops.symmetry import map_symmetry_rotations

    volumes, _, _ = posed_subtomograms(blob_volume(16), 8, seed=3, max_shift=1.0, snr=0.5)
    _write_particle_set(tmp_path / "data", volumes)
    arguments = ["average", "--particles", str(tmp_path / "data" / "particles.star")]
    options = ["--iterations", "2", "--step", "30", "--max-shift", "2"]
    self_correlation = {}
    for symbol in ("C1", "C2"):
        out = tmp_path / symbol
        assert _main(average_command, [*arguments, *options, "--symmetry", symbol, "--out", str(out)]) == 0
        average, _ = read_volume(out / "average_class1.mrc")
        self_correlation[symbol] = map_symmetry_rotations(average, "C2")[1]
        report = json.loads((out / "fsc.json").read_text())
        assert report["symmetry"] == symbol
        _assert_half_maps_give_the_reported_fsc(out, report)  # the halves symmetrised like the average
    assert self_correlation["C2"] > 0.98 and self_correlation["C1"] < 0.9, self_correlation
    capsys.readouterr()
    for bad, message in (
        (["--symmetry", "X3"], "--symmetry: unknown point group"),
        (["--symmetry", "Q2", "--classes", "2", "--method", "faml"], "--symmetry: unknown point group"),
        (["--symmetry", "C1000"], "--symmetry: point group 'C1000': n above 100"),
    ):
        assert _main(average_command, [*arguments, *options, *bad, "--out", str(tmp_path / "bad")]) == 2
        error = capsys.readouterr().err
        assert message in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()
