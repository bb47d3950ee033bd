"""``aitom show VOL.mrc --out VOL.png [--picks P.star]``: slice montage of a volume, picks overlaid."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "show",
        help="slice montage (PNG) of a volume, with picks drawn as circles",
        description="Central XY/XZ/YZ slices and a grid of XY slices through Z, contrast from the 1st-99th "
        "percentiles; picks from a STAR file drawn as circles (coloured by rlnClassNumber when present).",
    )
    parser.add_argument("volume", type=Path, help="input volume (MRC/.map/.rec, optionally .gz)")
    parser.add_argument("--out", type=Path, required=True, help="output PNG path")
    parser.add_argument("--picks", type=Path, help="STAR file with rlnCoordinateX/Y/Z (voxels) to overlay")
    parser.add_argument(
        "--pick-radius",
        type=float,
        default=8.0,
        help="radius of the pick circles, in voxels (default 8)",
    )
    parser.add_argument("--slices", type=int, default=16, help="number of XY slices in the grid (default 16)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def run(args: argparse.Namespace) -> int:
    from aitom.errors import InputError
    from aitom.io import read_particles, read_volume, save_montage, table_coordinates

    if args.slices < 1:
        raise InputError(f"--slices must be at least 1, got {args.slices}")
    if args.pick_radius <= 0:
        raise InputError(f"--pick-radius must be positive (voxels), got {args.pick_radius}")
    if args.out.exists() and not args.overwrite:
        raise InputError("exists; pass --overwrite to replace it", args.out)
    volume, _ = read_volume(args.volume, voxel_size_a=1.0)  # the picture is in voxels: no voxel-size warning
    picks = classes = None
    if args.picks is not None:
        table = read_particles(args.picks)
        picks = table_coordinates(table)
        if "rlnClassNumber" in table.columns:
            classes = table["rlnClassNumber"].to_numpy()
    save_montage(
        volume,
        args.out,
        picks_xyz=picks,
        pick_classes=classes,
        pick_radius_voxels=args.pick_radius,
        n_slices=args.slices,
        title=args.volume.name,
        overwrite=args.overwrite,
    )
    print(args.out)
    return 0
