"""The demo behind ``make demo``: simulate a crowded tomogram, measure, denoise and pick it, score the picks.

Everything runs from the embedded default recipe (simulations/tomogram_default.yaml): no download.
Each step is an ordinary ``aitom`` command, printed before it runs, so the demo doubles as a tutorial.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from aitom.cli import main as aitom

REPOSITORY = Path(__file__).resolve().parent.parent


def run_step(arguments: list[str]) -> None:
    print(f"\n$ aitom {shlex.join(arguments)}", flush=True)
    start = time.perf_counter()
    code = aitom(arguments)
    if code != 0:
        sys.exit(code)
    print(f"  ({time.perf_counter() - start:.1f} s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the simulation")
    args = parser.parse_args(argv)
    out = args.out
    simulation = out / "simulation"
    tomogram = simulation / "tomogram.mrc"
    run_step(
        [
            "simulate",
            "tomogram",
            "--config",
            str(REPOSITORY / "simulations" / "tomogram_default.yaml"),
            "--out",
            str(simulation),
            "--seed",
            str(args.seed),
            "--overwrite",
        ]
    )
    run_step(["estimate", "wedge", str(tomogram)])
    denoised = out / "tomogram_diffusion.mrc"
    run_step(["filter", "diffusion", str(tomogram), str(denoised), "--iterations", "10", "--overwrite"])
    picks = out / "picks_dog.star"
    run_step(
        [
            "pick",
            "dog",
            "--tomogram",
            str(tomogram),
            "--out",
            str(picks),
            "--truth",
            str(simulation / "ground_truth.star"),
            "--overwrite",
        ]
    )
    montage = out / "tomogram_picks.png"
    run_step(["show", str(denoised), "--out", str(montage), "--picks", str(picks), "--overwrite"])
    print(f"\nDone. Simulation and ground truth: {simulation}/ ; picks: {picks} ; montage: {montage}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
