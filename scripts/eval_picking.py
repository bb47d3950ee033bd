"""Picking accuracy on the default simulated tomogram at two SNRs: the README "Pick" table.

Simulates ``simulations/tomogram_default.yaml`` (100 × 200 × 200 voxels at 10 Å, 5 classes, crowding 15 %) at
SNR 0.5 and 0.1 (or reuses ``--sim-dir/snr0.5`` and ``snr0.1`` when they hold a simulation), then picks with

* DoG: σ1 = 7 nm = 7 voxels, σ2 = 1.1 σ1, false-alarm rate 1e-3 (``aitom pick dog`` defaults);
* saliency: particle radius 60 Å = 6 voxels (``aitom pick saliency --radius-a 60``);
* template matching: all five templates at once (``aitom pick template --template T1 ... T5``), 30° grid,
  templates filtered with the ±60° wedge and the 3 µm CTF, spectral whitening, calibrated multi-template
  assignment, threshold from the peaks' robust tail (per-peak false-alarm rate 1e-2);

each on the whole tomogram (one tile: what ``aitom pick`` does for a tomogram within ``--tile-voxels``), and
scores the picks against ``ground_truth.star`` (one-to-one optimal matching within ``--tolerance-voxels``).
DoG and saliency do not assign classes, so their per-class figure is recall; template matching gives per-class
F1 and the fraction of orientations within 15°.

    OMP_NUM_THREADS=2 python scripts/eval_picking.py --sim-dir /tmp/eval_sim --out eval_picking.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from aitom.errors import InputError
from aitom.io import COORDINATE_COLUMNS, particles_table, read_particles, read_volume
from aitom.ops.pick_evaluation import evaluate_picks
from aitom.tasks.pick import DoGPicker, SaliencyPicker, TemplateMatchingPicker
from run_benchmarks import check_outputs, real_number, reports_input_errors, write_output

RECIPE = Path(__file__).resolve().parents[1] / "simulations" / "tomogram_default.yaml"
METHODS = ("dog", "saliency", "template")
#: columns of ``ground_truth.star`` that the scoring and the templates need
TRUTH_COLUMNS = (*COORDINATE_COLUMNS, "rlnClassNumber", "aitomClassName")


def simulate(folder: Path, snr: float) -> Path:
    """The simulated tomogram's folder (``tomogram.mrc``, ``ground_truth.star``, ``templates/``)."""
    if not (folder / "ground_truth.star").exists():
        command = [sys.executable, "-m", "aitom", "simulate", "tomogram", "--config", str(RECIPE)]
        command += ["--out", str(folder), f"snr={snr}"]
        code = subprocess.run(command, check=False).returncode
        if code != 0:
            raise InputError(f"aitom simulate tomogram failed (exit code {code}; its error is above)", folder)
    return folder


def class_templates(folder: Path, truth) -> tuple[list[str], list[int], list[str]]:
    """Template paths, class numbers and class names, in class-number order of the ground truth."""
    pairs = sorted(set(zip(truth["rlnClassNumber"].astype(int), truth["aitomClassName"])))
    paths = [str(folder / "templates" / f"{name}.mrc") for _, name in pairs]
    missing = next((path for path in paths if not Path(path).is_file()), None)
    if missing is not None:
        raise InputError(
            f"no template for class {Path(missing).stem} of {folder / 'ground_truth.star'}", missing
        )
    return paths, [number for number, _ in pairs], [name for _, name in pairs]


def pick(picker, tomogram: torch.Tensor):
    """Picks of the whole tomogram as a STAR-like table (coordinates x y z, voxels)."""
    picks = picker.pick_tile(tomogram)
    return particles_table(
        picks["coordinates_zyx"].flip(-1).double().numpy(),
        angles_deg=picks["angles_deg"].double().numpy() if "angles_deg" in picks else None,
        class_number=picks["class_number"].numpy() if "class_number" in picks else None,
        score=picks["scores"].double().numpy(),
    )


def make_picker(method: str, voxel_size_a: float, paths: list[str], numbers: list[int], step_deg: float):
    """The picker of ``method`` with the settings of the README table."""
    if method == "dog":
        return DoGPicker(70.0 / voxel_size_a)
    if method == "saliency":
        return SaliencyPicker(60.0 / voxel_size_a)
    # simulations/tomogram_default.yaml: ±60° tilts, 3 µm underfocus at 300 kV.
    return TemplateMatchingPicker(
        paths,
        angular_step_deg=step_deg,
        defocus_um=3.0,
        whiten=True,
        class_number=numbers,
        peak_false_alarm_rate=1e-2,
    )


def row(method: str, snr: float, result: dict, numbers: list[int]) -> str:
    per_class = result["per_class"]
    classed = "f1" in per_class[str(numbers[0])]
    key = "f1" if classed else "recall"
    values = ", ".join(f"{per_class[str(number)][key]:.2f}" for number in numbers)
    scores = f"{result['precision']:.2f} / {result['recall']:.2f} / {result['f1']:.2f}"
    extra = (
        f" (orientation ≤ 15°: {result['orientation_fraction']:.2f})"
        if "orientation_fraction" in result
        else ""
    )
    return f"| {method} | {snr:g} | {scores} | {key.replace('f1', 'F1')} {values}{extra} |"


@reports_input_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sim-dir",
        type=Path,
        default=Path("outputs/eval_picking"),
        help="simulations here (SIM_DIR/snrS/, reused when they hold ground_truth.star)",
    )
    parser.add_argument(
        "--tolerance-voxels",
        type=real_number(above=0.0),
        default=4.5,
        help="largest distance of a pick from its true particle, voxels (default 4.5)",
    )
    parser.add_argument(
        "--angular-step",
        type=real_number(above=0.0, at_most=180.0),
        default=30.0,
        help="template rotation grid, degrees (default 30)",
    )
    parser.add_argument(
        "--methods", nargs="+", choices=METHODS, default=list(METHODS), help="pickers to run (default all)"
    )
    parser.add_argument(
        "--snrs",
        type=real_number(above=0.0),
        nargs="+",
        default=[0.5, 0.1],
        help="SNRs of the simulated tomograms, var(signal) / var(noise) (default 0.5 0.1)",
    )
    parser.add_argument("--out", type=Path, help="also write the Markdown table to this file")
    parser.add_argument("--json", type=Path, help="also write every result as JSON")
    args = parser.parse_args(argv)
    check_outputs(args.out, args.json)
    rows, results, names = [], {}, []
    for snr in args.snrs:
        folder = simulate(args.sim_dir / f"snr{snr:g}", snr)
        tomogram, header = read_volume(folder / "tomogram.mrc")
        truth = read_particles(folder / "ground_truth.star", require=TRUTH_COLUMNS)
        if len(truth) == 0:
            raise InputError("lists no particle", folder / "ground_truth.star")
        paths, numbers, names = class_templates(folder, truth)
        for method in args.methods:
            start = time.perf_counter()
            picker = make_picker(method, header.voxel_size_a[0], paths, numbers, args.angular_step)
            result = evaluate_picks(pick(picker, tomogram), truth, args.tolerance_voxels)
            result["seconds"] = time.perf_counter() - start
            results[f"{method} snr {snr:g}"] = result
            rows.append((method, snr, row(method, snr, result, numbers)))
            print(f"{method} SNR {snr:g}: {json.dumps(result)}", flush=True)
    order = {method: index for index, method in enumerate(args.methods)}
    rows.sort(key=lambda item: (order[item[0]], -item[1]))
    table = "\n".join(
        [
            f"| picker | SNR | precision / recall / F1 | per class: {', '.join(names)} |",
            "|---|---|---|---|",
        ]
        + [line for _, _, line in rows]
    )
    print(table)
    write_output(args.out, table + "\n")
    write_output(args.json, json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
