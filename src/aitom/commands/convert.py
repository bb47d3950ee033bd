"""``aitom convert IN OUT.mrc [--voxel-size Å] [--invert] [--overwrite]``: TIFF or MRC volume -> float32 MRC.

TIFF input (tifffile): a multi-page TIFF (pages of one size) or one 3-D page, read as ``(Z, Y, X)``; colour
(RGB) TIFFs are refused. The voxel size comes from ``--voxel-size`` when given; otherwise from the TIFF when
it carries a complete one: an ImageJ TIFF with a length ``unit`` (Å, nm, µm, mm), the ``XResolution`` /
``YResolution`` tags (pixels per unit) and the ``spacing`` entry (Z step, in the unit). Without ``spacing``
or unit the TIFF carries no Z step and ``--voxel-size`` is required. MRC input (``.mrc``, ``.map``, ``.rec``,
``.mrcs`` ..., optionally ``.gz``): re-written as float32 with the header voxel size, or ``--voxel-size`` to
correct it.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

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
        with tifffile.TiffFile(path) as tiff:
            series = tiff.series[0]
            axes = series.axes
            if len(series.shape) == 2 and len(tiff.pages) > 1:  # pages written one by one, each a series
                _check_page_sizes(tiff, path)
                array = np.asarray(tiff.asarray(key=range(len(tiff.pages))))
                axes = "I" + axes
            else:
                array = np.asarray(series.asarray())
            metadata = tiff.imagej_metadata or {}
            page = tiff.pages[0]
            resolution = [
                page.tags[name].value for name in ("XResolution", "YResolution") if name in page.tags
            ]
    except InputError:
        raise
    except (tifffile.TiffFileError, OSError, ValueError, IndexError) as error:
        raise InputError(f"not a readable TIFF file ({error})", path) from None
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

    from aitom.commands.shared import check_volume_output
    from aitom.errors import InputError
    from aitom.io import HeaderWarning, read_volume, write_volume

    if args.voxel_size is not None and not 0 < args.voxel_size < math.inf:
        raise InputError(f"--voxel-size must be a positive number of Å, got {args.voxel_size}")
    check_volume_output(args.output, args.input, args.overwrite)
    header = None
    if args.input.suffix.lower() in _TIFF_SUFFIXES:
        array, carried, description = read_tiff_volume(args.input)
        source = f"TIFF metadata: {description}"
    else:
        with warnings.catch_warnings():
            if args.voxel_size is not None:  # the header's value is being replaced: no warning about it
                warnings.simplefilter("ignore", HeaderWarning)
            volume, header = read_volume(args.input)
        array, carried = volume.numpy(), header.voxel_size_a
        source = f"MRC header voxel size {tuple(round(v, 4) for v in header.voxel_size_a)} Å"
    if args.voxel_size is not None:
        voxel_size = (args.voxel_size,) * 3
    elif carried is not None and all(0 < v < math.inf for v in carried):
        voxel_size = carried
    else:
        raise InputError(f"carries no voxel size ({source}); pass --voxel-size in Å", args.input)
    if voxel_size is carried and np.ptp(carried) > 1e-3 * max(carried):
        print(f"{args.input}: anisotropic voxels {tuple(round(v, 4) for v in carried)} Å kept as read")
    with np.errstate(over="ignore", invalid="ignore"):  # values beyond float32's range are reported below
        data = np.asarray(array, dtype=np.float32)
    if not np.isfinite(data).all():
        raise InputError(
            f"contains {int((~np.isfinite(data)).sum())} NaN/Inf values (or values beyond float32's range, "
            "±3.4e38)",
            args.input,
        )
    if args.invert:
        data = -data
    # the map stays where it was (nstart counts voxels of the voxel size written)
    origin = None if header is None else replace(header, voxel_size_a=voxel_size).grid_origin_a
    write_volume(args.output, data, voxel_size, overwrite=args.overwrite, origin_a=origin)
    used = tuple(round(float(v), 4) for v in voxel_size)
    print(
        f"{args.output}: {data.shape[0]}x{data.shape[1]}x{data.shape[2]} (Z, Y, X) float32, voxel size "
        f"{used} Å (x, y, z) [{'--voxel-size' if args.voxel_size is not None else 'from the file'}; "
        f"{source}]{', inverted' if args.invert else ''}"
    )
    return 0
