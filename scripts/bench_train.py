"""Training speed of the classifier networks under Lightning against a bare PyTorch loop, and inference speed.

For each network (DSRF3D-v2, RB3D, CB3D) the same model (same initial weights), optimiser (AdamW) and batch
(``--batch-size`` random subtomograms of ``--box``³) are trained for ``--steps`` steps twice: by a bare loop
(forward, cross-entropy, backward, step) and by ``lightning.Trainer.fit`` on :class:`aitom.tasks.Classifier`
with no logger, no checkpointing and no progress bar. The first step of each run is a warm-up and is not
timed, and the rate is 1 / the shortest step time (as ``timeit`` does: other processes on a shared machine
only ever add time); the two run alternately ``--rounds`` times, so that neither gains from running second.
Lightning overhead = 1 - lightning_rate / bare_rate (values below zero are noise).
Inference is the eval-mode forward pass on batches of ``--inference-batch`` subtomograms.

    python scripts/bench_train.py --out bench_train.md      # about 1.5 minutes on 2 quiet CPU cores
"""

from __future__ import annotations

import argparse
import copy
import itertools
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from torch import nn

from aitom.commands.shared import torch_device
from aitom.errors import InputError
from aitom.models import CB3D, RB3D, DSRF3Dv2
from aitom.models.classifiers import SubtomogramClassifierNet
from aitom.tasks import Classifier
from run_benchmarks import (
    check_outputs,
    figure_row,
    reports_input_errors,
    whole_number,
    write_figures,
    write_output,
)

NETWORKS: dict[str, type[SubtomogramClassifierNet]] = {"DSRF3D-v2": DSRF3Dv2, "RB3D": RB3D, "CB3D": CB3D}
NUM_CLASSES = 5
LEARNING_RATE = 1e-3


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class RepeatedBatch:
    """An iterable that yields the same batch ``length`` times (the Lightning run's 'data loader')."""

    def __init__(self, batch: dict[str, torch.Tensor], length: int) -> None:
        self.batch = batch
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return (self.batch for _ in range(self.length))


class StepTimer(Callback):
    """Times between the starts of consecutive training steps (the last step ends at the end of training)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.marks: list[float] = []

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int
    ) -> None:
        synchronize(self.device)
        self.marks.append(time.perf_counter())

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        synchronize(self.device)
        self.marks.append(time.perf_counter())


def steps_per_second(marks: Sequence[float]) -> float:
    """1 / the shortest step time, the first step (warm-up) left out."""
    return 1.0 / min(b - a for a, b in itertools.pairwise(marks[1:]))


def bare_steps_per_second(model: Classifier, batch: dict[str, torch.Tensor], steps: int) -> float:
    """Train ``steps`` steps in a plain loop (forward, cross-entropy, backward, AdamW step)."""
    device = batch["volume"].device
    model.to(device).train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=LEARNING_RATE, weight_decay=model.hparams.weight_decay
    )
    marks = []
    for _ in range(steps):
        synchronize(device)
        marks.append(time.perf_counter())
        loss = nn.functional.cross_entropy(model(batch["volume"]), batch["label"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    synchronize(device)
    marks.append(time.perf_counter())
    return steps_per_second(marks)


def lightning_steps_per_second(model: Classifier, batch: dict[str, torch.Tensor], steps: int) -> float:
    """Train ``steps`` steps with ``Trainer.fit`` (no logger, checkpoints, progress bar or validation)."""
    device = batch["volume"].device
    timer = StepTimer(device)
    trainer = Trainer(
        accelerator=device.type,
        devices=1,
        max_steps=steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(model, train_dataloaders=RepeatedBatch(batch, steps))
    return steps_per_second(timer.marks)


def inference_per_second(net: nn.Module, volumes: torch.Tensor, repeats: int = 2) -> float:
    """Subtomograms per second of the eval-mode forward pass (best of ``repeats`` after a warm-up)."""
    net.to(volumes.device).eval()
    best = float("inf")
    with torch.inference_mode():
        net(volumes[:2])
        for _ in range(repeats):
            synchronize(volumes.device)
            start = time.perf_counter()
            net(volumes)
            synchronize(volumes.device)
            best = min(best, time.perf_counter() - start)
    return volumes.shape[0] / best


def benchmark(
    name: str,
    box: int,
    batch_size: int,
    steps: int,
    rounds: int,
    inference_batch: int,
    device: torch.device,
) -> dict[str, float | str]:
    seed_everything(0, verbose=False)
    generator = torch.Generator().manual_seed(0)
    batch = {
        "volume": torch.randn(batch_size, 1, box, box, box, generator=generator).to(device),
        "label": torch.randint(NUM_CLASSES, (batch_size,), generator=generator).to(device),
    }
    template = Classifier(
        NETWORKS[name](num_classes=NUM_CLASSES), NUM_CLASSES, lr=LEARNING_RATE, scheduler="none"
    )
    bare, lightning = 0.0, 0.0
    for _ in range(rounds):
        bare = max(bare, bare_steps_per_second(copy.deepcopy(template), batch, steps))
        lightning = max(lightning, lightning_steps_per_second(copy.deepcopy(template), batch, steps))
    volumes = torch.randn(inference_batch, 1, box, box, box, generator=generator).to(device)
    return {
        "model": name,
        "parameters": sum(p.numel() for p in template.parameters()),
        "bare": bare,
        "lightning": lightning,
        "overhead": 1 - lightning / bare,
        "inference": inference_per_second(template.net, volumes),
    }


def markdown_table(rows: Sequence[dict[str, float | str]], box: int, batch_size: int, device: str) -> str:
    lines = [
        f"Training: batch {batch_size} of {box}³, AdamW; inference: eval-mode forward; device {device}, "
        f"{torch.get_num_threads()} CPU threads.",
        "",
        "| model | parameters | bare steps/s | Lightning steps/s | Lightning overhead "
        "| inference subtomograms/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['parameters']:,} | {row['bare']:.3f} | {row['lightning']:.3f} "
            f"| {100 * row['overhead']:+.1f} % | {row['inference']:.1f} |"
        )
    return "\n".join(lines) + "\n"


@reports_input_errors
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--box",
        type=whole_number(1),
        default=32,
        help="subtomogram edge, voxels (default 32; at least 8, CB3D 32)",
    )
    parser.add_argument(
        "--batch-size", type=whole_number(1), default=8, help="training batch size (default 8)"
    )
    parser.add_argument(
        "--steps",
        type=whole_number(3),
        default=6,
        help="training steps per run, at least 3: the first is not timed (default 6)",
    )
    parser.add_argument(
        "--rounds", type=whole_number(1), default=2, help="alternating bare/Lightning runs (default 2)"
    )
    parser.add_argument(
        "--inference-batch", type=whole_number(1), default=32, help="inference batch size (default 32)"
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device: cpu or cuda[:N] (default cuda when there is one)",
    )
    parser.add_argument(
        "--models", nargs="+", choices=list(NETWORKS), default=list(NETWORKS), help="networks"
    )
    parser.add_argument("--out", type=Path, help="also write the Markdown table to this file")
    parser.add_argument(
        "--json", type=Path, help="also write the headline figures here (JSON, see run_benchmarks.py)"
    )
    parser.add_argument("--quick", action="store_true", help="DSRF3D-v2 only, 3 steps, 1 round")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.steps, args.rounds = ["DSRF3D-v2"], 3, 1
    check_outputs(args.out, args.json)
    device = torch_device(args.device)
    for name in args.models:
        if args.box < NETWORKS[name].minimum_box_voxels:
            raise InputError(
                f"--box {args.box}: {name} needs at least {NETWORKS[name].minimum_box_voxels} voxels"
            )
    rows = [
        benchmark(name, args.box, args.batch_size, args.steps, args.rounds, args.inference_batch, device)
        for name in args.models
    ]
    table = markdown_table(rows, args.box, args.batch_size, str(device))
    print(table)
    write_output(args.out, table)
    figures = []
    for row in rows:
        figures.append(
            figure_row(
                "train",
                f"{row['model']} Lightning training steps/s",
                row["lightning"],
                "steps/s",
                "bare PyTorch loop",
                row["bare"],
            )
        )
        figures.append(figure_row("train", f"{row['model']} inference", row["inference"], "subtomograms/s"))
    write_figures(args.json, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
