"""The scripts a user runs directly (scripts/*.py) on impossible options, missing data and unusable output
paths: one line naming the option or file, exit code 2, no traceback and nothing written."""

from __future__ import annotations

import contextlib
import io
import os
import runpy
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from aitom.io import write_particles, write_volume

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
NO_GPU = pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the refusal of --device cuda without a GPU"
)


def run_script(name: str, *args: object, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``scripts/NAME`` as ``python scripts/NAME ARGS`` would, but in this process (no torch import per
    test): its exit code, stdout and stderr."""
    stdout, stderr = io.StringIO(), io.StringIO()
    argv, path, folder, threads = sys.argv, list(sys.path), os.getcwd(), torch.get_num_threads()
    sys.argv = [str(SCRIPTS / name), *map(str, args)]
    sys.path.insert(0, str(SCRIPTS))
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                runpy.run_path(str(SCRIPTS / name), run_name="__main__")
                code = 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            except Exception:  # what the interpreter would print before exit code 1
                traceback.print_exc(file=stderr)
                code = 1
    finally:
        sys.argv, sys.path[:] = argv, path
        os.chdir(folder)
        torch.set_num_threads(threads)  # some scripts set their own
    return subprocess.CompletedProcess(sys.argv, code, stdout.getvalue(), stderr.getvalue())


def assert_refused(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit code 2, no traceback, and a last stderr line naming every fragment; returns that line."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    for fragment in fragments:
        assert fragment in line, line
    return line


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


# ---- benchmarks -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "option", "value"),
    [
        ("bench_filters.py", "--repeats", "0"),
        ("bench_template_matching.py", "--repeats", "0"),
        ("bench_template_matching.py", "--rotations", "1"),  # the time per rotation is a difference
        ("bench_template_matching.py", "--rotations", "100000"),
        ("bench_simulate.py", "--repeats", "0"),
        ("bench_simulate.py", "--threads", "0"),
        ("bench_train.py", "--rounds", "0"),
        ("bench_align.py", "--pairs", "0"),
        ("bench_align.py", "--step", "0"),
        ("bench_align.py", "--snr", "nan"),
        ("bench_averaging.py", "--sizes", "-5"),
        ("bench_averaging.py", "--step", "inf"),
        ("bench_autoencoder.py", "--test-size", "0"),
        ("bench_open_set.py", "--epochs", "0"),
        ("bench_semi_supervised.py", "--labelled-fraction", "0"),
        ("bench_semi_supervised.py", "--labelled-fraction", "1.5"),
        ("bench_domain_adaptation.py", "--train-size", "-1"),
        ("run_benchmarks.py", "--timeout", "0"),
        ("run_benchmarks.py", "--timeout", "nan"),
    ],
)
def test_an_impossible_number_is_a_usage_error(tmp_path, script, option, value):
    out = tmp_path / "table.md"
    result = run_script(script, option, value, "--out", out, cwd=tmp_path)
    assert_refused(result, f"argument {option}:", value)
    assert not out.exists()


def test_template_matching_refuses_a_template_larger_than_the_tomogram(tmp_path):
    result = run_script("bench_template_matching.py", "--size", 16, "--template-size", 32, cwd=tmp_path)
    assert_refused(result, "--template-size 32", "--size 16")


def test_template_matching_table_keeps_its_two_columns(tmp_path):
    out, figures = tmp_path / "tm.md", tmp_path / "tm.json"
    result = run_script(
        "bench_template_matching.py",
        *("--size", 24, "--template-size", 8, "--rotations", 2, "--repeats", 1),
        *("--out", out, "--json", figures),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    rows = [line for line in out.read_text().splitlines() if line.startswith("|")]
    # "max |score difference|" used to add two cells to its row
    assert all(line.replace("\\|", "").count("|") == 3 for line in rows), rows
    assert "time per rotation" in figures.read_text()


def test_train_refuses_a_box_too_small_for_a_chosen_network(tmp_path):
    result = run_script("bench_train.py", "--box", 16, "--models", "CB3D", cwd=tmp_path)
    assert_refused(result, "--box 16", "CB3D", "32")


def test_autoencoder_refuses_a_box_that_is_not_a_multiple_of_8(tmp_path):
    assert_refused(run_script("bench_autoencoder.py", "--box", 12, cwd=tmp_path), "--box", "multiple of 8")


def test_averaging_refuses_skipping_both_sections(tmp_path):
    out = tmp_path / "averaging.md"
    result = run_script(
        "bench_averaging.py", "--skip-resolution", "--skip-scaling", "--out", out, cwd=tmp_path
    )
    assert_refused(result, "--skip-resolution", "--skip-scaling")
    assert not out.exists()


def test_semi_supervised_refuses_a_labelled_fraction_that_labels_nothing(tmp_path):
    result = run_script(
        "bench_semi_supervised.py", "--train-size", 10, "--labelled-fraction", 0.01, cwd=tmp_path
    )
    assert_refused(result, "--labelled-fraction 0.01", "labels no item")


def test_open_set_keeps_an_existing_table_without_overwrite(tmp_path):
    out = tmp_path / "open_set.md"
    out.write_text("earlier results")
    assert_refused(run_script("bench_open_set.py", "--out", out, cwd=tmp_path), str(out), "--overwrite")
    assert out.read_text() == "earlier results"


@pytest.mark.parametrize(
    "script",
    [
        "bench_filters.py",
        "bench_template_matching.py",
        "bench_simulate.py",
        "bench_train.py",
        "bench_align.py",
        "bench_averaging.py",
        "bench_autoencoder.py",
        "bench_semi_supervised.py",
        "bench_domain_adaptation.py",
        "eval_picking.py",
        "run_benchmarks.py",
    ],
)
def test_an_output_under_a_file_is_refused_before_any_work(tmp_path, a_file, script):
    result = run_script(script, "--out", a_file / "table.md", cwd=tmp_path)
    assert_refused(result, str(a_file / "table.md"), "is a file")


@pytest.mark.parametrize("script", ["bench_filters.py", "bench_align.py", "run_benchmarks.py"])
def test_an_output_that_is_a_folder_is_refused(tmp_path, script):
    assert_refused(run_script(script, "--out", tmp_path, cwd=tmp_path), str(tmp_path), "folder")


@NO_GPU
@pytest.mark.parametrize(
    "script",
    [
        "bench_template_matching.py",
        "bench_train.py",
        "bench_align.py",
        "bench_averaging.py",
        "study_reference_free_size.py",
    ],
)
def test_device_cuda_without_a_gpu_is_one_line(tmp_path, script):
    extra = ("--map", write_map(tmp_path / "map.mrc")) if script.startswith("study") else ()
    result = run_script(script, "--device", "cuda", *extra, cwd=tmp_path)
    assert_refused(result, "--device cuda", "no CUDA device")


def test_run_benchmarks_refuses_a_folder_without_benchmarks(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "results.md"
    result = run_script("run_benchmarks.py", "--scripts", empty, "--out", out, cwd=tmp_path)
    assert_refused(result, str(empty), "no bench_*.py")
    assert not out.exists()


# ---- eval_picking.py ------------------------------------------------------------------------------------


def simulation_folder(root: Path, truth: pd.DataFrame, templates: tuple[str, ...] = ("alpha",)) -> Path:
    """``root/snr0.5`` as eval_picking.py expects it: tomogram.mrc, ground_truth.star, templates/."""
    folder = root / "snr0.5"
    (folder / "templates").mkdir(parents=True)
    write_volume(folder / "tomogram.mrc", np.zeros((16, 16, 16), np.float32), 10.0)
    for name in templates:
        write_volume(folder / "templates" / f"{name}.mrc", np.zeros((8, 8, 8), np.float32), 10.0)
    write_particles(folder / "ground_truth.star", truth)
    return folder


TRUTH = pd.DataFrame(
    {
        "rlnCoordinateX": [4.0, 10.0],
        "rlnCoordinateY": [5.0, 9.0],
        "rlnCoordinateZ": [6.0, 8.0],
        "rlnClassNumber": [1, 2],
        "aitomClassName": ["alpha", "beta"],
    }
)


def test_eval_picking_refuses_an_unknown_method(tmp_path):
    # it used to run template matching for any name that was not dog or saliency
    result = run_script("eval_picking.py", "--methods", "dogg", cwd=tmp_path)
    assert_refused(result, "--methods", "dogg")


def test_eval_picking_names_a_missing_ground_truth_column(tmp_path):
    folder = simulation_folder(tmp_path / "sim", TRUTH.drop(columns="aitomClassName"))
    out = tmp_path / "picking.md"
    result = run_script(
        "eval_picking.py", "--sim-dir", tmp_path / "sim", "--snrs", 0.5, "--out", out, cwd=tmp_path
    )
    assert_refused(result, str(folder / "ground_truth.star"), "aitomClassName")
    assert not out.exists()


def test_eval_picking_refuses_an_empty_ground_truth(tmp_path):
    folder = simulation_folder(tmp_path / "sim", TRUTH.iloc[:0])
    result = run_script("eval_picking.py", "--sim-dir", tmp_path / "sim", "--snrs", 0.5, cwd=tmp_path)
    assert_refused(result, str(folder / "ground_truth.star"), "no particle")


def test_eval_picking_names_a_template_missing_for_a_class_of_the_truth(tmp_path):
    folder = simulation_folder(tmp_path / "sim", TRUTH, templates=("alpha",))
    result = run_script(
        "eval_picking.py", "--sim-dir", tmp_path / "sim", "--snrs", 0.5, "--methods", "template", cwd=tmp_path
    )
    assert_refused(result, str(folder / "templates" / "beta.mrc"))


def test_eval_picking_finds_its_recipe_from_any_working_directory(tmp_path, a_file):
    # the simulation recipe used to be looked up relative to the working directory; here the simulation
    # fails only because its output folder lies under a file, and that is reported in one line
    result = run_script("eval_picking.py", "--sim-dir", a_file, "--snrs", 0.5, cwd=tmp_path)
    assert "simulations/tomogram_default.yaml" not in result.stderr.replace(str(SCRIPTS.parent), "")
    assert_refused(result, str(a_file / "snr0.5"), "aitom simulate tomogram failed")


# ---- real_70s.py, study_reference_free_size.py, make_simulator_figures.py -----------------------------


def write_map(path: Path, shape: tuple[int, int, int] = (8, 8, 8)) -> Path:
    write_volume(path, np.random.default_rng(0).normal(size=shape).astype(np.float32), 12.0)
    return path


REAL_70S_FILES = (
    "warptools_test_4-tomos_10-ptcls_box-32_angpix-12.star",
    "warptools_test_4-tomos_10-ptcls_box-32_angpix-12_tomograms.star",
    "warptools_test_box-32_angpix-12_reconstruct.mrc",
)


@pytest.mark.parametrize("missing", REAL_70S_FILES)
def test_real_70s_names_the_missing_data_file(tmp_path, missing):
    data = tmp_path / "tomodrgn_70S"
    data.mkdir()
    for name in REAL_70S_FILES:
        if name != missing:
            (data / name).write_text("data_\n")
    out = tmp_path / "out"
    result = run_script("real_70s.py", "--data", data, "--out", out, cwd=tmp_path)
    assert_refused(result, str(data), missing)
    assert not out.exists()


def test_real_70s_counts_orientations_within_20_degrees_by_tomogram():
    """Per tomogram, in the order the tomograms first appear: particles whose rotation is within 20° of the
    STAR one (19° and 21° about z straddle the cut-off)."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        from real_70s import within_by_tomogram
    finally:
        sys.path.remove(str(SCRIPTS))
    from aitom.geometry import rotation_about_axis

    star = torch.eye(3).expand(5, 3, 3)
    turned = [
        rotation_about_axis(torch.tensor([0.0, 0.0, 1.0]), torch.tensor(angle).deg2rad())
        for angle in (0.0, 21.0, 19.0, 90.0, 5.0)
    ]
    counts = within_by_tomogram(torch.stack(turned), star, ["b", "b", "a", "a", "b"])
    assert list(counts.items()) == [("b", (2, 3)), ("a", (1, 2))]


def test_real_70s_without_the_data_folder_is_one_line(tmp_path):
    result = run_script(
        "real_70s.py", "--data", tmp_path / "nowhere", "--out", tmp_path / "out", cwd=tmp_path
    )
    assert_refused(result, str(tmp_path / "nowhere"), REAL_70S_FILES[0])


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--starts", "0"),
        ("--iterations", "-1"),
        ("--max-frequency", "0.8"),
        ("--step", "0"),
        ("--max-shift", "-1"),
    ],
)
def test_real_70s_refuses_impossible_settings(tmp_path, option, value):
    result = run_script("real_70s.py", "--out", tmp_path / "out", option, value, cwd=tmp_path)
    assert_refused(result, f"argument {option}:")


@NO_GPU
def test_real_70s_checks_the_device_before_reconstructing(tmp_path):
    data = tmp_path / "tomodrgn_70S"
    data.mkdir()
    for name in REAL_70S_FILES:
        (data / name).write_text("data_\n")
    out = tmp_path / "out"
    result = run_script("real_70s.py", "--data", data, "--out", out, "--device", "cuda", cwd=tmp_path)
    assert_refused(result, "--device cuda")
    assert not out.exists()


def test_real_70s_refuses_an_output_folder_that_is_a_file(tmp_path, a_file):
    data = tmp_path / "tomodrgn_70S"
    data.mkdir()
    for name in REAL_70S_FILES:
        (data / name).write_text("data_\n")
    result = run_script("real_70s.py", "--data", data, "--out", a_file, cwd=tmp_path)
    assert_refused(result, str(a_file), "not a folder")


def test_study_refuses_a_map_that_is_not_cubic(tmp_path):
    path = write_map(tmp_path / "flat.mrc", (4, 8, 8))
    result = run_script("study_reference_free_size.py", "--map", path, "--device", "cpu", cwd=tmp_path)
    assert_refused(result, str(path), "cubic")


def test_study_names_a_missing_map_in_one_line(tmp_path):
    result = run_script("study_reference_free_size.py", "--map", tmp_path / "none.mrc", cwd=tmp_path)
    line = assert_refused(result, str(tmp_path / "none.mrc"), "no such map")
    assert "usage:" not in result.stderr, line


@pytest.mark.parametrize("value", ["0", "-3", "nan"])
def test_simulator_figures_refuse_an_impossible_size_limit(tmp_path, value):
    result = run_script(
        "make_simulator_figures.py", "--max-kb", value, "--out", tmp_path / "png", cwd=tmp_path
    )
    assert_refused(result, "argument --max-kb:")
    assert not (tmp_path / "png").exists()


def test_simulator_figures_refuse_an_output_folder_under_a_file(tmp_path, a_file):
    result = run_script("make_simulator_figures.py", "--out", a_file / "png", "--skip-commands", cwd=tmp_path)
    assert_refused(result, str(a_file / "png"), "is a file")
