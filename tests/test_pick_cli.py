"""``aitom pick``: end-to-end runs under trainer.predict (tiles merged), JSON scores, bad input -> exit 2."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from aitom.commands import pick
from aitom.errors import InputError
from aitom.geometry import rotate_volume, so3_grid
from aitom.io import (
    HeaderWarning,
    particles_table,
    read_particles,
    read_volume,
    write_particles,
    write_volume,
)

CENTRES_ZYX = [(9, 9, 9), (9, 30, 28), (28, 10, 30), (30, 30, 10)]


def run_pick(argv: list[str]) -> int:
    """``aitom pick ARGV`` as the command line runs it (InputError -> exit code 2)."""
    parser = argparse.ArgumentParser(prog="aitom")
    pick.add_parser(parser.add_subparsers(dest="command"))
    try:
        return pick.run(parser.parse_args(["pick", *argv]))
    except InputError:
        return 2


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A 40³ tomogram (10 Å voxels) with four rotated copies of a 12³ template, its truth STAR."""
    folder = tmp_path_factory.mktemp("pick")
    z, y, x = torch.meshgrid(*[torch.arange(12.0) - 6] * 3, indexing="ij")
    template = torch.exp(-(x**2 + y**2 + z**2) / 8) + 0.8 * torch.exp(-((x - 3.5) ** 2 + y**2 + z**2) / 2)
    grid = so3_grid(90.0)
    generator = torch.Generator().manual_seed(0)
    tomogram = 0.05 * torch.randn(40, 40, 40, generator=generator)
    for index, (cz, cy, cx) in enumerate(CENTRES_ZYX):
        tomogram[cz - 6 : cz + 6, cy - 6 : cy + 6, cx - 6 : cx + 6] += rotate_volume(
            template, grid[3 * index]
        )
    names = ("tomogram", "dark", "template", "small_voxels", "coarse", "coarse_noise", "tiny", "unset", "big")
    names += ("flat", "padded")
    paths = {name: folder / f"{name}.mrc" for name in names}
    write_volume(paths["tomogram"], tomogram, 10.0)
    write_volume(paths["dark"], -tomogram, 10.0)  # raw cryo-ET contrast: protein black
    write_volume(paths["template"], template, 10.0)
    # the same template sampled at 5 Å (box 24): picking resamples it to the tomogram's 10 Å
    z, y, x = torch.meshgrid(*[(torch.arange(24.0) - 12) / 2] * 3, indexing="ij")
    fine = torch.exp(-(x**2 + y**2 + z**2) / 8) + 0.8 * torch.exp(-((x - 3.5) ** 2 + y**2 + z**2) / 2)
    write_volume(paths["small_voxels"], fine, 5.0)
    write_volume(paths["coarse"], template, 40.0)  # 48 voxels of 10 Å once resampled: larger than 40
    coarse_noise = torch.randn(12, 12, 12, generator=torch.Generator().manual_seed(1))
    write_volume(paths["coarse_noise"], coarse_noise, 40.0)  # 48 voxels once resampled, filled to the faces
    padded = torch.zeros(48, 48, 48)  # the template in a box larger than the tomogram, as maps often come
    padded[18:30, 18:30, 18:30] = template
    write_volume(paths["padded"], padded, 10.0)
    write_volume(paths["tiny"], template, 2.0)  # 2 voxels of 10 Å once resampled
    write_volume(paths["unset"], template, 1.0)  # header voxel size unset
    write_volume(paths["big"], torch.randn(48, 48, 48, generator=generator), 10.0)
    write_volume(paths["flat"], torch.ones(40, 40, 40), 10.0)
    paths["truth"] = write_particles(
        folder / "truth.star", particles_table([(x, y, z) for z, y, x in CENTRES_ZYX])
    )
    return paths


@pytest.mark.parametrize("method", ["template", "dog", "saliency"])
def test_help(method, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_pick([method, "--help"])
    assert exit_info.value.code == 0
    assert "voxels" in capsys.readouterr().out


def test_template_end_to_end(files, tmp_path, capsys):
    out = tmp_path / "picks.star"
    argv = ["template", "--tomogram", str(files["tomogram"]), "--template", str(files["template"])]
    argv += [
        "--out",
        str(out),
        "--angular-step",
        "90",
        "--no-wedge",
        "--truth",
        str(files["truth"]),
        "--maps",
    ]
    assert run_pick(argv) == 0
    printed = capsys.readouterr()
    scores = json.loads(printed.out.strip().splitlines()[-1])
    assert scores["recall"] >= 0.9 and scores["precision"] >= 0.9
    table = read_particles(out)
    assert f"{out}: {len(table)} picks (template)" in printed.err
    assert {"rlnAngleRot", "rlnAutopickFigureOfMerit", "rlnClassNumber", "rlnTomoName"} <= set(table.columns)
    assert set(table["aitomClassName"]) == {"template"}  # the template's file name
    assert (tmp_path / "picks_tomogram_scores.mrc").is_file()
    assert (tmp_path / "picks_rotations.star").is_file()
    assert run_pick(argv) == 2  # the output exists: refused without --overwrite


def test_template_named_unlike_the_truth_classes_is_mapped_and_said(files, tmp_path, capsys):
    """The picks' class is the template's file name ("template"), the truth's "particle": the per-class scores
    map one to the other by matched positions, and one line on stderr says so."""
    truth = read_particles(files["truth"])
    truth["aitomClassName"] = "particle"
    write_particles(tmp_path / "truth.star", truth)
    argv = ["template", "--tomogram", str(files["tomogram"]), "--template", str(files["template"])]
    argv += ["--out", str(tmp_path / "picks.star"), "--angular-step", "90", "--no-wedge"]
    assert run_pick([*argv, "--truth", str(tmp_path / "truth.star")]) == 0
    printed = capsys.readouterr()
    scores = json.loads(printed.out.strip().splitlines()[-1])
    assert scores["class_mapping"] == {"template": "particle"}
    assert set(scores["per_class"]) == {"particle"} and scores["per_class"]["particle"]["recall"] >= 0.9
    notes = [line for line in printed.err.splitlines() if "differ from the truth's" in line]
    assert notes == [
        "pick class names (template) differ from the truth's (particle): per-class scores map them by "
        "matched positions: template -> particle"
    ]


@pytest.mark.parametrize(
    "method_options",
    [
        ["template", "--angular-step", "90", "--no-wedge"],
        ["dog", "--sigma-voxels", "2"],
        ["saliency", "--radius-voxels", "4", "--num-peaks", "4"],
    ],
)
def test_dark_polarity_picks_a_protein_dark_tomogram_like_the_bright_one(
    files, tmp_path, capsys, method_options
):
    method, *options = method_options
    if method == "template":
        options += ["--template", str(files["template"])]
    tables = {}
    for name, polarity in (("tomogram", "bright"), ("dark", "dark"), ("dark", "bright")):
        out = tmp_path / f"{name}_{polarity}.star"
        argv = [method, "--tomogram", str(files[name]), "--out", str(out), "--polarity", polarity, *options]
        assert run_pick([*argv, "--truth", str(files["truth"])]) == 0
        scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        tables[name, polarity] = (read_particles(out), scores["recall"])
    bright, recall_bright = tables["tomogram", "bright"]
    dark, recall_dark = tables["dark", "dark"]
    assert recall_bright == recall_dark >= 0.75
    columns = ["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ", "rlnAutopickFigureOfMerit"]
    assert bright[columns].to_numpy() == pytest.approx(dark[columns].to_numpy(), abs=1e-4)
    if method != "saliency":  # saliency marks what stands out either way; the others need the contrast right
        assert tables["dark", "bright"][1] < 0.5


def test_dog_tiles_merge_like_whole(files, tmp_path, capsys):
    recalls = []
    for tile in ("64", "24"):
        out = tmp_path / f"dog_{tile}.star"
        argv = ["dog", "--tomogram", str(files["tomogram"]), "--out", str(out), "--sigma-voxels", "2"]
        argv += ["--tile-voxels", tile, "--overlap-voxels", "12", "--truth", str(files["truth"])]
        assert run_pick(argv) == 0
        recalls.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["recall"])
        coordinates = read_particles(out)[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy()
        distances = ((coordinates[:, None] - coordinates[None]) ** 2).sum(-1) ** 0.5
        assert (distances + 1e9 * torch.eye(len(coordinates)).numpy()).min() > 4  # no duplicates across tiles
    assert recalls == [1.0, 1.0]


def test_exclude_border_drops_picks_near_the_tomogram_faces(files, tmp_path, capsys):
    """On noise (48³) the DoG picks crowd the faces; --exclude-border 4 drops exactly those within 4 voxels of
    a face (the inner picks of the plain run are all kept); a negative value is one line and exit 2."""
    tables = {}
    for border in ("0", "4"):
        out = tmp_path / f"noise_{border}.star"
        argv = ["dog", "--tomogram", str(files["big"]), "--out", str(out), "--sigma-voxels", "1.5"]
        assert run_pick([*argv, "--exclude-border", border]) == 0
        positions = read_particles(out)[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy()
        tables[border] = {tuple(row) for row in positions.round(3)}
    capsys.readouterr()
    distance_to_face = {row: min(min(row), min(47 - value for value in row)) for row in tables["0"]}
    near = {row for row, distance in distance_to_face.items() if distance < 4}
    assert near and all(min(min(row), min(47 - value for value in row)) >= 4 for row in tables["4"])
    assert tables["0"] - near <= tables["4"]
    argv = [
        "dog",
        "--tomogram",
        str(files["big"]),
        "--out",
        str(tmp_path / "bad.star"),
        "--exclude-border",
        "-1",
    ]
    assert run_pick(argv) == 2
    assert not (tmp_path / "bad.star").exists()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("big_template", "larger than the tomogram"),
        (
            "template_too_big_once_resampled",
            r"48³ voxels at the tomogram's voxel size\) is larger than the "
            r"tomogram's thinnest axis \(40 voxels, .*tomogram.mrc\), and cropping it to fit would cut off",
        ),
        ("template_too_small_once_resampled", "would be 2³ voxels at the tomogram's 10 Å, fewer than 4"),
        ("template_voxel_size_unset", "looks unset, and the tomogram's is 10 Å"),
        ("step", "angular-step"),
        ("flat", "constant"),
    ],
)
def test_bad_input_exit_2_nothing_written(files, tmp_path, capsys, case, message):
    out = tmp_path / "picks.star"
    template = {
        "big_template": files["big"],
        "template_too_big_once_resampled": files["coarse_noise"],
        "template_too_small_once_resampled": files["tiny"],
        "template_voxel_size_unset": files["unset"],
    }.get(case, files["template"])
    tomogram = files["flat"] if case == "flat" else files["tomogram"]
    step = "0" if case == "step" else "90"
    argv = ["template", "--tomogram", str(tomogram), "--template", str(template), "--out", str(out)]
    argv += ["--angular-step", step]
    parser = argparse.ArgumentParser(prog="aitom")
    pick.add_parser(parser.add_subparsers(dest="command"))
    with pytest.raises(InputError, match=message) as error:
        pick.run(parser.parse_args(["pick", *argv]))
    assert "\n" not in str(error.value)
    assert run_pick(argv) == 2
    assert not out.exists()


def test_template_of_another_voxel_size_is_resampled_and_finds_the_particles(files, tmp_path, capsys):
    from aitom.tasks.pick import TemplateRescaledWarning

    out = tmp_path / "picks.star"
    argv = ["template", "--tomogram", str(files["tomogram"]), "--template", str(files["small_voxels"])]
    argv += ["--out", str(out), "--angular-step", "90", "--no-wedge", "--truth", str(files["truth"])]
    with pytest.warns(
        TemplateRescaledWarning, match=r"from 5 Å to the tomogram's 10 Å voxels \(box 24 -> 12\)"
    ):
        assert run_pick(argv) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scores["recall"] >= 0.9 and scores["precision"] >= 0.9


def test_template_box_larger_than_the_tomogram_is_cropped_when_the_particle_fits(files, tmp_path, capsys):
    """The template in a 48³ box, more than the 40³ tomogram, but its particle fits: it is cropped about its
    centre to 40³ (it was refused) and finds the four particles."""
    from aitom.tasks.pick import TemplateCroppedWarning

    out = tmp_path / "picks.star"
    argv = ["template", "--tomogram", str(files["tomogram"]), "--template", str(files["padded"])]
    argv += ["--out", str(out), "--angular-step", "90", "--no-wedge", "--truth", str(files["truth"])]
    argv += ["--tolerance-voxels", "2", "--min-distance", "6", "--exclude-border", "0"]
    with pytest.warns(TemplateCroppedWarning, match=r"cropped from 48³ to 40³ voxels about its centre"):
        assert run_pick(argv) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scores["recall"] == 1.0 and scores["precision"] == 1.0


def test_symmetric_template_orientations_up_to_its_symmetry(tmp_path, capsys):
    """The 20S proteasome (D7) picked with its library map: the template's file name becomes the picks'
    aitomClassName, and orientations are scored up to the 14 equivalent ones (found from the atoms)."""
    from aitom.geometry import matrix_to_relion_angles, random_rotations
    from aitom.ops.pick_evaluation import evaluate_picks
    from aitom.simulate.library import class_potential

    template = class_potential("proteasome_20s", 20.0)  # 16³
    template = template / template.std()
    generator = torch.Generator().manual_seed(4)
    rotations = random_rotations(4, generator=generator)
    tomogram = 0.05 * torch.randn(48, 48, 48, generator=generator)
    centres_zyx = [(12, 12, 12), (12, 34, 34), (34, 12, 34), (34, 34, 12)]
    for (cz, cy, cx), rotation in zip(centres_zyx, rotations):
        tomogram[cz - 8 : cz + 8, cy - 8 : cy + 8, cx - 8 : cx + 8] += rotate_volume(template, rotation)
    write_volume(tmp_path / "tomogram.mrc", tomogram, 20.0)
    write_volume(tmp_path / "proteasome_20s.mrc", template, 20.0)
    truth = particles_table(
        [(x, y, z) for z, y, x in centres_zyx], angles_deg=matrix_to_relion_angles(rotations).numpy()
    )
    truth["rlnClassNumber"] = 2
    truth["aitomClassName"] = "proteasome_20s"
    write_particles(tmp_path / "truth.star", truth)
    out = tmp_path / "picks.star"
    argv = ["template", "--tomogram", str(tmp_path / "tomogram.mrc")]
    argv += ["--template", str(tmp_path / "proteasome_20s.mrc"), "--out", str(out), "--angular-step", "20"]
    argv += ["--no-wedge", "--truth", str(tmp_path / "truth.star"), "--num-peaks", "4"]
    assert run_pick(argv) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    picks = read_particles(out)
    assert set(picks["aitomClassName"]) == {"proteasome_20s"}
    assert scores["per_class"]["proteasome_20s"]["recall"] == 1.0
    assert scores["orientation_symmetry"] == {"proteasome_20s": "D7"}
    # A 20° grid is within 20° of any orientation, and within about 10° of the nearest of 14 equivalent ones.
    # At 20 Å the barrel's turns about its 7-fold axis are hard to tell apart: one of the four may miss.
    assert scores["orientation_fraction"] >= 0.75 and scores["median_orientation_error_deg"] < 10.0
    plain = evaluate_picks(picks, truth, 2.0)
    assert plain["median_orientation_error_deg"] > 30.0


def _unset_voxel_size_copy(source, path):
    """A copy of an MRC file whose header voxel size is 0 (unset), as some real tomograms have."""
    import mrcfile

    with mrcfile.open(source) as original, mrcfile.new(path) as mrc:
        mrc.set_data(original.data.copy())
        mrc.voxel_size = 0.0
    return path


@pytest.mark.parametrize(
    ("method_options", "message"),
    [
        (["dog"], "a sigma in Å needs it; pass --voxel-size or --sigma-voxels"),
        (["saliency", "--radius-a", "40"], "a radius in Å needs it; pass --voxel-size or --radius-voxels"),
        (["template", "--template", "{template}"], "template matching needs the tomogram's voxel size"),
    ],
)
@pytest.mark.filterwarnings("ignore::aitom.io.HeaderWarning")
def test_unset_tomogram_voxel_size_with_lengths_in_angstrom_is_exit_2(
    files, tmp_path, method_options, message
):
    tomogram = _unset_voxel_size_copy(files["tomogram"], tmp_path / "unset_tomogram.mrc")
    out = tmp_path / "picks.star"
    options = [option.format(template=files["template"]) for option in method_options]
    parser = argparse.ArgumentParser(prog="aitom")
    pick.add_parser(parser.add_subparsers(dest="command"))
    with pytest.raises(InputError, match=message) as error:  # was ZeroDivisionError: a traceback
        pick.run(parser.parse_args(["pick", *options, "--tomogram", str(tomogram), "--out", str(out)]))
    assert error.value.path == tomogram
    assert not out.exists()


@pytest.mark.filterwarnings("ignore::aitom.io.HeaderWarning")
def test_unset_tomogram_voxel_size_is_fine_with_lengths_in_voxels(files, tmp_path, capsys):
    tomogram = _unset_voxel_size_copy(files["tomogram"], tmp_path / "unset_tomogram.mrc")
    out = tmp_path / "picks.star"
    argv = ["dog", "--tomogram", str(tomogram), "--out", str(out), "--sigma-voxels", "2"]
    assert run_pick([*argv, "--truth", str(files["truth"])]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["recall"] == 1.0


def test_existing_map_output_is_refused_before_the_table_is_written(files, tmp_path):
    out = tmp_path / "picks.star"
    (tmp_path / "picks_rotations.star").write_text("keep me\n")
    argv = ["template", "--tomogram", str(files["tomogram"]), "--template", str(files["template"])]
    argv += ["--out", str(out), "--angular-step", "90", "--no-wedge", "--maps"]
    assert run_pick(argv) == 2
    # nothing else written
    assert sorted(path.name for path in tmp_path.iterdir()) == ["picks_rotations.star"]
    assert (tmp_path / "picks_rotations.star").read_text() == "keep me\n"


def test_score_maps_lie_on_the_tomogram_grid_placed_by_nstart(files, tmp_path):
    import mrcfile

    tomogram = tmp_path / "placed.mrc"
    with mrcfile.open(files["tomogram"]) as original, mrcfile.new(tomogram) as mrc:
        mrc.set_data(original.data.copy())
        mrc.voxel_size = 10.0
        mrc.header.nxstart, mrc.header.nystart, mrc.header.nzstart = -20, 5, -3
    out = tmp_path / "picks.star"
    argv = ["template", "--tomogram", str(tomogram), "--template", str(files["template"]), "--out", str(out)]
    assert run_pick([*argv, "--angular-step", "90", "--no-wedge", "--maps"]) == 0
    with mrcfile.open(tmp_path / "picks_placed_scores.mrc") as scores:
        origin = (float(scores.header.origin.x), float(scores.header.origin.y), float(scores.header.origin.z))
        assert scores.voxel_size.x == pytest.approx(10.0)
    assert origin == pytest.approx((-200.0, 50.0, -30.0))


def test_a_particle_scale_larger_than_the_tiles_names_the_particle_size(files, tmp_path):
    """A radius typed in the wrong unit asked to fix an --overlap-voxels the user never gave. (Saliency takes
    the whole tomogram as one tile: the particle size is named against the tomogram's size.)"""
    out = tmp_path / "picks.star"
    argv = ["saliency", "--tomogram", str(files["tomogram"]), "--out", str(out), "--radius-voxels", "500"]
    parser = argparse.ArgumentParser(prog="aitom")
    pick.add_parser(parser.add_subparsers(dest="command"))
    with pytest.raises(InputError, match=r"particle size scale \(radius 500 voxels\).*particle size right"):
        pick.run(parser.parse_args(["pick", *argv]))
    assert not out.exists()


def test_unset_template_voxel_size_confirmed_by_voxel_size_finds_the_particles(files, tmp_path, capsys):
    """A template whose header voxel size is unset (1 Å), with --voxel-size 10 for it and the tomogram: it is
    taken at 10 Å, not resampled from 1 Å to 10 Å (a 1³ template that found nothing)."""
    out = tmp_path / "picks.star"
    argv = ["template", "--tomogram", str(files["tomogram"]), "--template", str(files["unset"])]
    argv += ["--out", str(out), "--voxel-size", "10", "--angular-step", "90", "--no-wedge"]
    argv += ["--truth", str(files["truth"])]
    assert run_pick(argv) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scores["recall"] >= 0.9 and scores["precision"] >= 0.9


def test_atomic_model_template_equals_its_map(tmp_path, capsys, monkeypatch):
    """--template model.pdb.gz builds the model's potential at the tomogram's voxel size: the picks equal
    those of the same potential written as an MRC template, and carry the model's name."""
    import shutil
    from importlib.resources import files as package_files

    from aitom.simulate import class_potential

    monkeypatch.setenv("AITOM_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "my_atpase.pdb.gz"
    shutil.copy(str(package_files("aitom") / "data" / "structures" / "1s3x.pdb.gz"), model)
    template = class_potential(str(model), 10.0)  # 14³
    tomogram = 0.05 * torch.randn(32, 32, 32, generator=torch.Generator().manual_seed(1))
    tomogram[5:19, 9:23, 12:26] += template / template.std()
    write_volume(tmp_path / "tomogram.mrc", tomogram, 10.0)
    write_volume(tmp_path / "template.mrc", template, 10.0)
    tables = []
    for source in (model, tmp_path / "template.mrc"):
        out = tmp_path / f"{source.name}.star"
        argv = ["template", "--tomogram", str(tmp_path / "tomogram.mrc"), "--template", str(source)]
        assert run_pick([*argv, "--out", str(out), "--angular-step", "60", "--no-wedge"]) == 0
        tables.append(read_particles(out))
    from_model, from_map = tables
    assert len(from_model) >= 1 and set(from_model["aitomClassName"]) == {"my_atpase"}
    best = from_model.iloc[0]
    assert (best["rlnCoordinateZ"], best["rlnCoordinateY"], best["rlnCoordinateX"]) == (12, 16, 19)
    columns = ["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ", "rlnAutopickFigureOfMerit"]
    assert from_model[columns].to_numpy() == pytest.approx(from_map[columns].to_numpy(), abs=1e-5)


ANISOTROPIC = (10.0, 10.0, 12.0)  # voxel size (x, y, z), Å


@pytest.mark.parametrize(
    ("method_options", "voxel_size", "problem"),
    [
        (["saliency", "--radius-voxels", "4", "--num-peaks", "4"], ANISOTROPIC, "anisotropic voxels"),
        (["template", "--angular-step", "90", "--no-wedge"], ANISOTROPIC, "anisotropic voxels"),
        (["dog", "--sigma-voxels", "2"], 1.0, "looks unset"),
    ],
)
def test_a_header_quirk_of_the_tomogram_is_warned_once(files, tmp_path, method_options, voxel_size, problem):
    """The command, the tile data module and the pick writer each read the tomogram's header: its quirk was
    warned three times."""
    tomogram = write_volume(tmp_path / "quirky.mrc", read_volume(files["tomogram"])[0], voxel_size)
    method, *options = method_options
    if method == "template":
        options += ["--template", str(files["template"])]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert (
            run_pick([method, "--tomogram", str(tomogram), "--out", str(tmp_path / "p.star"), *options]) == 0
        )
    said = [str(warning.message) for warning in caught if issubclass(warning.category, HeaderWarning)]
    assert len(said) == 1 and said[0].startswith(f"{tomogram}: ") and problem in said[0]


def test_aitom_pick_prints_an_anisotropic_header_once(files, tmp_path):
    """As a user sees it: one ``aitom: warning`` line on stderr, not one per read of the header."""
    tomogram = write_volume(tmp_path / "anisotropic.mrc", read_volume(files["tomogram"])[0], ANISOTROPIC)
    command = [sys.executable, "-m", "aitom", "pick", "dog", "--tomogram", str(tomogram), "--sigma-a", "20"]
    command += ["--out", str(tmp_path / "picks.star")]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    lines = [line for line in finished.stderr.splitlines() if "anisotropic voxels" in line]
    assert len(lines) == 1 and lines[0].startswith(f"aitom: warning: {tomogram}: anisotropic voxels")


def test_truth_with_relion_origin_shifts_is_scored_at_its_centres(files, tmp_path, capsys):
    """A RELION 3.1 truth table: coordinates 3 voxels off, rlnOriginXAngst 30 Å (3 voxels at 10 Å) bringing
    them back. Scored as the plain truth (recall 1); the shifts ignored, nothing would match."""
    truth = read_particles(files["truth"])
    shifted = truth.assign(rlnCoordinateX=truth["rlnCoordinateX"] + 3.0, rlnOriginXAngst=30.0)
    write_particles(tmp_path / "shifted.star", shifted)
    argv = ["dog", "--tomogram", str(files["tomogram"]), "--sigma-voxels", "2", "--num-peaks", "4"]
    argv += ["--out", str(tmp_path / "picks.star"), "--tolerance-voxels", "1.5"]
    assert run_pick([*argv, "--truth", str(tmp_path / "shifted.star")]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scores["recall"] == 1.0


def test_real_80s_map_in_a_large_box_fits_a_thin_slab_after_cropping(tmp_path):
    """The human 80S map of tests/data/maps (32³ voxels of 20.96 Å) is 67³ voxels at 10 Å: larger than a
    36-voxel thick slab (the real crops' thickness), but the ribosome fits; the check gives the cropped box
    and the picker crops it, cutting off under 1 % of the density (measured 0.04 %)."""
    from aitom.ops.template_matching import template_signal_outside
    from aitom.tasks.pick import (
        MAX_CROPPED_SIGNAL,
        TemplateCroppedWarning,
        TemplateMatchingPicker,
        check_template,
    )

    path = Path(__file__).parent / "data" / "maps" / "human_ribo_21A.mrc"
    slab = (36, 206, 94)
    assert check_template(path, 10.0, slab, tmp_path / "slab.mrc") == 36
    with pytest.warns(TemplateCroppedWarning, match=r"from 67³ to 36³ voxels"):
        picker = TemplateMatchingPicker(str(path), voxel_size_a=10.0, max_box_voxels=min(slab))
    assert picker.box_voxels == 36
    whole = TemplateMatchingPicker(str(path), voxel_size_a=10.0).templates[0]
    assert whole.shape[-1] == 67
    assert template_signal_outside(whole, 36) < MAX_CROPPED_SIGNAL
    assert torch.equal(picker.templates[0], whole[15:51, 15:51, 15:51])  # centre voxel 33 -> 18


@pytest.mark.parametrize(
    ("sigma_options", "named"),
    [
        (["--sigma-voxels", "0.1"], "--sigma-voxels 0.1 is under 0.5 voxel"),
        (["--sigma-a", "3"], "--sigma-a 3 Å (0.3 voxels of 10 Å) is under 0.5 voxel"),
        (["--voxel-size", "200"], "the default sigma 70 Å (0.35 voxels of 200 Å) is under 0.5 voxel"),
    ],
)
@pytest.mark.filterwarnings("ignore::aitom.io.HeaderWarning")
def test_dog_sigma_under_half_a_voxel_is_refused(files, tmp_path, sigma_options, named):
    """A sigma under half a voxel picked nothing (0.1 voxel: 0 picks and exit 0) or features under a voxel
    across (noise); it is refused in one line naming the option, nothing written."""
    out = tmp_path / "picks.star"
    parser = argparse.ArgumentParser(prog="aitom")
    pick.add_parser(parser.add_subparsers(dest="command"))
    argv = ["pick", "dog", "--tomogram", str(files["tomogram"]), "--out", str(out), *sigma_options]
    with pytest.raises(InputError, match=re.escape(named)):
        pick.run(parser.parse_args(argv))
    assert not out.exists()
