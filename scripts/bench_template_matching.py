"""Benchmark FFT template matching (:func:`aitom.ops.template_matching.match_template`).

For a 256³ tomogram (``--large``: also 512 × 512 × 200) and a 32³ template, measures

* the time per rotation of ``match_template`` (torch, on ``--device``);
* the floor: one forward + one inverse real FFT of the tomogram's size, with ``torch.fft`` and with
  ``scipy.fft`` (``workers`` = CPU threads), the faster one taken as the floor;
* a straightforward NumPy/SciPy implementation of the same search (same rotations, same FLCF, the template
  rotated by ``scipy.ndimage.affine_transform``, the correlation by ``scipy.fft`` with the same ``workers``).
  Fair comparison: both compute the tomogram's spectrum and the local standard deviation under the spherical
  mask once, outside the rotation loop; per rotation both rotate the template, transform it zero-padded to
  the tomogram's size, multiply and inverse-transform. aitom's gains are a pruned forward transform of the
  padded template (the FFTs of all-zero lines skipped), in-place products, batched rotations, one division
  by the local statistics after the maximum instead of one per rotation, and a cheaper running maximum. With
  the same FFTs the SciPy baseline costs at least one forward + one inverse FFT per rotation and aitom at
  least one inverse FFT, so the ratio cannot much exceed 2 on the same FFT library;
* peak memory: the process's maximum resident set (``resource.getrusage``) after the torch run, and the peak
  of NumPy allocations in the SciPy run (``tracemalloc``); on CUDA, ``torch.cuda.max_memory_allocated``.

Prints a Markdown table; ``--out FILE`` also writes it. Example::

    OMP_NUM_THREADS=2 python scripts/bench_template_matching.py --rotations 8 --out bench_tm.md
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import scipy.fft
import scipy.ndimage
import torch

from aitom.commands.shared import torch_device
from aitom.errors import InputError
from aitom.geometry import so3_grid, sphere_mask
from aitom.ops.template_matching import TemplateFilter, match_template
from run_benchmarks import (
    check_outputs,
    figure_row,
    reports_input_errors,
    whole_number,
    write_figures,
    write_output,
)

GRID_STEP_DEG = 30.0  # the rotations searched are the first --rotations of so3_grid(GRID_STEP_DEG)


def best_time(action, repeats: int, *, warm_up: bool = True) -> float:
    """Smallest wall time of ``repeats`` calls (seconds), after one warm-up call (unless ``warm_up`` is
    false: the caller has just run it)."""
    if warm_up:
        action()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def torch_fft_floor(shape: tuple[int, int, int], device: torch.device, repeats: int) -> float:
    volume = torch.randn(shape, device=device)

    def forward_inverse() -> None:
        torch.fft.irfftn(torch.fft.rfftn(volume), s=shape)
        synchronise(device)

    return best_time(forward_inverse, repeats)


def scipy_fft_floor(shape: tuple[int, int, int], workers: int, repeats: int) -> float:
    volume = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    return best_time(
        lambda: scipy.fft.irfftn(scipy.fft.rfftn(volume, workers=workers), s=shape, workers=workers), repeats
    )


def scipy_match_template(
    tomogram: np.ndarray, template: np.ndarray, rotations: np.ndarray, workers: int
) -> tuple[np.ndarray, np.ndarray]:
    """The same FLCF search written plainly with NumPy/SciPy (no missing wedge, spherical mask)."""
    shape = tomogram.shape
    size = template.shape[0]
    mask = sphere_mask((size,) * 3, radius_voxels=size / 2).numpy().astype(np.float32)
    count = mask.sum()
    data = (tomogram - tomogram.mean()) / tomogram.std()
    spectrum = scipy.fft.rfftn(data, workers=workers)
    mask_spectrum = np.conj(scipy.fft.rfftn(mask, s=shape, workers=workers))
    local_mean = scipy.fft.irfftn(spectrum * mask_spectrum, s=shape, workers=workers) / count
    local_square = (
        scipy.fft.irfftn(scipy.fft.rfftn(data**2, workers=workers) * mask_spectrum, s=shape, workers=workers)
        / count
    )
    local_std = np.sqrt(np.maximum(local_square - local_mean**2, 0.0))
    local_std = np.maximum(local_std, local_std.max() * 1e-4)
    best = np.full(shape, -np.inf, dtype=np.float32)
    best_index = np.zeros(shape, dtype=np.int64)
    centre = np.full(3, size // 2, dtype=np.float64)
    for index, rotation in enumerate(rotations):
        # Array axes are (z, y, x); rotations act on (x, y, z): reverse both axes of the matrix.
        matrix_zyx = rotation[::-1, ::-1]
        # output(p) = template(R^T (p - c) + c)
        rotated = scipy.ndimage.affine_transform(
            template, matrix_zyx.T, offset=centre - matrix_zyx.T @ centre, order=1, mode="grid-constant"
        )
        inside = mask > 0
        reference = np.where(inside, (rotated - rotated[inside].mean()) / rotated[inside].std(), 0.0)
        correlation = scipy.fft.irfftn(
            spectrum * np.conj(scipy.fft.rfftn(reference.astype(np.float32), s=shape, workers=workers)),
            s=shape,
            workers=workers,
        )
        score = correlation / (count * local_std)
        better = score > best
        best[better] = score[better]
        best_index[better] = index
    return np.roll(best, size // 2, axis=(0, 1, 2)), np.roll(best_index, size // 2, axis=(0, 1, 2))


def per_rotation_text(seconds: float | None) -> str:
    return "— (below the timing noise)" if seconds is None else f"{seconds * 1e3:.1f} ms"


def ratio_text(numerator: float | None, denominator: float | None) -> str:
    return "—" if numerator is None or denominator is None else f"{numerator / denominator:.2f}"


def bench_shape(
    shape: tuple[int, int, int], args: argparse.Namespace, device: torch.device
) -> tuple[list[tuple[str, str]], dict]:
    """The table rows of one tomogram shape and its headline figure (time per rotation against SciPy's)."""
    rows: list[tuple[str, str]] = []
    generator = torch.Generator().manual_seed(0)
    tomogram = torch.randn(shape, generator=generator)
    template = torch.randn((args.template_size,) * 3, generator=generator)
    rotations = so3_grid(GRID_STEP_DEG)[: args.rotations]
    workers = torch.get_num_threads()
    name = "×".join(str(n) for n in shape[::-1])

    floor_torch = torch_fft_floor(shape, device, args.repeats)
    floor_scipy = scipy_fft_floor(shape, workers, args.repeats)
    floor = min(floor_torch, floor_scipy)
    rows.append((f"{name}: FFT floor, torch.fft (fwd + inv)", f"{floor_torch * 1e3:.1f} ms"))
    rows.append(
        (f"{name}: FFT floor, scipy.fft workers={workers} (fwd + inv)", f"{floor_scipy * 1e3:.1f} ms")
    )

    tomogram_device = tomogram.to(device)
    template_device = template.to(device)
    rotations_device = rotations.to(device)
    no_wedge = TemplateFilter(tilt_range_deg=None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def run_torch() -> None:
        match_template(
            tomogram_device,
            template_device,
            rotations_device,
            template_filter=no_wedge,
            rotation_batch=args.rotation_batch,
        )
        synchronise(device)

    # Per rotation: (time for R rotations − time for 1 rotation) / (R − 1), which removes the set-up cost
    # (the tomogram's spectra and local statistics) shared by all rotations.
    total = best_time(run_torch, args.repeats)
    one_rotation = rotations_device[:1]
    setup = best_time(
        lambda: (
            match_template(tomogram_device, template_device, one_rotation, template_filter=no_wedge),
            synchronise(device),
        ),
        args.repeats,
    )
    # None when the difference drowns in the timing noise (a tomogram so small that set-up dominates)
    per_rotation = (total - setup) / (args.rotations - 1) if total > setup else None
    rows.append(
        (f"{name}: aitom match_template, {args.rotations} rotations ({device.type})", f"{total:.2f} s")
    )
    rows.append((f"{name}: aitom time per rotation", per_rotation_text(per_rotation)))
    rows.append((f"{name}: per rotation / FFT floor", ratio_text(per_rotation, floor)))
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows.append((f"{name}: peak resident memory after aitom run", f"{rss_mib:.0f} MiB"))
    if device.type == "cuda":
        gpu_mib = torch.cuda.max_memory_allocated(device) / 2**20
        rows.append((f"{name}: peak CUDA memory (aitom)", f"{gpu_mib:.0f} MiB"))

    if not args.skip_scipy:
        tomogram_np = tomogram.numpy()
        template_np = template.numpy()
        rotations_np = rotations.double().numpy()
        tracemalloc.start()  # the traced run gives the scores and the memory, and warms up
        reference_score, _ = scipy_match_template(tomogram_np, template_np, rotations_np, workers)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        # timed untraced, best of --repeats like aitom's, so that the ratio compares like with like
        scipy_total = best_time(
            lambda: scipy_match_template(tomogram_np, template_np, rotations_np, workers),
            args.repeats,
            warm_up=False,
        )
        scipy_setup = best_time(
            lambda: scipy_match_template(tomogram_np, template_np, rotations_np[:1], workers), args.repeats
        )
        scipy_per_rotation = (
            (scipy_total - scipy_setup) / (args.rotations - 1) if scipy_total > scipy_setup else None
        )
        aitom_score, _ = match_template(tomogram, template, rotations, template_filter=no_wedge)
        difference = float(np.abs(aitom_score.numpy() - reference_score).max())
        rows.append((f"{name}: NumPy/SciPy search time per rotation", per_rotation_text(scipy_per_rotation)))
        rows.append(
            (f"{name}: NumPy/SciPy / aitom (per rotation)", ratio_text(scipy_per_rotation, per_rotation))
        )
        rows.append((f"{name}: NumPy/SciPy peak traced memory", f"{peak / 2**20:.0f} MiB"))
        rows.append((f"{name}: max \\|score difference\\| aitom vs NumPy/SciPy", f"{difference:.1e}"))
    figure = figure_row(
        "template_matching",
        f"time per rotation, {name}",
        math.nan if per_rotation is None else per_rotation * 1e3,
        "ms",
        "" if args.skip_scipy else "NumPy/SciPy",
        None if args.skip_scipy or scipy_per_rotation is None else scipy_per_rotation * 1e3,
    )
    return rows, figure


@reports_input_errors
def main(argv: list[str] | None = None) -> int:
    grid_size = so3_grid(GRID_STEP_DEG).shape[0]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size", type=whole_number(1), default=256, help="edge of the cubic tomogram, voxels (default 256)"
    )
    parser.add_argument("--large", action="store_true", help="also 512 × 512 × 200 (X × Y × Z)")
    parser.add_argument(
        "--template-size", type=whole_number(2), default=32, help="template edge, voxels (default 32)"
    )
    parser.add_argument(
        "--rotations",
        type=whole_number(2, grid_size),
        default=8,
        help=f"rotations searched, from the {GRID_STEP_DEG:g}° grid of {grid_size} (default 8; the time per "
        "rotation is the difference between searching them all and searching one, so at least 2)",
    )
    parser.add_argument(
        "--rotation-batch", type=whole_number(1), default=4, help="rotations per batch (default 4)"
    )
    parser.add_argument(
        "--repeats", type=whole_number(1), default=2, help="timed repeats, best kept (default 2)"
    )
    parser.add_argument(
        "--device", default="cpu", help="torch device for aitom: cpu or cuda[:N] (default cpu)"
    )
    parser.add_argument("--skip-scipy", action="store_true", help="skip the NumPy/SciPy implementation")
    parser.add_argument("--out", type=Path, help="also write the Markdown table to this file")
    parser.add_argument(
        "--json", type=Path, help="also write the headline figures here (JSON, see run_benchmarks.py)"
    )
    args = parser.parse_args(argv)
    check_outputs(args.out, args.json)
    device = torch_device(args.device)
    if args.template_size > args.size:
        raise InputError(f"--template-size {args.template_size} is larger than --size {args.size}")
    shapes = [(args.size,) * 3] + ([(200, 512, 512)] if args.large else [])
    rows, figures = [], []
    for shape in shapes:
        shape_rows, figure = bench_shape(shape, args, device)
        rows += shape_rows
        figures.append(figure)
    header = f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}"
    if device.type == "cuda":
        header += f" ({torch.cuda.get_device_name(device)})"
    table = "\n".join(
        [f"Template matching benchmark ({header})", "", "| quantity | value |", "|---|---|"]
        + [f"| {name} | {value} |" for name, value in rows]
    )
    print(table)
    write_output(args.out, table + "\n")
    write_figures(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
