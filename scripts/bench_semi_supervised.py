"""Benchmark the semi-supervised classifier against supervised ones with the same few labels.

Data: simulated 32³ subtomograms of 5 library classes (``SimulatedSubtomogramDataModule``); a fraction
(``--labelled-fraction``, 10 %) of the training items is labelled (``labelled_fraction``, decided by seed and
index). Four models with the same encoder + head (:class:`AutoencoderClassifier3D`, same initial weights),
trained for the same number of steps with the same seed and optimiser, for each of ``--seeds``
(data, weights and batches all follow the seed):

* **semi-supervised (AITom)**: :class:`SemiSupervisedClassifier` on ALL training items, loss = CE(labelled) +
  λ·MSE(reconstruction of all), the subtomograms as they are (``rotated_views=False, contrastive_weight=0``);
* **semi-supervised, contrastive**: the same network trained on random rotated views of every item
  (``rotated_views=True``) with the contrastive loss on two views of every item, labelled or not
  (``contrastive_weight=1``), and no reconstruction term, in batches twice as large (``2 × --batch-size``,
  the same labelled share, so as many labelled items per step as the supervised models);
* **supervised** and **supervised + rotated views**: :class:`aitom.tasks.classify.Classifier`
  (cross-entropy only, ``rotated_views`` off / on) on the labelled items only (shuffled, full batches).

Semi-supervised batches hold ``round(--labelled-batch-fraction * batch)`` items drawn with replacement from
the labelled items, the rest from all items (:class:`LabelledShareBatchSampler`). The table gives each
model's accuracy on the (fully labelled) test split for every seed, their mean and standard deviation.
Items are simulated once per seed and kept in memory, so the models see identical volumes.

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

from aitom.commands.shared import seed_number
from aitom.data.simulated import LabelledShareBatchSampler, SimulatedSubtomogramDataModule
from aitom.errors import InputError
from aitom.tasks.classify import Classifier
from aitom.tasks.semi_supervised import AutoencoderClassifier3D, SemiSupervisedClassifier
from run_benchmarks import (  # this folder (the script's) is on sys.path
    check_outputs,
    figure_row,
    mean_and_sd,
    real_number,
    reports_input_errors,
    whole_number,
    write_figures,
    write_output,
)

CLASSES = ["proteasome_20s", "ribosome_30s", "apoferritin", "rubisco", "nucleosome"]
MODELS = {
    "semi_aitom": "semi-supervised (AITom: CE on labelled + λ·MSE on all)",
    "semi_contrastive": "semi-supervised: rotated views + contrastive loss on all, no reconstruction",
    "supervised": "supervised (CE on labelled only)",
    "supervised_rotated": "supervised + rotated views",
}


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


@reports_input_errors
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run (smoke test, numbers meaningless)")
    fraction = real_number(above=0.0, at_most=1.0)
    parser.add_argument(
        "--train-size", type=whole_number(1), default=800, help="training items (default 800)"
    )
    parser.add_argument("--test-size", type=whole_number(1), default=300, help="test items (default 300)")
    parser.add_argument(
        "--labelled-fraction",
        type=fraction,
        default=0.1,
        help="labelled training fraction, in (0, 1] (default 0.1)",
    )
    parser.add_argument(
        "--labelled-batch-fraction",
        type=fraction,
        default=0.5,
        help="share of every semi-supervised batch drawn from the labelled items (default 0.5)",
    )
    parser.add_argument(
        "--steps", type=whole_number(1), default=600, help="training steps of each model (default 600)"
    )
    parser.add_argument("--batch-size", type=whole_number(2), default=16, help="batch size (default 16)")
    parser.add_argument(
        "--snr",
        type=real_number(above=0.0),
        default=0.5,
        help="signal-to-noise ratio, var(signal) / var(noise) (default 0.5)",
    )
    parser.add_argument(
        "--reconstruction-weight",
        type=real_number(at_least=0.0),
        default=1.0,
        help="λ, weight of the reconstruction loss (default 1)",
    )
    parser.add_argument(
        "--seeds",
        type=seed_number,
        nargs="+",
        default=[0, 1, 2],
        help="seeds of data, weights and batches (default 0 1 2)",
    )
    parser.add_argument("--out", type=Path, help="also write the Markdown table to this file")
    parser.add_argument("--json", type=Path, help="write the headline figures (JSON) to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_size, args.test_size, args.steps, args.seeds = 160, 40, 4, [0]
    if round(args.labelled_fraction * args.train_size) < 1:
        raise InputError(
            f"--labelled-fraction {args.labelled_fraction:g} of --train-size {args.train_size} labels no item"
        )
    check_outputs(args.out, args.json)

    rows: dict[str, list[float]] = {name: [] for name in MODELS}
    seconds: dict[str, float] = dict.fromkeys(MODELS, 0.0)
    for seed in args.seeds:
        data = SimulatedSubtomogramDataModule(
            CLASSES,
            box_size_voxels=32,
            snr=args.snr,
            train_size=args.train_size,
            val_size=0,
            test_size=args.test_size,
            labelled_fraction=args.labelled_fraction,
            seed=seed,
        )
        data.setup("fit")
        train = materialise(data.datasets["train"])
        test = materialise(data.datasets["test"])
        labelled_indices = [i for i, item in enumerate(train) if bool(item["labelled"])]
        labelled = [train[i] for i in labelled_indices]
        labelled_per_batch = min(
            args.batch_size, max(1, round(args.labelled_batch_fraction * args.batch_size))
        )
        print(f"seed {seed}: {len(train)} + {len(test)} items, {len(labelled)} labelled")
        for name in MODELS:
            seed_everything(seed, verbose=False)  # the same encoder + head weights for every model
            semi = name.startswith("semi")
            net = AutoencoderClassifier3D(num_classes=len(CLASSES), with_decoder=semi)
            if semi:
                contrastive = name == "semi_contrastive"
                model: LightningModule = SemiSupervisedClassifier(
                    net,
                    len(CLASSES),
                    class_names=CLASSES,
                    reconstruction_weight=0.0 if contrastive else args.reconstruction_weight,
                    rotated_views=contrastive,
                    contrastive_weight=1.0 if contrastive else 0.0,
                    consistency_weight=0.0,
                )
                batch_size = 2 * args.batch_size if contrastive else args.batch_size
                batches = LabelledShareBatchSampler(
                    labelled_indices,
                    len(train),
                    batch_size,
                    round(args.labelled_batch_fraction * batch_size),
                    seed,
                )
                loader = DataLoader(train, batch_sampler=batches)
            else:
                model = Classifier(
                    net,
                    len(CLASSES),
                    class_names=CLASSES,
                    scheduler="none",
                    rotated_views=name == "supervised_rotated",
                )
                loader = DataLoader(labelled, batch_size=args.batch_size, shuffle=True, drop_last=True)
            accuracy, elapsed = train_and_test(model, loader, test, args.steps, seed)
            rows[name].append(accuracy)
            seconds[name] += elapsed
            print(f"seed {seed}: {MODELS[name]}: test accuracy {accuracy:.3f} ({elapsed:.0f} s)", flush=True)

    table = [
        f"Semi-supervised vs supervised, 5 classes, 32³, SNR {args.snr}, {args.labelled_fraction:.0%} of "
        f"{args.train_size} training items labelled, {args.steps} steps of batch {args.batch_size} "
        f"(semi-supervised: {labelled_per_batch} labelled per batch; contrastive: batch "
        f"{2 * args.batch_size}, "
        f"{round(args.labelled_batch_fraction * 2 * args.batch_size)} labelled), AdamW lr 1e-3, λ = "
        f"{args.reconstruction_weight}, seeds {', '.join(map(str, args.seeds))}, "
        f"{torch.get_num_threads()} CPU threads; test split {args.test_size} items per seed.",
        "",
        "| model | "
        + " | ".join(f"seed {seed}" for seed in args.seeds)
        + " | mean ± sd | training time (s) |",
        "|---|" + "---:|" * (len(args.seeds) + 2),
    ]
    for name, label in MODELS.items():
        mean, sd = mean_and_sd(rows[name])
        values = " | ".join(f"{value:.3f}" for value in rows[name])
        table.append(f"| {label} | {values} | {mean:.3f} ± {sd:.3f} | {seconds[name]:.0f} |")
    text = "\n".join(table)
    print(text)
    write_figures(
        args.json,
        [
            figure_row(
                "semi_supervised",
                f"test accuracy, {args.labelled_fraction:.0%} labels, mean of {len(args.seeds)} seeds",
                mean_and_sd(rows["semi_contrastive"])[0],
                "fraction",
                "supervised with rotated views",
                mean_and_sd(rows["supervised_rotated"])[0],
            ),
            figure_row(
                "semi_supervised",
                f"supervised with rotated views, {args.labelled_fraction:.0%} labels, "
                f"mean of {len(args.seeds)} seeds",
                mean_and_sd(rows["supervised_rotated"])[0],
                "fraction",
                "supervised on the subtomograms as they are",
                mean_and_sd(rows["supervised"])[0],
            ),
        ],
    )
    write_output(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
