"""``aitom pipeline`` and the demo's scoring beyond the default configuration: edge settings, doubtful results
warned about, undefined resolutions written as strict JSON, impossible settings refused in one line."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch

from aitom.cli import main as aitom
from aitom.io import HeaderWarning, read_particles, read_volume, write_particles, write_volume
from aitom.ops.pick_evaluation import evaluate_picks, match_picks
from aitom.pipeline import load_pipeline_config, run_pipeline
from aitom.pipeline.report import write_report
from aitom.pipeline.run import PipelineWarning
from tests.test_pipeline import SMALL_TOMOGRAM

REPOSITORY = Path(__file__).resolve().parent.parent
#: fast settings for a 48 × 96 × 96 tomogram at 10 Å with 160 Å particles (box 24 voxels)
FAST = [
    "pick.particle_diameter_a=160",
    "extract.max_box_voxels=24",
    "average.iterations=1",
    "average.initial_iterations=1",
    "average.angular_step_deg=45",
    "average.refine_steps=0",
]


def _strict_json(path: Path) -> dict:
    """``path`` read as strict JSON: NaN and Infinity (which Python's json writes by default) fail."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{path.name}: {constant} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> dict[str, Path]:
    """48 × 96 × 96 voxels at 10 Å, 10 particles of 2 classes (20S proteasome, apoferritin), SNR 5, no CTF."""
    from aitom.simulate import load_recipe, simulate_tomogram

    folder = tmp_path_factory.mktemp("robustness")
    recipe = load_recipe(
        None,
        SMALL_TOMOGRAM,
        kind="tomogram",
    )
    simulation = simulate_tomogram(recipe)
    paths = {
        "tomogram": write_volume(folder / "tomogram.mrc", simulation.tomogram, 10.0),
        "truth": write_particles(folder / "truth.star", simulation.truth),
    }
    for name, template in simulation.templates.items():
        paths[name] = write_volume(folder / f"{name}.mrc", template, 10.0)
    return paths


def _run(tomogram: Path, out: Path, overrides: list[str]) -> tuple[object, list[str]]:
    """Run the pipeline quietly; the result and the messages of the PipelineWarnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PipelineWarning)
        result = run_pipeline(tomogram, out, load_pipeline_config(None, overrides), log=lambda _: None)
    return result, [str(w.message) for w in caught if issubclass(w.category, PipelineWarning)]


def test_more_classes_than_particles_makes_two_per_class_and_strict_json(simulated, tmp_path):
    """classify.n_classes 20 for 10 picks used to give 10 classes of one particle, each with an FSC
    resolution of ``inf`` written as ``Infinity`` (not JSON) in summary.json and class_NN_fsc.json."""
    out = tmp_path / "run"
    result, warned = _run(simulated["tomogram"], out, [*FAST, "classify.n_classes=20"])
    picks = read_particles(out / "particles.star")
    assert evaluate_picks(picks, read_particles(simulated["truth"]), tolerance_voxels=4.0)["f1"] >= 0.8
    n = len(picks)
    assert 2 <= len(result.classes) <= n // 2
    assert warned[0] == (
        f"{simulated['tomogram']}: classify.n_classes 20 with {n} particles: at most {n // 2} classes made "
        "(2 particles per class for a half-set FSC)"
    )
    summary = _strict_json(out / "summary.json")
    assert summary["warnings"] == [message.split(": ", 1)[1] for message in warned]
    report = (out / "report.md").read_text()
    for entry in summary["classes"]:
        fsc = _strict_json(out / f"class_{entry['class']:02d}_fsc.json")
        assert (fsc["fsc_0.143_a"], fsc["particles"]) == (entry["fsc_0.143_a"], entry["particles"])
        if entry["particles"] == 1:
            assert entry["fsc_0.5_a"] is None and entry["fsc_0.143_a"] is None
            assert f"class {entry['class']} has 1 particle: no half-set FSC" in summary["warnings"]
            assert f"| {entry['class']} | 1 | – | – |" in report
        else:
            assert entry["fsc_0.143_a"] >= 20.0  # Nyquist at 10 Å voxels
    assert sum(entry["particles"] for entry in summary["classes"]) == n


def test_a_resolution_inside_the_half_sets_shared_band_is_warned(simulated, tmp_path, monkeypatch):
    """A class whose half-set FSC crosses 0.143 where the gold-standard half sets share their start (coarser
    than 10 Å / (0.175 + 0.0125) = 53.3 Å at the default max_frequency 0.35) is listed as doubtful; the
    crossing is forced to 60 Å for every class."""
    import aitom.fourier

    monkeypatch.setattr(aitom.fourier, "resolution_at", lambda *args, **kwargs: torch.tensor(60.0))
    out = tmp_path / "run"
    result, warned = _run(simulated["tomogram"], out, [*FAST, "classify.n_classes=2"])
    expected = [
        f"class {entry['class']}: its half-set FSC crosses 0.143 at 60.0 Å, where the gold-standard half "
        "sets share their start (up to 53.3 Å): not an independent resolution"
        for entry in result.classes
    ]
    assert len(expected) == 2
    assert [message.split(": ", 1)[1] for message in warned] == expected
    assert json.loads((out / "class_01_fsc.json").read_text())["fsc_0.143_a"] == 60.0


def test_too_few_particles_to_classify_and_the_pick_cap_are_warned(simulated, tmp_path):
    out = tmp_path / "run"
    result, warned = _run(simulated["tomogram"], out, [*FAST, "pick.max_particles=3", "classify.n_classes=2"])
    assert [message.split(": ", 1)[1] for message in warned] == [
        "the picks reached pick.max_particles (3): there may be more",
        "only 3 particles: too few to classify (at least 4), averaged as one class",
    ]
    assert len(result.particles) == 3 and [c["particles"] for c in result.classes] == [3]
    report = (out / "report.md").read_text()
    assert "**Warnings** (doubtful results):" in report and "- only 3 particles: too few" in report


def test_no_particles_warns_naming_the_settings_to_check(simulated, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["pipeline", "--tomogram", str(simulated["tomogram"]), "--out", str(out), *FAST]
    expected = (
        f"{simulated['tomogram']}: no particles found: check pick.particle_diameter_a (160 Å), the threshold "
        "(pick.threshold 1e+06) and the contrast (contrast bright: protein bright in the tomogram)"
    )
    with pytest.warns(PipelineWarning, match=f"^{re.escape(expected)}$"):
        code = aitom([*argv, "pick.threshold=1e6"])
    assert code == 0 and len(read_particles(out / "particles.star")) == 0
    assert "No particles found" in capsys.readouterr().out
    assert "- no particles found: check pick.particle_diameter_a" in (out / "report.md").read_text()


def test_template_classes_name_their_template(simulated, tmp_path):
    """Classes from template matching are renumbered 1 … K; the report and summary say which template each
    came from, and that template's class holds the particles of its structure (by the simulation's truth)."""
    out = tmp_path / "run"
    templates = [str(simulated["apoferritin"]), str(simulated["proteasome_20s"])]
    overrides = [*FAST, "pick.method=template", f"pick.templates=[{','.join(templates)}]"]
    overrides.append("pick.angular_step_deg=45")
    result, _ = _run(simulated["tomogram"], out, overrides)
    truth = read_particles(simulated["truth"])
    picks = read_particles(out / "particles.star")
    pick_index, truth_index = match_picks(
        picks[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy(),
        truth[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy(),
        4.0,
    )
    assert len(pick_index) >= 8
    names = truth["aitomClassName"].to_numpy()[truth_index]
    found = picks["rlnClassNumber"].to_numpy()[pick_index]
    for entry in result.classes:
        structure = Path(entry["template"]).stem
        assert (names[found == entry["class"]] == structure).mean() >= 0.9, entry
    assert {Path(entry["template"]).stem for entry in result.classes} <= {"apoferritin", "proteasome_20s"}
    report = (out / "report.md").read_text()
    assert "| class | template | particles |" in report and f"`{result.classes[0]['template']}`" in report


def _anisotropic(folder: Path) -> Path:
    path = folder / "anisotropic.mrc"
    with mrcfile.new(path) as output:
        output.set_data(np.random.default_rng(0).normal(size=(24, 32, 32)).astype(np.float32))
        output.voxel_size = (10.0, 10.0, 20.0)
    return path


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["pick.particle_diameter_a=inf"], "pick.particle_diameter_a: must be a finite number > 0, got inf"),
        (["denoise.sigma_voxels=inf"], "denoise.sigma_voxels: must be a finite number > 0, got inf"),
        (["extract.box_factor=inf"], "extract.box_factor: must be a finite number > 0, got inf"),
        (["voxel_size_a=inf"], "voxel_size_a: must be a finite number > 0, got inf"),
        (["average.max_shift_voxels=inf"], "average.max_shift_voxels: must be a finite number > 0, got inf"),
        (
            ["extract.box_factor=0.5"],
            "extract.box_factor: must be >= 1 (a box at least the particle diameter), got 0.5",
        ),
        (
            ["pick.particle_diameter_a=15"],
            "tomogram.mrc: pick.particle_diameter_a: 15 Å is 1.5 voxels at 10 Å, a box of 4 voxels "
            "(extract.box_factor 2.2), fewer than 8: is the diameter in Å, and the voxel size right?",
        ),
        (
            "anisotropic",
            "anisotropic.mrc: anisotropic voxels (10, 10, 20 Å along x, y, z): the pipeline needs cubic "
            "voxels; resample the tomogram (aitom convert IN OUT --resample Å), or give voxel_size_a=<Å> "
            "to use one size",
        ),
    ],
)
def test_impossible_settings_are_refused_in_one_line(simulated, tmp_path, capsys, overrides, message):
    """Infinite settings used to end in an OverflowError traceback; a box smaller than the particle, a
    4-voxel box and anisotropic voxels used to run (an FSC at Nyquist, the x voxel size used silently)."""
    tomogram = simulated["tomogram"]
    if overrides == "anisotropic":
        tomogram, overrides = _anisotropic(tmp_path), []
    out = tmp_path / "run"
    code = aitom(["pipeline", "--tomogram", str(tomogram), "--out", str(out), *overrides])
    error = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in error and error.endswith(message), error
    assert not out.exists() and not list(tmp_path.glob(".run*"))


@pytest.mark.filterwarnings("ignore:.*no particles found:aitom.pipeline.run.PipelineWarning")
def test_anisotropic_voxels_run_with_voxel_size_a(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["pipeline", "--tomogram", str(_anisotropic(tmp_path)), "--out", str(out), "voxel_size_a=10"]
    assert aitom([*argv, "pick.particle_diameter_a=60"]) == 0
    assert "anisotropic voxels" not in capsys.readouterr().err
    assert _strict_json(out / "summary.json")["voxel_size_a"] == 10.0


def test_an_anisotropic_template_is_still_warned_about(simulated, tmp_path):
    """The tomogram's header quirks are refused or replaced by voxel_size_a, so the pipeline silences their
    warnings; it used to silence a template's too."""
    template = read_volume(simulated["apoferritin"])[0]
    skewed = write_volume(tmp_path / "skewed.mrc", template, (10.0, 10.0, 12.0))
    overrides = [*FAST, "pick.method=template", f"pick.templates=[{skewed}]", "pick.angular_step_deg=90"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = load_pipeline_config(None, overrides)
        run_pipeline(simulated["tomogram"], tmp_path / "run", config, log=lambda _: None)
    said = [str(w.message) for w in caught if issubclass(w.category, HeaderWarning)]
    assert any(message.startswith(f"{skewed}: anisotropic voxels") for message in said), said
    assert not any(message.startswith(f"{simulated['tomogram']}:") for message in said), said


def test_a_box_larger_than_the_tomogram_is_warned(tmp_path):
    tomogram = write_volume(tmp_path / "thin.mrc", torch.zeros(20, 48, 48), 10.0)
    result, warned = _run(tomogram, tmp_path / "run", FAST)
    assert warned[0] == (
        f"{tomogram}: the box (24 voxels) is larger than the tomogram along Z (20 voxels): every box is "
        "padded there (extract.padding mean)"
    )
    assert result.summary["warnings"][0].startswith("the box (24 voxels) is larger than the tomogram")


def test_report_explains_its_numbers_and_shows_undefined_resolutions(tmp_path):
    summary = {
        "tomogram": "t.mrc",
        "shape_zyx": [32, 32, 32],
        "voxel_size_a": 12.0,
        "steps": [{"step": "pick", "result": "3 particles (dog)", "seconds": 0.1}],
        "n_particles": 3,
        "classify_method": "PCA + k-means clustering with alignment",
        "box_size": 16,
        "tilt_range_deg": [-60.0, 60.0],
        "classes": [
            {"class": 1, "particles": 2, "fsc_0.5_a": 40.0, "fsc_0.143_a": 30.0},
            {"class": 2, "particles": 1, "fsc_0.5_a": None, "fsc_0.143_a": None},
        ],
        "warnings": ["class 2 has 1 particle: no half-set FSC"],
    }
    markdown, page = write_report(summary, tmp_path)
    text = markdown.read_text()
    assert "| 2 | 1 | – | – |" in text and "box 16³ voxels (192 Å)" in text
    assert "resolution in Å (smaller is better)" in text and "at best Nyquist, 24 Å" in text
    assert "Times are wall-clock seconds" in text and "- class 2 has 1 particle: no half-set FSC" in text
    html = page.read_text()
    assert "<li>class 2 has 1 particle: no half-set FSC</li>" in html and "<td>–</td><td>–</td>" in html


def _demo_module():
    spec = importlib.util.spec_from_file_location("demo", REPOSITORY / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_scores_singleton_classes_and_splits(simulated, tmp_path, capsys):
    """The demo's scoring of a run with classes of one particle: strict JSON (no Infinity), "–" printed,
    each true class that is the majority of several found classes reported as split."""
    out = tmp_path / "run"
    _run(simulated["tomogram"], out, [*FAST, "classify.n_classes=20"])
    demo = _demo_module()
    scores = demo.score(out, simulated["truth"])
    json.dumps(scores, allow_nan=False)
    assert scores["n_true_classes"] == 2 and scores["picking"]["f1"] >= 0.8
    rows = {row["class"]: row for row in scores["classes"]}
    majority: dict[str, list[int]] = {}
    for row in rows.values():
        majority.setdefault(row["true_class"], []).append(row["class"])
    assert scores["split"] == {name: found for name, found in majority.items() if len(found) > 1}
    assert scores["split"]  # 5 classes of 2 structures
    demo.print_scores(scores)
    printed = capsys.readouterr().out
    assert (
        f"{len(rows)} classes found for 2 true classes; " in printed
        and " is split (the majority of " in printed
    )
    singles = [row for row in rows.values() if row["particles"] == 1]
    for row in singles:
        assert row["half_set_fsc_0_143_a"] is None
        assert math.isfinite(row["fsc_0_5_vs_truth_a"])
        assert (
            f"| {row['class']} | 1 | {row['true_class']} | 1.00 | " in printed
            and printed.count(" | – |") >= 1
        )


def test_max_particles_keeps_the_best_picks_inside_the_faces(tmp_path):
    """pick.max_particles used to cap each tile's picks before the picks at the faces were dropped: on noise,
    where DoG's best responses lie on the faces, a cap of 5 left 0 or 1 pick."""
    from aitom.pipeline.steps import pick_particles

    noise = torch.randn(32, 64, 64, generator=torch.Generator().manual_seed(3))
    tomogram = write_volume(tmp_path / "noise.mrc", noise, 10.0)
    picks = {}
    for cap in ("5", "null"):
        config = load_pipeline_config(
            None, ["pick.particle_diameter_a=80", "pick.threshold=0", f"pick.max_particles={cap}"]
        )
        work = tmp_path / cap
        work.mkdir()
        picks[cap] = pick_particles(tomogram, 10.0, config, (-60.0, 60.0), work)
    assert len(picks["null"]) > 5 and len(picks["5"]) == 5
    columns = ["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ", "rlnAutopickFigureOfMerit"]
    np.testing.assert_array_equal(picks["5"][columns].to_numpy(), picks["null"][columns].to_numpy()[:5])
    xyz = picks["5"][columns[:3]].to_numpy()
    assert (xyz >= 2).all() and (xyz <= np.array([63, 63, 31]) - 2).all()  # border: half the radius
