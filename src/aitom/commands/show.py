"""``aitom show VOL.mrc --out VOL.png [--picks P.star]``: slice montage of a volume, picks overlaid."""

from __future__ import annotations

import argparse
import math
from pathlib import Path


class PicksOutsideWarning(UserWarning):
    """Picks whose centres lie outside the volume shown (not drawn)."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "show",
        help="slice montage (PNG) of a volume, with picks drawn as circles",
        description="Central XY/XZ/YZ slices and a grid of XY slices through Z, contrast from the 1st-99th "
        "percentiles; picks from a STAR file drawn as circles (coloured by rlnClassNumber when present).",
    )
    parser.add_argument("volume", type=Path, help="input volume (MRC/.map/.rec, optionally .gz)")
    parser.add_argument("--out", type=Path, required=True, help="output PNG path")
    parser.add_argument(
        "--picks",
        type=Path,
        help="STAR table to overlay, of any RELION version, Warp or aitom: rlnCoordinateX/Y/Z (voxels of the "
        "volume unless the table or --coordinate-pixel-size says otherwise) or RELION 5 "
        "rlnCenteredCoordinateX/Y/ZAngst, minus the origin shifts, converted as by aitom extract (see "
        "`aitom extract --help`); a table whose coordinate unit cannot be known is refused",
    )
    parser.add_argument(
        "--tomo-name",
        help="draw only the picks whose rlnTomoName (or rlnMicrographName) is this; needed when the table "
        "lists several tomograms",
    )
    parser.add_argument(
        "--voxel-size",
        type=float,
        metavar="Å",
        help="voxel size of the volume in Å, replacing its header's; used only to convert positions in Å",
    )
    parser.add_argument(
        "--coordinate-pixel-size",
        type=float,
        metavar="Å",
        help="pixel size of the picks' rlnCoordinateX/Y/Z, Å, when they are not in voxels of this volume "
        "(default: the table's rlnTomoTiltSeriesPixelSize or rlnMicrographPixelSize, else the volume's voxel "
        "size); e.g. 2.5 for Warp exports in unbinned 2.5 Å pixels over a volume binned to 10 Å",
    )
    parser.add_argument(
        "--pick-radius",
        type=float,
        default=8.0,
        help="radius of the pick circles, in voxels (default 8)",
    )
    parser.add_argument("--slices", type=int, default=16, help="number of XY slices in the grid (default 16)")
    parser.add_argument(
        "--imod-points",
        type=Path,
        metavar="TXT",
        help="also write the picks as an IMOD point list (object contour x y z, IMOD model coordinates of "
        "this volume; one object per rlnClassNumber) for 3dmod: point2model -scat -sphere 8 TXT picks.mod",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def _picks_in_voxels(args: argparse.Namespace, shape_zyx: tuple[int, ...]):
    """The picks table (of ``--tomo-name``) and its positions ``(N, 3)`` (x, y, z) in voxels of the volume.

    Positions are read as :mod:`aitom.commands.extract` reads them
    (:func:`aitom.io.star.particle_voxel_positions`): coordinates minus origin shifts, converted with the
    volume's size and voxel size (the header's, or ``--voxel-size``; unknown when the header leaves it unset,
    0 or 1 Å) when the table or ``--coordinate-pixel-size`` gives another unit.
    """
    import warnings

    import numpy as np

    from aitom.commands.shared import read_particle_table, select_tomogram
    from aitom.errors import InputError
    from aitom.io import HeaderWarning, open_volume_mmap
    from aitom.io.relion5 import finite_number_columns
    from aitom.io.star import particle_voxel_positions, read_optics

    table, _ = read_particle_table(args.picks)
    table = select_tomogram(table, args.tomo_name, args.picks)
    table = finite_number_columns(table, ("rlnClassNumber",), args.picks, "picks")
    classes = table["rlnClassNumber"].to_numpy() if "rlnClassNumber" in table.columns else np.zeros(0)
    fractional = np.flatnonzero(classes % 1 != 0)
    if len(fractional):
        raise InputError(
            f"rlnClassNumber must be whole numbers; row {fractional[0] + 1} has {classes[fractional[0]]:g}",
            args.picks,
        )
    size_xyz = np.array(shape_zyx[::-1])
    # positions in Å, tilt-series pixels or with rlnOrigin*Angst shifts need the volume's voxel size
    with warnings.catch_warnings():  # an unset voxel size matters only for a conversion, refused below
        warnings.simplefilter("ignore", HeaderWarning)
        header = open_volume_mmap(args.volume, voxel_size_a=args.voxel_size)[1]
    voxel_size_a = float(header.voxel_size_a[0])
    if args.voxel_size is None and (voxel_size_a <= 0 or voxel_size_a == 1.0):
        voxel_size_a = None  # unset: refused by the conversions that need it
    try:
        positions, _ = particle_voxel_positions(
            table,
            read_optics(args.picks),
            size_xyz,
            voxel_size_a,
            coordinate_pixel_size_a=args.coordinate_pixel_size,
        )
    except InputError as error:
        raise InputError(error.problem, args.picks) from None
    outside = ((positions < -0.5) | (positions >= size_xyz - 0.5)).any(axis=1)
    if outside.any():
        warnings.warn(
            PicksOutsideWarning(
                f"{args.picks}: {int(outside.sum())} of {len(positions)} picks lie outside the volume's "
                f"{'x'.join(map(str, size_xyz))} voxels (x, y, z): positions for another tomogram, binning "
                "or voxel size?"
            ),
            stacklevel=2,
        )
    return table, positions


def run(args: argparse.Namespace) -> int:
    from aitom.commands.shared import refuse_outputs_over_inputs, refuse_path_under_a_file
    from aitom.errors import InputError
    from aitom.io import read_volume, save_montage

    if args.slices < 1:
        raise InputError(f"--slices must be at least 1, got {args.slices}")
    if not 0 < args.pick_radius < math.inf:
        raise InputError(f"--pick-radius must be a positive number of voxels, got {args.pick_radius}")
    if args.out.is_dir():
        raise InputError("is a folder; --out names the image file to write", args.out)
    if args.out.exists() and not args.overwrite:
        raise InputError("exists; pass --overwrite to replace it", args.out)
    refuse_path_under_a_file(args.out)
    if args.imod_points is not None:
        if args.picks is None:
            raise InputError("--imod-points writes the picks: it needs --picks")
        if args.imod_points.resolve() == args.out.resolve():
            raise InputError("--imod-points and --out name the same file", args.out)
        if args.imod_points.is_dir():
            raise InputError("is a folder; --imod-points names the text file to write", args.imod_points)
        if args.imod_points.exists() and not args.overwrite:
            raise InputError("exists; pass --overwrite to replace it", args.imod_points)
        refuse_path_under_a_file(args.imod_points)
    outputs = [args.out] if args.imod_points is None else [args.out, args.imod_points]
    refuse_outputs_over_inputs(outputs, [args.volume, args.picks])
    if args.tomo_name is not None and args.picks is None:
        raise InputError("--tomo-name selects picks to draw: it needs --picks")
    for option, value in (
        ("--voxel-size", args.voxel_size),
        ("--coordinate-pixel-size", args.coordinate_pixel_size),
    ):
        if value is not None and not 0 < value < math.inf:
            raise InputError(f"{option} must be a positive number of Å, got {value}")
    if args.coordinate_pixel_size is not None and args.picks is None:
        raise InputError("--coordinate-pixel-size converts the picks' coordinates: it needs --picks")
    volume, _ = read_volume(args.volume, voxel_size_a=1.0)  # the picture is in voxels: no voxel-size warning
    picks = classes = None
    if args.picks is not None:
        table, picks = _picks_in_voxels(args, tuple(volume.shape))
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
    if args.imod_points is not None:
        _write_imod_points(args.imod_points, picks, classes, args.overwrite)
    return 0


def _write_imod_points(path: Path, picks_xyz, classes, overwrite: bool) -> None:
    """Write the picks for point2model, one IMOD object per class (classes in increasing order)."""
    import numpy as np

    from aitom.io import write_imod_points

    if classes is None:
        classes = np.ones(len(picks_xyz))
    class_numbers, objects = np.unique(classes, return_inverse=True)
    write_imod_points(path, picks_xyz, object_ids=objects + 1, overwrite=overwrite)
    counts = np.bincount(objects, minlength=len(class_numbers))
    mapping = ", ".join(
        f"object {index + 1} = class {number:g} ({count} picks)"
        for index, (number, count) in enumerate(zip(class_numbers, counts, strict=True))
    )
    print(f"{path}: {len(picks_xyz)} picks as IMOD points; {mapping or 'no picks'}")
