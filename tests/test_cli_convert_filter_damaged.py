"""``aitom convert`` on truncated TIFFs (refused in one line, not read short nor called 2-D images, with
tifffile's log lines kept off stderr) and ``aitom filter bandpass`` on cubic voxels whose float32 header
rounding (10.52 Å over 84 voxels reads back as 10.5199995 Å) must not look anisotropic."""

from __future__ import annotations

import logging
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import tifffile

from aitom.cli import main
from aitom.commands.convert import TiffReadWarning
from aitom.io import read_volume
from tests.test_cli_awkward_inputs import _one_error_line


def _volume() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, size=(12, 20, 16)).astype(np.uint8)


def _tifffile_records(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name.startswith("tifffile")]


def test_imagej_tiff_cut_in_its_pixel_data_is_reported_as_truncated(tmp_path, capsys, caplog) -> None:
    source = tmp_path / "stack.tif"
    tifffile.imwrite(source, _volume(), imagej=True, metadata={"axes": "ZYX", "unit": "nm", "spacing": 1.0})
    cut = tmp_path / "cut.tif"
    cut.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    out = tmp_path / "cut.mrc"
    with caplog.at_level(logging.DEBUG):
        assert main(["convert", str(cut), str(out), "--voxel-size", "10"]) == 2
    error = _one_error_line(capsys)
    assert str(cut) in error and "truncated" in error and "12 images" in error  # not "need a 3-D volume"
    assert _tifffile_records(caplog) == []  # tifffile's messages go into the one line, not to stderr
    assert not out.exists()


def test_multipage_tiff_cut_at_a_page_is_refused_not_read_short(tmp_path, capsys) -> None:
    source = tmp_path / "pages.tif"
    with tifffile.TiffWriter(source) as writer:
        for plane in _volume():
            writer.write(plane, contiguous=False)
    with tifffile.TiffFile(source) as tiff:
        break_at = tiff.pages[7].offset  # the file ends where page 8 should start
    cut = tmp_path / "cut.tif"
    cut.write_bytes(source.read_bytes()[:break_at])
    out = tmp_path / "cut.mrc"
    assert main(["convert", str(cut), str(out), "--voxel-size", "10"]) == 2
    error = _one_error_line(capsys)
    assert str(cut) in error and "truncated" in error and "7 page" in error
    assert not out.exists()  # before the fix: a 7-section volume, written with exit code 0
    # the whole file still converts, all 12 sections
    assert main(["convert", str(source), str(tmp_path / "whole.mrc"), "--voxel-size", "10"]) == 0
    assert read_volume(tmp_path / "whole.mrc")[0].shape == (12, 20, 16)


def test_imagej_tiff_missing_only_its_trailing_page_table_converts_with_one_warning(
    tmp_path, capsys, caplog
) -> None:
    source = tmp_path / "stack.tif"
    volume = _volume()
    tifffile.imwrite(source, volume, imagej=True, metadata={"axes": "ZYX"})
    with tifffile.TiffFile(source) as tiff:
        data_end = tiff.pages[0].dataoffsets[0] + volume.nbytes  # contiguous ImageJ data, then the IFDs
    cut = tmp_path / "cut.tif"
    cut.write_bytes(source.read_bytes()[:data_end])
    out = tmp_path / "cut.mrc"
    with caplog.at_level(logging.DEBUG), pytest.warns(TiffReadWarning) as caught:
        assert main(["convert", str(cut), str(out), "--voxel-size", "10"]) == 0
    np.testing.assert_array_equal(read_volume(out)[0].numpy(), volume.astype(np.float32))
    assert [str(warning.message).startswith(f"{cut}: ") for warning in caught] == [True]
    assert _tifffile_records(caplog) == []  # told once, as aitom's warning naming the file


@pytest.mark.parametrize("voxel_size", [10.52, 0.45])
def test_bandpass_takes_isotropic_voxels_with_float32_header_rounding(tmp_path, capsys, voxel_size) -> None:
    """84 and 43 voxels: cella / mx reads back as 10.5199995 / 0.45000002 Å along one axis only."""
    source = tmp_path / "tomogram.mrc"
    data = np.random.default_rng(1).standard_normal((44, 136, 84) if voxel_size > 1 else (20, 22, 43))
    with mrcfile.new(source) as mrc:
        mrc.set_data(data.astype(np.float32))
        mrc.voxel_size = voxel_size
    sizes = read_volume(source)[1].voxel_size_a
    assert len(set(sizes)) > 1  # the rounding this test is about
    out = tmp_path / "bandpass.mrc"
    assert main(["filter", "bandpass", str(source), str(out), "--lowpass-a", str(4 * voxel_size)]) == 0
    assert read_volume(out)[1].voxel_size_a == pytest.approx(sizes)


def test_bandpass_still_refuses_anisotropic_voxels(tmp_path, capsys) -> None:
    source = tmp_path / "anisotropic.mrc"
    with mrcfile.new(source) as mrc:
        mrc.set_data(np.random.default_rng(2).standard_normal((8, 10, 12)).astype(np.float32))
        mrc.voxel_size = (10.0, 10.0, 12.0)
    out = tmp_path / "bandpass.mrc"
    assert main(["filter", "bandpass", str(source), str(out), "--lowpass-a", "40"]) == 2
    assert "isotropic" in _one_error_line(capsys)
    assert not Path(out).exists()
