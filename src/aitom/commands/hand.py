"""``aitom hand AVERAGE.mrc REFERENCE.mrc [--lowpass 40] [--axis z] [--mask M.mrc] [--mirrored-out R.mrc]``.

Decides whether REFERENCE has the same handedness as AVERAGE or is its mirror image: each hand of the
reference is superposed on the average (best rotation and shift), low-passed and correlated inside a mask,
and both hands' FSC-0.5 / 0.143 resolutions are measured (:func:`aitom.ops.handedness.hand_check`). Prints
JSON; ``--mirrored-out`` writes the reference in the hand that matches, superposed on the average.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from aitom.commands.shared import add_voxel_size_option


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "hand",
        help="handedness check: does a reference match an average as it is or mirrored?",
        description="Superpose a reference map and its mirror image on an average (rotation and shift "
        "search), compare their masked correlations after a low-pass and their FSC resolutions, and say "
        "which hand matches (JSON on stdout).",
    )
    parser.add_argument("average", type=Path, help="the average (MRC)")
    parser.add_argument(
        "reference", type=Path, help="the reference map to test (MRC, same box and voxel size)"
    )
    parser.add_argument(
        "--lowpass", type=float, default=40.0, help="low-pass before correlating, Å (default 40)"
    )
    parser.add_argument("--axis", choices=("z", "y", "x"), default="z", help="mirror axis (default z)")
    parser.add_argument(
        "--mask", type=Path, help="real-space mask (MRC); default a soft sphere of radius 0.4 box"
    )
    parser.add_argument("--step", type=float, default=10.0, help="angular step of the superposition, degrees")
    parser.add_argument(
        "--mirrored-out",
        type=Path,
        help="write the reference in the matching hand, superposed on the average",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --mirrored-out file")
    add_voxel_size_option(parser, "both maps")


def run(args: argparse.Namespace) -> int:
    import json

    from aitom.errors import InputError
    from aitom.io import check_output_path, read_volume, write_volume
    from aitom.ops.handedness import hand_check, mirror_volume, superpose_map

    if args.mirrored_out is not None:
        check_output_path(args.mirrored_out, args.overwrite)
    if not 0.0 < args.step <= 180.0:
        raise InputError(f"--step must be in (0, 180] degrees, got {args.step}")
    average, header = read_volume(args.average, voxel_size_a=args.voxel_size)
    reference, reference_header = read_volume(args.reference, voxel_size_a=args.voxel_size)
    if average.shape != reference.shape or len(set(average.shape)) != 1:
        raise InputError(
            f"need cubic maps of one size, got {tuple(average.shape)} and {tuple(reference.shape)}",
            args.reference,
        )
    voxel_size_a = header.voxel_size_a[0]
    if abs(reference_header.voxel_size_a[0] - voxel_size_a) > 1e-3 * voxel_size_a:
        raise InputError(
            f"voxel size {reference_header.voxel_size_a[0]:g} Å differs from the average's "
            f"{voxel_size_a:g} Å",
            args.reference,
        )
    if not 2 * voxel_size_a <= args.lowpass:
        raise InputError(f"--lowpass {args.lowpass} Å is finer than Nyquist ({2 * voxel_size_a:g} Å)")
    mask = None
    if args.mask is not None:
        mask, _ = read_volume(args.mask, voxel_size_a=header.voxel_size_a)
        if mask.shape != average.shape:
            raise InputError(f"mask size {tuple(mask.shape)} differs from {tuple(average.shape)}", args.mask)
    result = hand_check(
        average,
        reference,
        mask,
        voxel_size_a=voxel_size_a,
        lowpass_a=args.lowpass,
        axis=args.axis,
        angular_step_deg=args.step,
    )
    if args.mirrored_out is not None:
        matching = mirror_volume(reference, args.axis) if result["better"] == "mirrored" else reference
        aligned, _ = superpose_map(
            matching, average, voxel_size_a=voxel_size_a, lowpass_a=args.lowpass, angular_step_deg=args.step
        )
        write_volume(args.mirrored_out, aligned, voxel_size_a, overwrite=args.overwrite)
    print(json.dumps({**result, "voxel_size_a": voxel_size_a, "lowpass_a": args.lowpass}, indent=2))
    return 0
