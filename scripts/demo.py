"""The demo behind ``make demo``: simulate a crowded tomogram, run ``aitom pipeline`` on it, score the result.

Everything runs from an embedded recipe (simulations/tomogram_demo.yaml: three well separated complexes):
no download. Each step is an ordinary ``aitom`` command, printed before it runs, so the demo doubles as a
tutorial. The scores compare the pipeline's output with the simulation's ground truth:

* picking: precision, recall and F1 of the picks (:func:`aitom.ops.evaluate_picks`, one-to-one matching
  within a quarter of the particle diameter);
* classes: over the matched picks, the purity of each found class (fraction of its majority true class),
  the overall purity and the adjusted Rand index;
* averages: each class average is aligned to the true map of its majority class (the simulator's potential,
  no wedge) and their FSC gives the resolution at FSC = 0.5, in Å;
* a true class that is the majority of several found classes is reported as split.

Resolutions that are undefined (a class of one particle) are shown as "–" and written as null.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from aitom.cli import main as aitom
from aitom.commands.shared import json_ready
from aitom.pipeline.report import count_of

REPOSITORY = Path(__file__).resolve().parent.parent
#: the expected particle diameter given to the pipeline, Å (the demo classes span 134–240 Å)
DIAMETER_A = 180.0


def _relative(path: Path) -> Path:
    """``path`` relative to the working directory when it lies below it (shorter commands to copy)."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def run_step(arguments: list[str]) -> None:
    print(f"\n$ aitom {shlex.join(arguments)}", flush=True)
    start = time.perf_counter()
    code = aitom(arguments)
    if code != 0:
        sys.exit(code)
    print(f"  ({time.perf_counter() - start:.1f} s)", flush=True)


def resolution_against_truth(average, class_name: str, voxel_size_a: float) -> float:
    """FSC-0.5 resolution (Å) of a class average against the true map, after aligning it to that map."""
    from aitom.fourier import fsc_resolutions
    from aitom.ops.alignment import align_subtomograms
    from aitom.ops.averaging import align_to_reference_frame
    from aitom.ops.extraction import extract_subvolumes
    from aitom.simulate import class_potential

    size = average.shape[-1]
    true_map = class_potential(class_name, voxel_size_a)
    centre = true_map.shape[-1] // 2
    true_map = extract_subvolumes(true_map, [[centre] * 3], size)[0]  # centred crop or zero pad to the box
    alignment = align_subtomograms(true_map, average, angular_step_deg=15.0, max_shift_voxels=size / 4)
    aligned = align_to_reference_frame(average[None], alignment.rotation, alignment.shift_xyz)[0]
    return fsc_resolutions(aligned, true_map, voxel_size_a=voxel_size_a)["fsc_0.5_a"]


def score(pipeline_dir: Path, truth_path: Path) -> dict:
    """Picking, classification and resolution scores of a pipeline run against the simulation's truth."""
    import numpy as np

    from aitom.io import read_particles, read_volume, table_coordinates
    from aitom.ops.clustering import adjusted_rand_index
    from aitom.ops.pick_evaluation import evaluate_picks, match_picks
    from aitom.simulate import CLASS_NAME_COLUMN

    picks, truth = read_particles(pipeline_dir / "particles.star"), read_particles(truth_path)
    summary = json.loads((pipeline_dir / "summary.json").read_text())
    voxel_size = summary["voxel_size_a"]
    tolerance = DIAMETER_A / 4 / voxel_size
    # the picker's positions (the alignment's rlnOrigin shifts left out), for the picking and class scores
    positions = picks[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]]
    scores = {"picking": evaluate_picks(positions, truth, tolerance)}
    picked_xyz = positions.to_numpy(dtype=float)
    pick_index, truth_index = match_picks(picked_xyz, table_coordinates(truth), tolerance)
    found = picks["rlnClassNumber"].to_numpy()[pick_index]
    names = truth[CLASS_NAME_COLUMN].to_numpy()[truth_index]
    majority_total = 0
    classes = []
    for entry in summary["classes"]:
        members = names[found == entry["class"]]
        row = {"class": entry["class"], "particles": entry["particles"], "matched": int(members.size)}
        if members.size:
            values, counts = np.unique(members, return_counts=True)
            majority = str(values[counts.argmax()])
            majority_total += int(counts.max())
            average, _ = read_volume(pipeline_dir / f"class_{entry['class']:02d}_average.mrc")
            row.update(
                true_class=majority,
                purity=float(counts.max() / members.size),
                fsc_0_5_vs_truth_a=resolution_against_truth(average, majority, voxel_size),
            )
        row["half_set_fsc_0_143_a"] = entry["fsc_0.143_a"]
        classes.append(row)
    scores["classes"] = classes
    scores["purity"] = majority_total / max(1, len(pick_index))
    true_numbers = truth["rlnClassNumber"].to_numpy()[truth_index]
    scores["ari"] = adjusted_rand_index(true_numbers, found) if len(pick_index) else 0.0
    scores["tolerance_voxels"] = tolerance
    scores["n_true_classes"] = int(truth[CLASS_NAME_COLUMN].nunique())
    majorities: dict[str, list[int]] = {}
    for row in classes:
        if "true_class" in row:
            majorities.setdefault(row["true_class"], []).append(row["class"])
    scores["split"] = {name: found for name, found in majorities.items() if len(found) > 1}
    return json_ready(scores)


def _angstrom(value: float | None) -> str:
    """A resolution in whole Å, or "–" where it is undefined (None)."""
    return "–" if value is None else f"{value:.0f}"


def print_scores(scores: dict) -> None:
    picking = scores["picking"]
    print(
        f"\nPicking: {picking['n_picked']} picks, {picking['n_truth']} true particles, tolerance "
        f"{scores['tolerance_voxels']:.1f} voxels: precision {picking['precision']:.2f}, recall "
        f"{picking['recall']:.2f}, F1 {picking['f1']:.2f}"
    )
    print(f"Classes: purity {scores['purity']:.2f}, adjusted Rand index {scores['ari']:.2f} (matched picks)")
    splits = "".join(
        f"; {name} is split (the majority of classes {', '.join(map(str, found))})"
        for name, found in scores["split"].items()
    )
    found = count_of(len(scores["classes"]), "class")
    print(f"{found} found for {count_of(scores['n_true_classes'], 'true class')}{splits}")
    print(
        "\n| class | particles | majority true class | purity | FSC 0.5 vs true map (Å) "
        "| half-set FSC 0.143 (Å) |"
    )
    print("|---:|---:|---|---:|---:|---:|")
    for row in scores["classes"]:
        if "true_class" in row:
            print(
                f"| {row['class']} | {row['particles']} | {row['true_class']} | {row['purity']:.2f} | "
                f"{_angstrom(row['fsc_0_5_vs_truth_a'])} | {_angstrom(row['half_set_fsc_0_143_a'])} |"
            )
        else:
            print(
                f"| {row['class']} | {row['particles']} | (no true particle) | – | – "
                f"| {_angstrom(row['half_set_fsc_0_143_a'])} |"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the simulation and the pipeline")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    simulation, pipeline = args.out / "simulation", args.out / "pipeline"
    recipe = _relative(REPOSITORY / "simulations" / "tomogram_demo.yaml")
    run_step(
        [
            "simulate",
            "tomogram",
            "--config",
            str(recipe),
            "--out",
            str(simulation),
            "--seed",
            str(args.seed),
            "--overwrite",
        ]
    )
    run_step(
        [
            "pipeline",
            "--tomogram",
            str(simulation / "tomogram.mrc"),
            "--out",
            str(pipeline),
            "--config",
            str(_relative(REPOSITORY / "configs" / "pipeline.yaml")),
            "--seed",
            str(args.seed),
            "--overwrite",
            f"pick.particle_diameter_a={DIAMETER_A:g}",
        ]
    )
    print(
        "\nScoring against the ground truth (simulation/ground_truth.star and the true maps) ...", flush=True
    )
    scores = score(pipeline, simulation / "ground_truth.star")
    (args.out / "scores.json").write_text(json.dumps(scores, indent=2, allow_nan=False) + "\n")
    print_scores(scores)
    print(
        f"\nTotal {time.perf_counter() - start:.0f} s. Report: {pipeline / 'report.md'} (and report.html); "
        f"scores: {args.out / 'scores.json'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
