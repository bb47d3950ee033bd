"""Benchmark subtomogram alignment, averaging, classification and FAML on simulated 32³ subtomograms.

Sections (each prints a Markdown table; ``--out`` writes them all to a file):

1. Pairwise alignment by SNR: the fast aligner (amplitude rotational search over ``so3_grid(step)``, FFT
   translation for the best rotations, gradient refinement) against a straightforward exhaustive search over
   the same rotation sample (real-space rotation of the reference + FFT translation cross-correlation for
   every rotation, constrained to the common wedge). Median rotation / shift errors and alignments per second.
2. ``--average N``: reference-free averaging of N subtomograms of one class; FSC-0.5 / 0.143 resolution of
   the average against the true map (after aligning it to the map), and of the true-pose average.
3. ``--mixture N``: N subtomograms of 3 classes; adjusted Rand index of clustering-based classification and of
   FAML, with the FSC-0.5 resolution of each class average against its true map.

Usage: ``python scripts/bench_align.py [--pairs 16] [--snr 0.1 0.03 0.01] [--step 15] [--average 500
--average-snr 0.05] [--mixture 150] [--device cuda] [--out bench_align.md]``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from aitom.commands.shared import torch_device
from aitom.fourier import fsc_resolutions, missing_wedge_mask
from aitom.geometry import random_rotations, rotation_angle_between, so3_grid
from aitom.ops.alignment import align_subtomograms, translation_search
from aitom.ops.averaging import align_to_reference_frame, reference_free_average, wedge_compensated_average
from aitom.ops.clustering import adjusted_rand_index, classify_and_average
from aitom.ops.faml import faml_average
from aitom.simulate import class_potential, random_shifts, simulate_subtomogram_batch
from run_benchmarks import (
    check_outputs,
    figure_row,
    real_number,
    reports_input_errors,
    whole_number,
    write_figures,
    write_output,
)

VOXEL_SIZE_A = 10.0
BOX = 32
ASYMMETRIC_CLASSES = ("cand1_cul1_roc1", "hsp90", "ribosome_30s")


def _simulate(maps: torch.Tensor, class_ids: torch.Tensor, snr: float, seed: int, max_shift: float):
    generator = torch.Generator().manual_seed(seed)
    n = class_ids.shape[0]
    rotations = random_rotations(n, generator=generator)
    shifts = random_shifts(n, max_shift, generator=generator, dtype=torch.float32)
    noise_generator = torch.Generator(device=maps.device).manual_seed(seed + 1)
    volumes = []
    for start in range(0, n, 64):
        part = slice(start, start + 64)
        volumes.append(
            simulate_subtomogram_batch(
                maps,
                class_ids[part],
                rotations[part],
                shifts[part],
                snr=snr,
                generator=noise_generator,
                voxel_size_a=VOXEL_SIZE_A,
            )
        )
    return torch.cat(volumes), rotations.to(maps.device), shifts.to(maps.device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def exhaustive_search(reference, volumes, mask, grid, max_shift, chunk: int = 256):
    """Real-space rotation of the reference for every grid rotation + FFT translation CC; best per volume."""
    best_score = torch.full((volumes.shape[0],), -math.inf, device=volumes.device)
    best_rotation = torch.zeros(volumes.shape[0], 3, 3, device=volumes.device)
    best_shift = torch.zeros(volumes.shape[0], 3, device=volumes.device)
    for index, volume in enumerate(volumes):
        for rotations in grid.split(chunk):
            shifts, scores = translation_search(
                reference,
                volume.expand(rotations.shape[0], -1, -1, -1),
                rotations,
                None,
                mask,
                max_shift_voxels=max_shift,
                max_frequency=0.4,
            )
            top = scores.argmax()
            if scores[top] > best_score[index]:
                best_score[index], best_rotation[index], best_shift[index] = (
                    scores[top],
                    rotations[top],
                    shifts[top],
                )
    return best_rotation, best_shift


def _errors(rotation, shift, true_rotation, true_shift) -> tuple[float, float]:
    angle = torch.rad2deg(rotation_angle_between(rotation.cpu(), true_rotation.cpu())).median()
    distance = (shift.cpu() - true_shift.cpu()).norm(dim=1).median()
    return float(angle), float(distance)


def pairwise_table(args, device, figures: list[dict]) -> str:
    reference = class_potential(ASYMMETRIC_CLASSES[0], VOXEL_SIZE_A, box_size=BOX).to(device)
    mask = missing_wedge_mask((BOX,) * 3, device=device)
    grid = so3_grid(args.step, device=device)
    rows = [
        f"Pairwise alignment, {BOX}³ subtomograms of {ASYMMETRIC_CLASSES[0]} at {VOXEL_SIZE_A:g} Å, "
        f"±60° wedge, shifts ≤ {args.max_shift:g} voxels, rotation sample so3_grid({args.step:g}°) = "
        f"{grid.shape[0]} rotations, device {device}.",
        "",
        "| SNR | method | pairs | median rotation error (°) | median shift error (voxels) | alignments / s |",
        "|---|---|---|---|---|---|",
    ]
    for snr in args.snr:
        volumes, rotations, shifts = _simulate(
            reference[None],
            torch.zeros(args.pairs, dtype=torch.long),
            snr,
            seed=int(1000 * snr),
            max_shift=args.max_shift,
        )
        _sync(device)
        start = time.perf_counter()
        result = align_subtomograms(
            reference, volumes, None, mask, angular_step_deg=args.step, max_shift_voxels=args.max_shift + 1
        )
        _sync(device)
        fast_time = time.perf_counter() - start
        angle, distance = _errors(result.rotation, result.shift_xyz, rotations, shifts)
        fast_rate, fast_angle = args.pairs / fast_time, angle
        rows.append(
            f"| {snr:g} | fast (this) | {args.pairs} | {angle:.2f} | {distance:.2f} | "
            f"{args.pairs / fast_time:.2f} |"
        )
        n_exhaustive = min(args.exhaustive_pairs, args.pairs)
        if n_exhaustive > 0:
            _sync(device)
            start = time.perf_counter()
            rotation, shift = exhaustive_search(
                reference, volumes[:n_exhaustive], mask, grid, args.max_shift + 1
            )
            _sync(device)
            slow_time = time.perf_counter() - start
            angle, distance = _errors(rotation, shift, rotations[:n_exhaustive], shifts[:n_exhaustive])
            rows.append(
                f"| {snr:g} | exhaustive | {n_exhaustive} | {angle:.2f} | {distance:.2f} | "
                f"{n_exhaustive / slow_time:.3f} |"
            )
        slow = n_exhaustive > 0
        figures.append(
            figure_row(
                "align",
                f"alignments/s, SNR {snr:g}",
                fast_rate,
                "alignments/s",
                "exhaustive search" if slow else "",
                n_exhaustive / slow_time if slow else None,
            )
        )
        figures.append(
            figure_row(
                "align",
                f"median rotation error, SNR {snr:g}",
                fast_angle,
                "°",
                "exhaustive search" if slow else "",
                angle if slow else None,
            )
        )
        print(rows[-1] if n_exhaustive == 0 else "\n".join(rows[-2:]), flush=True)
    return "\n".join(rows)


def _resolution_vs_truth(average: torch.Tensor, truth: torch.Tensor) -> float:
    """FSC-0.5 resolution (Å) of an average against the true map after aligning it to the map."""
    found = align_subtomograms(truth, average, angular_step_deg=10.0, max_shift_voxels=8)
    back = align_to_reference_frame(average[None], found.rotation, found.shift_xyz)[0]
    return fsc_resolutions(back, truth, voxel_size_a=VOXEL_SIZE_A)["fsc_0.5_a"]


def averaging_table(args, device, figures: list[dict]) -> str:
    truth = class_potential(ASYMMETRIC_CLASSES[0], VOXEL_SIZE_A, box_size=BOX).to(device)
    mask = missing_wedge_mask((BOX,) * 3, device=device)
    volumes, rotations, shifts = _simulate(
        truth[None],
        torch.zeros(args.average, dtype=torch.long),
        args.average_snr,
        seed=7,
        max_shift=args.max_shift,
    )
    start = time.perf_counter()
    result = reference_free_average(
        volumes,
        mask,
        iterations=args.iterations,
        voxel_size_a=VOXEL_SIZE_A,
        angular_step_deg=args.step,
        max_shift_voxels=args.max_shift + 1,
        generator=torch.Generator(device=device).manual_seed(0),
        progress=True,
    )
    elapsed = time.perf_counter() - start
    ideal, _ = wedge_compensated_average(volumes, rotations, shifts, mask)
    last = result.history[-1]
    ideal_resolution = fsc_resolutions(ideal, truth, voxel_size_a=VOXEL_SIZE_A)["fsc_0.5_a"]
    resolution = _resolution_vs_truth(result.average, truth)
    figures.append(
        figure_row(
            "align",
            f"reference-free average FSC-0.5 vs truth ({args.average} subtomograms)",
            resolution,
            "Å",
            "true-pose average",
            ideal_resolution,
        )
    )
    gold_rounds = sum(entry.get("gold_standard", False) for entry in result.history)
    rows = [
        f"Reference-free averaging of {args.average} subtomograms ({ASYMMETRIC_CLASSES[0]}, "
        f"SNR {args.average_snr:g}, {len(result.history) - gold_rounds} joint iterations and {gold_rounds} "
        f"refining the half sets apart, {elapsed:.0f} s on {device}).",
        "",
        "| average | FSC-0.5 vs true map (Å) | gold-standard half-map FSC-0.5 (Å) | half-map FSC-0.143 (Å) |",
        "|---|---|---|---|",
        f"| reference-free (this) | {resolution:.1f} | {last['fsc_0.5_a']:.1f} | {last['fsc_0.143_a']:.1f} |",
        f"| true poses (upper bound) | {ideal_resolution:.1f} | | |",
    ]
    print("\n".join(rows), flush=True)
    return "\n".join(rows)


def mixture_table(args, device, figures: list[dict]) -> str:
    maps = torch.stack([class_potential(name, VOXEL_SIZE_A, box_size=BOX) for name in ASYMMETRIC_CLASSES]).to(
        device
    )
    mask = missing_wedge_mask((BOX,) * 3, device=device)
    truth = torch.arange(3).repeat_interleave(math.ceil(args.mixture / 3))[: args.mixture]
    volumes, _, _ = _simulate(maps, truth, args.mixture_snr, seed=11, max_shift=args.max_shift)
    rows = [
        f"Classification of {args.mixture} subtomograms of 3 classes ({', '.join(ASYMMETRIC_CLASSES)}), SNR "
        f"{args.mixture_snr:g}, device {device}.",
        "",
        "| method | classes found | adjusted Rand index | FSC-0.5 vs true map per class (Å) | time (s) |",
        "|---|---|---|---|---|",
    ]
    options = {
        "angular_step_deg": args.step,
        "max_shift_voxels": args.max_shift + 1,
        "voxel_size_a": VOXEL_SIZE_A,
    }
    start = time.perf_counter()
    clustering = classify_and_average(
        volumes,
        mask,
        n_classes=None,
        max_classes=5,
        rounds=args.iterations,
        generator=torch.Generator(device=device).manual_seed(0),
        **options,
    )
    clustering_time = time.perf_counter() - start
    start = time.perf_counter()
    faml = faml_average(
        volumes,
        mask,
        n_classes=3,
        iterations=args.iterations,
        starts=3,
        generator=torch.Generator(device=device).manual_seed(0),
        **options,
    )
    faml_time = time.perf_counter() - start
    for name, result, elapsed in (
        ("PCA + k-means (auto K)", clustering, clustering_time),
        ("FAML (K = 3, best log-likelihood of 3 starts)", faml, faml_time),
    ):
        resolutions = []
        for k, average in enumerate(result.averages):
            members = truth[result.labels.cpu() == k]
            if members.numel() == 0:
                continue
            majority = int(members.mode().values)
            resolutions.append(f"{_resolution_vs_truth(average, maps[majority]):.0f}")
        ari = adjusted_rand_index(truth, result.labels)
        figures.append(figure_row("align", f"{name} adjusted Rand index", float(ari), ""))
        rows.append(
            f"| {name} | {result.averages.shape[0]} | {ari:.3f} | {', '.join(resolutions)} | {elapsed:.0f} |"
        )
        print(rows[-1], flush=True)
    return "\n".join(rows)


@reports_input_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    positive = real_number(above=0.0)
    parser.add_argument(
        "--pairs", type=whole_number(1), default=16, help="pairs per SNR for the fast aligner"
    )
    parser.add_argument(
        "--exhaustive-pairs",
        type=whole_number(0),
        default=2,
        help="pairs per SNR for the exhaustive search (0: skip it)",
    )
    parser.add_argument(
        "--snr",
        type=positive,
        nargs="+",
        default=[0.1, 0.03, 0.01],
        help="SNR levels, var(signal) / var(noise)",
    )
    parser.add_argument(
        "--step",
        type=real_number(above=0.0, at_most=180.0),
        default=15.0,
        help="angular step of the rotation sample, degrees",
    )
    parser.add_argument(
        "--max-shift", type=real_number(at_least=0.0), default=3.0, help="largest true shift, voxels"
    )
    parser.add_argument(
        "--average",
        type=whole_number(0),
        default=0,
        help="subtomograms for the averaging benchmark (0: skip)",
    )
    parser.add_argument("--average-snr", type=positive, default=0.05, help="SNR of the averaging benchmark")
    parser.add_argument(
        "--mixture", type=whole_number(0), default=0, help="subtomograms for the 3-class benchmark (0: skip)"
    )
    parser.add_argument("--mixture-snr", type=positive, default=0.1, help="SNR of the 3-class benchmark")
    parser.add_argument(
        "--iterations", type=whole_number(1), default=5, help="averaging / classification iterations"
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device: cpu or cuda[:N] (default cuda when there is one)",
    )
    parser.add_argument("--out", type=Path, help="write the Markdown tables here")
    parser.add_argument(
        "--json", type=Path, help="also write the headline figures here (JSON, see run_benchmarks.py)"
    )
    parser.add_argument("--quick", action="store_true", help="4 pairs at SNR 0.1, 1 exhaustive, 30° step")
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.exhaustive_pairs, args.snr, args.step = 4, 1, [0.1], 30.0
    check_outputs(args.out, args.json)
    device = torch_device(args.device)
    figures: list[dict] = []
    tables = [pairwise_table(args, device, figures)]
    if args.average > 0:
        tables.append(averaging_table(args, device, figures))
    if args.mixture > 0:
        tables.append(mixture_table(args, device, figures))
    text = "\n\n".join(tables) + "\n"
    print()
    print(text)
    write_output(args.out, text)
    write_figures(args.json, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
