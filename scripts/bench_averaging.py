"""Benchmark subtomogram averaging (issue #6): resolution of reference-free averaging and FAML, and scaling.

Sections (each prints a Markdown table; ``--out`` writes them all, ``--json`` the headline figures in the
``scripts/run_benchmarks.py`` contract; both are rewritten after every section, so a run stopped early keeps
what it finished):

1. Reference-free averaging (:func:`aitom.ops.averaging.reference_free_average`) of ``--average`` simulated
   32³ subtomograms of one class (CAND1–CUL1–ROC1, 10 Å voxels, ±60° wedge, shifts ≤ 3 voxels) at SNR
   ``--snr``: FSC-0.5 resolution (Å) of the average against the true map (after aligning the average to the
   map), against the wedge-compensated average under the true poses (the upper bound); and the half-map
   FSC-0.143 the command reports after ``--gold-standard-iterations`` rounds refining the half sets apart,
   next to the FSC-0.5 against the truth it estimates and to the half sets of the last joint round.
2. FAML (:func:`aitom.ops.faml.faml_average`, K = 1) on the same subtomograms: FSC-0.5 against the true map
   and wall time, next to the alignment-based average of section 1.
3. Scaling of ``aitom average`` (the op it calls, :func:`reference_free_average`) with the number of
   subtomograms (``--sizes``, ``--scaling-iterations`` joint rounds each, no gold-standard round): wall time
   and seconds per subtomogram and round; against a straightforward exhaustive search (real-space rotation
   of the reference for every rotation of the same ``so3_grid(step)`` + FFT translation cross-correlation,
   :func:`bench_align.exhaustive_search`) timed on ``--exhaustive`` subtomograms.

Usage: ``python scripts/bench_averaging.py [--average 200] [--snr 0.05] [--iterations 3] [--faml-iterations 1]
[--gold-standard-iterations 2] [--sizes 50 100 200] [--exhaustive 1] [--skip-resolution | --skip-scaling]
[--quick] [--device cuda] [--out bench_averaging.md] [--json bench_averaging.json]``. The defaults take about
10 minutes on 2 quiet CPU cores (``make bench`` stops a benchmark after 15); the full setting of issue #6 is
``--average 500 --iterations 4 --faml-iterations 3 --sizes 250 1000 4000 --exhaustive 2`` (hours on 2 CPU
cores, minutes on a GPU).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from aitom.commands.shared import torch_device
from aitom.errors import InputError
from aitom.fourier import fsc_resolutions, missing_wedge_mask
from aitom.geometry import so3_grid
from aitom.ops.averaging import reference_free_average, wedge_compensated_average
from aitom.ops.faml import faml_average
from bench_align import (
    ASYMMETRIC_CLASSES,
    BOX,
    VOXEL_SIZE_A,
    _resolution_vs_truth,
    _simulate,
    _sync,
    exhaustive_search,
)
from run_benchmarks import (
    check_outputs,
    figure_row,
    real_number,
    reports_input_errors,
    whole_number,
    write_figures,
    write_output,
)

BENCHMARK = "averaging"
MAX_SHIFT = 3.0


def _options(args, gold_standard_iterations: int) -> dict:
    return {
        "voxel_size_a": VOXEL_SIZE_A,
        "angular_step_deg": args.step,
        "max_shift_voxels": MAX_SHIFT + 1,
        "generator": torch.Generator(device=args.device).manual_seed(0),
        "gold_standard_iterations": gold_standard_iterations,
    }


def _joint_half_set_resolution(history: list[dict]) -> float:
    """FSC-0.143 (Å) of the half sets of the last joint round (before the gold-standard rounds)."""
    joint = [entry for entry in history if not entry.get("gold_standard", False)]
    return joint[-1]["fsc_0.143_a"]


def resolution_tables(args, device, rows: list[dict]) -> list[str]:
    """Sections 1 and 2: reference-free averaging and FAML against the truth and the true-pose average."""
    truth = class_potential_map(device)
    mask = missing_wedge_mask((BOX,) * 3, device=device)
    volumes, rotations, shifts = _simulate(
        truth[None], torch.zeros(args.average, dtype=torch.long), args.snr, seed=7, max_shift=MAX_SHIFT
    )
    ideal, _ = wedge_compensated_average(volumes, rotations, shifts, mask)
    ideal_resolution = fsc_resolutions(ideal, truth, voxel_size_a=VOXEL_SIZE_A)["fsc_0.5_a"]

    _sync(device)
    start = time.perf_counter()
    aligned = reference_free_average(
        volumes, mask, iterations=args.iterations, **_options(args, args.gold_standard_iterations)
    )
    _sync(device)
    aligned_time = time.perf_counter() - start
    aligned_resolution = _resolution_vs_truth(aligned.average, truth)
    reported_resolution = aligned.history[-1]["fsc_0.143_a"]
    joint_rounds = sum(not entry.get("gold_standard", False) for entry in aligned.history)
    setting = (
        f"{args.average} subtomograms of {ASYMMETRIC_CLASSES[0]} ({BOX}³, {VOXEL_SIZE_A:g} Å, ±60° wedge, "
        f"shifts ≤ {MAX_SHIFT:g} voxels, SNR {args.snr:g}), rotation step {args.step:g}°, device {device}"
    )
    first = [
        f"Reference-free averaging of {setting}; {joint_rounds} joint iterations, then "
        f"{args.gold_standard_iterations} gold-standard rounds. The half-map FSC-0.143 is the resolution the "
        "command reports; for independent half maps it estimates the FSC-0.5 of the final map against the "
        "truth (Rosenthal & Henderson 2003), while half sets of one joint alignment share their noise and "
        "overstate it.",
        "",
        "| average | FSC-0.5 vs true map (Å) | half-map FSC-0.143 (Å) | time (s) |",
        "|---|---|---|---|",
        f"| reference-free (this) | {aligned_resolution:.1f} | {reported_resolution:.1f} "
        f"| {aligned_time:.0f} |",
        f"| half sets of the last joint round | | {_joint_half_set_resolution(aligned.history):.1f} | |",
        f"| true poses (upper bound) | {ideal_resolution:.1f} | | |",
    ]
    print("\n".join(first), flush=True)
    rows.append(
        figure_row(
            BENCHMARK,
            f"reference-free average FSC-0.5 vs truth, {args.average} subtomograms SNR {args.snr:g}",
            aligned_resolution,
            "Å",
            "true-pose average",
            ideal_resolution,
        )
    )
    rows.append(
        figure_row(
            BENCHMARK,
            "reported half-map FSC-0.143",
            reported_resolution,
            "Å",
            "FSC-0.5 of the average vs truth",
            aligned_resolution,
        )
    )

    _sync(device)
    start = time.perf_counter()
    faml = faml_average(
        volumes,
        mask,
        n_classes=1,
        iterations=args.faml_iterations,
        **_options(args, args.gold_standard_iterations),
    )
    _sync(device)
    faml_time = time.perf_counter() - start
    faml_resolution = _resolution_vs_truth(faml.averages[0], truth)
    second = [
        f"FAML (K = 1, {args.faml_iterations} EM iterations after 2 reference-free ones, then "
        f"{args.gold_standard_iterations} gold-standard rounds) against "
        f"alignment-based averaging ({joint_rounds} joint + {args.gold_standard_iterations} gold-standard "
        f"iterations), same {args.average} subtomograms.",
        "",
        "| method | FSC-0.5 vs true map (Å) | wall time (s) |",
        "|---|---|---|",
        f"| FAML | {faml_resolution:.1f} | {faml_time:.0f} |",
        f"| alignment-based (reference-free) | {aligned_resolution:.1f} | {aligned_time:.0f} |",
        f"| true poses (upper bound) | {ideal_resolution:.1f} | |",
    ]
    print("\n".join(second), flush=True)
    rows.append(
        figure_row(
            BENCHMARK,
            "FAML average FSC-0.5 vs truth",
            faml_resolution,
            "Å",
            "alignment-based average",
            aligned_resolution,
        )
    )
    rows.append(
        figure_row(BENCHMARK, "FAML wall time", faml_time, "s", "alignment-based averaging", aligned_time)
    )
    return ["\n".join(first), "\n".join(second)]


def class_potential_map(device: torch.device) -> torch.Tensor:
    from aitom.simulate import class_potential

    return class_potential(ASYMMETRIC_CLASSES[0], VOXEL_SIZE_A, box_size=BOX).to(device)


def scaling_table(args, device, rows: list[dict]) -> str:
    """Section 3: wall time of reference-free averaging against the number of subtomograms."""
    truth = class_potential_map(device)
    mask = missing_wedge_mask((BOX,) * 3, device=device)
    largest = max(args.sizes)
    volumes, _, _ = _simulate(
        truth[None], torch.zeros(largest, dtype=torch.long), args.snr, seed=13, max_shift=MAX_SHIFT
    )
    lines = [
        f"Scaling of `aitom average` (reference_free_average, {args.scaling_iterations} joint iteration(s) "
        "and no gold-standard round, which costs about as much as a joint one, "
        f"rotation step {args.step:g}°, batch 64) with the number of {BOX}³ subtomograms (SNR {args.snr:g}), "
        f"device {device}; the exhaustive search (real-space rotation of the reference for all "
        f"{so3_grid(args.step).shape[0]} rotations of the same grid + FFT translation CC) timed on "
        f"{args.exhaustive} subtomograms.",
        "",
        "| method | subtomograms | wall time (s) | s / subtomogram / iteration "
        "| CPU s (all threads) / subtomogram / iteration |",
        "|---|---|---|---|---|",
    ]
    per_subtomogram, cpu_per_subtomogram = {}, {}
    for size in args.sizes:
        _sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        reference_free_average(
            volumes[:size],
            mask,
            iterations=args.scaling_iterations,
            **_options(args, gold_standard_iterations=0),
        )
        _sync(device)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        per_subtomogram[size] = elapsed / (size * args.scaling_iterations)
        cpu_per_subtomogram[size] = cpu / (size * args.scaling_iterations)
        lines.append(
            f"| aitom average | {size} | {elapsed:.1f} | {per_subtomogram[size]:.4f} "
            f"| {cpu_per_subtomogram[size]:.4f} |"
        )
        print(lines[-1], flush=True)
    exhaustive_per_subtomogram = exhaustive_cpu = None
    if args.exhaustive > 0:
        grid = so3_grid(args.step, device=device)
        _sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        exhaustive_search(truth, volumes[: args.exhaustive], mask, grid, MAX_SHIFT + 1)
        _sync(device)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        exhaustive_per_subtomogram = elapsed / args.exhaustive
        exhaustive_cpu = cpu / args.exhaustive
        lines.append(
            f"| exhaustive search | {args.exhaustive} | {elapsed:.1f} | {exhaustive_per_subtomogram:.4f} "
            f"| {exhaustive_cpu:.4f} |"
        )
        print(lines[-1], flush=True)
    for size, seconds in per_subtomogram.items():
        rows.append(
            figure_row(
                BENCHMARK,
                f"aitom average, s per subtomogram and iteration ({size} subtomograms)",
                seconds,
                "s",
                "exhaustive search" if exhaustive_per_subtomogram is not None else "",
                exhaustive_per_subtomogram,
            )
        )
        rows.append(
            figure_row(
                BENCHMARK,
                f"aitom average, CPU s per subtomogram and iteration ({size} subtomograms)",
                cpu_per_subtomogram[size],
                "CPU s",
                "exhaustive search" if exhaustive_cpu is not None else "",
                exhaustive_cpu,
            )
        )
    return "\n".join(lines)


@reports_input_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--average", type=whole_number(1), default=200, help="subtomograms for sections 1 and 2"
    )
    parser.add_argument(
        "--snr",
        type=real_number(above=0.0),
        default=0.05,
        help="signal-to-noise ratio of the subtomograms, var(signal) / var(noise)",
    )
    parser.add_argument(
        "--iterations", type=whole_number(1), default=3, help="reference-free averaging iterations"
    )
    parser.add_argument("--faml-iterations", type=whole_number(1), default=1, help="FAML EM iterations")
    parser.add_argument(
        "--gold-standard-iterations",
        type=whole_number(0),
        default=2,
        help="rounds refining the half sets apart after the joint ones in sections 1 and 2 "
        "(aitom average's default: 2)",
    )
    parser.add_argument(
        "--step",
        type=real_number(above=0.0, at_most=180.0),
        default=15.0,
        help="angular step of the rotation search, degrees",
    )
    parser.add_argument(
        "--sizes",
        type=whole_number(1),
        nargs="+",
        default=[50, 100, 200],
        help="subtomogram counts for the scaling",
    )
    parser.add_argument(
        "--scaling-iterations", type=whole_number(1), default=1, help="iterations per scaling run"
    )
    parser.add_argument(
        "--exhaustive",
        type=whole_number(0),
        default=1,
        help="subtomograms timed with the exhaustive search (0: skip)",
    )
    parser.add_argument(
        "--skip-resolution", action="store_true", help="run only the scaling section (section 3)"
    )
    parser.add_argument("--skip-scaling", action="store_true", help="run only sections 1 and 2")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes (60 subtomograms, 2 iterations, sizes 20 40, 30° step)",
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device: cpu or cuda[:N] (default cuda when there is one)",
    )
    parser.add_argument("--out", type=Path, help="write the Markdown tables here")
    parser.add_argument(
        "--json", type=Path, help="write the headline figures here (JSON, see run_benchmarks.py)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.average, args.iterations, args.faml_iterations = 60, 2, 1
        args.sizes, args.exhaustive, args.step = [20, 40], 1, 30.0
    if args.skip_resolution and args.skip_scaling:
        raise InputError("--skip-resolution and --skip-scaling together leave nothing to run")
    check_outputs(args.out, args.json)
    device = torch_device(args.device)
    tables: list[str] = []
    rows: list[dict] = []

    def save() -> None:
        write_output(args.out, "\n\n".join(tables) + "\n")
        write_figures(args.json, rows)

    if not args.skip_resolution:
        tables.extend(resolution_tables(args, device, rows))
        save()
    if not args.skip_scaling:
        tables.append(scaling_table(args, device, rows))
        save()
    print()
    print("\n\n".join(tables))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
