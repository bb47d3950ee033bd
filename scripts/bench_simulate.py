"""Simulator speed: on-the-fly subtomograms per second, the large tomogram's time and peak memory, and
whether on-the-fly simulation keeps up with training a classifier.

* Subtomograms per second at 32³ and 40³ (the six default classes of
  ``simulations/subtomograms_default.yaml``, SNR 0.1, 3 µm CTF, ±60° wedge), two ways:
  ``SimulatedSubtomogramDataset.__getitems__`` on batches of ``--batch-size`` (what a DataLoader asks for:
  per-item seeded poses and noise) and
  ``simulate_subtomogram_batch`` called directly with one generator. The first batch is a warm-up (transfer
  functions are cached) and the rate is ``batch / the shortest batch time`` of ``--repeats`` (as ``timeit``
  does: other processes on a shared machine only ever add time).
* The 512 × 512 × 200 tomogram of ``simulations/tomogram_large.yaml``: wall time of ``simulate_tomogram`` and
  the peak resident memory of a fresh subprocess that runs only it, with the peak after imports and class
  maps as the baseline. The peak is the process's own high-water mark, ``VmHWM`` of ``/proc/self/status``:
  ``resource.getrusage(...).ru_maxrss`` (used where ``/proc`` is missing) keeps across ``exec`` the RSS of
  the parent at the fork, so in a child of this script it would report the parent's memory. The child's CPU
  time (user + system) is given too: unlike the wall time it does not grow when other processes share the
  cores.
* A training step (forward, cross-entropy, backward, AdamW step) of DSRF3D-v2 on ``--train-batch`` random
  subtomograms of 32³ (first step untimed, best of ``--train-steps``); ratio = subtomograms/s simulated by
  the Dataset / subtomograms/s consumed by training: above 1 the simulator keeps up with one training process
  on the same cores.

    python scripts/bench_simulate.py --out bench_simulate.md    # about 1.5 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from aitom.data import SimulatedSubtomogramDataset
from aitom.geometry import random_rotations
from aitom.models import DSRF3Dv2
from aitom.simulate import (
    CtfConfig,
    SubtomogramRecipe,
    class_potential,
    load_recipe,
    random_shifts,
    simulate_subtomogram_batch,
    simulate_tomogram,
)
from run_benchmarks import (
    check_outputs,
    figure_row,
    reports_input_errors,
    whole_number,
    write_figures,
    write_output,
)

ROOT = Path(__file__).resolve().parent.parent
LARGE_RECIPE = ROOT / "simulations" / "tomogram_large.yaml"
SNR = 0.1
TILT_RANGE_DEG = (-60.0, 60.0)
MAX_SHIFT_VOXELS = 2.0


def best_seconds(function: Callable[[int], object], repeats: int) -> float:
    """Shortest wall time of ``function(i)`` over ``repeats`` calls after one untimed warm-up call."""
    function(0)
    best = float("inf")
    for i in range(1, repeats + 1):
        start = time.perf_counter()
        function(i)
        best = min(best, time.perf_counter() - start)
    return best


def class_maps(box: int, voxel_size_a: float) -> torch.Tensor:
    """``(C, S, S, S)`` potentials of the default subtomogram classes."""
    names = SubtomogramRecipe().classes
    return torch.stack([class_potential(name, voxel_size_a, box_size=box) for name in names])


def simulation_rates(box: int, batch_size: int, repeats: int) -> dict[str, float]:
    """Subtomograms per second of the Dataset (per-item seeds) and of ``simulate_subtomogram_batch``."""
    voxel_size_a = SubtomogramRecipe().voxel_size_a
    maps = class_maps(box, voxel_size_a)
    ctf = CtfConfig()
    dataset = SimulatedSubtomogramDataset(
        maps,
        batch_size * (repeats + 1),
        "train",
        0,
        SNR,
        voxel_size_a,
        TILT_RANGE_DEG,
        ctf,
        MAX_SHIFT_VOXELS,
    )
    dataset_seconds = best_seconds(
        lambda i: dataset.__getitems__(list(range(i * batch_size, (i + 1) * batch_size))), repeats
    )

    generator = torch.Generator().manual_seed(0)
    class_ids = torch.randint(maps.shape[0], (batch_size,), generator=generator)
    rotations = random_rotations(batch_size, generator)
    shifts = random_shifts(batch_size, MAX_SHIFT_VOXELS, generator=generator, dtype=torch.float32)
    batch_seconds = best_seconds(
        lambda i: simulate_subtomogram_batch(
            maps,
            class_ids,
            rotations,
            shifts,
            snr=SNR,
            generator=generator,
            voxel_size_a=voxel_size_a,
            tilt_range_deg=TILT_RANGE_DEG,
            ctf=ctf,
        ),
        repeats,
    )
    return {"dataset": batch_size / dataset_seconds, "batch": batch_size / batch_seconds}


def training_rate(box: int, batch_size: int, steps: int, num_classes: int) -> float:
    """Subtomograms per second consumed by DSRF3D-v2 training steps (forward, backward, AdamW step)."""
    torch.manual_seed(0)
    net = DSRF3Dv2(num_classes=num_classes).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    volumes = torch.randn(batch_size, 1, box, box, box)
    labels = torch.randint(num_classes, (batch_size,))

    def step(_: int) -> None:
        loss = nn.functional.cross_entropy(net(volumes), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return batch_size / best_seconds(step, steps)


def peak_rss_mib() -> float:
    """This process's peak resident memory, MiB (``VmHWM``; ``ru_maxrss`` where ``/proc`` is missing)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tomogram_child(recipe_path: Path) -> None:
    """Simulate one tomogram in this process and print time and peak RSS as JSON (run as a subprocess)."""
    recipe = load_recipe(recipe_path, kind="tomogram")
    for name in recipe.classes:  # disk-cached maps: built once, outside the timing
        class_potential(name, recipe.voxel_size_a)
    baseline_mib = peak_rss_mib()
    cpu_start = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    simulation = simulate_tomogram(recipe, progress=False)
    seconds = time.perf_counter() - start
    cpu_end = resource.getrusage(resource.RUSAGE_SELF)
    cpu_seconds = (cpu_end.ru_utime + cpu_end.ru_stime) - (cpu_start.ru_utime + cpu_start.ru_stime)
    peak_mib = peak_rss_mib()
    result = {
        "shape_zyx": list(simulation.tomogram.shape),
        "particles": len(simulation.truth),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "baseline_mib": baseline_mib,
        "peak_mib": peak_mib,
    }
    print(json.dumps(result))


def tomogram_cost(recipe_path: Path, threads: int) -> dict[str, float]:
    """Time and peak RSS of simulating ``recipe_path`` in a fresh subprocess."""
    command = [sys.executable, __file__, "--threads", str(threads), "--tomogram-child", str(recipe_path)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"tomogram subprocess failed:\n{completed.stderr[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def markdown_table(
    rates: dict[int, dict[str, float]],
    tomogram: dict[str, float] | None,
    train_rate: float,
    batch_size: int,
    train_batch: int,
) -> str:
    threads = torch.get_num_threads()
    lines = [
        f"On-the-fly subtomograms (6 classes, SNR {SNR}, 3 µm CTF, ±60° wedge), batches of {batch_size}; "
        f"{threads} CPU threads.",
        "",
        "| box | Dataset subtomograms/s | simulate_subtomogram_batch subtomograms/s |",
        "|---|---:|---:|",
    ]
    for box, rate in rates.items():
        lines.append(f"| {box}³ | {rate['dataset']:.0f} | {rate['batch']:.0f} |")
    if tomogram is not None:
        shape = " × ".join(str(n) for n in reversed(tomogram["shape_zyx"]))
        lines += [
            "",
            f"Large tomogram (`simulations/tomogram_large.yaml`, X × Y × Z = {shape} voxels, "
            f"{tomogram['particles']} particles), in its own process:",
            "",
            "| wall time (s) | CPU time (s) | peak RSS (MiB) "
            "| peak RSS before simulating: imports, class maps (MiB) |",
            "|---:|---:|---:|---:|",
            f"| {tomogram['seconds']:.1f} | {tomogram['cpu_seconds']:.1f} | {tomogram['peak_mib']:.0f} "
            f"| {tomogram['baseline_mib']:.0f} |",
        ]
    lines += [
        "",
        f"Simulation vs training (DSRF3D-v2, batch {train_batch} of 32³, forward + backward + AdamW step):",
        "",
        "| simulated subtomograms/s (Dataset, 32³) | subtomograms/s consumed by training | ratio |",
        "|---:|---:|---:|",
        f"| {rates[32]['dataset']:.0f} | {train_rate:.1f} | {rates[32]['dataset'] / train_rate:.1f} |",
    ]
    return "\n".join(lines) + "\n"


@reports_input_errors
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--batch-size", type=whole_number(1), default=64, help="simulation batch size (default 64)"
    )
    parser.add_argument(
        "--repeats", type=whole_number(1), default=3, help="timed simulation batches (default 3)"
    )
    parser.add_argument(
        "--train-batch", type=whole_number(1), default=32, help="training batch size (default 32)"
    )
    parser.add_argument(
        "--train-steps",
        type=whole_number(1),
        default=3,
        help="timed training steps after a warm-up (default 3)",
    )
    parser.add_argument(
        "--threads",
        type=whole_number(1),
        default=torch.get_num_threads(),
        help="torch CPU threads (default: torch's, which follows OMP_NUM_THREADS; make sets 2)",
    )
    parser.add_argument(
        "--skip-tomogram", action="store_true", help="leave out the large tomogram (about 30 s)"
    )
    parser.add_argument("--out", type=Path, help="also write the Markdown table to this file")
    parser.add_argument(
        "--json", type=Path, help="also write the headline figures here (JSON, see run_benchmarks.py)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="one repeat, one timed training step, no large tomogram"
    )
    parser.add_argument("--tomogram-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    check_outputs(args.out, args.json)
    torch.set_num_threads(args.threads)
    if args.tomogram_child is not None:
        tomogram_child(args.tomogram_child)
        return 0
    if args.quick:
        args.repeats, args.train_steps, args.skip_tomogram = 1, 1, True
    rates = {box: simulation_rates(box, args.batch_size, args.repeats) for box in (32, 40)}
    train_rate = training_rate(32, args.train_batch, args.train_steps, len(SubtomogramRecipe().classes))
    tomogram = None if args.skip_tomogram else tomogram_cost(LARGE_RECIPE, args.threads)
    table = markdown_table(rates, tomogram, train_rate, args.batch_size, args.train_batch)
    print(table)
    write_output(args.out, table)
    write_figures(args.json, headline_figures(rates, tomogram, train_rate))
    return 0


def headline_figures(
    rates: dict[int, dict[str, float]], tomogram: dict[str, float] | None, train_rate: float
) -> list[dict]:
    """The ``--json`` rows: Dataset rate against training's consumption, and the large tomogram's cost."""
    rows = [
        figure_row(
            "simulate",
            "on-the-fly subtomograms/s (Dataset, 32³)",
            rates[32]["dataset"],
            "subtomograms/s",
            "consumed by training DSRF3D-v2",
            train_rate,
        ),
        figure_row(
            "simulate",
            "on-the-fly subtomograms/s (Dataset, 40³)",
            rates[40]["dataset"],
            "subtomograms/s",
            "simulate_subtomogram_batch, 40³",
            rates[40]["batch"],
        ),
    ]
    if tomogram is not None:
        rows.append(figure_row("simulate", "large tomogram wall time", tomogram["seconds"], "s"))
        rows.append(
            figure_row(
                "simulate",
                "large tomogram peak RSS",
                tomogram["peak_mib"],
                "MiB",
                "peak RSS before simulating",
                tomogram["baseline_mib"],
            )
        )
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
