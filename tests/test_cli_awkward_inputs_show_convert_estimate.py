"""Awkward inputs to ``aitom show``, ``convert`` and ``estimate {snr,wedge}``: each must either work (and give
the right answer) or stop with exit code 2, one line on stderr naming the file or option and the problem,
and no output written or replaced."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import tifffile
import torch

from aitom.cli import main
from aitom.fourier import apply_missing_wedge
from aitom.io import write_volume
from aitom.ops.wedge_estimation import TiltAxisWarning, estimate_missing_wedge
from tests.test_cli_awkward_inputs import _one_error_line


@pytest.fixture
def volume(tmp_path) -> Path:
    """A 16³ noise volume at 10 Å."""
    return write_volume(tmp_path / "vol.mrc", torch.randn(16, 16, 16, generator=torch.Generator()), 10.0)


def _raw_mrc(path: Path, data: np.ndarray, cell_a: float) -> Path:
    """An MRC file whose header cell (Å) is written as given: 0 or negative voxel sizes, as some tools do."""
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data.astype(np.float32))
        mrc.header.cella = (cell_a * data.shape[2], cell_a * data.shape[1], cell_a * data.shape[0])
    return path


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


# --- aitom convert ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "axes"),
    [("one RGB page", "YXS"), ("planar RGB page", "SYX"), ("RGB pages", "QYXS")],
)
def test_convert_refuses_a_colour_tiff(tmp_path, capsys, layout, axes):
    """One RGB page of 10x12 pixels became a 10x12x3 (Z, Y, X) volume, its colour channels read as X; a
    planar RGB page became 3 sections, one per colour."""
    pixels = np.random.default_rng(0).integers(0, 255, size=(10, 12, 3), dtype=np.uint8)
    source = tmp_path / "colour.tif"
    if layout == "one RGB page":
        tifffile.imwrite(source, pixels, photometric="rgb")
    elif layout == "planar RGB page":
        tifffile.imwrite(source, np.moveaxis(pixels, -1, 0), photometric="rgb", planarconfig="separate")
    else:
        tifffile.imwrite(source, np.stack([pixels] * 4), photometric="rgb")
    out = tmp_path / "out.mrc"
    assert main(["convert", str(source), str(out), "--voxel-size", "5"]) == 2
    assert _one_error_line(capsys) == (
        f"{source}: is a colour image (3 samples per pixel, axes {axes}), not a greyscale volume: save it as "
        "a greyscale stack (e.g. Fiji: Image > Type > 32-bit)"
    )
    assert list(tmp_path.iterdir()) == [source]


def test_convert_refuses_pages_of_different_sizes(tmp_path, capsys):
    """A multi-page TIFF whose second page is smaller was a RuntimeError traceback ('page hash mismatch')."""
    source = tmp_path / "pages.tif"
    with tifffile.TiffWriter(source) as writer:
        for shape in ((10, 12), (5, 6), (10, 12)):
            writer.write(np.zeros(shape, np.float32))
    out = tmp_path / "out.mrc"
    assert main(["convert", str(source), str(out), "--voxel-size", "5"]) == 2
    assert _one_error_line(capsys) == (
        f"{source}: its pages differ in size (page 1 is 10x12 pixels, page 2 5x6): not the sections of one "
        "volume"
    )
    assert list(tmp_path.iterdir()) == [source]


# --- aitom show (and estimate) given a TIFF ---------------------------------------------------------------


@pytest.mark.parametrize("command", ["show", "estimate wedge", "estimate snr"])
def test_a_tiff_where_an_mrc_is_needed_says_so(tmp_path, capsys, command):
    """A TIFF was 'not an MRC file (header reads nx, ny, nz = 2771273, 16, 16777230, mode 65540, ...)'."""
    source = tmp_path / "vol.tif"
    tifffile.imwrite(source, np.zeros((16, 16, 16), np.float32))
    out = tmp_path / "vol.png"
    argv = {
        "show": ["show", str(source), "--out", str(out)],
        "estimate wedge": ["estimate", "wedge", str(source)],
        "estimate snr": ["estimate", "snr", "--pairs-a", str(source), "--pairs-b", str(source)],
    }[command]
    assert main(argv) == 2
    assert _one_error_line(capsys) == (
        f"{source}: is a TIFF file, not an MRC file: convert it first "
        "(aitom convert IN.tif OUT.mrc --voxel-size Å)"
    )
    assert not out.exists()


def test_show_refuses_an_output_under_a_file_before_any_work(tmp_path, volume, capsys):
    """``--out VOL.mrc/x.png`` rendered the montage, then failed naming the input: 'cannot create the
    output folder (File exists)'."""
    out = volume / "x.png"
    before = volume.read_bytes()
    assert main(["show", str(volume), "--out", str(out)]) == 2
    assert _one_error_line(capsys) == f"{out}: cannot be created: {volume} is a file, not a folder"
    assert volume.read_bytes() == before


def test_show_tomo_name_without_picks_exits_2(tmp_path, volume, capsys):
    """``--tomo-name`` without ``--picks`` was ignored: exit 0 on a selection of nothing."""
    out = tmp_path / "vol.png"
    assert main(["show", str(volume), "--out", str(out), "--tomo-name", "TS_01"]) == 2
    assert _one_error_line(capsys) == "--tomo-name selects picks to draw: it needs --picks"
    assert not out.exists()


# --- aitom estimate wedge ---------------------------------------------------------------------------------


@pytest.fixture
def wedge_volume(tmp_path) -> Path:
    """32³ noise with the missing wedge of tilts -60..60° about Y, at 10 Å."""
    noise = torch.randn(32, 32, 32, generator=torch.Generator().manual_seed(0))
    return write_volume(tmp_path / "wedge.mrc", apply_missing_wedge(noise, -60, 60), 10.0)


def test_estimate_wedge_fine_steps_end_at_the_largest_angle(wedge_volume, capsys):
    """``--step-deg 0.1`` gave 'candidate tilt angles must be a non-empty set of values in (0, 90]': the
    steps summed to 90.00000000000085; 0.7° steps reported limits like -59.39999999999997."""
    argv = ["estimate", "wedge", str(wedge_volume), "--symmetric"]
    assert main([*argv, "--min-angle-deg", "50", "--step-deg", "0.1"]) == 0
    result = _json(capsys)
    assert abs(result["tilt_max_deg"] - 60) <= 3 and result["tilt_min_deg"] == -result["tilt_max_deg"]
    assert result["tilt_max_deg"] == round(result["tilt_max_deg"], 1)
    assert main([*argv, "--step-deg", "0.7"]) == 0
    result = _json(capsys)
    assert result["tilt_max_deg"] == 59.4 and result["tilt_min_deg"] == -59.4


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--step-deg", "inf"], "need 0 < --min-angle-deg <= --max-angle-deg <= 90 and a finite --step-deg"),
        (["--step-deg", "0.001"], "--step-deg 0.001 gives 60001 candidate tilt limits between 30 and 90°"),
        (["--band", "0.3", "0.30001"], "{volume}: the frequency band 0.3-0.30001 cycles/voxel holds 0 "),
        (["--band", "0", "0.02"], "{volume}: the frequency band 0-0.02 cycles/voxel holds 0 Fourier samples"),
    ],
)
def test_estimate_wedge_impossible_search_exits_2(wedge_volume, capsys, options, expected):
    """An infinite step searched one candidate and exited 0; a band between two Fourier shells was a
    RuntimeError traceback; a step of 0.001° was refused as 'candidates not in (0, 90]' (or would need
    tens of GB for its 3.6e9 ranges)."""
    assert main(["estimate", "wedge", str(wedge_volume), *options]) == 2
    assert _one_error_line(capsys).startswith(expected.format(volume=wedge_volume))
    assert capsys.readouterr().out == ""


def test_estimate_wedge_warns_when_the_tilt_axis_is_x(tmp_path, capsys):
    """A tomogram tilted about X was reported as a confident Y-axis range (-30..30°, score 0.34,
    wedge_detected true) without a word; --try-x-axis finds -50..50° about X (score 0.99)."""
    noise = torch.randn(32, 32, 32, generator=torch.Generator().manual_seed(0))
    tilted_about_x = apply_missing_wedge(noise.transpose(-1, -2), -50, 50).transpose(-1, -2)
    path = write_volume(tmp_path / "x_axis.mrc", tilted_about_x.contiguous(), 10.0)
    expected = f"{path}: the spectrum fits tilt axis X (score 0.99) better than Y (score 0."
    with pytest.warns(TiltAxisWarning, match=re.escape(expected) + r".*; pass --try-x-axis$"):
        assert main(["estimate", "wedge", str(path)]) == 0
    assert _json(capsys)["axis"] == "y"
    assert main(["estimate", "wedge", str(path), "--try-x-axis"]) == 0
    result = _json(capsys)
    assert result["axis"] == "x" and abs(result["tilt_max_deg"] - 50) <= 3 and result["score"] > 0.9


def test_estimate_wedge_of_a_y_axis_tomogram_gives_no_axis_warning(wedge_volume, capsys, recwarn):
    assert main(["estimate", "wedge", str(wedge_volume)]) == 0
    assert not [w for w in recwarn if issubclass(w.category, TiltAxisWarning)]
    assert abs(_json(capsys)["tilt_max_deg"] - 60) <= 3


@pytest.mark.filterwarnings("ignore::aitom.io.HeaderWarning")
@pytest.mark.parametrize("cell_a", [0.0, -10.0])
def test_estimate_wedge_reports_an_unset_voxel_size_as_null(tmp_path, capsys, cell_a):
    """A header voxel size of 0 or -10 Å was printed as "voxel_size_a": 0.0 or -10.0 (estimate snr: null)."""
    data = np.random.default_rng(0).normal(size=(16, 16, 16))
    path = _raw_mrc(tmp_path / "unset.mrc", data, cell_a)
    assert main(["estimate", "wedge", str(path)]) == 0
    assert _json(capsys)["voxel_size_a"] is None


@pytest.mark.filterwarnings("ignore::aitom.io.HeaderWarning")
def test_estimate_wedge_of_anisotropic_voxels_gives_the_microscope_tilts(tmp_path, capsys):
    """Voxels of 10 × 10 × 20 Å: the wedge of tilts -45..45° lies at ±63.4° per voxel, and was reported as
    that; the angles are now those of the physical frequencies (an isotropic --voxel-size: the old ones)."""
    noise = torch.randn(32, 32, 32, generator=torch.Generator().manual_seed(6))
    index_angle = math.degrees(math.atan(2.0))  # tan 45° × 20 Å / 10 Å
    path = write_volume(
        tmp_path / "aniso.mrc", apply_missing_wedge(noise, -index_angle, index_angle), (10, 10, 20)
    )
    assert main(["estimate", "wedge", str(path), "--symmetric"]) == 0
    result = _json(capsys)
    assert abs(result["tilt_max_deg"] - 45) <= 3 and result["voxel_size_xyz_a"] == [10.0, 10.0, 20.0], result
    assert main(["estimate", "wedge", str(path), "--symmetric", "--voxel-size", "10"]) == 0
    result = _json(capsys)
    assert abs(result["tilt_max_deg"] - index_angle) <= 3 and "voxel_size_xyz_a" not in result, result


# --- aitom estimate snr -----------------------------------------------------------------------------------


def _pair_folders(tmp_path: Path, shapes_a: list[tuple[int, ...]], names_b: list[str] | None = None):
    """Folders a/ and b/ of noisy copies (SNR 1) of random signals, named 000000.mrc ... (``names_b`` in
    b/ when given), volume i of a/ of shape ``shapes_a[i]``, of b/ 16³."""
    generator = torch.Generator().manual_seed(1)
    names = [f"{index:06d}.mrc" for index in range(len(shapes_a))]
    for shape, name_a, name_b in zip(shapes_a, names, names_b or names):
        signal = torch.randn(16, 16, 16, generator=generator)
        write_volume(
            tmp_path / "a" / name_a, signal[: shape[0]] + torch.randn(shape, generator=generator), 10.0
        )
        write_volume(tmp_path / "b" / name_b, signal + torch.randn(16, 16, 16, generator=generator), 10.0)
    return tmp_path / "a", tmp_path / "b"


def test_estimate_snr_names_the_volume_whose_box_differs(tmp_path, capsys):
    """Copy 2 of a/ is 12x16x16 and its pair in b/ 16³: the message named b/000001.mrc, whose box is the
    first volume's."""
    folder_a, folder_b = _pair_folders(tmp_path, [(16, 16, 16), (12, 16, 16), (16, 16, 16)])
    assert main(["estimate", "snr", "--pairs-a", str(folder_a), "--pairs-b", str(folder_b)]) == 2
    assert _one_error_line(capsys) == (
        f"{folder_a / '000001.mrc'}: shape (12, 16, 16) (Z, Y, X voxels) differs from "
        f"{folder_a / '000000.mrc'}'s (16, 16, 16): the copies must share one box"
    )


def test_estimate_snr_refuses_folders_whose_names_match_only_in_part(tmp_path, capsys):
    """b/ lacks 000002.mrc and has 000005.mrc instead: the sorted pairing put particle 2 against particle 5,
    and the SNR was printed (exit 0)."""
    names_b = ["000000.mrc", "000001.mrc", "000005.mrc"]
    folder_a, folder_b = _pair_folders(tmp_path, [(16, 16, 16)] * 3, names_b)
    assert main(["estimate", "snr", "--pairs-a", str(folder_a), "--pairs-b", str(folder_b)]) == 2
    assert _one_error_line(capsys) == (
        f"{folder_b}: has no 000002.mrc to pair with {folder_a / '000002.mrc'}: the folders share some file "
        "names but not all, so pairing by sorted name would mix particles"
    )
    assert capsys.readouterr().out == ""


@pytest.mark.filterwarnings("ignore::aitom.io.HeaderWarning")
def test_estimate_snr_of_copies_that_share_a_negative_header_voxel_size(tmp_path, capsys):
    """Both headers say -10 Å: 'voxel size -10 Å differs from the first volume's -10 Å' (exit 2)."""
    generator = np.random.default_rng(2)
    signal = generator.normal(size=(16, 16, 16))
    copies = [signal + generator.normal(size=signal.shape) for _ in range(2)]
    paths = [_raw_mrc(tmp_path / f"{name}.mrc", copy, -10.0) for name, copy in zip("ab", copies)]
    assert main(["estimate", "snr", "--pairs-a", str(paths[0]), "--pairs-b", str(paths[1])]) == 0
    result = _json(capsys)
    cc = np.corrcoef(copies[0].astype(np.float32).ravel(), copies[1].astype(np.float32).ravel())[0, 1]
    assert result["cc_mean"] == pytest.approx(cc, abs=1e-5)
    assert result["snr"] == pytest.approx(cc / (1 - cc), rel=1e-4)
    assert result["voxel_size_a"] is None and result["shell_frequency_per_a"] is None


def test_estimate_snr_refuses_a_mask_where_a_copy_is_constant(tmp_path, capsys):
    """A mask selecting one voxel (or a zero-padded corner) gave every pair a correlation of 0 and printed
    SNR 0 with exit 0."""
    folder_a, folder_b = _pair_folders(tmp_path, [(16, 16, 16)] * 2)
    mask = torch.zeros(16, 16, 16)
    mask[8, 8, 8] = 1
    mask_path = write_volume(tmp_path / "mask.mrc", mask, 10.0)
    argv = ["estimate", "snr", "--pairs-a", str(folder_a), "--pairs-b", str(folder_b), "--bootstrap", "20"]
    assert main([*argv, "--mask", str(mask_path)]) == 2
    assert _one_error_line(capsys) == (
        f"{folder_a / '000000.mrc'}: is constant inside the mask {mask_path} (1 voxels): no correlation "
        "with its pair, no SNR"
    )
    assert capsys.readouterr().out == ""


def test_estimate_wedge_reads_only_the_central_crop(tmp_path, capsys):
    """A whole tomogram needs about 50 bytes per voxel: by default only the central 256³ crop is read and
    used; the result is the ops estimate of that crop, and voxels outside it (NaN here) are never read."""
    noise = torch.randn(40, 64, 56, generator=torch.Generator().manual_seed(2))
    data = apply_missing_wedge(noise, -50, 60).numpy()
    data[:, :4] = np.nan  # outside the central 40³ crop
    path = _raw_mrc(tmp_path / "tomogram.mrc", data, 10.0)
    assert main(["estimate", "wedge", str(path), "--crop", "40"]) == 0
    result = _json(capsys)
    expected = estimate_missing_wedge(torch.from_numpy(data[:, 12:52, 8:48]).contiguous())
    assert result["region_zyx_voxels"] == [40, 40, 40]
    assert (result["tilt_min_deg"], result["tilt_max_deg"]) == (
        expected["tilt_min_deg"],
        expected["tilt_max_deg"],
    )
    assert abs(result["tilt_min_deg"] + 50) <= 3 and abs(result["tilt_max_deg"] - 60) <= 3
    assert main(["estimate", "wedge", str(path), "--crop", "0"]) == 2
    assert "NaN or Inf voxels" in _one_error_line(capsys)
    assert main(["estimate", "wedge", str(path), "--crop", "8"]) == 2
    assert _one_error_line(capsys) == "--crop must be 0 (the whole volume) or at least 16 voxels, got 8"


def test_estimate_snr_finds_compressed_volumes_in_its_folders(tmp_path, capsys):
    """Folders of .rec.gz or .mrc.bz2 copies (which the reader reads) were reported as holding no volumes;
    their SNR is that of the plain copies."""
    import bz2
    import gzip

    folder_a, folder_b = _pair_folders(tmp_path, [(16, 16, 16)] * 3)
    assert main(["estimate", "snr", "--pairs-a", str(folder_a), "--pairs-b", str(folder_b)]) == 0
    plain = _json(capsys)
    for folder, suffix, compress in (
        (folder_a, ".rec.gz", gzip.compress),
        (folder_b, ".mrc.bz2", bz2.compress),
    ):
        packed = tmp_path / f"{folder.name}_packed"
        packed.mkdir()
        for file in folder.iterdir():
            (packed / f"{file.stem}{suffix}").write_bytes(compress(file.read_bytes()))
    options = ["--pairs-a", str(tmp_path / "a_packed"), "--pairs-b", str(tmp_path / "b_packed")]
    assert main(["estimate", "snr", *options]) == 0
    assert _json(capsys)["snr"] == plain["snr"]
