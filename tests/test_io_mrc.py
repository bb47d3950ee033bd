"""MRC reading and writing: round trips, every supported mode, compression, memory maps, stacks, bad files,
atomic writes, and the real maps of tests/data/maps checked against gemmi (an independent MRC reader)."""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import gemmi
import mrcfile
import numpy as np
import pytest
import torch

from aitom.errors import InputError
from aitom.io import (
    HeaderWarning,
    atomic_output,
    open_volume_mmap,
    read_stack,
    read_volume,
    write_volume,
)

MAPS = Path(__file__).parent / "data" / "maps"


@pytest.fixture
def volume() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(12, 16, 20)).astype(np.float32)


def write_with_mrcfile(path: Path, data: np.ndarray, voxel_size_a: float = 2.0, **kwargs) -> Path:
    """Independent writer for fixtures: mrcfile directly, no aitom code."""
    with mrcfile.new(path, overwrite=True, **kwargs) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = voxel_size_a
    return path


def test_round_trip_is_exact(tmp_path, device):
    rng = torch.Generator().manual_seed(1)
    original = torch.randn((12, 16, 20), generator=rng).to(device)
    path = write_volume(tmp_path / "volume.mrc", original, 3.7)
    volume, header = read_volume(path)
    assert volume.dtype == torch.float32 and volume.device.type == "cpu"
    assert torch.equal(volume, original.cpu())
    assert header.voxel_size_a == (3.7, 3.7, 3.7)
    assert header.shape == (12, 16, 20) and header.mode == 2
    assert header.nstart == (0, 0, 0) and header.origin_a == (0.0, 0.0, 0.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["volume.mrc"]  # no temporary file left


def test_write_sets_origin_anisotropic_voxels_and_float16(tmp_path, volume):
    path = write_volume(
        tmp_path / "half.mrc", volume, (2.0, 2.5, 3.0), origin_a=(10.0, -5.0, 1.5), dtype="float16"
    )
    with pytest.warns(HeaderWarning, match="anisotropic"):
        read, header = read_volume(path)
    assert header.mode == 12
    assert header.voxel_size_a == (2.0, 2.5, 3.0)
    assert header.origin_a == (10.0, -5.0, 1.5)
    np.testing.assert_array_equal(read.numpy(), volume.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize(
    ("mode", "dtype"),
    [(0, np.int8), (1, np.int16), (2, np.float32), (6, np.uint16), (12, np.float16)],
)
def test_every_supported_mode_reads_its_values(tmp_path, mode, dtype):
    rng = np.random.default_rng(mode)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        data = rng.integers(info.min, info.max, size=(6, 7, 8), endpoint=True).astype(dtype)
    else:
        data = (rng.normal(size=(6, 7, 8)) * 100).astype(dtype)
    path = write_with_mrcfile(tmp_path / f"mode{mode}.mrc", data)
    volume, header = read_volume(path)
    assert header.mode == mode
    assert volume.dtype == torch.float32
    np.testing.assert_array_equal(volume.numpy(), data.astype(np.float32))


@pytest.mark.parametrize(("signed_flag", "expected"), [(0, 200.0), (1, -56.0)])
def test_imod_mode0_bytes_are_unsigned_unless_flagged(tmp_path, signed_flag, expected):
    # IMOD stamps header word 39 with 1146047817 and sets bit 0 of word 40 when its bytes are signed
    path = write_with_mrcfile(tmp_path / "imod.mrc", np.full((2, 3, 4), -56, dtype=np.int8))
    with mrcfile.open(path, mode="r+") as mrc:
        extra = bytearray(bytes(mrc.header.extra2))
        extra[40:48] = np.array([1146047817, signed_flag], dtype="<i4").tobytes()
        mrc.header.extra2 = bytes(extra)
    volume, _ = read_volume(path)
    assert torch.all(volume == expected)  # byte 0xC8 is 200 unsigned, -56 signed


def test_big_endian_file(tmp_path, volume):
    path = write_with_mrcfile(tmp_path / "big.mrc", volume.astype(">f4"))
    with mrcfile.open(path) as mrc:
        assert mrc.header.mode.dtype.byteorder == ">"
    read, _ = read_volume(path)
    np.testing.assert_array_equal(read.numpy(), volume)


@pytest.mark.parametrize("compression", ["gzip", "bzip2"])
def test_compressed_files_read(tmp_path, volume, compression):
    path = write_with_mrcfile(tmp_path / "volume.map.gz", volume, compression=compression)
    read, header = read_volume(path)
    np.testing.assert_array_equal(read.numpy(), volume)
    assert header.voxel_size_a == (2.0, 2.0, 2.0)
    mapped, _ = open_volume_mmap(path)  # cannot map a compressed file: falls back to memory
    np.testing.assert_array_equal(mapped, volume)


def test_write_gzip_round_trip(tmp_path, volume):
    path = write_volume(tmp_path / "volume.mrc.gz", volume, 4.0)
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    read, _ = read_volume(path)
    np.testing.assert_array_equal(read.numpy(), volume)


def test_mmap_read_equals_normal_read(tmp_path, volume):
    path = write_volume(tmp_path / "volume.mrc", volume, 1.5)
    normal, header = read_volume(path)
    mapped, mapped_header = read_volume(path, mmap=True)
    assert torch.equal(normal, mapped) and header == mapped_header
    array, lazy_header = open_volume_mmap(path)
    assert isinstance(array, np.memmap) and not array.flags.writeable
    assert array.shape == (12, 16, 20) and lazy_header == header
    np.testing.assert_array_equal(np.asarray(array[3:5, :, 2:9]), volume[3:5, :, 2:9])


def test_stack_reads_as_images_and_is_refused_as_a_volume(tmp_path, volume):
    path = write_volume(tmp_path / "particles.mrcs", volume, 3.0)
    with mrcfile.open(path) as mrc:
        assert mrc.is_image_stack()
    stack, header = read_stack(path)
    assert stack.shape == (12, 16, 20) and header.shape == (12, 16, 20)
    np.testing.assert_array_equal(stack.numpy(), volume)
    with pytest.raises(InputError, match="image stack of 12 images"):
        read_volume(path)
    allowed, _ = read_volume(path, allow_2d=True)
    assert torch.equal(allowed, stack)


def test_volume_named_mrcs_is_a_volume(tmp_path, volume):
    path = write_with_mrcfile(tmp_path / "subtomogram.mrcs", volume)  # space group 1: a volume
    read, _ = read_volume(path)
    np.testing.assert_array_equal(read.numpy(), volume)


def test_zero_voxel_size_warns(tmp_path, volume):
    path = write_with_mrcfile(tmp_path / "unset.mrc", volume, voxel_size_a=0.0)
    with pytest.warns(HeaderWarning, match="voxel size 0 Å in header looks unset; pass --voxel-size"):
        _, header = read_volume(path)
    assert header.voxel_size_a == (0.0, 0.0, 0.0)


def test_2d_image_needs_allow_2d(tmp_path, volume):
    path = write_with_mrcfile(tmp_path / "image.mrc", volume[0])
    with pytest.raises(InputError, match=r"2-D image \(16x20\)") as error:
        read_volume(path)
    assert str(path) in str(error.value)
    image, header = read_stack(path)
    assert image.shape == (1, 16, 20) and header.shape == (1, 16, 20)
    np.testing.assert_array_equal(image[0].numpy(), volume[0])


def test_real_stack_of_float16_tilt_images(tmp_path):
    rng = np.random.default_rng(2)
    tilts = rng.normal(size=(37, 32, 32)).astype(np.float16)  # like WarpTools' mode-12 particle tilt series
    path = write_with_mrcfile(tmp_path / "particle.mrcs", tilts, 12.0)
    stack, header = read_stack(path)
    assert header.mode == 12 and stack.shape == (37, 32, 32)
    np.testing.assert_array_equal(stack.numpy(), tilts.astype(np.float32))


@pytest.mark.parametrize(
    "content",
    [
        b"rlnCoordinateX 1 2 3\nthis is a text file, not a map\n" * 30,
        b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8,
    ],
    ids=["text", "png"],
)
def test_not_an_mrc_file(tmp_path, content):
    path = tmp_path / "not_a_map.mrc"
    path.write_bytes(content)
    with pytest.raises(InputError, match="not an MRC file") as error:
        read_volume(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_short_text_file(tmp_path):
    path = tmp_path / "short.mrc"
    path.write_text("hello\n")
    with pytest.raises(InputError, match="not an MRC file"):
        read_volume(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_volume(tmp_path / "absent.mrc")
    with pytest.raises(InputError, match="folder"):
        read_volume(tmp_path)


def test_truncated_file(tmp_path, volume):
    path = write_volume(tmp_path / "volume.mrc", volume, 2.0)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(InputError, match="truncated") as error:
        read_volume(path)
    assert str(path) in str(error.value)
    with pytest.raises(InputError, match="truncated"):
        open_volume_mmap(path)


def test_truncated_gzip_file(tmp_path, volume):
    path = write_volume(tmp_path / "volume.mrc.gz", volume, 2.0)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(InputError, match="truncated"):
        read_volume(path)


def test_unsupported_mode(tmp_path):
    path = write_with_mrcfile(tmp_path / "complex.mrc", np.zeros((2, 3, 4), dtype=np.complex64))
    with pytest.raises(InputError, match="MRC mode 4 is not supported"):
        read_volume(path)


@pytest.mark.parametrize(("value", "count"), [(np.nan, 3), (np.inf, 2), (-np.inf, 1)])
def test_nan_and_inf_voxels_are_refused(tmp_path, volume, value, count):
    volume.reshape(-1)[:count] = value
    with pytest.warns(RuntimeWarning):  # mrcfile itself warns when writing them
        path = write_with_mrcfile(tmp_path / "bad.mrc", volume)
    with pytest.raises(InputError, match=f"contains {count} NaN/Inf voxels"):
        read_volume(path)
    with pytest.raises(InputError, match=f"contains {count} NaN/Inf voxels"):
        read_volume(path, mmap=True)


def test_writer_refuses_nan_and_float16_overflow(tmp_path, volume):
    volume[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="1 NaN/Inf"):
        write_volume(tmp_path / "nan.mrc", volume, 1.0)
    with pytest.raises(ValueError, match="float16"):
        write_volume(tmp_path / "big.mrc", np.full((2, 2, 2), 1e6, np.float32), 1.0, dtype="float16")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_protected(tmp_path, volume):
    path = tmp_path / "volume.mrc"
    path.write_bytes(b"precious")
    with pytest.raises(InputError, match="exists; pass --overwrite") as error:
        write_volume(path, volume, 1.0)
    assert str(path) in str(error.value)
    assert path.read_bytes() == b"precious"
    write_volume(path, volume, 2.0, overwrite=True)
    np.testing.assert_array_equal(read_volume(path)[0].numpy(), volume)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["volume.mrc"]


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "sub" / "out.mrc"
    with pytest.raises(RuntimeError, match="disk full"), atomic_output(target) as temporary:
        assert temporary.parent == target.parent and temporary.suffix == ".mrc"
        temporary.write_bytes(b"partial")
        raise RuntimeError("disk full")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_failed_overwrite_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_output(target, overwrite=True) as temporary:
        temporary.write_text("new, half")
        raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_parent_folders_are_created(tmp_path, volume):
    path = write_volume(tmp_path / "a" / "b" / "volume.mrc", volume, 1.0)
    assert path.is_file()


# ---- real maps: shapes, voxel sizes, header quirks; voxel values checked against gemmi --------------------

REAL_MAPS = {
    # file: (shape (Z, Y, X), voxel size (x, y, z) Å, nstart (x, y, z), warning expected)
    "EMD-3001.map": ((73, 25, 43), (0.44825, 0.3925, 0.45875), (-21, -12, 0), "anisotropic"),
    "EMD-3197.map": ((20, 20, 20), (11.4, 11.4, 11.4), (-2, 0, 0), None),
    "emd_1832.map.gz": ((64, 64, 64), (5.7, 5.7, 5.7), (-32, -32, -32), None),
    "human_ribo_21A.mrc": ((32, 32, 32), (20.96, 20.96, 20.96), (0, 0, 0), None),
    "emd_5592_21A.mrc": ((20, 20, 20), (1.0, 1.0, 1.0), (0, 0, 0), "looks unset; pass --voxel-size"),
    "beta-tubulin.mrc": ((20, 20, 20), (5.144, 5.144, 5.144), (0, 0, 0), None),
}


@pytest.mark.parametrize("name", sorted(REAL_MAPS))
def test_real_map(name):
    shape, voxel, nstart, warning = REAL_MAPS[name]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        volume, header = read_volume(MAPS / name)
    messages = [str(w.message) for w in caught if issubclass(w.category, HeaderWarning)]
    if warning is None:
        assert messages == []
    else:
        assert len(messages) == 1 and warning in messages[0] and name in messages[0]
    assert tuple(volume.shape) == shape == header.shape
    np.testing.assert_allclose(header.voxel_size_a, voxel, rtol=1e-6)
    assert header.nstart == nstart
    assert torch.isfinite(volume).all()


@pytest.mark.parametrize("name", sorted(set(REAL_MAPS) - {"emd_5592_21A.mrc"}))
def test_real_map_values_match_gemmi(name):
    """gemmi reorders axes by mapc/mapr/maps on its own; its (x, y, z) grid transposed is our (Z, Y, X)."""
    reference = gemmi.read_ccp4_map(str(MAPS / name))
    reference.setup(float("nan"), gemmi.MapSetup.ReorderOnly)
    expected = np.transpose(np.array(reference.grid, copy=False), (2, 1, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HeaderWarning)
        volume, _ = read_volume(MAPS / name)
    np.testing.assert_array_equal(volume.numpy(), expected)


def test_map_without_map_identifier_matches_mrcfile():
    # emd_5592_21A.mrc has no 'MAP ' string (gemmi refuses it); its axes are in the standard order
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.open(MAPS / "emd_5592_21A.mrc", permissive=True) as mrc:
            expected = np.array(mrc.data, dtype=np.float32)
        volume, _ = read_volume(MAPS / "emd_5592_21A.mrc", voxel_size_a=21.0)
    np.testing.assert_array_equal(volume.numpy(), expected)


def test_voxel_size_argument_overrides_header_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", HeaderWarning)
        _, header = read_volume(MAPS / "emd_5592_21A.mrc", voxel_size_a=21.0)
    assert header.voxel_size_a == (21.0, 21.0, 21.0)
    with pytest.raises(InputError, match="positive"):
        read_volume(MAPS / "emd_5592_21A.mrc", voxel_size_a=0.0)


def test_real_gzip_map_equals_its_decompressed_copy(tmp_path):
    plain = tmp_path / "emd_1832.map"
    plain.write_bytes(gzip.decompress((MAPS / "emd_1832.map.gz").read_bytes()))
    compressed, _ = read_volume(MAPS / "emd_1832.map.gz")
    array, header = open_volume_mmap(plain)
    assert header.nstart == (-32, -32, -32)
    np.testing.assert_array_equal(np.asarray(array), compressed.numpy())
