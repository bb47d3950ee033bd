"""``aitom filter`` and ``aitom estimate``: results equal the library's, headers carried, bad input exit 2."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from aitom.cli import _guarded
from aitom.commands import estimate as estimate_command
from aitom.commands import filter as filter_command
from aitom.fourier import apply_missing_wedge, bandpass
from aitom.io import read_volume, write_volume
from aitom.ops import anisotropic_diffusion


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aitom")
    subparsers = parser.add_subparsers(dest="command", required=True)
    filter_command.add_parser(subparsers)
    estimate_command.add_parser(subparsers)
    return parser


def run_cli(argv: list[str]) -> int:
    """What ``aitom.cli.main`` does for a tool command (InputError -> one line, exit 2)."""
    args = build_parser().parse_args(argv)
    module = filter_command if args.command == "filter" else estimate_command
    return _guarded(lambda: module.run(args))


@pytest.fixture
def volume_file(tmp_path) -> Path:
    volume = np.random.default_rng(0).standard_normal((20, 24, 28)).astype(np.float32)
    return write_volume(tmp_path / "in.mrc", volume, 5.0)


@pytest.mark.parametrize(
    "path",
    [
        ["filter"],
        ["filter", "gaussian"],
        ["filter", "dog"],
        ["filter", "diffusion"],
        ["filter", "bandpass"],
        ["estimate"],
        ["estimate", "snr"],
        ["estimate", "wedge"],
    ],
    ids=" ".join,
)
def test_help(path, capsys):
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args([*path, "--help"])
    assert stop.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_gaussian_in_angstrom_carries_the_voxel_size(tmp_path, volume_file):
    out = tmp_path / "out.mrc"
    assert run_cli(["filter", "gaussian", str(volume_file), str(out), "--sigma-a", "10"]) == 0
    result, header = read_volume(out)
    original, _ = read_volume(volume_file)
    np.testing.assert_allclose(result.numpy(), ndi.gaussian_filter(original.double().numpy(), 2.0), atol=1e-5)
    assert header.voxel_size_a == pytest.approx((5.0, 5.0, 5.0))


def test_dog_and_bandpass(tmp_path, volume_file):
    original = read_volume(volume_file)[0].double().numpy()
    out = tmp_path / "dog.mrc"
    assert (
        run_cli(["filter", "dog", str(volume_file), str(out), "--sigma-voxels", "1", "--sigma2-voxels", "2"])
        == 0
    )
    expected = ndi.gaussian_filter(original, 1.0) - ndi.gaussian_filter(original, 2.0)
    np.testing.assert_allclose(read_volume(out)[0].numpy(), expected, atol=1e-5)
    out = tmp_path / "bp.mrc"
    argv = ["filter", "bandpass", str(volume_file), str(out), "--highpass-a", "60", "--lowpass-a", "15"]
    assert run_cli(argv) == 0
    expected = bandpass(torch.from_numpy(original), voxel_size_a=5.0, highpass_a=60.0, lowpass_a=15.0)
    np.testing.assert_allclose(read_volume(out)[0].numpy(), expected.numpy(), atol=1e-5)


def test_diffusion_in_tiles_equals_the_library(tmp_path, volume_file):
    out = tmp_path / "nad.mrc"
    argv = ["filter", "diffusion", str(volume_file), str(out), "--iterations", "2", "--tile-size", "16"]
    assert run_cli([*argv, "--mode", "coherence", "--rho-voxels", "1.5"]) == 0
    expected = anisotropic_diffusion(
        read_volume(volume_file)[0], mode="coherence", n_iterations=2, rho_voxels=1.5
    )
    np.testing.assert_allclose(read_volume(out)[0].numpy(), expected.numpy(), atol=1e-5)


def test_existing_output_is_protected(tmp_path, volume_file, capsys):
    out = tmp_path / "out.mrc"
    out.write_bytes(b"keep me")
    assert run_cli(["filter", "gaussian", str(volume_file), str(out), "--sigma-voxels", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err and out.read_bytes() == b"keep me"
    assert (
        run_cli(["filter", "gaussian", str(volume_file), str(out), "--sigma-voxels", "1", "--overwrite"]) == 0
    )
    assert read_volume(out)[0].shape == (20, 24, 28)


def _write_raw(path: Path, data: np.ndarray, voxel_size_a: float = 5.0) -> Path:
    """An MRC file that aitom's writer refuses to make (2-D image, NaN voxels, voxel size 0)."""
    with warnings.catch_warnings(), mrcfile.new(path) as mrc:
        warnings.simplefilter("ignore", RuntimeWarning)  # mrcfile: "Data array contains NaN values"
        mrc.set_data(data)
        mrc.voxel_size = voxel_size_a
    return path


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["filter", "gaussian", "{volume}", "{out}", "--sigma-voxels", "0"], "must be positive"),
        (["filter", "gaussian", "{volume}", "{out}", "--sigma-a", "-5"], "must be positive"),
        (
            ["filter", "dog", "{volume}", "{out}", "--sigma-voxels", "2", "--sigma2-voxels", "1"],
            "--sigma2-voxels 1 must be larger than --sigma-voxels 2",
        ),
        (
            ["filter", "dog", "{volume}", "{out}", "--sigma-a", "40", "--sigma2-a", "20"],
            "--sigma2-a 20 Å must be larger than --sigma-a 40 Å",
        ),
        (["filter", "diffusion", "{volume}", "{out}", "--time-step", "0.5"], "1/6"),
        (["filter", "bandpass", "{volume}", "{out}"], "highpass"),
        (["filter", "bandpass", "{volume}", "{out}", "--lowpass-a", "5"], "{volume}: --lowpass-a 5 Å"),
        (["filter", "bandpass", "{volume}", "{out}", "--lowpass-a", "nan"], "--lowpass-a must be a positive"),
        (["filter", "bandpass", "{volume}", "{out}", "--lowpass-a", "-3"], "--lowpass-a must be a positive"),
        (["filter", "bandpass", "{volume}", "{out}", "--highpass-a", "inf"], "--highpass-a must be"),
        (
            ["filter", "bandpass", "{volume}", "{out}", "--highpass-a", "30", "--lowpass-a", "40"],
            "--highpass-a (30 Å) must be coarser (larger) than --lowpass-a (40 Å)",
        ),
        (["filter", "gaussian", "{image}", "{out}", "--sigma-voxels", "1"], "{image}"),
        (["filter", "gaussian", "{nan}", "{out}", "--sigma-voxels", "1"], "NaN"),
        (["filter", "gaussian", "{missing}", "{out}", "--sigma-voxels", "1"], "{missing}"),
        (["filter", "gaussian", "{unset}", "{out}", "--sigma-a", "10"], "pass --voxel-size"),
        (["estimate", "wedge", "{small}"], "too small for a wedge estimate"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_output(tmp_path, volume_file, capsys, argv, message):
    files = {
        "volume": volume_file,
        "out": tmp_path / "out.mrc",
        "image": _write_raw(tmp_path / "image.mrc", np.zeros((16, 16), np.float32)),
        "nan": _write_raw(tmp_path / "nan.mrc", np.full((8, 8, 8), np.nan, np.float32)),
        "missing": tmp_path / "missing.mrc",
        "unset": _write_raw(tmp_path / "unset.mrc", np.zeros((8, 8, 8), np.float32), voxel_size_a=0.0),
        "small": write_volume(tmp_path / "small.mrc", np.zeros((12, 32, 32), np.float32), 5.0),
    }
    argv = [a.format(**files) for a in argv]
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("aitom: error:") and err.count("\n") == 1
    assert message.format(**files) in err
    assert not files["out"].exists()


@pytest.fixture
def pair_folders(tmp_path) -> tuple[Path, Path]:
    """Four pairs of 24³ copies at SNR 0.5 in two folders, as `aitom simulate subtomograms paired=true`."""
    generator = torch.Generator().manual_seed(1)
    for i in range(4):
        signal = torch.randn(24, 24, 24, generator=generator)
        for folder in ("a", "b"):
            noisy = signal + 2**0.5 * torch.randn(signal.shape, generator=generator)
            write_volume(tmp_path / folder / f"{i:06d}.mrc", noisy, 8.0)
    return tmp_path / "a", tmp_path / "b"


def test_estimate_snr_from_folders_and_files(pair_folders, capsys):
    folder_a, folder_b = pair_folders
    assert run_cli(["estimate", "snr", "--pairs-a", str(folder_a), "--pairs-b", str(folder_b)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_pairs"] == 4 and result["snr"] == pytest.approx(0.5, rel=0.2)
    assert result["ci_low"] <= result["snr"] <= result["ci_high"]
    assert len(result["ssnr"]) == len(result["shell_frequency_per_a"]) == 13
    assert result["shell_frequency_per_a"][-1] == pytest.approx(0.5 / 8.0)
    argv = [
        "estimate",
        "snr",
        "--pairs-a",
        str(folder_a / "000000.mrc"),
        "--pairs-b",
        str(folder_b / "000000.mrc"),
    ]
    assert run_cli(argv) == 0
    assert json.loads(capsys.readouterr().out)["n_pairs"] == 1


def test_estimate_snr_with_unequal_folders_is_exit_2(pair_folders, capsys):
    folder_a, folder_b = pair_folders
    (folder_b / "000003.mrc").unlink()
    assert run_cli(["estimate", "snr", "--pairs-a", str(folder_a), "--pairs-b", str(folder_b)]) == 2
    assert "holds 4 volumes" in capsys.readouterr().err


def test_estimate_wedge_prints_json(tmp_path, capsys):
    noise = torch.randn(40, 40, 40, generator=torch.Generator().manual_seed(2))
    path = write_volume(tmp_path / "tomo.mrc", apply_missing_wedge(noise, -50, 65), 10.0)
    assert run_cli(["estimate", "wedge", str(path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert abs(result["tilt_min_deg"] + 50) <= 3 and abs(result["tilt_max_deg"] - 65) <= 3
    assert result["axis"] == "y" and result["voxel_size_a"] == pytest.approx(10.0)


def _grid_positions_a(path: Path) -> np.ndarray:
    """Position (x, y, z), Å, of the first voxel as viewers place it: origin, or if 0 nstart × voxel."""
    with mrcfile.open(path) as mrc:
        header, voxel = mrc.header, mrc.voxel_size
        origin = np.array([header.origin.x, header.origin.y, header.origin.z], dtype=np.float64)
        nstart = np.array([header.nxstart, header.nystart, header.nzstart], dtype=np.float64)
        size = np.array([voxel.x, voxel.y, voxel.z], dtype=np.float64)
    return origin if origin.any() else nstart * size


def test_filter_keeps_the_position_of_a_map_placed_by_nstart(tmp_path):
    """EMDB maps place the grid by nstart (origin 0): the filtered map must stay where the input was."""
    source = tmp_path / "nstart.mrc"
    with mrcfile.new(source) as mrc:
        mrc.set_data(np.random.default_rng(0).standard_normal((10, 12, 14)).astype(np.float32))
        mrc.voxel_size = 5.0
        mrc.header.nxstart, mrc.header.nystart, mrc.header.nzstart = -7, 3, -5
    out = tmp_path / "out.mrc"
    assert run_cli(["filter", "gaussian", str(source), str(out), "--sigma-voxels", "1"]) == 0
    np.testing.assert_allclose(_grid_positions_a(out), [-35.0, 15.0, -25.0])
    np.testing.assert_allclose(_grid_positions_a(out), _grid_positions_a(source))


@pytest.mark.filterwarnings("ignore::aitom.io.HeaderWarning")
def test_estimate_snr_with_unset_voxel_size_gives_the_snr_and_no_frequencies_in_angstrom(tmp_path, capsys):
    """Headers with voxel size 0 (warned): the SNR needs no voxel size; frequencies in 1/Å are null."""
    generator = torch.Generator().manual_seed(3)
    signal = torch.randn(24, 24, 24, generator=generator)
    files = []
    for name in ("a.mrc", "b.mrc"):
        noisy = (signal + 2**0.5 * torch.randn(signal.shape, generator=generator)).numpy()
        files.append(_write_raw(tmp_path / name, noisy.astype(np.float32), voxel_size_a=0.0))
    assert run_cli(["estimate", "snr", "--pairs-a", str(files[0]), "--pairs-b", str(files[1])]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["snr"] == pytest.approx(0.5, rel=0.2)
    assert result["shell_frequency_per_a"] is None and result["voxel_size_a"] is None
    assert result["shell_frequency_per_voxel"][-1] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["estimate", "snr", "--pairs-a", "{noise}", "--pairs-b", "{flat}"], "{flat}: is constant"),
        (["estimate", "wedge", "{flat}"], "{flat}: volume is constant"),
        (["estimate", "wedge", "{noise}", "--min-angle-deg", "90"], "full ±90°"),
    ],
)
def test_estimates_without_a_defined_answer_are_exit_2_not_nan_json(tmp_path, capsys, argv, message):
    """A constant volume gave SNR 0 and a wedge score of -Infinity (invalid JSON); only ±90° the same."""
    files = {
        "noise": write_volume(tmp_path / "noise.mrc", np.random.default_rng(0).normal(size=(24,) * 3), 5.0),
        "flat": write_volume(tmp_path / "flat.mrc", np.ones((24, 24, 24), np.float32), 5.0),
    }
    assert run_cli([a.format(**files) for a in argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert message.format(**files) in captured.err
