"""``aitom hand AVERAGE.mrc REFERENCE [--lowpass 40] [--axis z] [--mask M.mrc] [--mirrored-out R.mrc]``.

Decides whether REFERENCE has the same handedness as AVERAGE or is its mirror image: each hand of the
reference is superposed on the average (best rotation and shift), low-passed and correlated inside a mask,
and both hands' FSC-0.5 / 0.143 resolutions are measured (:func:`aitom.ops.handedness.hand_check`). Prints
JSON; ``--mirrored-out`` writes the reference in the hand that matches, superposed on the average.

A reference whose contrast has the other sign from the average's (protein dark in one, bright in the other:
an EMDB map or an atomic model against an average of raw, un-inverted subtomograms) is multiplied by -1
first (``--invert-reference auto``, as ``aitom average --reference`` does); without it the superposition
matches protein to solvent and neither hand fits.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from aitom.commands.shared import add_voxel_size_option

if TYPE_CHECKING:
    import torch

#: smallest box (voxels along an edge) whose hands can be told apart
_MIN_BOX = 8


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
        "reference",
        type=Path,
        help="the reference to test: a map (MRC; another voxel size or box is resampled to the average's, "
        "with a warning) or an atomic model (.pdb/.cif, optionally .gz; its potential is built at the "
        "average's voxel size)",
    )
    parser.add_argument(
        "--lowpass",
        type=float,
        help="low-pass before correlating, Å (default 40, or 2.5 voxels where voxels are larger than 16 Å)",
    )
    parser.add_argument("--axis", choices=("z", "y", "x"), default="z", help="mirror axis (default z)")
    parser.add_argument(
        "--mask", type=Path, help="real-space mask (MRC); default a soft sphere of radius 0.4 box"
    )
    parser.add_argument(
        "--step", type=float, default=10.0, help="angular step of the superposition, degrees (default 10)"
    )
    parser.add_argument(
        "--mirrored-out",
        type=Path,
        help="write the reference in the matching hand, superposed on the average: an MRC file (.mrc, .map "
        "or .rec) with the average's voxel size (Å) and origin",
    )
    parser.add_argument(
        "--invert-reference",
        choices=("auto", "yes", "no"),
        default="auto",
        help="multiply the reference by -1 before comparing? auto: when its centre-minus-surroundings "
        "contrast has the opposite sign from the average's (protein dark in one, bright in the other); "
        "yes/no force it (default auto)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --mirrored-out file")
    add_voxel_size_option(parser, "both maps")


def run(args: argparse.Namespace) -> int:
    import json

    from aitom.commands.shared import (
        check_volume_output,
        json_ready,
        match_reference_contrast,
        read_real_space_mask,
        read_reference,
        refuse_outputs_over_inputs,
        warnings_dropped_on_refusal,
    )
    from aitom.errors import InputError
    from aitom.io import read_volume, write_volume
    from aitom.ops.handedness import hand_check, mirror_volume, superpose_map

    if args.mirrored_out is not None:
        check_volume_output(args.mirrored_out, args.average, args.overwrite)
        refuse_outputs_over_inputs([args.mirrored_out], [args.reference, args.mask])
    if not 0.0 < args.step <= 180.0:
        raise InputError(f"--step must be in (0, 180] degrees, got {args.step}")
    with warnings_dropped_on_refusal():  # refused for its voxel size: the error line alone
        average, header = read_volume(args.average, voxel_size_a=args.voxel_size)
        voxel_size_a, lowpass_a = _check_average(average, header.voxel_size_a, args)
    _refuse_constant(average, args.average)
    reference = read_reference(
        args.reference,
        voxel_size_a,
        average.shape[0],
        voxel_size_override=args.voxel_size,
        data_voxel_size_unset=args.voxel_size is None and set(header.voxel_size_a) == {1.0},
    )
    _refuse_constant(reference, args.reference)
    reference, inverted, _ = match_reference_contrast(reference, average, args.invert_reference)
    if inverted:
        print(
            f"aitom: hand: {args.reference}: reference contrast inverted (its centre-minus-surroundings "
            "contrast has the other sign from the average's; --invert-reference no keeps it)",
            file=sys.stderr,
        )
    mask = None
    if args.mask is not None:
        mask = read_real_space_mask(args.mask, tuple(average.shape), voxel_size_a, "the average's")
        if float(mask.min()) < 0 or float(mask.max()) <= 0:
            raise InputError(
                f"mask weights must be >= 0 and not all zero, got {float(mask.min()):g} to "
                f"{float(mask.max()):g}",
                args.mask,
            )
    result = hand_check(
        average,
        reference,
        mask,
        voxel_size_a=voxel_size_a,
        lowpass_a=lowpass_a,
        axis=args.axis,
        angular_step_deg=args.step,
    )
    if args.mirrored_out is not None:
        matching = mirror_volume(reference, args.axis) if result["better"] == "mirrored" else reference
        aligned, _ = superpose_map(
            matching, average, voxel_size_a=voxel_size_a, lowpass_a=lowpass_a, angular_step_deg=args.step
        )
        # on the average's grid: the average's origin, so that viewers overlay the two
        write_volume(
            args.mirrored_out,
            aligned,
            voxel_size_a,
            overwrite=args.overwrite,
            origin_a=header.grid_origin_a,
        )
    verdict = hand_verdict(result, args.axis)
    print(f"aitom: hand: {verdict}", file=sys.stderr)
    report = {
        **result,
        "verdict": verdict,
        "voxel_size_a": voxel_size_a,
        "lowpass_a": lowpass_a,
        "reference_inverted": inverted,
    }
    print(json.dumps(json_ready(report), indent=2, allow_nan=False, ensure_ascii=False))
    return 0


def _check_average(
    average: torch.Tensor, header_voxel_a: tuple[float, float, float], args: argparse.Namespace
) -> tuple[float, float]:
    """The average's voxel size and the low-pass (both Å), after refusing what the check cannot use."""
    from aitom.errors import InputError

    if len(set(average.shape)) != 1:
        raise InputError(f"the average must be a cube, got {tuple(average.shape)} voxels", args.average)
    if average.shape[0] < _MIN_BOX:
        raise InputError(
            f"the average is too small to tell hands apart: {tuple(average.shape)} voxels (at least "
            f"{_MIN_BOX}³)",
            args.average,
        )
    voxel_size_a = header_voxel_a[0]
    if not voxel_size_a > 0:
        raise InputError(
            f"voxel size {voxel_size_a:g} Å in the header is not positive; pass --voxel-size", args.average
        )
    lowpass_a = max(40.0, 2.5 * voxel_size_a) if args.lowpass is None else args.lowpass
    if not 0 < lowpass_a < float("inf"):
        raise InputError(f"--lowpass must be a positive, finite resolution in Å, got {lowpass_a:g}")
    if not 2 * voxel_size_a <= lowpass_a:
        raise InputError(f"--lowpass {lowpass_a:g} Å is finer than Nyquist ({2 * voxel_size_a:g} Å)")
    box_a = average.shape[0] * voxel_size_a
    if lowpass_a > box_a and args.voxel_size is None and set(header_voxel_a) == {1.0}:
        raise InputError(
            f"voxel size 1 Å in the header looks unset (a {box_a:g} Å box cannot hold the {lowpass_a:g} Å "
            "low-pass); pass --voxel-size",
            args.average,
        )
    if lowpass_a > box_a:
        raise InputError(
            f"--lowpass {lowpass_a:g} Å is coarser than the box ({box_a:g} Å): the maps would be compared "
            "by their mean alone"
        )
    return voxel_size_a, lowpass_a


def _refuse_constant(volume: torch.Tensor, path: Path) -> None:
    """InputError naming ``path`` when ``volume`` holds one value everywhere (no structure to compare)."""
    from aitom.errors import InputError

    if float(volume.max()) == float(volume.min()):
        raise InputError(
            f"map is constant ({float(volume.flatten()[0]):g} everywhere): no structure to compare", path
        )


def hand_verdict(result: dict, axis: str) -> str:
    """One sentence on a :func:`aitom.ops.handedness.hand_check` result. The hand is called only when the
    masked correlation and the FSC-0.5 resolution both favour it and the correlations differ by at least
    0.01; a reference that correlates below 0.3 in both hands (or not at all: NaN) is said not to match, and
    FSC-0.5 resolutions that are not finite in the favoured hand (the FSC is below 0.5 from the first shell)
    leave the hand undecided."""
    import math

    as_is, mirrored = result["correlation_as_is"], result["correlation_mirrored"]
    numbers = f"correlation {as_is:.3f} as it is, {mirrored:.3f} mirrored along {axis}"
    fsc = f"FSC-0.5 {result['fsc_0.5_a_as_is']:.1f} Å as it is, {result['fsc_0.5_a_mirrored']:.1f} Å mirrored"
    if not (math.isfinite(as_is) and math.isfinite(mirrored)) or max(as_is, mirrored) < 0.3:
        return f"the reference matches the average in neither hand ({numbers}): is it the same structure?"
    correlation_prefers_mirrored = mirrored > as_is
    fsc_better, fsc_worse = result["fsc_0.5_a_as_is"], result["fsc_0.5_a_mirrored"]  # Å: smaller is better
    if correlation_prefers_mirrored:
        fsc_better, fsc_worse = fsc_worse, fsc_better
    if result["margin"] < 0.01 or fsc_better > fsc_worse or not math.isfinite(fsc_better):
        return f"undecided: both hands fit alike ({numbers}; {fsc})"
    hand = f"MIRRORED along {axis}" if correlation_prefers_mirrored else "AS IT IS"
    return f"the reference matches {hand} ({numbers}, margin {result['margin']:.3f}; {fsc})"
