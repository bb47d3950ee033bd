"""Make the pictures of docs/simulator.md.

* ``simulated_tomogram.png``: the montage that ``aitom simulate tomogram --config
  simulations/tomogram_default.yaml`` writes (slices with the ground truth circled);
* ``simulated_subtomograms.png``: the montage of ``aitom simulate subtomograms --config
  simulations/subtomograms_default.yaml particles_per_class=10``;
* ``subtomograms_by_snr.png``: one subtomogram of every library class (32³ at 10 Å, the fast ``fourier``
  model, 3 µm CTF, ±60° wedge), central XY slice, at SNR ∞, 1, 0.1 and 0.03: the same pose and the same
  noise realisation along a row, so only the noise level changes.

The two commands run in subprocesses (``python -m aitom``) into a temporary folder; their PNGs are copied,
reduced to a palette of 64 greys and the ten matplotlib ``tab10`` colours of the pick circles, and shrunk
until each file is under ``--max-kb``.

    python scripts/make_simulator_figures.py --out docs/images     # about 20 s on 2 CPU cores
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from aitom.commands.shared import refuse_path_under_a_file
from aitom.errors import InputError
from aitom.geometry import random_rotations
from aitom.io import atomic_output
from aitom.simulate import CtfConfig, available_classes, class_potential, simulate_subtomogram_batch
from run_benchmarks import real_number, reports_input_errors

ROOT = Path(__file__).resolve().parent.parent
SNRS: tuple[float | None, ...] = (None, 1.0, 0.1, 0.03)
BOX = 32
VOXEL_SIZE_A = 10.0
COMMANDS = {
    "simulated_tomogram.png": (
        ["simulate", "tomogram", "--config", "simulations/tomogram_default.yaml"],
        "tomogram.png",
    ),
    "simulated_subtomograms.png": (
        [
            "simulate",
            "subtomograms",
            "--config",
            "simulations/subtomograms_default.yaml",
            "particles_per_class=10",
        ],
        "montage.png",
    ),
}


def grey_and_tab10_palette(greys: int = 64) -> Image.Image:
    """A palette image of ``greys`` grey levels and the ``tab10`` colours (the class colours of montages)."""
    palette = []
    for level in np.linspace(0, 255, greys).round().astype(int):
        palette += [int(level)] * 3
    for index in range(10):
        palette += [round(255 * channel) for channel in colormaps["tab10"](index)[:3]]
    holder = Image.new("P", (1, 1))
    holder.putpalette(palette + [0] * (768 - len(palette)))
    return holder


def save_small_png(source: Path | io.BytesIO, target: Path, max_kb: float) -> None:
    """Save an image in :func:`grey_and_tab10_palette` colours, shrunk by 10 % steps to under ``max_kb``."""
    image = Image.open(source).convert("RGB")
    palette = grey_and_tab10_palette()
    scale = 1.0
    while True:
        size = (round(image.width * scale), round(image.height * scale))
        resized = image if scale == 1.0 else image.resize(size, Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        resized.quantize(palette=palette, dither=Image.Dither.NONE).save(buffer, format="PNG", optimize=True)
        if buffer.tell() <= max_kb * 1000 or scale < 0.3:
            break
        scale -= 0.1
    with atomic_output(target, overwrite=True) as temporary:
        temporary.write_bytes(buffer.getvalue())
    print(f"{target}: {size[0]} × {size[1]} px, {buffer.tell() / 1000:.0f} kB")


def command_montages(out: Path, max_kb: float) -> None:
    """Run the two simulate commands and keep their montages."""
    with tempfile.TemporaryDirectory() as folder:
        for name, (argv, png) in COMMANDS.items():
            output = Path(folder) / name.removesuffix(".png")
            command = [sys.executable, "-m", "aitom", *argv, "--out", str(output)]
            code = subprocess.run(command, cwd=ROOT, check=False).returncode
            if code != 0:
                raise InputError(f"aitom {' '.join(argv[:2])} failed (exit code {code}; its error is above)")
            save_small_png(output / png, out / name, max_kb)


def subtomograms_by_snr(classes: Sequence[str], seed: int = 0) -> dict[float | None, torch.Tensor]:
    """SNR -> ``(C, S, S, S)`` subtomograms, one per class, same pose and noise at every SNR."""
    maps = torch.stack([class_potential(name, VOXEL_SIZE_A, box_size=BOX) for name in classes])
    generator = torch.Generator().manual_seed(seed)
    n = len(classes)
    rotations = random_rotations(n, generator)
    shifts = torch.zeros(n, 3)
    noise = torch.randn((n, BOX, BOX, BOX), generator=generator)
    options = {
        "voxel_size_a": VOXEL_SIZE_A,
        "tilt_range_deg": (-60.0, 60.0),
        "ctf": CtfConfig(defocus_um=3.0),
    }
    return {
        snr: simulate_subtomogram_batch(
            maps, torch.arange(n), rotations, shifts, snr=snr, white_noise=noise, **options
        )
        for snr in SNRS
    }


def snr_figure(classes: Sequence[str], path: Path, max_kb: float) -> None:
    """Grid of central XY slices: one row per class, one column per SNR."""
    volumes = subtomograms_by_snr(classes)
    rows, columns = len(classes), len(SNRS)
    figure = Figure(figsize=(1.25 * columns + 1.4, 1.25 * rows + 0.4), dpi=80)
    FigureCanvasAgg(figure)
    figure.subplots_adjust(
        left=0.25, right=0.99, bottom=0.01, top=1 - 0.35 / (1.25 * rows + 0.4), wspace=0.05
    )
    for column, snr in enumerate(SNRS):
        slices = volumes[snr][:, BOX // 2].numpy()
        for row, name in enumerate(classes):
            image = slices[row]
            low, high = np.percentile(image, [1.0, 99.0])
            axes = figure.add_subplot(rows, columns, row * columns + column + 1)
            axes.imshow(image, cmap="gray", vmin=low, vmax=high, origin="lower", interpolation="nearest")
            axes.set_xticks([])
            axes.set_yticks([])
            if row == 0:
                axes.set_title("SNR ∞" if snr is None else f"SNR {snr:g}", fontsize=9)
            if column == 0:
                axes.set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    buffer.seek(0)
    save_small_png(buffer, path, max_kb)


@reports_input_errors
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images", help="folder for the PNGs")
    parser.add_argument(
        "--max-kb",
        type=real_number(above=0.0),
        default=290.0,
        help="largest PNG size, kB (default 290; a picture is shrunk to at most 30 %% to fit)",
    )
    parser.add_argument("--skip-commands", action="store_true", help="only make subtomograms_by_snr.png")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    if args.out.exists() and not args.out.is_dir():
        raise InputError("exists and is not a folder", args.out)
    refuse_path_under_a_file(args.out)
    snr_figure(available_classes(), args.out / "subtomograms_by_snr.png", args.max_kb)
    if not args.skip_commands:
        command_montages(args.out, args.max_kb)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
