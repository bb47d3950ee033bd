"""Awkward inputs to ``aitom pick``, ``filter``, ``convert``, ``estimate`` and ``pipeline``: each must either
work (and give the right answer) or stop with exit code 2, one line on stderr naming the file or option and
the problem, and no output written or replaced."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from aitom.cli import main
from aitom.io import particles_table, read_particles, read_volume, write_particles, write_volume
from aitom.tasks.pick import TemplateCroppedWarning, check_template
from tests.test_cli_awkward_inputs import _one_error_line

CENTRES_ZYX = [(10, 10, 12), (22, 21, 20)]


def _blob(size: int, voxel_a: float, radius_a: float = 25.0) -> torch.Tensor:
    """A ``size``³ Gaussian blob of σ ``radius_a / 2`` Å, centred on voxel ``size // 2``, at ``voxel_a`` Å."""
    z, y, x = torch.meshgrid(*[(torch.arange(float(size)) - size // 2) * voxel_a] * 3, indexing="ij")
    return torch.exp(-(x**2 + y**2 + z**2) / (2 * (radius_a / 2) ** 2))


@pytest.fixture
def data(tmp_path) -> dict[str, Path]:
    """A 32³ tomogram (10 Å voxels) with two blobs (radius 25 Å) at CENTRES_ZYX, its truth, a 10³ template."""
    tomogram = 0.05 * torch.randn(32, 32, 32, generator=torch.Generator().manual_seed(0))
    blob = _blob(10, 10.0)
    for z, y, x in CENTRES_ZYX:
        tomogram[z - 5 : z + 5, y - 5 : y + 5, x - 5 : x + 5] += blob
    return {
        "tomogram": write_volume(tmp_path / "tomogram.mrc", tomogram, 10.0),
        "template": write_volume(tmp_path / "template.mrc", blob, 10.0),
        "truth": write_particles(tmp_path / "truth.star", particles_table([c[::-1] for c in CENTRES_ZYX])),
    }


def _pick(data: dict[str, Path], out: Path, method: str, *extra: str) -> int:
    return main(["pick", method, "--tomogram", str(data["tomogram"]), "--out", str(out), *extra])


# --- aitom pick -------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::aitom.tasks.pick.TemplateRescaledWarning")
def test_pick_template_voxel_size_option_keeps_a_set_template_header(tmp_path):
    """--voxel-size 5 for a tomogram whose header says 10 Å, with a template whose header rightly says 10 Å:
    the picker resamples the template to 5 Å (box 24), and the checks must see that box, not 12 (they took
    --voxel-size for the template too, so the tile and overlap checks used half its size)."""
    fine = _blob(24, 5.0)
    tomogram = 0.05 * torch.randn(48, 48, 48, generator=torch.Generator().manual_seed(1))
    tomogram[4:28, 12:36, 20:44] += fine  # centre (z, y, x) = (16, 24, 32)
    write_volume(tmp_path / "tomogram.mrc", tomogram, 10.0)  # header wrong: the data are at 5 Å
    template = write_volume(tmp_path / "template.mrc", _blob(12, 10.0), 10.0)
    box = check_template(template, 5.0, (48, 48, 48), tmp_path / "tomogram.mrc", voxel_size_override=5.0)
    assert box == 24

    out = tmp_path / "picks.star"
    argv = ["template", "--tomogram", str(tmp_path / "tomogram.mrc"), "--template", str(template)]
    argv += ["--out", str(out), "--voxel-size", "5", "--angular-step", "90", "--no-wedge", "--num-peaks", "1"]
    assert main(["pick", *argv]) == 0
    best = read_particles(out).iloc[0]
    found = np.array([best["rlnCoordinateZ"], best["rlnCoordinateY"], best["rlnCoordinateX"]])
    assert np.abs(found - (16, 24, 32)).max() <= 2

    # in a 20³ tomogram the 24³ box (not 12³) is cropped to fit: the blob (radius 5 voxels) is inside
    small = write_volume(tmp_path / "small.mrc", tomogram[:20, :20, :20], 10.0)
    argv[2] = str(small)
    argv[6] = str(tmp_path / "small.star")
    with pytest.warns(TemplateCroppedWarning, match="template cropped from 24³ to 20³ voxels"):
        assert main(["pick", *argv]) == 0


def test_pick_refuses_to_write_over_its_truth_table(data, capsys):
    """--out T.star --truth T.star --overwrite replaced the truth with the picks."""
    before = data["truth"].read_text()
    argv = ["--sigma-voxels", "1.5", "--truth", str(data["truth"]), "--overwrite"]
    assert _pick(data, data["truth"], "dog", *argv) == 2
    assert "is also an input" in _one_error_line(capsys)
    assert data["truth"].read_text() == before


@pytest.mark.parametrize(
    ("method", "extra", "expected"),
    [
        ("dog", ["--sigma-voxels", "1.5", "--exclude-border", "16"], "--exclude-border 16 voxels leaves no"),
        ("dog", ["--sigma-voxels", "1.5", "--threshold", "nan"], "--threshold must be a finite score"),
        ("dog", ["--sigma-voxels", "20"], "makes particles larger than the tomogram"),
        ("saliency", ["--radius-voxels", "20"], "makes particles larger than the tomogram"),
        ("template", ["--template", "{template}", "--threshold", "1.5"], "correlations in [-1, 1]"),
        ("dog", ["--sigma-voxels", "1.5", "--devices", "0"], "--accelerator auto --devices 0:"),
    ],
)
def test_pick_impossible_parameters_exit_2(data, tmp_path, capsys, method, extra, expected):
    """Each ran to exit code 0 with an empty or meaningless table (or a Lightning traceback for --devices)."""
    out = tmp_path / "picks.star"
    extra = [value.format(template=data["template"]) for value in extra]
    assert _pick(data, out, method, *extra) == 2
    assert expected in _one_error_line(capsys)
    assert not out.exists()


def test_pick_largest_exclude_border_that_leaves_room_still_runs(data, tmp_path, capsys):
    """The bound is tight: a border of (32 - 1) // 2 = 15 voxels keeps the positions 15 and 16."""
    out = tmp_path / "picks.star"
    assert _pick(data, out, "dog", "--sigma-voxels", "1.5", "--exclude-border", "15") == 0
    coordinates = read_particles(out)[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy()
    assert ((coordinates >= 15) & (coordinates <= 16)).all()


# --- aitom filter and convert -----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["filter", "convert"])
def test_filter_and_convert_refuse_to_replace_their_input(data, capsys, command):
    """``IN.mrc IN.mrc --overwrite`` replaced the data with its filtered (or inverted) copy."""
    before = data["tomogram"].read_bytes()
    path = str(data["tomogram"])
    argv = ["filter", "gaussian", path, path, "--sigma-voxels", "1"] if command == "filter" else []
    argv = argv or ["convert", path, path, "--invert"]
    assert main([*argv, "--overwrite"]) == 2
    assert _one_error_line(capsys) == f"{path}: is also an input ({path}): write the output to another file"
    assert data["tomogram"].read_bytes() == before


@pytest.mark.parametrize("command", ["filter", "convert"])
def test_filter_and_convert_refuse_an_output_that_is_not_named_as_mrc(data, tmp_path, capsys, command):
    """``OUT.tif`` got MRC data under a TIFF name; ``.mrc.gz`` is gzip-compressed MRC and fine."""
    path = str(data["tomogram"])
    head = ["filter", "gaussian", path] if command == "filter" else ["convert", path]
    tail = ["--sigma-voxels", "1"] if command == "filter" else []
    assert main([*head, str(tmp_path / "out.tif"), *tail]) == 2
    assert "written as an MRC volume" in _one_error_line(capsys)
    assert not (tmp_path / "out.tif").exists()
    assert main([*head, str(tmp_path / "out.mrc.gz"), *tail]) == 0
    assert read_volume(tmp_path / "out.mrc.gz")[1].voxel_size_a == (10.0, 10.0, 10.0)


def test_filter_bandpass_of_anisotropic_voxels_names_the_file(tmp_path, capsys):
    """The error line alone: the header's "anisotropic voxels" warning before it said the same."""
    path = write_volume(tmp_path / "aniso.mrc", torch.randn(16, 16, 16), (10.0, 10.0, 20.0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["filter", "bandpass", str(path), str(tmp_path / "out.mrc"), "--lowpass-a", "50"]) == 2
    assert not [warning for warning in caught if "anisotropic" in str(warning.message)]
    assert _one_error_line(capsys).startswith(f"{path}: band-pass needs isotropic voxels")
    assert not (tmp_path / "out.mrc").exists()


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_convert_values_beyond_float32_say_so_without_a_numpy_warning(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "huge.tif", np.full((4, 8, 8), 1e39), photometric="minisblack")
    assert main(["convert", str(tmp_path / "huge.tif"), str(tmp_path / "out.mrc"), "--voxel-size", "5"]) == 2
    assert "beyond float32's range" in _one_error_line(capsys)
    assert not (tmp_path / "out.mrc").exists()


# --- aitom estimate snr -----------------------------------------------------------------------------------


def _pair(tmp_path: Path, voxel_b: float = 10.0, same_noise: bool = False) -> tuple[Path, Path]:
    generator = torch.Generator().manual_seed(2)
    signal = _blob(16, 10.0, radius_a=40.0)
    noise_a = 0.3 * torch.randn(16, 16, 16, generator=generator)
    noise_b = noise_a if same_noise else 0.3 * torch.randn(16, 16, 16, generator=generator)
    a = write_volume(tmp_path / "a.mrc", signal + noise_a, 10.0)
    b = write_volume(tmp_path / f"b_{voxel_b:g}_{same_noise}.mrc", signal + noise_b, voxel_b)
    return a, b


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("voxel_size", "voxel size 5 Å differs from the first volume's 10 Å"),
        ("same_noise", "is identical to its pair"),
        ("negative_mask", "mask weights must be >= 0"),
        ("bootstrap", "--bootstrap must be >= 1"),
    ],
)
def test_estimate_snr_impossible_pairs_exit_2(tmp_path, capsys, case, expected):
    """A pair at 10 and 5 Å was correlated voxel by voxel; one file given twice gave an SNR of 1e15."""
    a, b = _pair(tmp_path, voxel_b=5.0 if case == "voxel_size" else 10.0, same_noise=case == "same_noise")
    argv = ["estimate", "snr", "--pairs-a", str(a), "--pairs-b", str(b)]
    argv += ["--bootstrap", "0" if case == "bootstrap" else "20"]
    if case == "negative_mask":
        argv += ["--mask", str(write_volume(tmp_path / "mask.mrc", -torch.ones(16, 16, 16), 10.0))]
    assert main(argv) == 2
    message = _one_error_line(capsys)
    assert expected in message
    if case in ("voxel_size", "same_noise"):
        assert message.startswith(f"{b}:")
    assert capsys.readouterr().out == ""


# --- aitom pipeline ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("pick.particle_diameter_a=5000", "pick.particle_diameter_a: 5000 Å is 500 voxels, larger than"),
        ("pick.exclude_border_voxels=40", "pick.exclude_border_voxels: 40 voxels leaves no position"),
        ("pick.threshold=.nan", "pick.threshold: must be a finite score"),
    ],
)
def test_pipeline_settings_that_can_only_find_nothing_exit_2(data, tmp_path, capsys, override, expected):
    """Each wrote an empty particles.star and a report with exit code 0."""
    out = tmp_path / "out"
    assert main(["pipeline", "--tomogram", str(data["tomogram"]), "--out", str(out), override]) == 2
    assert expected in _one_error_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("edge", ["5", "-0.1"])
def test_filter_bandpass_edge_width_outside_0_1_exits_2(data, tmp_path, capsys, edge):
    """An edge of 5 × Nyquist reached zero frequency and damped the mean, exit 0."""
    out = tmp_path / "out.mrc"
    argv = [
        "filter",
        "bandpass",
        str(data["tomogram"]),
        str(out),
        "--lowpass-a",
        "40",
        "--edge-width-frac",
        edge,
    ]
    assert main(argv) == 2
    assert f"edge width must be in [0, 1] (a fraction of Nyquist), got {float(edge)}" in _one_error_line(
        capsys
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        ("mps", "--device mps: aitom runs on cpu or cuda (cuda:N)"),
        ("meta", "--device meta: aitom runs on cpu or cuda (cuda:N)"),
        ("gpu", "--device: "),
        ("cuda:7", "--device cuda:7: "),
    ],
)
def test_filter_devices_other_than_cpu_or_a_present_gpu_exit_2(data, tmp_path, capsys, device, expected):
    """Each was a traceback from inside torch: ``meta`` ("Cannot copy out of meta tensor"), ``mps`` (not
    linked), a ``cuda:N`` beyond the GPUs present."""
    out = tmp_path / "out.mrc"
    argv = ["filter", "gaussian", str(data["tomogram"]), str(out), "--sigma-voxels", "1", "--device", device]
    assert main(argv) == 2
    assert _one_error_line(capsys).startswith(expected)
    assert not out.exists()
