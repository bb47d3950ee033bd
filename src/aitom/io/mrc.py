"""MRC volumes and image stacks: read (modes 0, 1, 2, 6, 12; plain, gzip or bzip2), memory-map, write.

Volumes come back as float32 tensors ``(Z, Y, X)`` whatever the file's axis order (``mapc/mapr/maps``):
the stored array is transposed so that the last axis is X, and the header's ``nstart`` is reported in
``(x, y, z)`` order too. Voxel sizes are in Å, ``(x, y, z)``.

Anything wrong with a file (missing, not an MRC (a TIFF is told so), truncated, unsupported mode, NaN/Inf
voxels, a 2-D image where a volume is needed) raises :class:`aitom.errors.InputError` with one line naming
the file. Harmless header quirks of real files (voxel size left at 0 or 1 Å, anisotropic voxels) give a
:class:`HeaderWarning`.
"""

from __future__ import annotations

import bz2
import gzip
import math
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import mrcfile.utils
import numpy as np
import torch

from aitom.errors import InputError
from aitom.io.atomic import atomic_output

#: MRC mode -> numpy dtype of the stored voxels (modes 3, 4 and 101 are complex or packed: not supported)
SUPPORTED_MODES: dict[int, str] = {0: "int8", 1: "int16", 2: "float32", 6: "uint16", 12: "float16"}
#: suffixes of image-stack files (N, Y, X) (when the header's space group is 0), read with :func:`read_stack`
STACK_SUFFIXES = (".mrcs",)
HEADER_BYTES = 1024
_KNOWN_MODES = {0, 1, 2, 3, 4, 6, 12, 101}
_IMOD_STAMP = 1146047817  # "IMOD" in header word 39; word 40 holds flags, bit 0 = bytes are signed
#: first four bytes of a TIFF (little- and big-endian) or BigTIFF file
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_WRITE_DTYPES = {
    "float32": np.float32,
    "float16": np.float16,
    torch.float32: np.float32,
    torch.float16: np.float16,
}
#: relative difference of the voxel sizes along x, y, z still taken as cubic: float32 headers store the cell,
#: not the voxel size, so 10.52 Å over 84 voxels reads back as 10.5199995 Å
_ANISOTROPY_TOLERANCE = 1e-3


def voxels_are_cubic(voxel_size_a: tuple[float, float, float]) -> bool:
    """Whether voxel sizes ``(x, y, z)`` (Å, all > 0) agree within the header's float32 rounding."""
    return max(voxel_size_a) / min(voxel_size_a) - 1 <= _ANISOTROPY_TOLERANCE


class HeaderWarning(UserWarning):
    """A header value that looks wrong but does not stop the read (unset or anisotropic voxel size)."""


@dataclass(frozen=True)
class VolumeHeader:
    """What aitom keeps from an MRC header.

    Attributes:
        voxel_size_a: voxel size along (x, y, z), Å (the ``voxel_size_a`` argument of a read replaces it).
        origin_a: header ``origin`` (x, y, z), Å.
        nstart: index of the first voxel along (x, y, z) (``nxstart``... reordered by ``mapc/mapr/maps``).
        mode: MRC mode of the stored voxels (0 int8, 1 int16, 2 float32, 6 uint16, 12 float16).
        shape: shape of the array as returned: ``(Z, Y, X)``, ``(N, Y, X)`` or ``(N, Z, Y, X)``.
    """

    voxel_size_a: tuple[float, float, float]
    origin_a: tuple[float, float, float]
    nstart: tuple[int, int, int]
    mode: int
    shape: tuple[int, ...]

    @property
    def grid_origin_a(self) -> tuple[float, float, float]:
        """Position (x, y, z), Å, of the first voxel as viewers (ChimeraX, Mol*) place it: ``origin_a`` when
        it is non-zero, else ``nstart × voxel_size_a``. An output written with this origin (and ``nstart`` 0,
        as :func:`write_volume` writes) lies where this volume lies."""
        if any(value != 0.0 for value in self.origin_a):
            return tuple(float(value) for value in self.origin_a)
        return tuple(float(start * size) for start, size in zip(self.nstart, self.voxel_size_a))


@dataclass(frozen=True)
class _Layout:
    """Where and how the voxels of one file are stored."""

    path: Path
    header: VolumeHeader
    dtype: np.dtype
    stored_shape: tuple[int, ...]  # (sections, rows, columns), after a volume-stack axis if there is one
    axis_order: tuple[int, ...]  # transpose turning the stored array into (..., Z, Y, X)
    data_offset: int
    compression: str | None  # None, "gzip" or "bzip2"
    is_stack_file: bool

    @property
    def nbytes(self) -> int:
        return math.prod(self.stored_shape) * self.dtype.itemsize


class ImageStackError(InputError):
    """A 2-D image or a stack of 2-D images (``.mrcs``: particle tilt series, tilt series) where a 3-D
    volume is needed."""


def read_volume(
    path: str | Path,
    *,
    mmap: bool = False,
    voxel_size_a: float | None = None,
    allow_2d: bool = False,
) -> tuple[torch.Tensor, VolumeHeader]:
    """Read a volume as a float32 tensor ``(Z, Y, X)`` and its header.

    Args:
        path: ``.mrc``, ``.map``, ``.rec``, ``.st``, ``.mrcs`` ..., optionally gzip- or bzip2-compressed.
        mmap: read through a memory map (no intermediate copy of the stored data; ignored for compressed
            files). The result is the same as a normal read.
        voxel_size_a: voxel size (Å) to use instead of the header's (no voxel-size warning then).
        allow_2d: also accept a single image (returned as ``(1, Y, X)``), an image stack ``(N, Y, X)``
            (``.mrcs``) or a stack of volumes ``(N, Z, Y, X)``.

    Returns:
        ``(volume, header)``; ``header.shape == tuple(volume.shape)``.

    Raises:
        InputError: missing file, not an MRC file, truncated data, unsupported mode, NaN/Inf voxels,
            or a 2-D image / stack when ``allow_2d`` is false.

    Warns:
        HeaderWarning: voxel size 0 or 1 Å in the header (looks unset), or anisotropic voxels.
    """
    layout = _inspect(path, voxel_size_a)
    if not allow_2d:
        _require_single_volume(layout)
    stored = _memory_map(layout) if mmap and layout.compression is None else _read_stored(layout)
    array = np.ascontiguousarray(np.transpose(stored, layout.axis_order), dtype=np.float32)
    if not array.flags.writeable:
        array = array.copy()
    if layout.header.mode in (2, 12):
        bad = array.size - int(np.count_nonzero(np.isfinite(array)))
        if bad:
            raise InputError(f"contains {bad} NaN/Inf voxels", layout.path)
    return torch.from_numpy(array), layout.header


def read_stack(path: str | Path, *, voxel_size_a: float | None = None) -> tuple[torch.Tensor, VolumeHeader]:
    """Read an image stack (RELION ``.mrcs`` particles, a tilt series) as a float32 tensor ``(N, Y, X)``.

    A single image gives ``N = 1``; a 3-D volume is read as its stack of Z sections.

    Raises:
        InputError: as :func:`read_volume`, or the file holds a stack of volumes (4-D).
    """
    stack, header = read_volume(path, voxel_size_a=voxel_size_a, allow_2d=True)
    if stack.ndim != 3:
        raise InputError(f"holds a stack of {stack.shape[0]} volumes, not a stack of images", path)
    return stack, header


def open_volume_mmap(
    path: str | Path, *, allow_2d: bool = False, voxel_size_a: float | None = None
) -> tuple[np.ndarray, VolumeHeader]:
    """Memory-map a volume for tiled reading: an array ``(Z, Y, X)`` in the file's dtype, and the header.

    Nothing is read until the array is indexed (``np.asarray(array[z0:z1], dtype=np.float32)`` reads one
    slab). The array is read-only and may be a non-contiguous view when the file's axis order is not
    X, Y, Z. NaN/Inf voxels are not checked here (that would read the whole file): check each tile.
    Compressed files cannot be memory-mapped; they are decompressed into memory instead.
    ``voxel_size_a`` (Å) replaces the header's, as in :func:`read_volume`.

    Raises:
        InputError: as :func:`read_volume` (except the NaN/Inf check).
    """
    layout = _inspect(path, voxel_size_a)
    if not allow_2d:
        _require_single_volume(layout)
    stored = _memory_map(layout) if layout.compression is None else _read_stored(layout)
    return np.transpose(stored, layout.axis_order), layout.header


def central_crop(shape: Sequence[int], size: int) -> tuple[slice, ...]:
    """Slices of the central crop of at most ``size`` voxels per axis of an array of ``shape`` (the whole
    axis where it is shorter), e.g. to read the middle of a memory-mapped tomogram."""
    return tuple(slice((n - min(n, size)) // 2, (n - min(n, size)) // 2 + min(n, size)) for n in shape)


def write_volume(
    path: str | Path,
    volume: torch.Tensor | np.ndarray,
    voxel_size_a: float | Sequence[float],
    *,
    overwrite: bool = False,
    origin_a: Sequence[float] | None = None,
    dtype: str | torch.dtype = "float32",
) -> Path:
    """Write a volume ``(Z, Y, X)``, an image stack ``(N, Y, X)`` or an image ``(Y, X)`` as an MRC file.

    The file is written atomically (temporary file + rename) and parent folders are created. A path ending
    in ``.mrcs`` is marked as an image stack (space group 0), anything else as a volume (space group 1); a
    path ending in ``.gz`` is gzip-compressed.

    Args:
        path: output file.
        volume: tensor or array, any real dtype (converted).
        voxel_size_a: voxel size in Å, one value or (x, y, z).
        overwrite: replace an existing file.
        origin_a: header origin (x, y, z), Å.
        dtype: ``"float32"`` (MRC mode 2) or ``"float16"`` (mode 12); torch dtypes are accepted too.

    Returns:
        The path written.

    Raises:
        InputError: the file exists and ``overwrite`` is false, or the voxel size is not positive.
        ValueError: wrong number of dimensions, unsupported dtype, or NaN/Inf values (including float16
            overflow beyond ±65504).
    """
    if dtype not in _WRITE_DTYPES:
        raise ValueError(f"dtype must be float32 or float16, got {dtype}")
    array = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
    if array.ndim not in (2, 3):
        raise ValueError(f"expected a (Z, Y, X) volume, (N, Y, X) stack or (Y, X) image, got {array.shape}")
    with np.errstate(over="ignore", invalid="ignore"):  # overflow to float16 inf is reported just below
        data = np.ascontiguousarray(array, dtype=_WRITE_DTYPES[dtype])
    bad = data.size - int(np.count_nonzero(np.isfinite(data)))
    if bad:
        raise ValueError(f"refusing to write {bad} NaN/Inf voxels (as {data.dtype.name}) to {path}")
    voxel = _voxel_triplet(voxel_size_a)
    path = Path(path)
    with atomic_output(path, overwrite) as temporary:
        compression = "gzip" if path.suffix == ".gz" else None
        with mrcfile.new(temporary, overwrite=True, compression=compression) as mrc:
            mrc.set_data(data)
            if data.ndim == 3:
                if _without_compression_suffix(path).suffix in STACK_SUFFIXES:
                    mrc.set_image_stack()
                else:
                    mrc.set_volume()
            mrc.voxel_size = voxel
            if origin_a is not None:
                mrc.header.origin = tuple(float(value) for value in origin_a)
    return path


def _voxel_triplet(voxel_size_a: float | Sequence[float]) -> tuple[float, float, float]:
    values = (voxel_size_a,) * 3 if np.ndim(voxel_size_a) == 0 else tuple(voxel_size_a)
    if len(values) != 3 or not all(math.isfinite(float(v)) and float(v) > 0 for v in values):
        raise InputError(f"voxel size must be one positive number or three (x, y, z), got {voxel_size_a}")
    return (float(values[0]), float(values[1]), float(values[2]))


def _without_compression_suffix(path: Path) -> Path:
    return path.with_suffix("") if path.suffix in (".gz", ".bz2") else path


def _inspect(path: str | Path, voxel_size_a: float | None) -> _Layout:
    """Read and check the header, the file length and the voxel size; warn about header quirks."""
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path)
    if path.is_dir():
        raise InputError("is a folder, not an MRC file", path)
    with path.open("rb") as stream:
        start = stream.read(212)
    if start[:4] in _TIFF_MAGIC:
        raise InputError(
            "is a TIFF file, not an MRC file: convert it first (aitom convert IN.tif OUT.mrc --voxel-size Å)",
            path,
        )
    compression = None
    if start[208:212] != b"MAP ":
        compression = {b"\x1f\x8b": "gzip", b"BZ": "bzip2"}.get(start[:2])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # permissive mode warns about what the checks below report
            with mrcfile.open(path, permissive=True, header_only=True) as mrc:
                header = mrc.header.copy()
    except (ValueError, OSError, EOFError, zlib.error) as error:
        raise InputError(f"not an MRC file ({error})", path) from error

    mode = int(header.mode)
    nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
    axes = (int(header.mapc), int(header.mapr), int(header.maps))
    nsymbt = int(header.nsymbt)
    plausible = min(nx, ny, nz) >= 1 and sorted(axes) == [1, 2, 3] and nsymbt >= 0
    if not plausible or (bytes(header.map) != b"MAP " and mode not in _KNOWN_MODES):
        raise InputError(
            f"not an MRC file (header reads nx, ny, nz = {nx}, {ny}, {nz}, mode {mode}, axis order {axes})",
            path,
        )
    if mode not in SUPPORTED_MODES:
        raise InputError(f"MRC mode {mode} is not supported (supported: 0, 1, 2, 6, 12)", path)
    dtype = np.dtype(SUPPORTED_MODES[mode]).newbyteorder(header.mode.dtype.byteorder)
    if mode == 0 and _imod_unsigned_bytes(header):
        dtype = np.dtype(np.uint8)
    try:
        stored_shape = tuple(int(n) for n in mrcfile.utils.data_shape_from_header(header))
    except ZeroDivisionError as error:
        raise InputError(f"invalid volume-stack header (mz = {int(header.mz)})", path) from error
    if len(stored_shape) == 2:
        stored_shape = (1, *stored_shape)

    # stored axes (sections, rows, columns) carry the labels (maps, mapr, mapc); 1 = X, 2 = Y, 3 = Z
    labels = (axes[2], axes[1], axes[0])
    lead = len(stored_shape) - 3
    axis_order = tuple(range(lead)) + tuple(lead + labels.index(axis) for axis in (3, 2, 1))
    shape = tuple(stored_shape[i] for i in axis_order)
    nstart = [0, 0, 0]
    for label, start_index in zip(axes, (header.nxstart, header.nystart, header.nzstart)):
        nstart[label - 1] = int(start_index)
    cell = (header.cella.x, header.cella.y, header.cella.z)
    sampling = (int(header.mx), int(header.my), int(header.mz))
    header_voxel = tuple(_float32_value(c / np.float32(m)) if m > 0 else 0.0 for c, m in zip(cell, sampling))
    voxel = header_voxel if voxel_size_a is None else _voxel_triplet(voxel_size_a)
    layout = _Layout(
        path=path,
        header=VolumeHeader(
            voxel_size_a=(float(voxel[0]), float(voxel[1]), float(voxel[2])),
            origin_a=tuple(_float32_value(header.origin[axis]) for axis in "xyz"),
            nstart=(nstart[0], nstart[1], nstart[2]),
            mode=mode,
            shape=shape,
        ),
        dtype=dtype,
        stored_shape=stored_shape,
        axis_order=axis_order,
        data_offset=HEADER_BYTES + nsymbt,
        compression=compression,
        is_stack_file=_without_compression_suffix(path).suffix in STACK_SUFFIXES and int(header.ispg) == 0,
    )
    if compression is None:
        size = path.stat().st_size
        if size < layout.data_offset + layout.nbytes:
            raise InputError(
                f"truncated: the header describes {layout.data_offset + layout.nbytes} bytes "
                f"({'x'.join(map(str, shape))} voxels, mode {mode}), the file has {size}",
                path,
            )
    if voxel_size_a is None:
        _warn_about_voxel_size(path, layout.header.voxel_size_a)
    return layout


def _float32_value(value: np.floating) -> float:
    """A float32 header value as the shortest decimal that reads back to it (5.144, not 5.1439998...)."""
    return float(str(np.float32(value)))


def _imod_unsigned_bytes(header: np.recarray) -> bool:
    """IMOD marks mode-0 files in header words 39/40; without the 'signed' flag its bytes are unsigned."""
    words = np.frombuffer(bytes(header.extra2)[40:48], dtype=header.mode.dtype)
    return int(words[0]) == _IMOD_STAMP and not int(words[1]) & 1


def _warn_about_voxel_size(path: Path, voxel: tuple[float, float, float]) -> None:
    if min(voxel) <= 0 or all(v == 1.0 for v in voxel):
        shown = f"{voxel[0]:g}" if len(set(voxel)) == 1 else ", ".join(f"{v:g}" for v in voxel)
        warnings.warn(
            f"{path}: voxel size {shown} Å in header looks unset; pass --voxel-size",
            HeaderWarning,
            stacklevel=4,
        )
    elif not voxels_are_cubic(voxel):
        warnings.warn(
            f"{path}: anisotropic voxels ({', '.join(f'{v:g}' for v in voxel)} Å along x, y, z); "
            "aitom's methods assume cubic voxels (make them cubic with aitom convert IN OUT --resample Å, or "
            "pass --voxel-size if the header is wrong)",
            HeaderWarning,
            stacklevel=4,
        )


def _require_single_volume(layout: _Layout) -> None:
    shape = layout.header.shape
    if len(shape) == 4:
        raise InputError(f"holds a stack of {shape[0]} volumes; a single volume is needed", layout.path)
    if layout.is_stack_file:
        raise ImageStackError(f"is an image stack of {shape[0]} images; a 3-D volume is needed", layout.path)
    if shape[0] == 1:
        raise ImageStackError(f"is a 2-D image ({shape[1]}x{shape[2]}); a 3-D volume is needed", layout.path)


def _memory_map(layout: _Layout) -> np.ndarray:
    return np.memmap(
        layout.path, dtype=layout.dtype, mode="r", offset=layout.data_offset, shape=layout.stored_shape
    )


def _read_stored(layout: _Layout) -> np.ndarray:
    """The stored voxels (file dtype, stored axis order) read into memory."""
    count = math.prod(layout.stored_shape)
    if layout.compression is None:
        data = np.fromfile(layout.path, dtype=layout.dtype, count=count, offset=layout.data_offset)
        return data.reshape(layout.stored_shape)
    opener = gzip.open if layout.compression == "gzip" else bz2.open
    buffer = bytearray(layout.nbytes)
    try:
        with opener(layout.path, "rb") as stream:
            stream.seek(layout.data_offset)
            read = stream.readinto(buffer)
    except (OSError, EOFError, zlib.error) as error:
        raise InputError(f"compressed data is truncated or corrupt ({error})", layout.path) from error
    if read < layout.nbytes:
        raise InputError(
            f"truncated: the header describes {layout.nbytes} data bytes, the file holds {read}", layout.path
        )
    return np.frombuffer(buffer, dtype=layout.dtype, count=count).reshape(layout.stored_shape)
