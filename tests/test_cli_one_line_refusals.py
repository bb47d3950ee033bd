"""What a user sees on the command line: a header voxel size refused gives the error line alone (not the
header's "looks unset" warning as well), one the command accepts is warned about once; ``aitom pick --truth``
prints only its JSON on stdout; the override examples of ``aitom simulate {tomogram,subtomograms} --help``
are accepted by that subcommand."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from aitom import cli
from aitom.io import particles_table, write_particles
from aitom.simulate.recipe import load_recipe

CENTRES_ZYX = [(10, 10, 10), (10, 29, 28), (29, 11, 29), (29, 29, 11)]


def _aitom(*argv: object) -> subprocess.CompletedProcess:
    """``aitom ARGV`` in a separate process: pytest records warnings instead of printing them."""
    command = [sys.executable, "-m", "aitom", *map(str, argv)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def _blobs(size: int, centres_zyx: list[tuple[int, int, int]], seed: int = 0) -> np.ndarray:
    """Gaussian blobs (σ 2 voxels) at ``centres_zyx`` in weak noise, ``size``³ voxels."""
    z, y, x = np.meshgrid(*(np.arange(size),) * 3, indexing="ij")
    volume = 0.05 * np.random.default_rng(seed).standard_normal((size,) * 3)
    for cz, cy, cx in centres_zyx:
        volume += np.exp(-((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) / (2 * 2.0**2))
    return volume.astype(np.float32)


def _mrc(path: Path, volume: np.ndarray, voxel_size_a: float) -> Path:
    """Write ``volume`` with ``voxel_size_a`` in the header: 0 or 1 Å too (unset; write_volume refuses 0)."""
    with mrcfile.new(path) as mrc:
        mrc.set_data(volume)
        mrc.voxel_size = voxel_size_a
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A 40³ tomogram of four blobs with header voxel sizes 0, 1 and 10 Å, a 12³ template (10 Å), the truth
    and a one-particle table."""
    folder = tmp_path_factory.mktemp("inputs")
    tomogram = _blobs(40, CENTRES_ZYX)
    paths = {
        f"tomogram_{size:g}": _mrc(folder / f"tomogram_{size:g}.mrc", tomogram, size) for size in (0, 1, 10)
    }
    paths["template"] = _mrc(folder / "template.mrc", _blobs(12, [(6, 6, 6)]), 10.0)
    paths["truth"] = write_particles(
        folder / "truth.star", particles_table([(x, y, z) for z, y, x in CENTRES_ZYX])
    )
    paths["particles"] = write_particles(folder / "particles.star", particles_table([(20, 20, 20)]))
    return paths


# command lines, {tomogram}, {out} and the other inputs ({template}, {particles}, {truth}) to be filled in
EXTRACT = "extract --tomogram {tomogram} --particles {particles} --size 16 --out {out}"
REFUSED_AT_0_A = {  # and the output's name
    "filter": ("filter diffusion {tomogram} {out}", "filtered.mrc"),
    "extract": (EXTRACT, "subtomograms"),
    "convert": ("convert {tomogram} {out}", "converted.mrc"),
    "estimate fsc": ("estimate fsc {tomogram} {tomogram} --plot {out}", "fsc.png"),
    "pick template": ("pick template --tomogram {tomogram} --template {template} --out {out}", "picks.star"),
    "pick dog": ("pick dog --tomogram {tomogram} --out {out}", "picks.star"),
    "pick saliency": ("pick saliency --tomogram {tomogram} --radius-a 40 --out {out}", "picks.star"),
}


def _argv(command: str, inputs: dict[str, Path], tomogram: Path, out: Path) -> list[str]:
    """``command`` split into arguments, then filled in (paths may hold spaces)."""
    names = {name: inputs[name] for name in ("template", "particles", "truth")}
    return [part.format(tomogram=tomogram, out=out, **names) for part in command.split()]


@pytest.mark.parametrize("command", list(REFUSED_AT_0_A))
def test_a_0_a_header_is_refused_by_one_error_line(inputs, tmp_path, command):
    """The header's "looks unset; pass --voxel-size" warning came before the error saying the same."""
    line, name = REFUSED_AT_0_A[command]
    out = tmp_path / name
    tomogram = inputs["tomogram_0"]
    finished = _aitom(*_argv(line, inputs, tomogram, out))
    assert finished.returncode == 2
    lines = finished.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"aitom: error: {tomogram}: "), finished.stderr
    assert "voxel size" in lines[0] and "--voxel-size" in lines[0]
    assert finished.stdout == ""
    assert not out.exists()


@pytest.mark.parametrize(
    ("line", "size", "name"),
    [
        ("filter gaussian {tomogram} {out} --sigma-voxels 1", 1, "filtered.mrc"),
        (EXTRACT, 1, "subtomograms"),
        # lengths in voxels need no voxel size: a 0 Å header is warned about, not refused
        ("pick dog --tomogram {tomogram} --sigma-voxels 2 --out {out}", 0, "picks.star"),
    ],
)
def test_an_unset_header_that_is_not_refused_is_warned_about_once(inputs, tmp_path, line, size, name):
    out = tmp_path / name
    tomogram = inputs[f"tomogram_{size}"]
    finished = _aitom(*_argv(line, inputs, tomogram, out))
    assert finished.returncode == 0, finished.stderr
    said = [text for text in finished.stderr.splitlines() if "voxel size" in text]
    assert said == [
        f"aitom: warning: {tomogram}: voxel size {size} Å in header looks unset; pass --voxel-size"
    ]
    assert out.exists()


@pytest.mark.parametrize(
    "method_options", ["dog --sigma-voxels 2", "template --template {template} --angular-step 90"]
)
def test_pick_with_truth_prints_only_the_scores_json_on_stdout(inputs, tmp_path, method_options):
    """Lightning's progress bar ("Predicting ━━━") went to stdout before the JSON line."""
    line = f"pick {method_options} --tomogram {{tomogram}} --out {{out}} --truth {{truth}}"
    finished = _aitom(*_argv(line, inputs, inputs["tomogram_10"], tmp_path / "picks.star"))
    assert finished.returncode == 0, finished.stderr
    scores = json.loads(finished.stdout)
    assert scores["method"] == method_options.split()[0]
    assert {"precision", "recall", "f1"} <= set(scores) and scores["n_truth"] == len(CENTRES_ZYX)
    assert "Predicting" in finished.stderr  # the progress bar still shows, on stderr


@pytest.mark.parametrize("kind", ["tomogram", "subtomograms"])
def test_simulate_help_override_examples_are_accepted(kind, capsys):
    """``simulate subtomograms --help`` showed ``shape_zyx_voxels=[50,128,128]``, a tomogram recipe key
    that it refuses as unknown."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["simulate", kind, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help at spaces
    found = re.search(r"dotted KEY=VALUE, e\.g\. (.*?) \(units", text)
    assert found is not None, text
    examples = found[1].split()
    assert len(examples) >= 2 and all("=" in example for example in examples)
    load_recipe(None, examples, kind=kind)  # what the subcommand does first: refuses an unknown key
