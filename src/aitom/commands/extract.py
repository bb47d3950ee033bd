"""``aitom extract --tomogram T.mrc --particles P.star --size 32 --out DIR``: cut out subtomograms.

Boxes of ``--size`` voxels are centred on the table's ``rlnCoordinateX/Y/Z`` (voxels; the centre lands on
voxel ``size // 2`` of the box) and read from a memory map, so the tomogram is never loaded whole. Writes
DIR/subtomograms/NNNNNN.mrc (the tomogram's voxel size) and DIR/particles.star: the input table (every
column kept; an ``rlnCtfImage`` renamed to find the same files from DIR) with ``rlnImageName`` pointing at the
subtomograms, ready for ``aitom average`` or a ``StarSubtomogramDataModule``. Particles that share a box
centre, and boxes of one value (outside the reconstructed region), are warned about in one line each.
"""

from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

#: smallest box worth extracting, voxels
MIN_BOX_VOXELS = 4


class ExtractWarning(UserWarning):
    """Odd but usable input to ``aitom extract``: particles sharing a box centre, boxes of one value."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "extract",
        help="cut subtomograms out of a tomogram at the positions of a particle table",
        description="Cut cubic subtomograms centred on the particles of a STAR table (rlnCoordinateX/Y/Z in "
        "voxels of the tomogram) and write DIR/subtomograms/NNNNNN.mrc plus DIR/particles.star (the input "
        "table with rlnImageName). The tomogram is read through a memory map, box by box.",
    )
    parser.add_argument("--tomogram", type=Path, required=True, help="tomogram MRC (Z, Y, X)")
    parser.add_argument(
        "--particles",
        type=Path,
        required=True,
        help="STAR table: rlnCoordinateX/Y/Z in voxels of the tomogram, or a RELION 5 particle set "
        "(rlnCenteredCoordinateX/Y/ZAngst, or rlnCoordinateX/Y/Z in tilt-series pixels), converted",
    )
    parser.add_argument("--size", type=int, required=True, help="box edge, voxels (e.g. 32)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument(
        "--tomo-name",
        default=None,
        help="keep only the rows whose rlnTomoName (or rlnMicrographName) is this; needed when the "
        "table lists several tomograms",
    )
    parser.add_argument(
        "--padding",
        choices=("mean", "zero"),
        default="mean",
        help="fill of a box's voxels outside the tomogram: the mean of its voxels inside (default) or zero",
    )
    parser.add_argument(
        "--normalise",
        action="store_true",
        help="scale each subtomogram to zero mean and unit standard deviation",
    )
    parser.add_argument(
        "--invert", action="store_true", help="multiply by -1 (turn protein-dark data protein-bright)"
    )
    parser.add_argument(
        "--voxel-size",
        type=float,
        default=None,
        help="the tomogram's voxel size, Å, replacing its header's: used to convert positions in Å and "
        "written to the subtomograms (default: the header's)",
    )
    parser.add_argument(
        "--coordinate-pixel-size",
        type=float,
        metavar="Å",
        help="pixel size of the table's rlnCoordinateX/Y/Z, Å, when they are not in voxels of this tomogram "
        "(default: the table's rlnTomoTiltSeriesPixelSize for RELION 4/5 tables, else the tomogram's voxel "
        "size); e.g. 12 for WarpTools exports whose coordinates count 12 Å particle pixels",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def _with_coordinate_pixel_size(table, optics, pixel_size_a: float, star: Path):
    """``optics`` whose ``rlnTomoTiltSeriesPixelSize`` (unit of ``rlnCoordinate*``) is ``pixel_size_a``."""
    import pandas as pd

    from aitom.errors import InputError
    from aitom.io.relion5 import CENTERED_COLUMNS

    if set(CENTERED_COLUMNS) <= set(table.columns):
        raise InputError(
            "--coordinate-pixel-size given, but the positions are rlnCenteredCoordinate*Angst (in Å)", star
        )
    optics = pd.DataFrame({"rlnOpticsGroup": [1]}) if len(optics) == 0 else optics.copy()
    optics["rlnTomoTiltSeriesPixelSize"] = float(pixel_size_a)
    return optics


def _warn_about_duplicates(coordinates_xyz: np.ndarray, star: Path) -> None:
    """Warn (one line) when particles round to the same box centre: their subtomograms would be identical,
    and averaged together they inflate the half-set FSC."""
    import numpy as np

    from aitom.ops.extraction import nearest_voxel

    centres = nearest_voxel(coordinates_xyz)
    _, first_of, counts = np.unique(centres, axis=0, return_index=True, return_counts=True)
    if (counts > 1).any():
        repeated = centres[first_of[counts > 1][0]]
        warnings.warn(
            ExtractWarning(
                f"{star}: {int((counts - 1).sum())} of {len(centres)} particles repeat the box centre of "
                f"another (first: (x, y, z) {tuple(int(v) for v in repeated)}): their subtomograms are "
                "identical (a table concatenated twice?)"
            ),
            stacklevel=3,
        )


def _output_table(
    table: pd.DataFrame,
    names: list[str],
    coordinates_xyz: np.ndarray,
    conversion: str | None,
    star: Path,
    out: Path,
) -> pd.DataFrame:
    """The input table with ``rlnImageName`` and the positions in voxels of the tomogram.

    ``rlnCoordinateX/Y/Z`` become the box centres (voxels, the DESIGN convention). When the positions were
    converted (RELION 5 / RELION 4 tables), the ``rlnOriginX/Y/ZAngst`` shifts were applied to them, so the
    particles sit at the box centres: the shifts are reset to 0 (kept, a reader would apply them twice).
    ``rlnTomoVisibleFrames`` is written back as RELION's ``[1,0,...]`` text. An ``rlnCtfImage`` column (read
    beside the input ``star``) is rewritten to name the same files from the output folder ``out``.
    """
    from aitom.commands.shared import relocated_names
    from aitom.io.relion5 import format_visible_frames

    table = relocated_names(table, star, out, columns=("rlnCtfImage",))
    table["rlnImageName"] = names
    for axis, column in enumerate(("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ")):
        table[column] = coordinates_xyz[:, axis]
    if conversion is not None:
        for column in ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"):
            if column in table.columns:
                table[column] = 0.0
    if "rlnTomoVisibleFrames" in table.columns:
        table["rlnTomoVisibleFrames"] = [
            value if isinstance(value, str) else format_visible_frames(value)
            for value in table["rlnTomoVisibleFrames"]
        ]
    return table


def run(args: argparse.Namespace) -> int:
    import sys

    import numpy as np
    from tqdm.auto import tqdm

    from aitom.commands.shared import (
        check_output_folder,
        output_folder,
        read_particle_table,
        refuse_inputs_inside,
        select_tomogram,
    )
    from aitom.errors import InputError
    from aitom.io import open_volume_mmap, write_particles, write_volume
    from aitom.io.relion5 import tomogram_voxel_positions
    from aitom.ops.extraction import extract_subvolumes, nearest_voxel

    if args.size < MIN_BOX_VOXELS:
        raise InputError(f"--size must be at least {MIN_BOX_VOXELS} voxels, got {args.size}")
    for option, value in (
        ("--voxel-size", args.voxel_size),
        ("--coordinate-pixel-size", args.coordinate_pixel_size),
    ):
        if value is not None and not 0 < value < math.inf:
            raise InputError(f"{option} must be a positive, finite number of Å, got {value}")
    check_output_folder(args.out, args.overwrite)
    refuse_inputs_inside(args.out, [args.tomogram, args.particles])
    table, optics = read_particle_table(args.particles)
    table = select_tomogram(table, args.tomo_name, args.particles)
    if len(table) == 0:
        raise InputError("the particle table is empty", args.particles)
    if args.coordinate_pixel_size is not None:
        optics = _with_coordinate_pixel_size(table, optics, args.coordinate_pixel_size, args.particles)
    tomogram, header = open_volume_mmap(args.tomogram, voxel_size_a=args.voxel_size)
    shape_zyx = np.array(tomogram.shape)
    if args.size > shape_zyx.min():
        raise InputError(
            f"--size {args.size} is larger than the tomogram's smallest side "
            f"({' × '.join(map(str, shape_zyx.tolist()))} voxels, z × y × x)",
            args.tomogram,
        )
    voxel_size_a = float(header.voxel_size_a[0])
    if not voxel_size_a > 0:  # written to every subtomogram: refused before any work
        raise InputError(
            f"voxel size {voxel_size_a:g} Å in the header is not positive; pass --voxel-size", args.tomogram
        )
    try:
        coordinates_xyz, conversion = tomogram_voxel_positions(table, optics, shape_zyx[::-1], voxel_size_a)
    except InputError as error:
        raise InputError(error.problem, args.particles) from None
    if conversion is not None:
        if args.voxel_size is None and voxel_size_a == 1.0:
            raise InputError(
                f"positions in Å need the tomogram's voxel size, but its header says {voxel_size_a:g} Å: "
                "pass --voxel-size",
                args.tomogram,
            )
        print(f"{args.particles}: positions are {conversion}", file=sys.stderr)
    outside = ((coordinates_xyz < -0.5) | (coordinates_xyz > shape_zyx[::-1] - 0.5)).any(axis=1)
    if outside.any():
        first = coordinates_xyz[np.flatnonzero(outside)[0]]
        raise InputError(
            f"{int(outside.sum())} of {len(table)} particles lie outside the tomogram of (x, y, z) "
            f"{tuple(int(n) for n in shape_zyx[::-1])} voxels (first at "
            f"{tuple(round(float(v), 1) for v in first)}): "
            "are the coordinates in voxels of this tomogram?",
            args.particles,
        )
    _warn_about_duplicates(coordinates_xyz, args.particles)
    names = [f"subtomograms/{index:06d}.mrc" for index in range(len(table))]
    output = _output_table(table, names, coordinates_xyz, conversion, args.particles, args.out)
    constant = []
    with output_folder(args.out) as folder:
        for index in tqdm(range(len(table)), desc="extract", unit="particle"):
            box = extract_subvolumes(
                tomogram, coordinates_xyz[index : index + 1], args.size, padding=args.padding
            )[0]
            if not bool(box.isfinite().all()):
                raise InputError(
                    f"NaN/Inf voxels around particle {index + 1} at (x, y, z) "
                    f"{tuple(round(float(v), 1) for v in coordinates_xyz[index])}",
                    args.tomogram,
                )
            if float(box.max()) == float(box.min()):
                constant.append(index)
            if args.invert:
                box = -box
            if args.normalise:
                box = (box - box.mean()) / box.std().clamp_min(1e-12)
            write_volume(folder / names[index], box, voxel_size_a)
        write_particles(folder / "particles.star", output)
    if constant:
        centre = tuple(round(float(v), 1) for v in coordinates_xyz[constant[0]])
        warnings.warn(
            ExtractWarning(
                f"{args.tomogram}: {len(constant)} of {len(table)} boxes hold one value only (first: "
                f"particle {constant[0] + 1} at (x, y, z) {centre}): outside the reconstructed region? "
                "`aitom average` refuses such subtomograms"
            ),
            stacklevel=2,
        )
    first = nearest_voxel(coordinates_xyz) - args.size // 2
    touching = ((first < 0) | (first + args.size > shape_zyx[::-1])).any(axis=1)
    note = f" ({int(touching.sum())} boxes cross the border, {args.padding}-padded)" if touching.any() else ""
    print(f"{args.out}: {len(table)} subtomograms of {args.size}³ voxels at {voxel_size_a:g} Å{note}")
    return 0
