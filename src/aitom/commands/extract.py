"""``aitom extract --tomogram T.mrc --particles P.star --size 32 --out DIR``: cut out subtomograms.

Boxes of ``--size`` voxels are centred on the particles (the centre lands on voxel ``size // 2`` of the box)
and read from a memory map, so the tomogram is never loaded whole. The centres are read from tables of any
RELION version, Warp or aitom by :func:`aitom.io.star.particle_voxel_positions`: the coordinates minus the
origin shifts, converted to voxels of the tomogram when the table states their unit; a table whose coordinate
unit cannot be known (pixel sizes that differ from the tomogram's voxel size, no unit stated) is refused
unless ``--coordinate-pixel-size`` gives it. Writes DIR/subtomograms/NNNNNN.mrc (the tomogram's voxel size)
and DIR/particles.star: the input table (an ``rlnCtfImage`` renamed to find the same files from DIR) with
``rlnImageName`` pointing at the subtomograms and the positions rewritten as the boxes were cut (see
:func:`_output_table`), ready for ``aitom average`` or a ``StarSubtomogramDataModule``. Particles that share
a box centre, and boxes of one value (outside the reconstructed region), are warned about in one line each.
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
#: particle-table columns stating a pixel size, Å, rewritten to the subtomograms' voxel size in the output
_PIXEL_SIZES = (
    "rlnImagePixelSize",
    "rlnPixelSize",
    "rlnMicrographPixelSize",
    "rlnMicrographOriginalPixelSize",
    "rlnTomoTiltSeriesPixelSize",
)


class ExtractWarning(UserWarning):
    """Odd but usable input to ``aitom extract``: particles sharing a box centre, boxes of one value."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "extract",
        help="cut subtomograms out of a tomogram at the positions of a particle table",
        description="Cut cubic subtomograms centred on the particles of a STAR table and write "
        "DIR/subtomograms/NNNNNN.mrc plus DIR/particles.star (the input table with rlnImageName, the centres "
        "in voxels and origin shifts of 0). A particle's centre is its coordinate minus its origin shift "
        "(RELION's convention; rlnOriginX/Y/ZAngst in Å, or rlnOriginX/Y/Z in pixels of the particle images, "
        "along the axes of RELION 4/5's rlnTomoSubtomogramRot/Tilt/Psi when given). rlnCoordinateX/Y/Z count "
        "pixels of --coordinate-pixel-size, else of the table's rlnTomoTiltSeriesPixelSize (RELION 4/5) or "
        "rlnMicrographPixelSize (RELION 3.1), else voxels of the tomogram; a table that states another pixel "
        "size (rlnImagePixelSize, rlnMicrographOriginalPixelSize, rlnPixelSize, rlnDetectorPixelSize / "
        "rlnMagnification) than the tomogram's voxel size, and no unit, is refused: pass "
        "--coordinate-pixel-size. The tomogram is read through a memory map, box by box.",
    )
    parser.add_argument("--tomogram", type=Path, required=True, help="tomogram MRC (Z, Y, X)")
    parser.add_argument(
        "--particles",
        type=Path,
        required=True,
        help="STAR table of any RELION version, Warp or aitom: rlnCoordinateX/Y/Z (voxels of the tomogram "
        "unless the table or --coordinate-pixel-size says otherwise) or RELION 5 "
        "rlnCenteredCoordinateX/Y/ZAngst, minus the origin shifts; converted to voxels of the tomogram",
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
        "(default: the table's rlnTomoTiltSeriesPixelSize for RELION 4/5 tables, rlnMicrographPixelSize for "
        "RELION 3.1 ones, else the tomogram's voxel size); e.g. 12 for WarpTools exports whose coordinates "
        "count 12 Å particle pixels, 2.5 for Warp exports in unbinned 2.5 Å pixels",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


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
    size_voxels_xyz: np.ndarray,
    voxel_size_a: float,
    star: Path,
    out: Path,
) -> pd.DataFrame:
    """The input table with ``rlnImageName``, describing the subtomograms as they were cut.

    ``rlnCoordinateX/Y/Z`` become the particle centres in voxels of the tomogram (the DESIGN convention), the
    origin shifts already applied: ``rlnOriginX/Y/Z`` and ``rlnOriginX/Y/ZAngst`` are set to 0 (a reader would
    apply them twice), and RELION 5's ``rlnCenteredCoordinateX/Y/ZAngst``, when present, become the same
    centres in Å from the centre of the tomogram (``size_voxels_xyz``). The boxes are cut along the
    tomogram's axes, so a RELION 4/5 pseudo-subtomogram orientation is folded into ``rlnAngleRot/Tilt/Psi``
    (:func:`aitom.io.star.table_angles_deg`) and set to 0; the ``rlnAngle*Prior`` columns, relative to it, are
    then dropped. Pixel sizes stated in the particles table (the subtomograms' and the coordinates' unit,
    :data:`_PIXEL_SIZES`, ``rlnDetectorPixelSize`` with ``rlnMagnification``) become ``voxel_size_a`` Å.
    ``rlnTomoVisibleFrames`` is written back as RELION's ``[1,0,...]`` text. An ``rlnCtfImage`` column (read
    beside the input ``star``) is rewritten to name the same files from the output folder ``out``.
    """
    from aitom.commands.shared import relocated_names
    from aitom.io.relion5 import CENTERED_COLUMNS, format_visible_frames, voxels_to_centered_angstrom
    from aitom.io.star import (
        ANGLE_COLUMNS,
        ANGLE_PRIOR_COLUMNS,
        COORDINATE_COLUMNS,
        ORIGIN_ANGST_COLUMNS,
        ORIGIN_COLUMNS,
        SUBTOMOGRAM_ANGLE_COLUMNS,
        table_angles_deg,
    )

    table = relocated_names(table, star, out, columns=("rlnCtfImage",))
    table["rlnImageName"] = names
    for axis, column in enumerate(COORDINATE_COLUMNS):
        table[column] = coordinates_xyz[:, axis]
    if set(CENTERED_COLUMNS) <= set(table.columns):
        centred_a = voxels_to_centered_angstrom(coordinates_xyz, size_voxels_xyz, voxel_size_a)
        for axis, column in enumerate(CENTERED_COLUMNS):
            table[column] = centred_a[:, axis]
    for column in (*ORIGIN_COLUMNS, *ORIGIN_ANGST_COLUMNS):
        if column in table.columns:
            table[column] = 0.0
    present = [column for column in SUBTOMOGRAM_ANGLE_COLUMNS if column in table.columns]
    if present and (table[present].to_numpy(dtype=float) != 0).any():
        angles_deg = table_angles_deg(table)
        for axis, column in enumerate(ANGLE_COLUMNS):
            table[column] = angles_deg[:, axis]
        table[present] = 0.0
        table = table.drop(columns=[column for column in ANGLE_PRIOR_COLUMNS if column in table.columns])
    for column in _PIXEL_SIZES:
        if column in table.columns:
            table[column] = voxel_size_a
    if "rlnDetectorPixelSize" in table.columns and "rlnMagnification" in table.columns:
        table["rlnDetectorPixelSize"] = voxel_size_a * table["rlnMagnification"].astype(float) / 1e4
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
        warnings_dropped_on_refusal,
    )
    from aitom.errors import InputError
    from aitom.io import open_volume_mmap, write_particles, write_volume
    from aitom.io.star import particle_voxel_positions, read_optics
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
    table, _ = read_particle_table(args.particles)
    table = select_tomogram(table, args.tomo_name, args.particles)
    if len(table) == 0:
        raise InputError("the particle table is empty", args.particles)
    with warnings_dropped_on_refusal():  # refused for its voxel size or --size: the error line alone
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
                f"voxel size {voxel_size_a:g} Å in the header is not positive; pass --voxel-size",
                args.tomogram,
            )
    known_voxel_size_a = None if args.voxel_size is None and voxel_size_a == 1.0 else voxel_size_a  # 1: unset
    try:
        coordinates_xyz, conversions = particle_voxel_positions(
            table,
            read_optics(args.particles),
            shape_zyx[::-1],
            known_voxel_size_a,
            coordinate_pixel_size_a=args.coordinate_pixel_size,
        )
    except InputError as error:
        raise InputError(error.problem, args.particles) from None
    if conversions:
        print(f"{args.particles}: positions are {'; '.join(conversions)}", file=sys.stderr)
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
    output = _output_table(
        table, names, coordinates_xyz, shape_zyx[::-1], voxel_size_a, args.particles, args.out
    )
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
