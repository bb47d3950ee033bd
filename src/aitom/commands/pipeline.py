"""``aitom pipeline --tomogram T.mrc --out DIR [--config configs/pipeline.yaml] [KEY=VALUE ...]``.

Tomogram in, structural map out: denoise (for picking) → pick → extract subtomograms → classify → align and
average per class → report. See :func:`aitom.pipeline.run_pipeline` for the outputs. The output folder is
written atomically and never over a non-empty folder without ``--overwrite``; bad input is one line on
stderr, exit code 2, and nothing is written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from aitom.commands.shared import seed_number

_OVERRIDES_HELP = (
    "settings overrides as dotted KEY=VALUE, e.g. pick.particle_diameter_a=180 classify.n_classes=3 "
    "denoise.method=diffusion (see configs/pipeline.yaml; units in the key names: _a = Å, _deg = degrees, "
    "_voxels = voxels)"
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pipeline",
        help="tomogram -> picks, classes, class averages with FSC, figures and a report",
        description="Run the whole pipeline on a tomogram (MRC, protein bright): denoise (used for picking "
        "only), pick (DoG by default, saliency, or template matching with pick.templates), extract "
        "subtomograms from the raw tomogram, classify (PCA + k-means with alignment, or a trained "
        "classifier), align and average each class with missing-wedge compensation. Writes "
        "DIR/particles.star, DIR/class_NN_average.mrc, class_NN_fsc.json, class_NN_montage.png, fsc.png, "
        "tomogram_classes.png, "
        "report.md, report.html, summary.json and pipeline.yaml. Doubtful results (no particles, fewer "
        "particles than classes, classes of one particle, a box larger than the tomogram ...) are warned "
        "about and listed in the report.",
    )
    parser.add_argument("--tomogram", type=Path, required=True, help="tomogram (MRC), protein bright")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument(
        "--config", type=Path, help="YAML settings (default: the built-in ones, as configs/pipeline.yaml)"
    )
    parser.add_argument(
        "--seed", type=seed_number, help="random seed, 0 to 2^32 - 1 (overrides the config's seed)"
    )
    parser.add_argument("--device", help="torch device, cpu or cuda (overrides the config's device)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing non-empty output folder"
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=_OVERRIDES_HELP)


def run(args: argparse.Namespace) -> int:
    from aitom.pipeline import load_pipeline_config, run_pipeline
    from aitom.pipeline.report import count_of

    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.device is not None:
        overrides.append(f"device={args.device}")
    config = load_pipeline_config(args.config, overrides)
    result = run_pipeline(args.tomogram, args.out, config, overwrite=args.overwrite)
    if len(result.particles) == 0:
        print(
            f"No particles found: {args.out / 'particles.star'} is an empty table; "
            f"report {args.out / 'report.md'}"
        )
        return 0
    classes = ", ".join(
        f"class {c['class']}: {count_of(c['particles'], 'particle')}, FSC 0.143 "
        + ("undefined" if c["fsc_0.143_a"] is None else f"{c['fsc_0.143_a']:.1f} Å")
        for c in result.classes
    )
    particles = count_of(len(result.particles), "particle")
    print(f"{particles} in {count_of(len(result.classes), 'class')} ({classes})")
    warned = result.summary["warnings"]
    print(f"Report: {args.out / 'report.md'}" + (f" ({count_of(len(warned), 'warning')})" if warned else ""))
    return 0
