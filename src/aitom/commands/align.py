"""``aitom align A.mrc B.mrc [--wedge-a DEG --wedge-b DEG] [--json]``: rotation, shift and score of B on A.

B is modelled as A rotated actively by ``R`` about the box centre and shifted by ``t``
(``B ≈ fourier_shift(rotate_volume(A, R), t)``); ``R`` is printed as RELION's ZYZ angles (rlnAngleRot, Tilt,
Psi, degrees) and ``t`` in voxels ``(x, y, z)`` (RELION's rlnOriginX/Y/Z of B relative to A is ``-t``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from aitom.commands.shared import add_voxel_size_option, seed_number

_WEDGE_HELP = (
    "tilt range of {name}'s missing wedge in degrees: one number D for (-D, D), or MIN,MAX "
    "(default 60; 90 means fully observed); tilt axis Y, beam along Z"
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "align",
        help="align two subtomograms (missing-wedge aware): rotation, shift, score",
        description="Find the rotation and shift that best map subtomogram A onto subtomogram B with the "
        "constrained correlation over the Fourier coefficients both observe (Förster et al. 2008): a fast "
        "translation-invariant rotational search on Fourier amplitudes over an SO(3) grid, FFT translation "
        "search for the best rotations, then gradient refinement of rotation and sub-voxel shift. Prints "
        "the ZYZ angles of B relative to A (RELION rot, tilt, psi in degrees), the shift of B "
        "(x, y, z voxels) and the score.",
    )
    parser.add_argument("volume_a", type=Path, metavar="A.mrc", help="reference subtomogram (cubic)")
    parser.add_argument("volume_b", type=Path, metavar="B.mrc", help="subtomogram to align (same size as A)")
    parser.add_argument(
        "--wedge-a", type=_tilt_range, default=(-60.0, 60.0), help=_WEDGE_HELP.format(name="A")
    )
    parser.add_argument(
        "--wedge-b", type=_tilt_range, default=(-60.0, 60.0), help=_WEDGE_HELP.format(name="B")
    )
    parser.add_argument(
        "--mask-a",
        type=Path,
        help="Fourier-space weight of A as an MRC volume (centred: zero frequency at voxel N//2, "
        "1 = observed); replaces --wedge-a",
    )
    parser.add_argument(
        "--mask-b", type=Path, help="Fourier-space weight of B, as --mask-a; replaces --wedge-b"
    )
    parser.add_argument(
        "--step",
        type=float,
        default=10.0,
        help="angular step (covering radius) of the rotation grid, degrees (default 10)",
    )
    parser.add_argument(
        "--max-shift",
        type=float,
        default=None,
        help="largest shift length searched, voxels, >= 0 (default: any)",
    )
    parser.add_argument(
        "--max-frequency",
        type=float,
        default=0.4,
        help="highest frequency used, cycles/voxel (0.5 = Nyquist); lower it for noisy data (default 0.4)",
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument(
        "--seed",
        type=seed_number,
        default=0,
        help="random seed, 0 to 2^32 - 1 (the search itself is deterministic; default 0)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    add_voxel_size_option(parser, "both subtomograms")


def _tilt_range(text: str) -> tuple[float, float]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected D or MIN,MAX in degrees, got {text!r}") from None
    if len(values) == 1:
        values = [-abs(values[0]), abs(values[0])]
    if len(values) != 2 or not -90.0 <= values[0] <= values[1] <= 90.0:
        raise argparse.ArgumentTypeError(f"need -90 <= MIN <= MAX <= 90 degrees, got {text!r}")
    if values[0] == values[1]:
        raise argparse.ArgumentTypeError(
            f"a tilt range of 0 degrees ({text!r}) observes a single plane of Fourier space: give the tilt "
            "range (e.g. 60 for -60,60; 90 means fully observed)"
        )
    return values[0], values[1]


def load_fourier_mask(path: Path | None, tilt_range_deg: tuple[float, float], shape: tuple[int, ...], device):
    """A centred Fourier mask from an MRC file (checked against ``shape``) or a tilt range; None if full."""
    from aitom.errors import InputError
    from aitom.fourier import missing_wedge_mask
    from aitom.io import read_volume

    if path is not None:
        mask, _ = read_volume(path, voxel_size_a=1.0)
        if tuple(mask.shape) != tuple(shape):
            raise InputError(f"mask is {tuple(mask.shape)} but the subtomogram is {tuple(shape)}", path)
        if float(mask.min()) < 0:
            raise InputError("mask has negative weights", path)
        if float(mask.max()) <= 0:
            raise InputError("mask is zero everywhere: no Fourier coefficient is observed", path)
        return mask.to(device)
    if tilt_range_deg == (-90.0, 90.0):
        return None
    return missing_wedge_mask(
        shape, tilt_min_deg=tilt_range_deg[0], tilt_max_deg=tilt_range_deg[1], device=device
    )


def run(args: argparse.Namespace) -> int:
    import json
    import math

    import torch

    from aitom.commands.shared import torch_device
    from aitom.errors import InputError
    from aitom.io import read_volume
    from aitom.ops.alignment import align_subtomograms

    if not 0.0 < args.max_frequency <= 0.5:
        raise InputError(f"--max-frequency must be in (0, 0.5] cycles/voxel, got {args.max_frequency}")
    if not 0.0 < args.step <= 180.0:
        raise InputError(f"--step must be in (0, 180] degrees, got {args.step}")
    if args.max_shift is not None and not args.max_shift >= 0:
        raise InputError(f"--max-shift must be >= 0 voxels, got {args.max_shift}")
    torch.manual_seed(args.seed)
    device = torch_device(args.device)
    volume_a, header_a = read_volume(args.volume_a, voxel_size_a=args.voxel_size)
    volume_b, header_b = read_volume(args.volume_b, voxel_size_a=args.voxel_size)
    for volume, path in ((volume_a, args.volume_a), (volume_b, args.volume_b)):
        if float(volume.max()) == float(volume.min()):
            raise InputError(
                f"subtomogram is constant ({float(volume.flatten()[0]):g} everywhere): nothing to align", path
            )
    voxel_a, voxel_b = header_a.voxel_size_a[0], header_b.voxel_size_a[0]
    if abs(voxel_a - voxel_b) > 1e-3 * voxel_a:
        raise InputError(
            f"voxel size {voxel_b:g} Å differs from {args.volume_a}'s {voxel_a:g} Å "
            "(rescale one, or give --voxel-size if a header is wrong)",
            args.volume_b,
        )
    if len(set(volume_a.shape)) != 1:
        raise InputError(f"subtomogram must be cubic, got {tuple(volume_a.shape)}", args.volume_a)
    if volume_a.shape != volume_b.shape:
        raise InputError(
            f"size {tuple(volume_b.shape)} differs from {args.volume_a} ({tuple(volume_a.shape)})",
            args.volume_b,
        )
    if volume_a.shape[0] < 8:
        raise InputError(f"subtomogram too small to align: {tuple(volume_a.shape)}", args.volume_a)
    size = volume_a.shape[0]
    if args.max_frequency * size < 1:
        raise InputError(
            f"--max-frequency {args.max_frequency:g} cycles/voxel is below the first Fourier shell of a "
            f"{size}³ box (1/{size} = {1 / size:.3g}): nothing to align"
        )
    shape = tuple(volume_a.shape)
    mask_a = load_fourier_mask(args.mask_a, args.wedge_a, shape, device)
    mask_b = load_fourier_mask(args.mask_b, args.wedge_b, shape, device)
    result = align_subtomograms(
        volume_a.to(device),
        volume_b.to(device),
        mask_a,
        mask_b,
        angular_step_deg=args.step,
        max_shift_voxels=args.max_shift,
        # the amplitude search band: 0.05 to 0.25 cycles/voxel, inside (0, --max-frequency]
        search_band=(min(0.05, args.max_frequency / 2), min(0.25, args.max_frequency)),
        max_frequency=args.max_frequency,
        progress=True,
    )
    angles = [math.degrees(value) for value in result.angles_rad[0].tolist()]
    shift = result.shift_xyz[0].tolist()
    score = float(result.score[0])
    if args.json:
        report = {
            "rotation_zyz_deg": {"rot": angles[0], "tilt": angles[1], "psi": angles[2]},
            "rotation_matrix": result.rotation[0].tolist(),
            "shift_xyz_voxels": shift,
            "shift_xyz_a": [value * header_a.voxel_size_a[0] for value in shift],
            "score": score,
        }
        print(json.dumps(report))
    else:
        print(f"rotation (ZYZ rot, tilt, psi, deg): {angles[0]:.2f} {angles[1]:.2f} {angles[2]:.2f}")
        print(f"shift (x, y, z, voxels): {shift[0]:.3f} {shift[1]:.3f} {shift[2]:.3f}")
        print(f"score (constrained correlation): {score:.4f}")
    return 0
