"""``aitom convert IN OUT.mrc [--voxel-size Å] [--resample Å] [--invert] [--overwrite]``: TIFF or MRC -> MRC.

TIFF input (tifffile): a multi-page TIFF (pages of one size) or one 3-D page, read as ``(Z, Y, X)``; colour
(RGB) TIFFs are refused. The voxel size comes from ``--voxel-size`` when given; otherwise from the TIFF when
it carries a complete one: an ImageJ TIFF with a length ``unit`` (Å, nm, µm, mm), the ``XResolution`` /
``YResolution`` tags (pixels per unit) and the ``spacing`` entry (Z step, in the unit). Without ``spacing``
or unit the TIFF carries no Z step and ``--voxel-size`` is required. MRC input (``.mrc``, ``.map``, ``.rec``,
``.mrcs`` ..., optionally ``.gz``): re-written as float32 with the header voxel size, or ``--voxel-size`` to
correct it. ``--resample`` resamples to cubic voxels of the size given (binning, or anisotropic voxels made
cubic; :func:`aitom.geometry.resample_to_cubic_voxels`), the volume's centre and extent kept.
"""

from __future__ import annotations

import argparse
import math
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

#: length units ImageJ writes in its ``unit`` entry -> Å
_UNIT_TO_A = {
    "a": 1.0,
    "å": 1.0,
    "angstrom": 1.0,
    "ångström": 1.0,
    "nm": 10.0,
    "nanometer": 10.0,
    "nanometre": 10.0,
    "um": 1e4,
    "µm": 1e4,
    "μm": 1e4,
    "micron": 1e4,
    "microns": 1e4,
    "micrometer": 1e4,
    "micrometre": 1e4,
    "mm": 1e7,
}
_TIFF_SUFFIXES = (".tif", ".tiff")
#: bytes per output voxel that ``--resample`` holds at its peak (about four float32 copies: the result, the
#: slabs it is concatenated from, the axis resampled before it, the array written; measured 12.5)
_RESAMPLE_BYTES_PER_VOXEL = 16
#: float32 holds every integer up to 2^24 exactly
_FLOAT32_EXACT_INTEGERS = 2**24


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="TIFF (or MRC) volume -> float32 MRC with a voxel size",
        description="Convert a 3-D TIFF (multi-page or one 3-D page, e.g. from ImageJ / Fiji) or an MRC "
        "volume to a float32 MRC file. The voxel size is taken from --voxel-size, else from the TIFF's "
        "ImageJ metadata (unit, X/Y resolution and Z spacing) or the MRC header; the command prints what it "
        "read and what it used.",
    )
    parser.add_argument("input", type=Path, help="input volume: .tif/.tiff or MRC (.mrc/.map/.rec, .gz)")
    parser.add_argument("output", type=Path, help="output MRC file (float32)")
    parser.add_argument(
        "--voxel-size",
        type=float,
        default=None,
        help="voxel size in Å (required for a TIFF without ImageJ unit/resolution/spacing; overrides the "
        "file's value otherwise)",
    )
    parser.add_argument(
        "--resample",
        type=float,
        default=None,
        metavar="Å",
        help="resample to cubic voxels of this size, Å (e.g. twice the voxel size to bin by 2, or the x size "
        "to make anisotropic voxels cubic); low-passed to the new Nyquist first when coarser, cubic "
        "interpolation, the centre and extent kept",
    )
    parser.add_argument(
        "--invert", action="store_true", help="multiply the values by -1 (protein dark <-> protein bright)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def read_tiff_volume(path: Path) -> tuple[object, tuple[float, float, float] | None, str]:
    """Read a 3-D TIFF as a ``(Z, Y, X)`` NumPy array and the voxel size it carries.

    Returns:
        ``(array, voxel_size_xyz_a or None, description of what was read)``.

    Raises:
        InputError: not a readable TIFF, or not a single 3-D volume.
    """
    import numpy as np
    import tifffile

    from aitom.errors import InputError

    if not path.is_file():
        raise InputError("no such file", path)
    try:
        with _tifffile_messages() as messages, tifffile.TiffFile(path) as tiff:
            series = tiff.series[0]
            axes = series.axes
            if len(series.shape) == 2 and len(tiff.pages) > 1:  # pages written one by one, each a series
                _check_page_sizes(tiff, path)
                array = np.asarray(tiff.asarray(key=range(len(tiff.pages))))
                axes = "I" + axes
            else:
                array = np.asarray(series.asarray())
            metadata = tiff.imagej_metadata or {}
            page, page_count = tiff.pages[0], len(tiff.pages)
            resolution = [
                page.tags[name].value for name in ("XResolution", "YResolution") if name in page.tags
            ]
    except InputError:
        raise
    except (tifffile.TiffFileError, OSError, ValueError, IndexError) as error:
        raise InputError(f"not a readable TIFF file ({error})", path) from None
    images = metadata.get("images")
    planes = math.prod(n for n, axis in zip(array.shape, axes) if axis not in "YXS")
    if isinstance(images, int) and planes < images:  # a truncated ImageJ stack reads as its first page
        raise InputError(
            f"is truncated or corrupt: its ImageJ metadata describes {images} images, {planes} could be read"
            + (f" (tifffile: {messages[0]})" if messages else ""),
            path,
        )
    broken = next((message for message in messages if "invalid page offset" in message), None)
    if broken is not None and not (isinstance(images, int) and planes == images):
        # the pages after the break are lost: the volume read would be short in Z
        raise InputError(
            f"is truncated or corrupt: its chain of pages breaks after {page_count} page(s) "
            f"(tifffile: {broken})",
            path,
        )
    if messages and np.squeeze(array).ndim != 3:
        raise InputError(f"is truncated or corrupt (tifffile: {messages[0]})", path)
    samples = array.shape[axes.index("S")] if "S" in axes else 1
    if samples > 1:
        raise InputError(
            f"is a colour image ({samples} samples per pixel, axes {axes}), not a greyscale volume: "
            "save it as a greyscale stack (e.g. Fiji: Image > Type > 32-bit)",
            path,
        )
    stored_shape = array.shape
    array = np.squeeze(array)
    if array.ndim != 3:
        raise InputError(
            f"need a 3-D volume (a multi-page TIFF or one 3-D page), got an array of shape {stored_shape} "
            f"(axes {axes})",
            path,
        )
    if not np.issubdtype(array.dtype, np.integer) and not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"unsupported pixel type {array.dtype}", path)
    for message in messages:  # read nonetheless: one line each, naming the file
        warnings.warn(TiffReadWarning(f"{path}: {message}"), stacklevel=2)
    # ImageJ writes non-ASCII units as escapes: "\\u00B5m" (µm), "\\u00C5" (Å)
    unit = re.sub(r"\\u([0-9a-fA-F]{4})", lambda code: chr(int(code[1], 16)), str(metadata.get("unit", "")))
    unit = unit.strip().lower()
    spacing = metadata.get("spacing")
    found = []
    if unit:
        found.append(f"unit {unit!r}")
    if spacing is not None:
        found.append(f"spacing {spacing}")
    if len(resolution) == 2:
        found.append(f"X/Y resolution {[round(n / d, 6) if d else 0 for n, d in resolution]} px/unit")
    description = ", ".join(found) if found else "no voxel size"
    scale = _UNIT_TO_A.get(unit)
    if (
        scale is None
        or not isinstance(spacing, int | float)
        or len(resolution) != 2
        or any(n <= 0 or d <= 0 for n, d in resolution)
    ):
        return array, None, description
    size_x, size_y = (scale * d / n for n, d in resolution)
    return array, (size_x, size_y, scale * float(spacing)), description


class TiffReadWarning(UserWarning):
    """Something tifffile reported about a TIFF it read nonetheless (a damaged page table, metadata)."""


@contextmanager
def _tifffile_messages() -> Iterator[list[str]]:
    """Collect what tifffile logs (damaged files: "invalid page offset ...") instead of letting it reach
    stderr as extra lines; the caller turns it into its one-line error or warning."""
    import logging

    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(re.sub(r"^<[^>]*>\s*", "", record.getMessage()))  # "<TiffPages @8> ..."

    logger = logging.getLogger("tifffile")
    handler, propagate = _Collect(level=logging.WARNING), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _check_page_sizes(tiff, path: Path) -> None:
    """Refuse a multi-page TIFF whose pages differ in size or samples per pixel: not one volume."""
    from aitom.errors import InputError

    first = tiff.pages[0].shape
    for number, page in enumerate(tiff.pages, start=1):
        if page.shape != first:
            raise InputError(
                f"its pages differ in size (page 1 is {'x'.join(map(str, first))} pixels, page {number} "
                f"{'x'.join(map(str, page.shape))}): not the sections of one volume",
                path,
            )


def run(args: argparse.Namespace) -> int:
    import math
    import warnings
    from dataclasses import replace

    import numpy as np

    from aitom.commands.shared import check_volume_output, warnings_dropped_on_refusal
    from aitom.errors import InputError
    from aitom.io import HeaderWarning, physical_memory_bytes, read_volume, write_volume

    for option in ("voxel_size", "resample"):
        value = getattr(args, option)
        if value is not None and not 0 < value < math.inf:
            raise InputError(f"--{option.replace('_', '-')} must be a positive number of Å, got {value}")
    check_volume_output(args.output, args.input, args.overwrite)
    header = None
    with warnings_dropped_on_refusal():  # refused for its voxel size: the error line alone
        if args.input.suffix.lower() in _TIFF_SUFFIXES:
            array, carried, description = read_tiff_volume(args.input)
            source = f"TIFF metadata: {description}"
        else:
            with warnings.catch_warnings():
                if args.voxel_size is not None:  # the header's value is being replaced: no warning about it
                    warnings.simplefilter("ignore", HeaderWarning)
                if args.resample is not None:  # the voxels are being made cubic
                    warnings.filterwarnings("ignore", ".*anisotropic voxels", HeaderWarning)
                volume, header = read_volume(args.input)
            array, carried = volume.numpy(), header.voxel_size_a
            source = f"MRC header voxel size {_xyz(header.voxel_size_a)} Å"
        if args.voxel_size is not None:
            voxel_size = (args.voxel_size,) * 3
        elif carried is not None and all(0 < v < math.inf for v in carried):
            voxel_size = carried
        else:
            raise InputError(f"carries no voxel size ({source}); pass --voxel-size in Å", args.input)
    if voxel_size is carried and np.ptp(carried) > 1e-3 * max(carried) and args.resample is None:
        print(
            f"{args.input}: anisotropic voxels {_xyz(carried)} Å kept as read (--resample Å makes them cubic)"
        )
    shape_zyx = tuple(int(n) for n in array.shape)
    if args.resample is not None:
        new_shape = tuple(max(1, round(n * v / args.resample)) for n, v in zip(shape_zyx, voxel_size[::-1]))
        if min(new_shape) < 2:
            raise InputError(
                f"--resample {args.resample:g} Å would leave {'x'.join(map(str, new_shape))} voxels "
                f"(Z, Y, X) of the {'x'.join(map(str, shape_zyx))}-voxel volume: choose a smaller voxel size",
                args.input,
            )
        needed, memory = _RESAMPLE_BYTES_PER_VOXEL * math.prod(new_shape), physical_memory_bytes()
        if memory is not None and needed > memory:
            raise InputError(
                f"--resample {args.resample:g} Å would make {'x'.join(map(str, new_shape))} voxels (Z, Y, X) "
                f"of the {'x'.join(map(str, shape_zyx))}-voxel volume, about {needed / 1e9:.3g} GB to "
                f"compute, more than this machine's {memory / 1e9:.3g} GB of memory: choose a larger voxel "
                "size",
                args.input,
            )
    with np.errstate(over="ignore", invalid="ignore"):  # values beyond float32's range are reported below
        data = np.asarray(array, dtype=np.float32)
    if not np.isfinite(data).all():
        raise InputError(
            f"contains {int((~np.isfinite(data)).sum())} NaN/Inf values (or values beyond float32's range, "
            "±3.4e38)",
            args.input,
        )
    if np.issubdtype(array.dtype, np.integer) and array.size:
        largest = max(abs(int(array.min())), abs(int(array.max())))
        if largest > _FLOAT32_EXACT_INTEGERS:
            print(
                f"{args.input}: {array.dtype} values of magnitude up to {largest} are stored as float32, "
                f"exact only up to {_FLOAT32_EXACT_INTEGERS} (2^24): larger ones are rounded "
                "(about 7 significant digits)"
            )
    if args.invert:
        data = -data
    # the map stays where it was (nstart counts voxels of the voxel size written)
    origin = None if header is None else replace(header, voxel_size_a=voxel_size).grid_origin_a
    if args.resample is not None:
        print(
            f"{args.input}: resampling {'x'.join(map(str, shape_zyx))} voxels of "
            f"{_xyz(voxel_size)} Å (x, y, z) to {args.resample:g} Å cubic voxels"
        )
        data, voxel_size, origin = _resample(data, voxel_size, args.resample, origin)
    write_volume(args.output, data, voxel_size, overwrite=args.overwrite, origin_a=origin)
    given = "--voxel-size" if args.voxel_size is not None else "from the file"
    print(
        f"{args.output}: {data.shape[0]}x{data.shape[1]}x{data.shape[2]} (Z, Y, X) float32, voxel size "
        f"{_xyz(voxel_size)} Å (x, y, z) [{given}"
        f"{', resampled' if args.resample is not None else ''}; {source}]"
        f"{', inverted' if args.invert else ''}"
    )
    return 0


def _xyz(values: tuple[float, ...]) -> str:
    """``(x, y, z)`` to 5 significant digits: a voxel size of 1e-9 Å reads 1e-09, not 0.0."""
    return f"({', '.join(f'{float(v):.5g}' for v in values)})"


def _resample(
    data: np.ndarray,
    voxel_size_xyz_a: tuple[float, float, float],
    new_voxel_size_a: float,
    grid_origin_a: tuple[float, float, float] | None,
) -> tuple[np.ndarray, tuple[float, float, float], tuple[float, float, float] | None]:
    """``data`` ``(Z, Y, X)`` resampled to cubic voxels (:func:`aitom.geometry.resample_to_cubic_voxels`), the
    new voxel size and the position (x, y, z), Å, of its first voxel: the voxel ``N // 2`` of each axis
    becomes the voxel ``M // 2`` at the same place."""
    import torch

    from aitom.geometry import resample_to_cubic_voxels

    resampled = resample_to_cubic_voxels(torch.from_numpy(data), voxel_size_xyz_a, new_voxel_size_a).numpy()
    origin = grid_origin_a
    if origin is not None:
        sizes_xyz = zip(data.shape[::-1], resampled.shape[::-1], voxel_size_xyz_a, origin)
        origin = tuple(o + (n // 2) * v - (m // 2) * new_voxel_size_a for n, m, v, o in sizes_xyz)
    return resampled, (new_voxel_size_a,) * 3, origin
