"""``aitom average --particles P.star --out DIR [--iterations N] [--classes K|auto] [--method align|faml]``.

Reads the subtomograms named in the table's ``rlnImageName`` column (paths relative to the STAR file), runs
reference-free iterative averaging (one class), simultaneous classification and averaging (``--classes K`` or
``auto``) or FAML maximum likelihood (``--method faml``), and writes DIR/average_classN.mrc (N from 1),
DIR/particles.star (the input table with the found rlnAngleRot/Tilt/Psi, rlnOriginX/Y/Z = −shift in voxels,
rlnClassNumber and aitomAlignmentScore), DIR/fsc.json and DIR/fsc.png (half-set FSC per class).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from aitom.commands.shared import add_voxel_size_option


def _classes(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"need at least 1 class, got {value}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from aitom.commands.align import _tilt_range

    parser = subparsers.add_parser(
        "average",
        help="reference-free subtomogram averaging, classification and FAML",
        description="Align and average subtomograms without a reference (missing-wedge compensated), "
        "optionally classifying them (PCA + k-means with the number of classes from the silhouette) or by "
        "FAML maximum likelihood. Writes DIR/average_classN.mrc, DIR/particles.star (found angles in "
        "degrees, origins in voxels, classes), DIR/fsc.json and DIR/fsc.png.",
    )
    parser.add_argument(
        "--particles",
        type=Path,
        required=True,
        help="STAR table whose rlnImageName column names MRC subtomograms",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--iterations", type=int, default=5, help="align/average rounds (default 5)")
    parser.add_argument(
        "--classes", type=_classes, default=1, help="number of classes, or 'auto' to choose it (default 1)"
    )
    parser.add_argument(
        "--method",
        choices=("align", "faml"),
        default="align",
        help="alignment-based averaging or FAML (default align)",
    )
    parser.add_argument(
        "--wedge",
        type=_tilt_range,
        default=(-60.0, 60.0),
        help="tilt range of the subtomograms' missing wedge, degrees: D for (-D, D) or MIN,MAX (default 60)",
    )
    parser.add_argument(
        "--fourier-weights",
        choices=("auto", "wedge"),
        default="auto",
        help="auto: when the table has rlnCtfImage (the 3-D CTF²·dose weights `aitom reconstruct` writes, or "
        "RELION 3/4 and Warp 3-D CTF volumes in FFTW's half layout; a signed CTF is squared), weight each "
        "particle's Fourier coefficients by √(weight / its maximum) in alignment, classification, FAML and "
        "averaging (real wedge and CTF); wedge: the --wedge mask for all (default auto)",
    )
    parser.add_argument(
        "--particle-diameter",
        type=float,
        default=None,
        help="diameter of a soft spherical mask on the reference during alignment, Å (default: no mask)",
    )
    parser.add_argument(
        "--annealing-iterations",
        type=int,
        default=0,
        help="start from a stochastic-annealing initial model of this many iterations (about 20; each one a "
        "full rotational search) instead of the random-rotation average: for low SNR, where a random start "
        "locks on to noise; single-class averaging only (default 0: random start)",
    )
    parser.add_argument(
        "--starts",
        type=int,
        default=1,
        help="independent random (or annealed) starts; the one with the best final mean alignment score "
        "(with --method faml: the highest final log-likelihood) is kept, no reference needed. Each start "
        "costs a full run: use 3 or more for few, noisy particles; one class or FAML (default 1)",
    )
    parser.add_argument(
        "--step", type=float, default=15.0, help="angular step of the rotation search, degrees (default 15)"
    )
    parser.add_argument(
        "--max-shift",
        type=float,
        default=None,
        help="largest shift searched, voxels (up to 4: rotations scored with phases over the integer shifts; "
        "more or unset: translation-invariant amplitude search)",
    )
    parser.add_argument(
        "--max-frequency",
        type=float,
        default=0.35,
        help="highest frequency used in alignment, cycles/voxel (0.5 = Nyquist; default 0.35)",
    )
    parser.add_argument(
        "--max-classes", type=int, default=6, help="largest number of classes tried by 'auto' (default 6)"
    )
    parser.add_argument(
        "--merge-threshold",
        type=float,
        default=0.9,
        help="with --classes auto: merge two classes when the estimated correlation of their noise-free "
        "structures (superposed class averages, corrected by each class's half-set reproducibility) is at "
        "least this, dimensionless in (0, 1]; 0 disables merging (default 0.9)",
    )
    parser.add_argument(
        "--symmetry",
        default="C1",
        help="point group of the particle, imposed on the average after every iteration with its axes "
        "found from the average: C1 (none, default), Cn, Dn, T, O or I (single-class averaging)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (initial rotations, k-means)")
    add_voxel_size_option(parser, "the subtomograms")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing non-empty output folder"
    )


def _read_subtomograms(star: Path, voxel_size_override: float | None):
    import torch

    from aitom.errors import InputError
    from aitom.io import read_particles, read_volume

    table = read_particles(star, require=("rlnImageName",))
    if len(table) == 0:
        raise InputError("the particle table is empty", star)
    if len(table) < 2:
        raise InputError("need at least 2 particles to average", star)
    volumes, voxel_size_a = [], None
    for name in table["rlnImageName"]:
        path = Path(str(name))
        path = path if path.is_absolute() else star.parent / path
        volume, header = read_volume(path, voxel_size_a=voxel_size_override)
        if volumes and volume.shape != volumes[0].shape:
            raise InputError(
                f"size {tuple(volume.shape)} differs from the first particle's {tuple(volumes[0].shape)}",
                path,
            )
        if len(set(volume.shape)) != 1:
            raise InputError(f"subtomogram must be cubic, got {tuple(volume.shape)}", path)
        if voxel_size_a is not None and abs(header.voxel_size_a[0] - voxel_size_a) > 1e-3 * voxel_size_a:
            raise InputError(
                f"voxel size {header.voxel_size_a[0]:g} Å differs from the first particle's "
                f"{voxel_size_a:g} Å (rescale the subtomograms to one voxel size)",
                path,
            )
        volumes.append(volume)
        voxel_size_a = voxel_size_a or header.voxel_size_a[0]
    return table, torch.stack(volumes), float(voxel_size_a)


def _fourier_weights(table, star: Path, volumes):
    """Per-particle masks √(w / max w) from the rlnCtfImage 3-D weights, same shape as ``volumes``.

    Accepted layouts, as RELION reads them: a centred cube (what ``aitom reconstruct`` writes: CTF²·dose),
    FFTW's half layout ``S × S × (S/2 + 1)`` (RELION 3/4 and Warp 3-D CTF volumes), and that half layout with
    RELION 4's multiplicity stacked after it along Z (``2S × S × (S/2 + 1)``; the multiplicity is not used).
    A weight with negative values is a signed CTF (subtomograms not CTF-premultiplied) and is squared.
    """
    import torch

    from aitom.errors import InputError
    from aitom.fourier import hermitian_half_to_centered
    from aitom.io import read_volume

    size = volumes.shape[-1]
    half_x = size // 2 + 1
    masks = []
    for name in table["rlnCtfImage"]:
        path = Path(str(name))
        path = path if path.is_absolute() else star.parent / path
        weight, _ = read_volume(path, voxel_size_a=1.0)  # a weight's voxel size is not used
        if tuple(weight.shape) in ((size, size, half_x), (2 * size, size, half_x)):
            weight = hermitian_half_to_centered(weight[:size], size)
        elif weight.shape != volumes.shape[-3:]:
            raise InputError(
                f"3-D weight of size {tuple(weight.shape)} (Z, Y, X) for subtomograms of "
                f"{tuple(volumes.shape[-3:])}: expected a centred {size}³ cube or FFTW's half layout "
                f"({size}, {size}, {half_x})",
                path,
            )
        if not bool(torch.isfinite(weight).all()) or float(weight.abs().max()) <= 0:
            raise InputError("3-D weight must be finite and not all zero", path)
        if float(weight.min()) < 0:
            weight = weight.square()
        masks.append((weight / weight.max()).sqrt())
    return torch.stack(masks)


def run(args: argparse.Namespace) -> int:
    import json

    import torch

    from aitom.commands.shared import check_output_folder, output_folder, torch_device
    from aitom.errors import InputError
    from aitom.fourier import missing_wedge_mask
    from aitom.geometry import point_group_order
    from aitom.io import write_particles, write_volume
    from aitom.ops.averaging import reference_free_average
    from aitom.ops.clustering import classify_and_average, describe_merge
    from aitom.ops.faml import faml_average

    if args.iterations < 1:
        raise InputError(f"--iterations must be >= 1, got {args.iterations}")
    if not 0.0 < args.max_frequency <= 0.5:
        raise InputError(f"--max-frequency must be in (0, 0.5] cycles/voxel, got {args.max_frequency}")
    if not 0.0 < args.step <= 180.0:
        raise InputError(f"--step must be in (0, 180] degrees, got {args.step}")
    check_output_folder(args.out, args.overwrite)
    device = torch_device(args.device)
    table, volumes, voxel_size_a = _read_subtomograms(args.particles, args.voxel_size)
    volumes = volumes.to(device)
    n = volumes.shape[0]
    if args.classes != "auto" and args.classes > n:
        raise InputError(f"--classes {args.classes} is more than the {n} particles")
    shape = tuple(volumes.shape[-3:])
    if args.annealing_iterations < 0 or args.annealing_iterations == 1:
        raise InputError(f"--annealing-iterations must be 0 or at least 2, got {args.annealing_iterations}")
    if args.starts < 1:
        raise InputError(f"--starts must be >= 1, got {args.starts}")
    if not 0.0 <= args.merge_threshold <= 1.0:
        raise InputError(f"--merge-threshold must be in [0, 1] (0: no merging), got {args.merge_threshold}")
    if args.particle_diameter is not None and not args.particle_diameter > 0:
        raise InputError(f"--particle-diameter must be > 0 Å, got {args.particle_diameter}")
    try:
        point_group_order(args.symmetry)
    except InputError as error:
        raise InputError(f"--symmetry: {error}") from None
    use_ctf_weights = args.fourier_weights == "auto" and "rlnCtfImage" in table.columns
    if args.method == "faml" or args.classes != 1:
        if args.particle_diameter is not None:
            raise InputError("--particle-diameter works with single-class averaging only")
        if args.annealing_iterations:
            raise InputError("--annealing-iterations works with single-class averaging only")
        if point_group_order(args.symmetry) > 1:
            raise InputError("--symmetry works with single-class averaging only")
        if args.starts != 1 and args.method != "faml":
            raise InputError("--starts works with single-class averaging or --method faml only")
    if use_ctf_weights:
        mask = _fourier_weights(table, args.particles, volumes).to(device)
        print(f"Fourier weights: rlnCtfImage (per-particle 3-D weights) for {n} particles; --wedge not used")
    else:
        mask = missing_wedge_mask(
            shape, tilt_min_deg=args.wedge[0], tilt_max_deg=args.wedge[1], device=device
        )
    generator = torch.Generator(device=device).manual_seed(args.seed)
    starts_report: dict = {}
    merges_report: dict = {}
    alignment_options = {
        "angular_step_deg": args.step,
        "max_shift_voxels": args.max_shift,
        "max_frequency": args.max_frequency,
    }
    if args.method == "faml":
        n_classes = 1 if args.classes == "auto" else args.classes
        result = faml_average(
            volumes,
            mask,
            n_classes=n_classes,
            iterations=args.iterations,
            voxel_size_a=voxel_size_a,
            starts=args.starts,
            generator=generator,
            progress=True,
            **alignment_options,
        )
        if args.starts > 1:
            for index, value in enumerate(result.start_log_likelihoods):
                kept = " (kept)" if index == result.kept_start else ""
                print(f"start {index + 1}: final log-likelihood {value:.1f}{kept}")
            starts_report = {
                "start_log_likelihoods": result.start_log_likelihoods,
                "kept_start": result.kept_start + 1,
            }
        averages, labels, alignment, fsc_curves, frequency = (
            result.averages,
            result.labels,
            result.alignment,
            result.fsc,
            result.frequency,
        )
    elif args.classes == 1:
        single = reference_free_average(
            volumes,
            mask,
            iterations=args.iterations,
            voxel_size_a=voxel_size_a,
            particle_radius_voxels=(
                None if args.particle_diameter is None else args.particle_diameter / (2 * voxel_size_a)
            ),
            annealing_iterations=args.annealing_iterations,
            generator=generator,
            progress=True,
            starts=args.starts,
            symmetry=args.symmetry,
            **alignment_options,
        )
        if args.starts > 1:
            for index, score in enumerate(single.start_scores):
                kept = " (kept)" if index == single.kept_start else ""
                print(f"start {index + 1}: mean alignment score {score:.4f}{kept}")
            starts_report = {"start_scores": single.start_scores, "kept_start": single.kept_start + 1}
        averages, labels, alignment = single.average[None], torch.zeros(n, dtype=torch.long), single.alignment
        fsc_curves, frequency = single.fsc[None], single.frequency
    else:
        result = classify_and_average(
            volumes,
            mask,
            n_classes=None if args.classes == "auto" else args.classes,
            max_classes=args.max_classes,
            merge_threshold=args.merge_threshold or None,
            rounds=args.iterations,
            voxel_size_a=voxel_size_a,
            generator=generator,
            progress=True,
            **alignment_options,
        )
        classes_before = result.averages.shape[0] + len(result.merges)
        for merge in result.merges:
            first, second = (k + 1 for k in merge["classes"])
            print(
                f"merged classes {first} and {second} of {classes_before} "
                f"({classes_before - 1} left): {describe_merge(merge)}"
            )
            classes_before -= 1
        if result.structural_correlations is not None:
            merges_report = {
                "merges": result.merges,
                "structural_correlations": result.structural_correlations.tolist(),
            }
        averages, labels, alignment, fsc_curves, frequency = (
            result.averages,
            result.labels,
            result.alignment,
            result.fsc,
            result.frequency,
        )

    out_table = table.copy()
    angles = torch.rad2deg(alignment.angles_rad).cpu().double().numpy()
    shifts = alignment.shift_xyz.cpu().double().numpy()
    for column, values in zip(("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"), angles.T):
        out_table[column] = values
    for column, values in zip(("rlnOriginX", "rlnOriginY", "rlnOriginZ"), shifts.T):
        out_table[column] = -values
    out_table["rlnClassNumber"] = labels.cpu().numpy() + 1
    out_table["aitomAlignmentScore"] = alignment.score.cpu().double().numpy()
    from aitom.fourier import resolution_at

    report = {
        "voxel_size_a": voxel_size_a,
        "frequency_per_a": (frequency.cpu() / voxel_size_a).tolist(),
        **starts_report,
        **merges_report,
        "classes": [],
    }
    for index, curve in enumerate(fsc_curves.cpu()):
        report["classes"].append(
            {
                "class": index + 1,
                "particles": int((labels == index).sum()),
                "fsc": curve.tolist(),
                "fsc_0.5_a": float(resolution_at(frequency.cpu(), curve, 0.5, voxel_size_a=voxel_size_a)),
                "fsc_0.143_a": float(resolution_at(frequency.cpu(), curve, 0.143, voxel_size_a=voxel_size_a)),
            }
        )
    with output_folder(args.out) as folder:
        for index, average in enumerate(averages.cpu()):
            write_volume(folder / f"average_class{index + 1}.mrc", average, voxel_size_a)
        write_particles(folder / "particles.star", out_table)
        (folder / "fsc.json").write_text(json.dumps(report, indent=2) + "\n")
        _plot_fsc(report, folder / "fsc.png")
    summary = ", ".join(
        f"class {c['class']}: {c['particles']} particles, FSC 0.143 {c['fsc_0.143_a']:.1f} Å"
        for c in report["classes"]
    )
    print(f"{args.out}: {summary}")
    return 0


def _plot_fsc(report: dict, path: Path) -> None:
    """Half-set FSC of every class against frequency (1/Å), with the 0.5 and 0.143 thresholds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from aitom.io import atomic_output

    figure = Figure(figsize=(5, 3.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for entry in report["classes"]:
        axes.plot(
            report["frequency_per_a"], entry["fsc"], label=f"class {entry['class']} ({entry['particles']})"
        )
    for threshold in (0.5, 0.143):
        axes.axhline(threshold, color="grey", linestyle=":", linewidth=0.8)
    axes.set_xlabel("frequency (1/Å)")
    axes.set_ylabel("half-set FSC")
    axes.set_ylim(-0.1, 1.05)
    axes.legend(fontsize=7)
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png")
