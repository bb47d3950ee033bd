"""``aitom pipeline``: a tiny simulated tomogram end to end, empty tomograms, tiled picking, bad input."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from aitom.cli import main as aitom
from aitom.fourier import apply_missing_wedge, fourier_shell_correlation
from aitom.io import open_volume_mmap, read_particles, read_volume, write_particles, write_volume
from aitom.ops.pick_evaluation import evaluate_picks
from aitom.ops.wedge_estimation import TiltAxisWarning
from aitom.pipeline import PipelineConfig, load_pipeline_config, run_pipeline
from aitom.pipeline.steps import denoise_tiled, estimate_tilt_range, pick_particles

REPOSITORY = Path(__file__).resolve().parent.parent
#: fast settings for a 48 × 96 × 96 tomogram at 10 Å with 160 Å particles
FAST = [
    "pick.particle_diameter_a=160",
    "extract.max_box_voxels=24",
    "classify.n_classes=2",
    "average.iterations=1",
    "average.initial_iterations=1",
    "average.angular_step_deg=45",
    "average.refine_steps=0",
]
OUTPUTS = [
    "particles.star",
    "class_01_average.mrc",
    "class_01_half1.mrc",
    "class_01_half2.mrc",
    "class_01_fsc.json",
    "class_01_montage.png",
    "class_02_average.mrc",
    "fsc.png",
    "tomogram_classes.png",
    "report.md",
    "report.html",
    "summary.json",
    "pipeline.yaml",
]


#: recipe overrides of the small test tomogram: 48 × 96 × 96 voxels (at 10 Å when written), 10 particles of
#: 2 classes (20S proteasome, apoferritin), SNR 5, no CTF
SMALL_TOMOGRAM = [
    "shape_zyx_voxels=[48,96,96]",
    "classes=[proteasome_20s,apoferritin]",
    "number_of_particles=10",
    "crowding_fraction=null",
    "margin_voxels=2",
    "snr=5.0",
    "ctf.enabled=false",
    "tilt.tilt_step_deg=5",
]


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> dict[str, Path]:
    """48 × 96 × 96 voxels at 10 Å, 10 particles of 2 classes, SNR 5, no CTF (aitom.simulate)."""
    from aitom.simulate import load_recipe, simulate_tomogram

    folder = tmp_path_factory.mktemp("pipeline")
    recipe = load_recipe(
        None,
        SMALL_TOMOGRAM,
        kind="tomogram",
    )
    simulation = simulate_tomogram(recipe)
    generator = torch.Generator().manual_seed(1)
    # the 20S template at 5 Å voxels (upsampled by SciPy's cubic zoom): the picker resamples it to 10 Å
    fine = ndimage.zoom(simulation.templates["proteasome_20s"].numpy(), 2.0, order=3)
    return {
        "template_5a": write_volume(folder / "template_5a.mrc", fine, 5.0),
        "tomogram": write_volume(folder / "tomogram.mrc", simulation.tomogram, 10.0),
        "truth": write_particles(folder / "truth.star", simulation.truth),
        "noise": write_volume(folder / "noise.mrc", torch.randn(48, 96, 96, generator=generator), 10.0),
        "zeros": write_volume(folder / "zeros.mrc", torch.zeros(32, 48, 48), 10.0),
    }


def test_config_file_is_the_defaults():
    assert load_pipeline_config(REPOSITORY / "configs" / "pipeline.yaml") == PipelineConfig()


def test_one_template_may_be_given_without_a_list(tmp_path):
    config_file = tmp_path / "template.yaml"
    config_file.write_text("pick:\n  method: template\n  templates: ribosome.mrc\n")
    assert load_pipeline_config(config_file).pick.templates == ["ribosome.mrc"]
    single = load_pipeline_config(None, ["pick.method=template", "pick.templates=a.mrc"])
    several = load_pipeline_config(None, ["pick.method=template", "pick.templates=[a.mrc,b.cif]"])
    assert (single.pick.templates, several.pick.templates) == (["a.mrc"], ["a.mrc", "b.cif"])


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        aitom(["pipeline", "--help"])
    assert exit_info.value.code == 0
    assert "KEY=VALUE" in capsys.readouterr().out


def test_finds_particles_and_writes_every_output(simulated, tmp_path, capsys):
    out = tmp_path / "run"
    result = run_pipeline(simulated["tomogram"], out, load_pipeline_config(None, FAST), log=lambda _: None)
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    assert not list(tmp_path.glob(".*")), "temporary folders left behind"
    truth = read_particles(simulated["truth"])
    picks = read_particles(out / "particles.star")
    scores = evaluate_picks(picks, truth, tolerance_voxels=4.0)
    assert scores["f1"] >= 0.8, scores
    for column in (
        "rlnClassNumber",
        "rlnAngleRot",
        "rlnAngleTilt",
        "rlnAnglePsi",
        "rlnAutopickFigureOfMerit",
    ):
        assert column in picks.columns
    assert set(picks["rlnClassNumber"]) == {1, 2} and len(result.classes) == 2
    fsc = json.loads((out / "class_01_fsc.json").read_text())
    assert len(fsc["fsc"]) == len(fsc["frequency_per_a"]) and fsc["fsc_0.143_a"] >= 20.0  # Nyquist 20 Å
    # the half maps written are the ones behind the reported half-set FSC
    assert fsc["half_maps"] == ["class_01_half1.mrc", "class_01_half2.mrc"]
    half1, half2 = (read_volume(out / name)[0] for name in fsc["half_maps"])
    recomputed = fourier_shell_correlation(half1, half2)[1]
    assert torch.allclose(recomputed, torch.tensor(fsc["fsc"], dtype=recomputed.dtype), atol=1e-4)
    report = (out / "report.md").read_text()
    assert "](fsc.png)" in report and "](class_01_montage.png)" in report and "| 2 |" in report
    assert sum(c["particles"] for c in result.classes) == len(picks)


@pytest.mark.parametrize("denoise", ["gaussian", "none"])
def test_protein_dark_tomogram_with_contrast_dark_matches_the_bright_one(simulated, tmp_path, denoise):
    array, _ = open_volume_mmap(simulated["tomogram"])
    dark_path = write_volume(tmp_path / "dark.mrc", -torch.from_numpy(np.array(array)), 10.0)
    settings = [*FAST, f"denoise.method={denoise}"]
    runs = {}
    for name, path, extra in (
        ("bright", simulated["tomogram"], []),
        ("dark", dark_path, ["contrast=dark"]),
    ):
        runs[name] = run_pipeline(
            path, tmp_path / name, load_pipeline_config(None, [*settings, *extra]), log=lambda _: None
        )
    columns = ["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ", "rlnClassNumber", "rlnAngleRot"]
    bright, dark = (
        read_particles(tmp_path / name / "particles.star")[columns] for name in ("bright", "dark")
    )
    assert len(bright) >= 8
    np.testing.assert_allclose(dark.to_numpy(), bright.to_numpy(), atol=1e-4)
    for name in ("class_01_average.mrc", "class_02_average.mrc"):
        np.testing.assert_allclose(
            open_volume_mmap(tmp_path / "dark" / name)[0],
            open_volume_mmap(tmp_path / "bright" / name)[0],
            atol=1e-4,
        )
    # Read as protein bright, the dark tomogram's picks are not the particles.
    run_pipeline(dark_path, tmp_path / "wrong", load_pipeline_config(None, settings), log=lambda _: None)
    truth = read_particles(simulated["truth"])
    picks = read_particles(tmp_path / "wrong" / "particles.star")
    assert len(picks) == 0 or evaluate_picks(picks, truth, tolerance_voxels=4.0)["f1"] < 0.5
    assert runs["dark"].classes == runs["bright"].classes


@pytest.mark.parametrize("name", ["zeros", "noise"])
def test_empty_tomogram_gives_empty_table(simulated, tmp_path, capsys, name):
    out = tmp_path / "run"
    code = aitom(["pipeline", "--tomogram", str(simulated[name]), "--out", str(out), *FAST])
    assert code == 0
    assert "No particles found" in capsys.readouterr().out
    table = read_particles(out / "particles.star")
    # the columns of a table with particles (it had 8 of them, without the origins, names and scores)
    columns = {"rlnCoordinateX", "rlnClassNumber", "rlnAngleRot", "rlnAutopickFigureOfMerit", "rlnOriginZ"}
    columns |= {"rlnTomoName", "rlnMicrographName", "aitomAlignmentScore"}
    assert len(table) == 0 and columns <= set(table.columns)
    assert "No particles were found" in (out / "report.md").read_text()


def test_tiled_picking_equals_whole(simulated, tmp_path, monkeypatch):
    """Denoising and picking in 64-voxel tiles from the memory map (the DoG's default overlap, 56 voxels)
    give the whole-volume result."""
    from aitom.data import tomogram as tomogram_module

    array, _ = open_volume_mmap(simulated["tomogram"])
    tiles: list[tuple[int, ...]] = []
    original = tomogram_module.TomogramTileDataset.__getitem__

    def spy(self, index):
        item = original(self, index)
        tiles.append(tuple(item["volume"].shape[-3:]))
        return item

    monkeypatch.setattr(tomogram_module.TomogramTileDataset, "__getitem__", spy)
    picks = {}
    for tile in (64, 256):
        config = load_pipeline_config(None, [*FAST, f"pick.tile_voxels={tile}"])
        work = tmp_path / str(tile)
        work.mkdir()
        denoised = denoise_tiled(array, 10.0, config, work / "denoised.mrc", torch.device("cpu"))
        picks[tile] = pick_particles(denoised, 10.0, config, (-60.0, 60.0), work)
        picks[tile, "volume"] = open_volume_mmap(denoised)[0]
    np.testing.assert_allclose(picks[64, "volume"], picks[256, "volume"], atol=1e-5)
    assert max(max(shape) for shape in tiles[:-1]) == 64 and len(tiles) > 2
    coordinates = [
        picks[tile][["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy() for tile in (64, 256)
    ]
    assert len(coordinates[1]) >= 8
    np.testing.assert_array_equal(coordinates[0], coordinates[1])


def _raw_mrc(target: Path, values: np.ndarray, voxel_size_a: float) -> Path:
    """Write with mrcfile, none of aitom's checks (NaN voxels, an unset voxel size)."""
    import mrcfile

    with mrcfile.new(target) as output:
        output.set_data(values.astype(np.float32))
        output.voxel_size = voxel_size_a
    return target


def _simulated_values(simulated: dict[str, Path]) -> np.ndarray:
    return np.array(open_volume_mmap(simulated["tomogram"])[0], dtype=np.float32)


def test_unset_header_voxel_size_is_replaced_by_voxel_size_a(simulated, tmp_path):
    unset = _raw_mrc(tmp_path / "unset.mrc", _simulated_values(simulated), 1.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name, path, extra in (
            ("given", unset, ["voxel_size_a=10"]),
            ("header", simulated["tomogram"], []),
        ):
            config = load_pipeline_config(None, [*FAST, *extra])
            run_pipeline(path, tmp_path / name, config, log=lambda _: None)
    assert not [w for w in caught if "looks unset" in str(w.message)]
    columns = ["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ", "rlnClassNumber"]
    given, header = (
        read_particles(tmp_path / name / "particles.star")[columns] for name in ("given", "header")
    )
    assert len(header) >= 8
    np.testing.assert_allclose(given.to_numpy(), header.to_numpy(), atol=1e-4)
    assert json.loads((tmp_path / "given" / "summary.json").read_text())["voxel_size_a"] == 10.0


def test_template_of_another_voxel_size_is_resampled(simulated, tmp_path):
    from aitom.tasks.pick import TemplateRescaledWarning

    overrides = [*FAST, "pick.method=template", f"pick.templates=[{simulated['template_5a']}]"]
    overrides += ["pick.angular_step_deg=30", "classify.n_classes=1"]
    with pytest.warns(TemplateRescaledWarning, match="from 5 Å to the tomogram's 10 Å"):
        run_pipeline(
            simulated["tomogram"], tmp_path / "run", load_pipeline_config(None, overrides), log=print
        )
    truth = read_particles(simulated["truth"])
    proteasomes = truth[truth["rlnClassNumber"] == 1]
    picks = read_particles(tmp_path / "run" / "particles.star")
    assert evaluate_picks(picks, proteasomes, tolerance_voxels=4.0)["recall"] >= 0.8


def _bad_template(folder: Path) -> list[str]:
    path = write_volume(folder / "big_template.mrc", torch.randn(64, 64, 64), 10.0)
    return ["pick.method=template", f"pick.templates=[{path}]"]


@pytest.mark.parametrize(
    "case",
    [
        "not_mrc",
        "big_template",
        "negative_diameter",
        "unknown_key",
        "bad_method",
        "tile_too_small",
        "bad_merge_threshold",
        "bad_reassignment_rounds",
        "bad_contrast",
        "unset_voxel_size",
        "negative_voxel_size",
        "nan_voxels",
        "existing_output",
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(simulated, tmp_path, capsys, case):
    tomogram = simulated["zeros"]
    out = tmp_path / "run"
    extra: list[str] = []
    if case == "not_mrc":
        tomogram = tmp_path / "notes.mrc"
        tomogram.write_text("not a volume\n")
    elif case == "big_template":
        extra = _bad_template(tmp_path)
    elif case == "negative_diameter":
        extra = ["pick.particle_diameter_a=-5"]
    elif case == "unknown_key":
        extra = ["pick.radius=3"]
    elif case == "bad_method":
        extra = ["classify.method=magic"]
    elif case == "unset_voxel_size":
        tomogram = _raw_mrc(tmp_path / "unset.mrc", _simulated_values(simulated), 0.0)
    elif case == "nan_voxels":
        values = _simulated_values(simulated)
        values[7, 20:22, 30] = np.nan
        tomogram = _raw_mrc(tmp_path / "nan.mrc", values, 10.0)
    elif case == "negative_voxel_size":
        extra = ["voxel_size_a=-3"]
    elif case == "bad_contrast":
        extra = ["contrast=grey"]
    elif case == "bad_merge_threshold":
        extra = ["classify.merge_threshold=1.5"]
    elif case == "bad_reassignment_rounds":
        extra = ["classify.reassignment_rounds=-1"]
    elif case == "tile_too_small":
        extra = ["pick.tile_voxels=16"]  # smaller than the tile overlap (one 40-voxel box)
    else:
        out.mkdir()
        (out / "keep.txt").write_text("x")
    code = aitom(["pipeline", "--tomogram", str(tomogram), "--out", str(out), *extra])
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.startswith("aitom: error:") and "\n" not in error
    if case == "nan_voxels":
        assert "nan.mrc" in error and "NaN or Inf voxels: 2 in Z slices 0–47, the first in Z slice 7" in error
    assert (out.exists() and case == "existing_output") or not out.exists()
    assert not list(tmp_path.glob(".run*"))


def test_trained_classifier_checkpoint_sets_the_classes(tmp_path):
    """``classify.method: checkpoint``: the classes are the network's argmax (relabelled 0 … K−1)."""
    import lightning

    from aitom.models.classifiers import DSRF3Dv2
    from aitom.pipeline.steps import classify_subtomograms
    from aitom.tasks.classify import Classifier

    torch.manual_seed(0)
    model = Classifier(DSRF3Dv2(num_classes=3, dropout=0.0, batch_norm=False), num_classes=3).eval()
    path = tmp_path / "classifier.ckpt"
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": lightning.__version__,
        },
        path,
    )
    volumes = torch.randn(6, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    config = load_pipeline_config(
        None,
        [
            *FAST,
            "classify.method=checkpoint",
            f"classify.checkpoint={path}",
            "classify.net_class_path=aitom.models.classifiers.DSRF3Dv2",
            "classify.net_init_args={num_classes: 3, dropout: 0.0, batch_norm: false}",
        ],
    )
    result = classify_subtomograms(volumes, torch.ones(16, 16, 16), config, 10.0)
    with torch.no_grad():
        expected = model(volumes[:, None]).argmax(dim=1)
    torch.testing.assert_close(result.labels, torch.unique(expected, return_inverse=True)[1])
    assert result.averages.shape == (int(expected.unique().numel()), 16, 16, 16)
    assert result.method == "trained classifier"


def test_report_lists_the_structural_correlations_of_the_classes(tmp_path):
    from aitom.pipeline.report import count_of, write_report

    summary = {
        "tomogram": "t.mrc",
        "shape_zyx": [8, 8, 8],
        "voxel_size_a": 10.0,
        "steps": [{"step": "pick", "result": "2 particles (dog)", "seconds": 0.1}],
        "n_particles": 3,
        "classify_method": "PCA + k-means clustering with alignment",
        "box_size": 8,
        "tilt_range_deg": [-60.0, 60.0],
        "classes": [
            {"class": 1, "particles": 2, "fsc_0.5_a": 40.0, "fsc_0.143_a": 30.0},
            {"class": 2, "particles": 1, "fsc_0.5_a": 50.0, "fsc_0.143_a": 35.0},
        ],
        "structural_correlations": [[1.0, 0.734], [0.734, 1.0]],
        "merge_threshold": 0.9,
    }
    markdown, page = write_report(summary, tmp_path)
    text = markdown.read_text()
    assert "3 particles in 2 classes" in text and "pairs at or above 0.9 were merged" in text
    assert "| 1 | 1.00 | 0.73 |" in text and "| 2 | 0.73 | 1.00 |" in text
    html = page.read_text()
    assert html.count("<tr>") == 8  # steps: header + 1; classes: header + 2; correlations: header + 2
    assert "<td>0.73</td>" in html
    assert (count_of(1, "class"), count_of(2, "particle")) == ("1 class", "2 particles")


def test_a_tomogram_tilted_about_x_is_warned_about_naming_the_file():
    """The pipeline's wedge is about Y; a tomogram tilted about X used to get a Y-axis range silently."""
    noise = torch.randn(32, 32, 32, generator=torch.Generator().manual_seed(0))
    tilted_about_x = apply_missing_wedge(noise.transpose(-1, -2), -50, 50).transpose(-1, -2).numpy()
    with pytest.warns(TiltAxisWarning, match=r"^T\.mrc: the spectrum fits tilt axis X .* about Y"):
        estimate_tilt_range(tilted_about_x, PipelineConfig(), Path("T.mrc"))
    tilted_about_y = apply_missing_wedge(noise, -50, 50).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("error", TiltAxisWarning)
        (low, high), source = estimate_tilt_range(tilted_about_y, PipelineConfig(), Path("T.mrc"))
    assert source == "estimated" and abs(low + 50) <= 3 and abs(high - 50) <= 3
