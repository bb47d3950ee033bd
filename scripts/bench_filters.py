"""Filter speed: aitom's Gaussian, DoG, band-pass and anisotropic diffusion against SciPy / NumPy.

For a 256³ and a 512 × 512 × 200 (X × Y × Z) float32 volume, on the CPU threads torch is given
(``OMP_NUM_THREADS``; 2 in the project's reference setting), in the same process:

* Gaussian, σ = 2 and 8 voxels: :func:`aitom.ops.gaussian_filter3d` (method ``auto``) against
  ``scipy.ndimage.gaussian_filter`` (single-threaded; same kernel, same reflect boundary, same result).
* DoG σ1 = 2, σ2 = 3.2 voxels: :func:`aitom.ops.difference_of_gaussians` against two
  ``scipy.ndimage.gaussian_filter`` calls.
* Band-pass 40–12 Å at 4 Å/voxel: :func:`aitom.ops.bandpass_filter` against ``scipy.fft.rfftn`` /
  ``irfftn`` with the same kernel (``workers`` = the torch thread count, kernel built outside the timing).
* Anisotropic diffusion (EED, σ = ρ = 1), time per iteration: :func:`aitom.ops.anisotropic_diffusion` on
  a central 64³ crop against the plain NumPy/SciPy reference of ``tests/test_ops_diffusion.py`` (float64,
  ``numpy.linalg.eigh``) on the same crop — the reference is too slow for the full volumes — and aitom's
  time per iteration on the full volume (stepped in tiles of <= 32 MB on the CPU, as the function does).

Each time is the shortest of ``--repeats`` runs after a warm-up (as ``timeit`` does: other processes on a
shared machine only ever add time). ratio = reference time / aitom time (> 1: aitom faster). The CPU time
(all threads) is measured too: when other processes share the cores, torch's threads wait for each other
and the wall-time ratio understates what an idle machine gives; the CPU ratio does not depend on that.
Setting ``OMP_WAIT_POLICY=PASSIVE`` keeps idle OpenMP threads from spinning on a shared machine.

    python scripts/bench_filters.py --out bench_filters.md      # about 2 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.fft
import scipy.ndimage as ndi
import torch

from aitom.fourier import bandpass_filter_kernel
from aitom.modules import BandpassFilter3d
from aitom.ops import (
    anisotropic_diffusion,
    difference_of_gaussians,
    gaussian_filter3d,
)
from run_benchmarks import (
    check_outputs,
    figure_row,
    reports_input_errors,
    whole_number,
    write_figures,
    write_output,
)

SHAPES = {"256³": (256, 256, 256), "512×512×200": (200, 512, 512)}
DIFFUSION_CROP = 64


def best_time(function: Callable[[], object], repeats: int, warm_up: bool = True) -> tuple[float, float]:
    """Shortest wall time and shortest CPU time (all threads) of ``repeats`` calls, after a warm-up call."""
    if warm_up:
        function()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        function()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


def load_numpy_reference():
    """The NumPy diffusion step of the test suite (tests/test_ops_diffusion.py)."""
    path = Path(__file__).resolve().parents[1] / "tests" / "test_ops_diffusion.py"
    spec = importlib.util.spec_from_file_location("diffusion_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.numpy_diffusion_step


def bench_shape(name: str, shape: tuple[int, int, int], repeats: int, threads: int, reference) -> list[tuple]:
    rng = np.random.default_rng(0)
    array = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 1.0)
    volume = torch.from_numpy(array)
    rows = []

    def add(
        operation: str, aitom: Callable[[], object], scipy_call: Callable[[], object], label: str
    ) -> None:
        aitom_s, aitom_cpu = best_time(aitom, repeats)
        reference_s, reference_cpu = best_time(scipy_call, repeats)
        rows.append((operation, name, aitom_s, aitom_cpu, label, reference_s, reference_cpu))
        print(f"{operation:34s} {name:12s} aitom {aitom_s:7.3f} s  {label} {reference_s:7.3f} s", flush=True)

    for sigma in (2.0, 8.0):
        add(
            f"Gaussian σ={sigma:g} voxels",
            lambda s=sigma: gaussian_filter3d(volume, s),
            lambda s=sigma: ndi.gaussian_filter(array, s),
            "scipy.ndimage",
        )
    add(
        "DoG σ=2, 3.2 voxels",
        lambda: difference_of_gaussians(volume, 2.0, 3.2),
        lambda: ndi.gaussian_filter(array, 2.0) - ndi.gaussian_filter(array, 3.2),
        "scipy.ndimage",
    )
    bandpass_module = BandpassFilter3d(4.0, 40.0, 12.0)
    kernel = bandpass_filter_kernel(shape, voxel_size_a=4.0, highpass_a=40.0, lowpass_a=12.0).numpy()
    add(
        "band-pass 40–12 Å, kernel kept",
        lambda: bandpass_module(volume),
        lambda: scipy.fft.irfftn(scipy.fft.rfftn(array, workers=threads) * kernel, s=shape, workers=threads),
        "scipy.fft",
    )
    crop = tuple(slice((n - DIFFUSION_CROP) // 2, (n + DIFFUSION_CROP) // 2) for n in shape)
    small = volume[crop].contiguous()
    small64 = small.double().numpy()
    options = {"mode": "edge", "n_iterations": 1, "sigma_voxels": 1.0, "rho_voxels": 1.0, "contrast_k": 0.1}
    add(
        f"diffusion / iteration, {DIFFUSION_CROP}³ crop",
        lambda: anisotropic_diffusion(small, **options),
        lambda: reference(small64, "edge", 0.1, 1.0, 1.0, 0.1, 0.001, 1e-7),
        "NumPy ref.",
    )
    # Warmed up by the crop; one run (the slowest measurement). Large CPU volumes are stepped in tiles.
    full, full_cpu = best_time(lambda: anisotropic_diffusion(volume, **options), 1, warm_up=False)
    rows.append(("diffusion / iteration, full volume", name, full, full_cpu, "—", math.nan, math.nan))
    print(f"{'diffusion / iteration, full volume':34s} {name:12s} aitom {full:7.3f} s", flush=True)
    return rows


def ratio(reference_s: float, aitom_s: float) -> str:
    """``reference / aitom`` to 2 decimals, or a dash when aitom's time is too short for the clock."""
    return f"{reference_s / aitom_s:.2f}" if aitom_s > 0 else "—"


def markdown(rows: list[tuple], threads: int) -> str:
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    lines = [
        f"Filters, float32, torch {torch.__version__} on {threads} CPU thread(s) of {os.cpu_count()} "
        f"(OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}; load average {load}); best of runs. "
        "ratio = reference time / aitom time (> 1: aitom faster); CPU ratio = the same with CPU time summed "
        "over threads (the work done, insensitive to other processes sharing the cores).",
        "",
        "| operation | volume | aitom (s) | reference | reference (s) | ratio | CPU ratio |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for operation, name, aitom_s, aitom_cpu, label, reference_s, reference_cpu in rows:
        if math.isnan(reference_s):
            reference_text = ratio_text = cpu_text = "—"
        else:
            reference_text = f"{reference_s:.3f}"
            ratio_text, cpu_text = ratio(reference_s, aitom_s), ratio(reference_cpu, aitom_cpu)
        cells = [operation, name, f"{aitom_s:.3f}", label, reference_text, ratio_text, cpu_text]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@reports_input_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the Markdown table to this file")
    parser.add_argument(
        "--json", type=Path, help="also write the headline figures here (JSON, see run_benchmarks.py)"
    )
    parser.add_argument("--quick", action="store_true", help="only the 256³ volume, one timed run")
    parser.add_argument(
        "--repeats", type=whole_number(1), default=2, help="timed runs per measurement (default 2)"
    )
    parser.add_argument(
        "--shapes",
        nargs="+",
        choices=sorted(SHAPES),
        default=list(SHAPES),
        help="volumes to time (default both)",
    )
    args = parser.parse_args(argv)
    check_outputs(args.out, args.json)
    if args.quick:
        args.repeats, args.shapes = 1, [next(iter(SHAPES))]
    threads = torch.get_num_threads()
    reference = load_numpy_reference()
    rows = []
    for name in args.shapes:
        rows += bench_shape(name, SHAPES[name], args.repeats, threads, reference)
    table = markdown(rows, threads)
    print(table)
    write_output(args.out, table)
    write_figures(
        args.json,
        [
            figure_row(
                "filters",
                f"{operation}, {name}",
                aitom_s,
                "s",
                label if math.isfinite(reference_s) else "",
                reference_s if math.isfinite(reference_s) else None,
            )
            for operation, name, aitom_s, _, label, reference_s, _ in rows
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
