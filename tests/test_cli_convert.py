"""``aitom convert``: TIFF (ImageJ metadata with and without spacing, real microtubule crop), MRC -> MRC."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest
import tifffile

from aitom.cli import main
from aitom.io import write_volume

DATA = Path(__file__).parent / "data"


@pytest.fixture
def volume() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, size=(5, 6, 7)).astype(np.uint8)


def _imagej_tiff(path: Path, volume: np.ndarray, **metadata) -> Path:
    pixel = metadata.pop("pixel", None)
    tifffile.imwrite(
        path,
        volume,
        imagej=True,
        resolution=None if pixel is None else (1 / pixel, 1 / pixel),
        metadata={"axes": "ZYX", **metadata},
    )
    return path


def _read(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    with mrcfile.open(path) as mrc:
        voxel = mrc.voxel_size
        return mrc.data.copy(), (float(voxel.x), float(voxel.y), float(voxel.z))


def test_imagej_tiff_with_spacing_uses_its_voxel_size(tmp_path, volume, capsys) -> None:
    source = _imagej_tiff(tmp_path / "v.tif", volume, unit="nm", spacing=2.5, pixel=1.5)
    assert main(["convert", str(source), str(tmp_path / "v.mrc")]) == 0
    data, voxel = _read(tmp_path / "v.mrc")
    assert data.dtype == np.float32
    np.testing.assert_array_equal(data, volume.astype(np.float32))
    assert voxel == pytest.approx((15.0, 15.0, 25.0), rel=1e-5)  # nm -> Å, anisotropic kept
    assert "spacing 2.5" in capsys.readouterr().out


def test_explicit_voxel_size_and_invert(tmp_path, volume) -> None:
    source = _imagej_tiff(tmp_path / "v.tif", volume, unit="micron", spacing=0.001, pixel=0.001)
    out = tmp_path / "v.mrc"
    assert main(["convert", str(source), str(out), "--voxel-size", "7.5", "--invert"]) == 0
    data, voxel = _read(out)
    np.testing.assert_array_equal(data, -volume.astype(np.float32))
    assert voxel == pytest.approx((7.5, 7.5, 7.5))


def test_tiff_without_spacing_needs_a_voxel_size(tmp_path, volume, capsys) -> None:
    source = _imagej_tiff(tmp_path / "v.tif", volume, unit="nm", pixel=1.0)
    out = tmp_path / "v.mrc"
    assert main(["convert", str(source), str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--voxel-size" in error and "v.tif" in error
    assert not out.exists()
    assert main(["convert", str(source), str(out), "--voxel-size", "4"]) == 0
    assert _read(out)[1] == pytest.approx((4.0, 4.0, 4.0))


def test_plain_multipage_tiff(tmp_path, volume) -> None:
    source = tmp_path / "pages.tiff"
    with tifffile.TiffWriter(source) as writer:
        for image in volume.astype(np.float32):
            writer.write(image)
    out = tmp_path / "pages.mrc"
    assert main(["convert", str(source), str(out), "--voxel-size", "3"]) == 0
    np.testing.assert_array_equal(_read(out)[0], volume.astype(np.float32))


def test_real_microtubule_crop(tmp_path) -> None:
    """cylindra's 13-protofilament microtubule crop: ImageJ TIFF, uint8, 36×206×94, 1.052 nm voxels."""
    out = tmp_path / "mt.mrc"
    assert main(["convert", str(DATA / "13pf_MT.tif"), str(out)]) == 0
    data, voxel = _read(out)
    assert data.shape == (36, 206, 94)
    assert voxel == pytest.approx((10.52, 10.52, 10.52), rel=1e-4)
    np.testing.assert_array_equal(data, tifffile.imread(DATA / "13pf_MT.tif").astype(np.float32))


def test_mrc_to_mrc_corrects_the_voxel_size(tmp_path) -> None:
    source = write_volume(tmp_path / "in.mrc", np.arange(64, dtype=np.float32).reshape(4, 4, 4), 1.0)
    out = tmp_path / "out.mrc"
    assert main(["convert", str(source), str(out), "--voxel-size", "21"]) == 0
    data, voxel = _read(out)
    np.testing.assert_array_equal(data, np.arange(64, dtype=np.float32).reshape(4, 4, 4))
    assert voxel == pytest.approx((21.0, 21.0, 21.0))


@pytest.mark.parametrize("case", ["not_tiff", "image_2d", "zero_voxel", "negative_voxel", "exists"])
def test_bad_input_is_one_line_and_exit_2(tmp_path, volume, case, capsys) -> None:
    out = tmp_path / "out.mrc"
    source = _imagej_tiff(tmp_path / "v.tif", volume, unit="nm", spacing=1.0, pixel=1.0)
    extra: list[str] = []
    if case == "not_tiff":
        source = tmp_path / "text.tif"
        source.write_text("not a tiff\n")
    elif case == "image_2d":
        source = tmp_path / "image.tif"
        tifffile.imwrite(source, volume[0])
    elif case == "zero_voxel":
        extra = ["--voxel-size", "0"]
    elif case == "negative_voxel":
        extra = ["--voxel-size=-2"]
    else:
        out.write_bytes(b"keep")
    assert main(["convert", str(source), str(out), *extra]) == 2
    error = capsys.readouterr().err
    assert error.startswith("aitom: error:") and error.count("\n") == 1
    if case == "exists":
        assert out.read_bytes() == b"keep"
        assert main(["convert", str(source), str(out), "--overwrite"]) == 0
    else:
        assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_mrc_to_mrc_keeps_the_position_of_a_map_placed_by_nstart(tmp_path) -> None:
    """The real EMDB map emd_1832 (nstart -32, origin 0): its grid stays at -32 voxels × 5.7 Å."""
    out = tmp_path / "out.mrc"
    assert main(["convert", str(DATA / "maps" / "emd_1832.map.gz"), str(out)]) == 0
    with mrcfile.open(out) as mrc:
        origin = (float(mrc.header.origin.x), float(mrc.header.origin.y), float(mrc.header.origin.z))
        nstart = (int(mrc.header.nxstart), int(mrc.header.nystart), int(mrc.header.nzstart))
    assert nstart == (0, 0, 0)
    assert origin == pytest.approx((-32 * 5.7, -32 * 5.7, -32 * 5.7), rel=1e-5)


def _centroid_a(path: Path) -> np.ndarray:
    """Intensity-weighted centre (x, y, z), Å, of an MRC map placed by its header origin."""
    with mrcfile.open(path) as mrc:
        data = mrc.data.astype(np.float64)
        voxel = np.array([float(mrc.voxel_size.x), float(mrc.voxel_size.y), float(mrc.voxel_size.z)])
        origin = np.array(
            [float(mrc.header.origin.x), float(mrc.header.origin.y), float(mrc.header.origin.z)]
        )
    zyx = np.array(np.nonzero(np.ones_like(data))).reshape(3, *data.shape)
    weights = np.clip(data, 0, None)
    centre_zyx = (zyx * weights).sum(axis=(1, 2, 3)) / weights.sum()
    return origin + centre_zyx[::-1] * voxel


def test_resample_makes_anisotropic_voxels_cubic_and_keeps_the_map_in_place(tmp_path, capsys) -> None:
    """10 x 10 x 20 Å voxels with an origin -> 10 Å cubic: Z doubles, a Gaussian blob keeps its position in
    Å (within 0.5 Å), the new Z samples hit its peak (1.0, between two old samples: 0.96), and no anisotropy
    warning is printed for a volume being fixed."""
    shape = (24, 32, 30)
    voxel = (10.0, 10.0, 20.0)
    z, y, x = np.meshgrid(*[np.arange(n) * v for n, v in zip(shape, voxel[::-1])], indexing="ij")
    blob = np.exp(-((x - 130.0) ** 2 + (y - 170.0) ** 2 + (z - 250.0) ** 2) / (2 * 35.0**2)).astype(
        np.float32
    )
    source = tmp_path / "aniso.mrc"
    write_volume(source, blob, voxel, origin_a=(-100.0, 50.0, 300.0))
    out = tmp_path / "cubic.mrc"
    assert main(["convert", str(source), str(out), "--resample", "10"]) == 0
    captured = capsys.readouterr()
    assert "anisotropic" not in captured.err
    data, written_voxel = _read(out)
    assert data.shape == (48, 32, 30)
    assert written_voxel == pytest.approx((10.0, 10.0, 10.0))
    np.testing.assert_allclose(_centroid_a(out), _centroid_a(source), atol=0.5)
    assert blob.max() < 0.97 and data.max() == pytest.approx(1.0, abs=0.01)
    binned = tmp_path / "bin2.mrc"
    assert main(["convert", str(out), str(binned), "--resample", "20"]) == 0
    assert _read(binned)[0].shape == (24, 16, 15)
    np.testing.assert_allclose(_centroid_a(binned), _centroid_a(source), atol=0.5)


@pytest.mark.parametrize("value", ["0", "nan", "1e6"])
def test_impossible_resample_is_one_line_and_exit_2(tmp_path, value, capsys) -> None:
    source = tmp_path / "v.mrc"
    write_volume(source, np.ones((8, 8, 8), dtype=np.float32), 10.0)
    out = tmp_path / "out.mrc"
    assert main(["convert", str(source), str(out), f"--resample={value}"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("aitom: error:") and error.count("\n") == 1 and "--resample" in error
    assert not out.exists()


def test_summary_states_tiny_and_anisotropic_voxel_sizes(tmp_path, volume, capsys) -> None:
    """The summary rounded voxel sizes to 4 decimals: 1e-9 Å was printed as 0.0 Å, which the same command
    refuses as "no voxel size"."""
    source = write_volume(tmp_path / "v.mrc", volume.astype(np.float32), (0.45678, 0.39251, 12.0))
    assert main(["convert", str(source), str(tmp_path / "tiny.mrc"), "--voxel-size", "1e-9"]) == 0
    assert "voxel size (1e-09, 1e-09, 1e-09) Å (x, y, z) [--voxel-size;" in capsys.readouterr().out
    assert main(["convert", str(source), str(tmp_path / "as_read.mrc")]) == 0
    summary = capsys.readouterr().out
    assert "anisotropic voxels (0.45678, 0.39251, 12) Å kept as read" in summary
    assert "voxel size (0.45678, 0.39251, 12) Å (x, y, z) [from the file;" in summary


def test_integers_beyond_float32_precision_are_reported(tmp_path, capsys) -> None:
    """A 32-bit integer TIFF above 2^24 loses its last digits in float32 MRC; the summary says so, and the
    stored values are the nearest float32 (np.float32 as reference)."""
    volume = np.full((6, 7, 8), 2**24 + 1, dtype=np.int32)
    volume[0, 0, 0] = -(2**30) - 3
    tifffile.imwrite(tmp_path / "big.tif", volume, photometric="minisblack")  # ImageJ TIFF: no int32
    assert main(["convert", str(tmp_path / "big.tif"), str(tmp_path / "big.mrc"), "--voxel-size", "10"]) == 0
    said = capsys.readouterr().out
    assert (
        f"int32 values of magnitude up to {2**30 + 3} are stored as float32, exact only up to 16777216 (2^24)"
        in said
    )
    data, _ = _read(tmp_path / "big.mrc")
    np.testing.assert_array_equal(data, volume.astype(np.float32))
    tifffile.imwrite(tmp_path / "small.tif", volume // 128, photometric="minisblack")
    assert (
        main(["convert", str(tmp_path / "small.tif"), str(tmp_path / "small.mrc"), "--voxel-size", "10"]) == 0
    )
    assert "exact only up to" not in capsys.readouterr().out
