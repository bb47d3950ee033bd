"""``aitom extract --tomogram T.mrc --particles P.star --size 32 --out DIR``: cut out subtomograms.

Boxes of ``--size`` voxels are centred on the table's ``rlnCoordinateX/Y/Z`` (voxels; the centre lands on
voxel ``size // 2`` of the box) and read from a memory map, so the tomogram is never loaded whole. Writes
DIR/subtomograms/NNNNNN.mrc (the tomogram's voxel size) and DIR/particles.star: the input table (every
column kept) with ``rlnImageName`` pointing at the subtomograms, ready for ``aitom average`` or a
``StarSubtomogramDataModule``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

#: smallest box worth extracting, voxels
MIN_BOX_VOXELS = 4


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
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def _select_tomogram(table, name: str | None, star: Path):
    from aitom.errors import InputError

    columns = [column for column in ("rlnTomoName", "rlnMicrographName") if column in table.columns]
    if name is None:
        for column in columns:
            names = sorted(set(map(str, table[column])))
            if len(names) > 1:
                raise InputError(
                    f"the table lists {len(names)} tomograms in {column} ({', '.join(names[:4])}"
                    f"{', ...' if len(names) > 4 else ''}); choose one with --tomo-name",
                    star,
                )
        return table
    if not columns:
        raise InputError("--tomo-name given but the table has no rlnTomoName or rlnMicrographName", star)
    selected = table[table[columns[0]].astype(str) == name]
    if len(selected) == 0:
        raise InputError(f"no particle has {columns[0]} {name!r}", star)
    return selected.reset_index(drop=True)


def _read_table(star: Path):
    """The particle table (any positions) and its ``data_optics`` (empty when absent or not RELION's)."""
    import pandas as pd

    from aitom.io import read_particles
    from aitom.io.relion5 import read_relion5_particles

    table = read_particles(star, require=())
    if "rlnTomoName" not in table.columns:
        return table, pd.DataFrame()
    particles, optics, _ = read_relion5_particles(star)
    return particles, optics


def run(args: argparse.Namespace) -> int:
    import sys

    import numpy as np
    from tqdm.auto import tqdm

    from aitom.commands.shared import check_output_folder, output_folder
    from aitom.errors import InputError
    from aitom.io import open_volume_mmap, write_particles, write_volume
    from aitom.io.relion5 import tomogram_voxel_positions
    from aitom.ops.extraction import extract_subvolumes

    if args.size < MIN_BOX_VOXELS:
        raise InputError(f"--size must be at least {MIN_BOX_VOXELS} voxels, got {args.size}")
    if args.voxel_size is not None and args.voxel_size <= 0:
        raise InputError(f"--voxel-size must be positive (Å), got {args.voxel_size}")
    check_output_folder(args.out, args.overwrite)
    table, optics = _read_table(args.particles)
    table = _select_tomogram(table, args.tomo_name, args.particles)
    if len(table) == 0:
        raise InputError("the particle table is empty", args.particles)
    tomogram, header = open_volume_mmap(args.tomogram, voxel_size_a=args.voxel_size)
    shape_zyx = np.array(tomogram.shape)
    if args.size > shape_zyx.min():
        raise InputError(
            f"--size {args.size} is larger than the tomogram's smallest side ({tuple(shape_zyx)} voxels)",
            args.tomogram,
        )
    voxel_size_a = float(header.voxel_size_a[0])
    try:
        coordinates_xyz, conversion = tomogram_voxel_positions(table, optics, shape_zyx[::-1], voxel_size_a)
    except InputError as error:
        raise InputError(error.problem, args.particles) from None
    if conversion is not None:
        if args.voxel_size is None and (voxel_size_a <= 0 or voxel_size_a == 1.0):
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
    names = [f"subtomograms/{index:06d}.mrc" for index in range(len(table))]
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
            if args.invert:
                box = -box
            if args.normalise:
                box = (box - box.mean()) / box.std().clamp_min(1e-12)
            write_volume(folder / names[index], box, voxel_size_a)
        table = table.copy()
        table["rlnImageName"] = names
        for axis, column in enumerate(("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ")):
            table[column] = coordinates_xyz[:, axis]  # voxels of this tomogram, the DESIGN convention
        write_particles(folder / "particles.star", table)
    touching = (
        (np.rint(coordinates_xyz) - args.size // 2 < 0)
        | (np.rint(coordinates_xyz) - args.size // 2 + args.size > shape_zyx[::-1])
    ).any(axis=1)
    note = f" ({int(touching.sum())} boxes cross the border, {args.padding}-padded)" if touching.any() else ""
    print(f"{args.out}: {len(table)} subtomograms of {args.size}³ voxels at {voxel_size_a:g} Å{note}")
    return 0
