"""``aitom pick {template,dog,saliency} --tomogram T.mrc [--template X.mrc] --out P.star [options]``.

Each picker runs as a LightningModule under ``trainer.predict`` over the tiles of the tomogram
(:mod:`aitom.tasks.pick`); the STAR table is written atomically and never over an existing file without
``--overwrite``. With ``--truth GT.star`` the picks are scored (precision, recall, F1 per class, orientation
accuracy for template matching) and the scores are printed as one JSON line; when no template's file name
is a class name of the truth, a line on stderr gives the mapping of template names to truth classes (by
matched positions) that the per-class scores use.

The picks do not depend on ``--tile-voxels``: by default neighbouring tiles overlap by twice the reach of
the picker's filter plus the peak spacing, so every tile core's score map is the whole tomogram's, and the
false-alarm thresholds come from the whole tomogram's statistics, pooled where the tiles are merged
(:mod:`aitom.tasks.pick`), with several templates each one's calibration too. Exceptions: saliency (its
Robust PCA compares the supervoxels of one tile) and ``--whiten`` (the filter, from the whole tomogram's
spectrum, acts circularly on each tile: scores change by about 0.003).
Bad input — a template larger than the tomogram, voxel sizes that differ, an angular step ≤ 0, a constant
tomogram — is one line on stderr, exit code 2, and nothing is written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from aitom.commands.shared import add_voxel_size_option, seed_number, warnings_dropped_on_refusal

_FAR_HELP = (
    "false-alarm rate per voxel for the score threshold (Gaussian tail of the robust statistics of the whole "
    "tomogram's scores)"
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pick",
        help="pick particles in a tomogram: template matching, difference of Gaussians or saliency",
        description="Pick particles in a tomogram (MRC) and write their positions (voxels) to a STAR table.",
    )
    methods = parser.add_subparsers(dest="method", metavar="METHOD", required=True)

    template = methods.add_parser(
        "template",
        help="FFT template matching with locally normalised correlation over an SO(3) grid",
        description="Template matching: the template (protein bright, same voxel size as the tomogram) is "
        "rotated over a grid of covering radius --angular-step, filtered with the missing wedge (and "
        "optionally the CTF), and correlated with the tomogram by FFT (Roseman's FLCF, spherical mask). "
        "Picks carry the best rotation as rlnAngleRot/Tilt/Psi (the particle is the template rotated by it). "
        "With several templates (one per class) each template's score map is calibrated by its own noise "
        "statistics (z-score), every voxel takes the best-explaining template, and the picks carry its "
        "rlnClassNumber; scores and --threshold are then z-scores.",
    )
    _common(template)
    template.add_argument(
        "--template",
        type=Path,
        nargs="+",
        required=True,
        help="template(s), one per class: MRC volumes (cubic, protein bright) or atomic models "
        "(.pdb/.ent/.cif/.mmcif, optionally .gz), whose potential is computed at the tomogram's voxel size; "
        "a box larger than the tomogram's thinnest axis is cropped about its centre when at most 1 %% of the "
        "density lies outside",
    )
    template.add_argument(
        "--template-voxel-size",
        type=float,
        metavar="Å",
        help="voxel size of the template files in Å, replacing their headers' (for headers that are wrong or "
        "unset); the templates are resampled to the tomogram's voxel size. --voxel-size sets the TOMOGRAM's",
    )
    template.add_argument(
        "--angular-step", type=float, default=30.0, help="rotation grid covering radius, degrees (default 30)"
    )
    template.add_argument(
        "--tilt-range",
        type=float,
        nargs=2,
        default=(-60.0, 60.0),
        metavar=("MIN", "MAX"),
        help="tilt range of the tomogram, degrees, for the template's missing wedge (default -60 60)",
    )
    template.add_argument(
        "--no-wedge", action="store_true", help="do not apply a missing wedge to the template"
    )
    template.add_argument(
        "--defocus-um",
        type=float,
        help="filter the template with the CTF at this defocus, µm (underfocus > 0)",
    )
    template.add_argument("--voltage-kv", type=float, default=300.0, help="CTF voltage, kV (default 300)")
    template.add_argument(
        "--cs-mm", type=float, default=2.7, help="CTF spherical aberration, mm (default 2.7)"
    )
    template.add_argument(
        "--whiten",
        action="store_true",
        help="spectral whitening of tomogram and template by the tomogram's radial power spectrum "
        "(estimated over segments of 64³ voxels)",
    )
    template.add_argument(
        "--rotation-batch", type=int, default=8, help="rotations correlated at once (memory; default 8)"
    )
    template.add_argument(
        "--class-number",
        type=int,
        nargs="+",
        help="rlnClassNumber of each template's picks, 1-based (default 1, 2, ... in --template order)",
    )
    template.add_argument(
        "--maps", action="store_true", help="also write the score and rotation-index maps (MRC) beside --out"
    )
    template.add_argument("--false-alarm-rate", type=float, default=1e-4, help=_FAR_HELP + " (default 1e-4)")
    template.add_argument(
        "--peak-false-alarm-rate",
        type=float,
        help="threshold instead from the robust tail of the local maxima's scores, per peak (e.g. 0.01; "
        "better in crowded tomograms)",
    )

    dog = methods.add_parser(
        "dog",
        help="3-D difference of Gaussians (AITom's DoG picker)",
        description="Difference of Gaussians G(sigma1) - G(sigma2), sigma2 = 1.1 sigma1 by default; local "
        "maxima of the response of the chosen polarity are the picks.",
    )
    _common(dog)
    sigma = dog.add_mutually_exclusive_group()
    sigma.add_argument(
        "--sigma-a",
        type=float,
        help="sigma1 in Å (default 70 Å, AITom's 7 nm); it picks blobs of radius about "
        "sqrt(3 * ratio) * sigma1 (1.8 sigma1 at the default ratio)",
    )
    sigma.add_argument("--sigma-voxels", type=float, help="sigma1 in voxels")
    dog.add_argument("--sigma2-ratio", type=float, default=1.1, help="sigma2 / sigma1 (default 1.1)")
    dog.add_argument("--false-alarm-rate", type=float, default=1e-3, help=_FAR_HELP + " (default 1e-3)")

    saliency = methods.add_parser(
        "saliency",
        help="saliency detection: SLIC supervoxels + Robust PCA (Zhou et al. 2018)",
        description="Supervoxels (SLIC), per-supervoxel features, Robust PCA (inexact ALM): the sparse part "
        "marks salient supervoxels; maxima of the smoothed saliency are the picks.",
    )
    _common(saliency)
    radius = saliency.add_mutually_exclusive_group(required=True)
    radius.add_argument("--radius-a", type=float, help="expected particle radius, Å")
    radius.add_argument("--radius-voxels", type=float, help="expected particle radius, voxels")
    saliency.add_argument(
        "--false-alarm-rate",
        type=float,
        help=_FAR_HELP + " (default: none; the peaks are split by Otsu's threshold of their log-saliency)",
    )


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tomogram", type=Path, required=True, help="tomogram (MRC), protein bright unless --polarity dark"
    )
    parser.add_argument(
        "--polarity",
        choices=("bright", "dark"),
        default="bright",
        help="particle contrast in the tomogram: bright (protein white: aitom's simulations, inverted data) "
        "or dark (raw cryo-ET contrast, protein black); default bright",
    )
    parser.add_argument("--out", type=Path, required=True, help="output STAR table of picks")
    parser.add_argument("--truth", type=Path, help="ground-truth STAR: print precision/recall/F1 as JSON")
    parser.add_argument(
        "--tolerance-voxels",
        type=float,
        help="distance within which a pick matches a true particle, voxels (default: half the particle "
        "radius: a quarter of the (smallest) template box, or the DoG/saliency radius)",
    )
    parser.add_argument("--min-distance", type=int, help="minimal distance between picks, voxels")
    parser.add_argument(
        "--threshold", type=float, help="absolute score threshold (overrides the false-alarm rate)"
    )
    parser.add_argument("--num-peaks", type=int, help="at most this many picks (the best) in the tomogram")
    parser.add_argument(
        "--exclude-border",
        type=float,
        default=0.0,
        metavar="VOXELS",
        help="drop picks closer than this to a face of the tomogram, voxels: they are partial particles at "
        "best, and the filters' boundary response makes false ones there; e.g. half the particle radius "
        "(default 0: keep all)",
    )
    parser.add_argument(
        "--tile-voxels",
        type=int,
        help="tile edge, voxels: bounds the memory; with the default overlap the picks do not depend on it "
        "(except saliency's, whose Robust PCA is per tile, and --whiten's, whose filter acts on each tile) "
        "(default 256, or 3 × the overlap when that is more)",
    )
    parser.add_argument(
        "--overlap-voxels",
        type=int,
        help="overlap of neighbouring tiles, voxels (default: twice the filter's reach plus the peak "
        "spacing: for DoG 2 × (4 σ2 + --min-distance), for template matching 2 × (half the box + "
        "--min-distance), about twice the box, for saliency 2 × (2 × the radius + the smoothing reach + "
        "--min-distance); then the picks equal those of one tile covering the tomogram; less saves time "
        "but may change picks near tile edges)",
    )
    parser.add_argument(
        "--accelerator", default="auto", help="Lightning accelerator: auto, cpu, gpu (default auto)"
    )
    parser.add_argument(
        "--devices",
        default="1",
        help="Lightning devices (default 1); more than 1 runs DDP processes that write one table together",
    )
    parser.add_argument("--seed", type=seed_number, default=0, help="random seed, 0 to 2^32 - 1 (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_voxel_size_option(parser, "the tomogram (and of templates whose header leaves it unset)")


def run(args: argparse.Namespace) -> int:
    import json
    import math
    import sys

    from aitom.commands.shared import refuse_outputs_over_inputs
    from aitom.errors import InputError
    from aitom.io import check_output_path, read_volume

    check_output_path(args.out, args.overwrite)
    if not args.exclude_border >= 0:
        raise InputError(f"--exclude-border must be >= 0 voxels, got {args.exclude_border}")
    if args.threshold is not None and not math.isfinite(args.threshold):
        raise InputError(f"--threshold must be a finite score, got {args.threshold}")
    if args.out.suffix != ".star":
        raise InputError("the pick table must be a .star file", args.out)
    outputs = [args.out]
    if getattr(args, "maps", False):  # refuse now, not after the search and the table are written
        from aitom.tasks.pick import map_paths

        outputs += map_paths(args.out, args.tomogram).values()
        for path in outputs[1:]:
            check_output_path(path, args.overwrite)
    refuse_outputs_over_inputs(outputs, [args.tomogram, *getattr(args, "template", []), args.truth])
    with warnings_dropped_on_refusal():  # refused for its voxel size: the error line alone
        tomogram, header = read_volume(args.tomogram, mmap=True, voxel_size_a=args.voxel_size)
        voxel_size = header.voxel_size_a[0]
        _refuse_unset_voxel_size(args, voxel_size)
    if float(tomogram.std()) == 0.0:
        raise InputError("the tomogram is constant (empty): nothing to pick", args.tomogram)
    shape = tuple(tomogram.shape)
    if math.ceil(args.exclude_border) > min(shape) - 1 - args.exclude_border:
        raise InputError(
            f"--exclude-border {args.exclude_border:g} voxels leaves no position inside the tomogram "
            f"({'×'.join(map(str, shape))} voxels, Z×Y×X): use at most {(min(shape) - 1) // 2}",
            args.tomogram,
        )
    for name in ("min_distance", "num_peaks", "tile_voxels"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.tolerance_voxels is not None and not args.tolerance_voxels > 0:
        raise InputError(f"--tolerance-voxels must be > 0, got {args.tolerance_voxels}")
    if args.false_alarm_rate is not None and not 0 < args.false_alarm_rate < 1:
        raise InputError(f"--false-alarm-rate must be in (0, 1), got {args.false_alarm_rate}")
    truth = None if args.truth is None else _truth_in_voxels(args.truth, voxel_size)
    picker, (scale_voxels, tolerance_scale) = _picker(args, shape, voxel_size)
    del tomogram
    overlap = picker.tile_overlap_voxels if args.overlap_voxels is None else args.overlap_voxels
    tile = max(256, 3 * overlap) if args.tile_voxels is None else args.tile_voxels
    tiled = tile < max(shape)
    if tiled and args.overlap_voxels is None and overlap >= tile:
        raise InputError(
            f"the particle size scale ({scale_voxels} voxels) needs tiles overlapping by {overlap} voxels, "
            f"more than --tile-voxels {tile}: is the particle size right (voxel size "
            f"{voxel_size:g} Å)? Otherwise raise --tile-voxels"
        )
    if tiled and (overlap < 0 or overlap >= tile):
        raise InputError(f"--overlap-voxels must be in [0, tile size {tile}), got {overlap}")
    if args.method == "template" and overlap < 2 * scale_voxels:
        raise InputError(f"--overlap-voxels must be at least the template box ({2 * scale_voxels} voxels)")
    if args.method != "template" and 2 * scale_voxels > min(shape):
        # (a template larger than the tomogram is refused by check_template, naming the template)
        raise InputError(
            f"the particle size scale (radius {scale_voxels} voxels) makes particles larger than the "
            f"tomogram ({'×'.join(map(str, shape))} voxels, Z×Y×X): is the particle size right (voxel size "
            f"{voxel_size:g} Å)?",
            args.tomogram,
        )
    picks, is_global_zero = _predict(
        argparse.Namespace(**{**vars(args), "tile_voxels": tile}), picker, overlap, shape
    )
    if is_global_zero:
        print(f"{args.out}: {len(picks)} picks ({args.method})", file=sys.stderr)
    if truth is not None and is_global_zero:  # under DDP every process runs this command: print once
        from aitom.ops.pick_evaluation import evaluate_picks

        tolerance = tolerance_scale / 2 if args.tolerance_voxels is None else args.tolerance_voxels
        symmetry, symbols = _library_symmetry(truth) if args.method == "template" else ({}, {})
        scores = evaluate_picks(picks, truth, tolerance, symmetry=symmetry)
        if "class_mapping" in scores:
            print(_class_mapping_note(scores), file=sys.stderr)
        if symbols and "orientation_fraction" in scores:
            scores["orientation_symmetry"] = symbols
        print(json.dumps({"method": args.method, **scores}))
    return 0


def _truth_in_voxels(path: Path, voxel_size_a: float):
    """The ground-truth table with its particle centres in ``rlnCoordinateX/Y/Z`` (voxels of the tomogram,
    ``voxel_size_a`` Å): origin shifts subtracted (:func:`aitom.io.star.table_coordinates`) and set to 0, so
    that a table that cannot be read is refused before any picking."""
    from aitom.io import read_particles
    from aitom.io.star import COORDINATE_COLUMNS, ORIGIN_ANGST_COLUMNS, ORIGIN_COLUMNS, table_coordinates

    truth = read_particles(path)
    centres = table_coordinates(truth, voxel_size_a)
    truth = truth.drop(columns=[c for c in (*ORIGIN_COLUMNS, *ORIGIN_ANGST_COLUMNS) if c in truth.columns])
    for axis, column in enumerate(COORDINATE_COLUMNS):
        truth[column] = centres[:, axis]
    return truth


def _class_mapping_note(scores: dict) -> str:
    """One line saying that the pick and truth class names differ, and the mapping by matched positions
    (``class_mapping`` of :func:`aitom.ops.pick_evaluation.evaluate_picks`) the per-class scores use."""
    mapping: dict[str, str] = scores["class_mapping"]
    # the names are disjoint: the classes without true particles are the unmapped pick classes
    unmapped = [label for label, score in scores["per_class"].items() if score["n_truth"] == 0]
    truth_names = [label for label, score in scores["per_class"].items() if score["n_truth"] > 0]
    used = ", ".join(f"{pick} -> {true}" for pick, true in mapping.items()) or "none"
    return (
        f"pick class names ({', '.join([*mapping, *unmapped])}) differ from the truth's "
        f"({', '.join(truth_names)}): per-class scores map them by matched positions: {used}"
        + (f"; unmapped (no matched pick): {', '.join(unmapped)}" if unmapped else "")
    )


def _library_symmetry(truth) -> tuple[dict, dict[str, str]]:
    """Symmetry rotations of the truth's classes that are library classes (simulated data), keyed by class
    name and by the truth's class number, and the point group of each symmetric class by name."""
    from aitom.simulate.library import available_classes, class_symmetry_rotations, get_class

    if "aitomClassName" not in truth.columns:
        return {}, {}
    symmetry, symbols = {}, {}
    numbers = truth["rlnClassNumber"] if "rlnClassNumber" in truth.columns else [None] * len(truth)
    for name, number in dict(zip(truth["aitomClassName"].astype(str), numbers)).items():
        if name not in available_classes():
            continue
        rotations = class_symmetry_rotations(name)
        if len(rotations) > 1:
            symmetry[name] = rotations
            symbols[name] = get_class(name).symmetry
            if number is not None:
                symmetry[str(int(number))] = rotations
    return symmetry, symbols


def _picker(args: argparse.Namespace, shape: tuple[int, ...], voxel_size: float):
    """The LightningModule of the chosen method and its size scales (particle radius) in voxels: the largest
    and the smallest (default match tolerance)."""
    import math

    from aitom.errors import InputError

    common = {
        "min_distance": args.min_distance,
        "false_alarm_rate": args.false_alarm_rate,
        "threshold_abs": args.threshold,
        "num_peaks": args.num_peaks,
        "polarity": args.polarity,
    }
    if args.method == "template":
        from aitom.tasks.pick import TemplateMatchingPicker, check_template

        if not 0 < args.angular_step <= 180:
            raise InputError(f"--angular-step must be in (0, 180] degrees, got {args.angular_step}")
        if args.rotation_batch < 1:
            raise InputError(f"--rotation-batch must be >= 1, got {args.rotation_batch}")
        if args.class_number is not None and len(args.class_number) != len(args.template):
            raise InputError(
                f"--class-number gives {len(args.class_number)} numbers for {len(args.template)} templates"
            )
        if args.threshold is not None and len(args.template) == 1 and not -1 < args.threshold < 1:
            raise InputError(
                f"--threshold {args.threshold:g}: with one template the scores are correlations in [-1, 1] "
                "(z-scores only with several templates); give a threshold between -1 and 1"
            )
        if args.template_voxel_size is not None and not 0 < args.template_voxel_size < math.inf:
            raise InputError(
                f"--template-voxel-size must be a positive number of Å, got {args.template_voxel_size}"
            )
        with warnings_dropped_on_refusal():  # a template header quirk that makes it unusable: the error alone
            sizes = [
                check_template(
                    path,
                    voxel_size,
                    shape,
                    args.tomogram,
                    voxel_size_override=args.voxel_size,
                    template_voxel_size_a=args.template_voxel_size,
                )
                for path in args.template
            ]
        size = max(sizes)
        if args.tile_voxels is not None and args.tile_voxels < min(2 * size, min(shape)):
            raise InputError(f"--tile-voxels must be at least twice the template box ({size} voxels)")
        picker = TemplateMatchingPicker(
            [str(path) for path in args.template],
            angular_step_deg=args.angular_step,
            tilt_range_deg=None if args.no_wedge else tuple(args.tilt_range),
            defocus_um=args.defocus_um,
            voltage_kv=args.voltage_kv,
            cs_mm=args.cs_mm,
            whiten=args.whiten,
            rotation_batch=args.rotation_batch,
            class_number=args.class_number,
            peak_false_alarm_rate=args.peak_false_alarm_rate,
            keep_maps=args.maps,
            voxel_size_a=voxel_size,
            template_voxel_size_a=args.template_voxel_size,
            max_box_voxels=min(shape),
            **common,
        )
        # Size scales: the largest template's radius and the smallest's (the default tolerance).
        return picker, (max(1, size // 2), max(1, min(sizes) // 2))
    if args.method == "dog":
        from aitom.tasks.pick import DoGPicker

        sigma = _voxels(args.sigma_a, args.sigma_voxels, voxel_size, default_a=70.0, name="sigma")
        if not args.sigma2_ratio > 1:
            raise InputError(f"--sigma2-ratio must be > 1, got {args.sigma2_ratio}")
        if sigma < _MIN_SIGMA_VOXELS:
            if args.sigma_voxels is not None:
                given = f"--sigma-voxels {args.sigma_voxels:g}"
            else:
                named = "the default sigma 70" if args.sigma_a is None else f"--sigma-a {args.sigma_a:g}"
                given = f"{named} Å ({sigma:.2g} voxels of {voxel_size:g} Å)"
            raise InputError(
                f"{given} is under {_MIN_SIGMA_VOXELS:g} voxel: it picks features under a voxel across "
                "(radius about sigma·√(3·ratio)), noise or nothing; is the value in the right unit?"
            )
        picker = DoGPicker(sigma, args.sigma2_ratio * sigma, **common)
        # the DoG peaks on balls of radius √(3 σ1 σ2)
        scale = max(1, round(sigma * (3 * args.sigma2_ratio) ** 0.5))
        return picker, (scale, scale)
    from aitom.tasks.pick import SaliencyPicker

    radius = _voxels(args.radius_a, args.radius_voxels, voxel_size, default_a=None, name="radius")
    scale = max(1, round(radius))
    return SaliencyPicker(radius, **common), (scale, scale)


#: smallest DoG sigma1, voxels: a narrower one picks features under a voxel across (noise), or nothing
_MIN_SIGMA_VOXELS = 0.5


class PickWarning(UserWarning):
    """A pick run that goes on differently from what was asked (fewer processes than ``--devices``)."""


def _refuse_unset_voxel_size(args: argparse.Namespace, voxel_size: float) -> None:
    """Refuse a header voxel size that is not positive where a length is in Å: the templates', or the DoG
    sigma's or saliency radius's unless given in voxels."""
    from aitom.errors import InputError

    if voxel_size > 0:
        return
    if args.method == "template":
        raise InputError(
            f"voxel size {voxel_size:g} Å in the header: template matching needs the tomogram's voxel size; "
            "pass --voxel-size",
            args.tomogram,
        )
    name = "sigma" if args.method == "dog" else "radius"
    if getattr(args, f"{name}_voxels") is None:
        raise InputError(
            f"voxel size {voxel_size:g} Å in the header: a {name} in Å needs it; pass --voxel-size or "
            f"--{name}-voxels",
            args.tomogram,
        )


def _voxels(
    value_a: float | None, value_voxels: float | None, voxel_size: float, default_a, name: str
) -> float:
    """A length in voxels: ``value_voxels``, or ``value_a`` (or ``default_a``) Å over ``voxel_size`` Å
    (positive when a length in Å is converted: :func:`_refuse_unset_voxel_size` refused the others)."""
    from aitom.errors import InputError

    if value_voxels is not None:
        voxels = value_voxels
    else:
        voxels = (default_a if value_a is None else value_a) / voxel_size
    if not voxels > 0:
        raise InputError(f"the {name} must be positive, got {value_voxels if value_a is None else value_a}")
    return float(voxels)


def _predict(args: argparse.Namespace, picker, overlap: int, shape_zyx: tuple[int, int, int]):
    """Pick over the tiles of ``args.tomogram`` (``shape_zyx`` voxels; ``args.tile_voxels`` edge, ``overlap``
    voxels shared by neighbours) under ``trainer.predict``; the table written (STAR, voxels) and whether this
    process is the global rank 0. ``args.devices`` above the number of tiles runs one process per tile.

    The caller has read the tomogram's header, and any quirk of it (:class:`aitom.io.HeaderWarning`) has
    been reported then: the data module and the writer, reading the header again, are kept from repeating it.
    """
    import os
    import re
    import sys
    import warnings
    from contextlib import redirect_stdout

    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch import Trainer, seed_everything

    from aitom.data.tomogram import TomogramDataModule, count_tiles
    from aitom.errors import InputError
    from aitom.io import HeaderWarning, read_particles
    from aitom.tasks.pick import PickWriter

    seed_everything(args.seed, verbose=False)
    devices = int(args.devices) if args.devices.isdigit() else args.devices
    n_tiles = count_tiles(shape_zyx, args.tile_voxels, overlap, picker.tile_boundary)
    if isinstance(devices, int) and devices > n_tiles:
        # a process without a tile stops Lightning's distributed sampler: run as many processes as tiles
        if "LOCAL_RANK" not in os.environ:  # the processes Lightning starts run this command again: warn once
            warnings.warn(
                PickWarning(
                    f"{args.tomogram}: --devices {devices} but the tomogram makes {n_tiles} tile(s) of "
                    f"--tile-voxels {args.tile_voxels}: running {n_tiles} process(es)"
                ),
                stacklevel=2,
            )
        devices = n_tiles
    writer = PickWriter(
        str(args.out),
        overwrite=args.overwrite,
        write_maps=getattr(args, "maps", False),
        voxel_size_a=args.voxel_size,
        exclude_border_voxels=args.exclude_border,
    )
    try:
        trainer = Trainer(
            accelerator=args.accelerator,
            devices=devices,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            callbacks=[writer],
        )
    except (MisconfigurationException, TypeError, ValueError) as error:
        raise InputError(f"--accelerator {args.accelerator} --devices {args.devices}: {error}") from None
    data = TomogramDataModule(
        [str(args.tomogram)],
        tile_voxels=args.tile_voxels,
        overlap_voxels=overlap,
        voxel_size_a=args.voxel_size,
        boundary=picker.tile_boundary,
    )
    # Lightning's progress bars (Rich's console, or tqdm's) write to stdout: stdout carries the scores' JSON
    with warnings.catch_warnings(), redirect_stdout(sys.stderr):
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=re.escape(f"{args.tomogram}: "), category=HeaderWarning)
        trainer.predict(picker, datamodule=data, return_predictions=False)
    return read_particles(args.out), trainer.is_global_zero
