"""Benchmark the semi-supervised autoencoding classifier against a supervised one with the same few labels.

Data: simulated 32³ subtomograms of 5 library classes (``SimulatedSubtomogramDataModule``); a fraction
(``--labelled-fraction``, 10 %) of the training items is labelled (``labelled_fraction``, decided by seed and
index). Two models with the same encoder + head (:class:`AutoencoderClassifier3D`, same initial weights),
trained for the same number of steps with the same batch size, seed and optimiser, in this one run:

* **semi-supervised**: :class:`SemiSupervisedClassifier` on ALL training items, loss = CE(labelled) +
  λ·MSE(reconstruction of all); every batch holds ``round(--labelled-batch-fraction * batch)`` items drawn
  with replacement from the labelled items, the rest from all items (:class:`LabelledShareBatchSampler`);
* **supervised**: :class:`aitom.tasks.classify.Classifier` (cross-entropy only) on the same labelled items
  only (shuffled, full batches).

Both take the same number of optimiser steps; the table also gives how many labelled examples each one saw.

The table gives each model's accuracy on the (fully labelled) test split and the ratio semi / supervised.
Items are simulated once and kept in memory, so both models see identical volumes.

Usage: ``python scripts/bench_semi_supervised.py [--quick] [--out bench_semi_supervised.md] [--json F]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from torch.utils.data import DataLoader, Dataset

from aitom.data.simulated import LabelledShareBatchSampler, SimulatedSubtomogramDataModule
from aitom.tasks.classify import Classifier
from aitom.tasks.semi_supervised import AutoencoderClassifier3D, SemiSupervisedClassifier
from run_benchmarks import figure_row, write_figures  # this folder (the script's) is on sys.path

CLASSES = ["proteasome_20s", "ribosome_30s", "apoferritin", "rubisco", "nucleosome"]


def materialise(dataset: Dataset, chunk: int = 64) -> list[dict[str, torch.Tensor]]:
    """Every item of a simulated dataset, generated once (batched) and kept in memory."""
    items: list[dict[str, torch.Tensor]] = []
    for start in range(0, len(dataset), chunk):
        items += dataset.__getitems__(list(range(start, min(start + chunk, len(dataset)))))
    return items


def quiet_trainer(steps: int) -> Trainer:
    return Trainer(
        max_steps=steps,
        max_epochs=-1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
        deterministic=True,
    )


def train_and_test(
    model: LightningModule, train: DataLoader, test: list[dict], steps: int, seed: int
) -> tuple[float, float]:
    """Fit ``steps`` steps on ``train`` (seeded), then the test accuracy; returns (acc, seconds)."""
    seed_everything(seed, verbose=False)
    trainer = quiet_trainer(steps)
    start = time.perf_counter()
    trainer.fit(model, train_dataloaders=train)
    seconds = time.perf_counter() - start
    (result,) = trainer.test(model, dataloaders=DataLoader(test, batch_size=64), verbose=False)
    return float(result["test/acc"]), seconds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run (smoke test, numbers meaningless)")
    parser.add_argument("--train-size", type=int, default=800, help="training items (default 800)")
    parser.add_argument("--test-size", type=int, default=300, help="test items (default 300)")
    parser.add_argument("--labelled-fraction", type=float, default=0.1, help="labelled training fraction")
    parser.add_argument(
        "--labelled-batch-fraction",
        type=float,
        default=0.5,
        help="share of every semi-supervised batch drawn from the labelled items (default 0.5)",
    )
    parser.add_argument("--steps", type=int, default=150, help="training steps of each model (default 150)")
    parser.add_argument("--batch-size", type=int, default=16, help="batch size (default 16)")
    parser.add_argument("--snr", type=float, default=0.5, help="signal-to-noise ratio (default 0.5)")
    parser.add_argument("--reconstruction-weight", type=float, default=1.0, help="λ (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, weights and batches")
    parser.add_argument("--out", type=Path, help="also write the Markdown table to this file")
    parser.add_argument("--json", type=Path, help="write the headline figures (JSON) to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_size, args.test_size, args.steps = 160, 40, 4

    data = SimulatedSubtomogramDataModule(
        CLASSES,
        box_size_voxels=32,
        snr=args.snr,
        train_size=args.train_size,
        val_size=0,
        test_size=args.test_size,
        labelled_fraction=args.labelled_fraction,
        seed=args.seed,
    )
    data.setup("fit")
    start = time.perf_counter()
    train = materialise(data.datasets["train"])
    test = materialise(data.datasets["test"])
    simulate_seconds = time.perf_counter() - start
    labelled_indices = [i for i, item in enumerate(train) if bool(item["labelled"])]
    labelled = [train[i] for i in labelled_indices]
    print(f"simulated {len(train)} + {len(test)} items in {simulate_seconds:.0f} s; {len(labelled)} labelled")

    seed_everything(args.seed, verbose=False)
    semi_net = AutoencoderClassifier3D(num_classes=len(CLASSES))
    seed_everything(args.seed, verbose=False)  # same encoder + head weights (the decoder is built last)
    supervised_net = AutoencoderClassifier3D(num_classes=len(CLASSES), with_decoder=False)
    semi = SemiSupervisedClassifier(
        semi_net, len(CLASSES), class_names=CLASSES, reconstruction_weight=args.reconstruction_weight
    )
    supervised = Classifier(supervised_net, len(CLASSES), class_names=CLASSES, scheduler="none")
    labelled_per_batch = min(args.batch_size, max(1, round(args.labelled_batch_fraction * args.batch_size)))
    semi_batches = LabelledShareBatchSampler(
        labelled_indices, len(train), args.batch_size, labelled_per_batch, args.seed
    )
    semi_acc, semi_seconds = train_and_test(
        semi, DataLoader(train, batch_sampler=semi_batches), test, args.steps, args.seed
    )
    sup_loader = DataLoader(labelled, batch_size=args.batch_size, shuffle=True, drop_last=True)
    sup_acc, sup_seconds = train_and_test(supervised, sup_loader, test, args.steps, args.seed)

    table = "\n".join(
        [
            f"Semi-supervised vs supervised, 5 classes, 32³, SNR {args.snr}, {len(labelled)} of "
            f"{len(train)} training items labelled ({100 * len(labelled) / len(train):.1f} %), {args.steps} "
            f"steps of batch {args.batch_size}, AdamW lr 1e-3, λ = {args.reconstruction_weight}, "
            f"seed {args.seed}, {torch.get_num_threads()} CPU threads; test split {len(test)} items.",
            "",
            "| model | training items | labelled items per batch | test accuracy | training time (s) |",
            "|---|---:|---:|---:|---:|",
            f"| semi-supervised (CE on labelled + λ·MSE on all) | {len(train)} | {labelled_per_batch} "
            f"| {semi_acc:.3f} | {semi_seconds:.0f} |",
            f"| supervised (CE on labelled only) | {len(labelled)} | {args.batch_size} | {sup_acc:.3f} "
            f"| {sup_seconds:.0f} |",
            f"| ratio semi / supervised | | | {semi_acc / max(sup_acc, 1e-12):.2f} | |",
        ]
    )
    print(table)
    write_figures(
        args.json,
        [
            figure_row(
                "semi_supervised", "test accuracy, 10 % labels", semi_acc, "fraction", "supervised", sup_acc
            )
        ],
    )
    if args.out is not None:
        args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
