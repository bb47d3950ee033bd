"""Benchmark adversarial domain adaptation: target-domain accuracy of the adapted vs the source-only model.

Source domain: simulated 32³ subtomograms of 5 library classes at high SNR, ±60° tilt, 3 µm defocus.
Target domain: the same classes at lower SNR, ±45° tilt, 6 µm defocus (a different CTF and missing wedge).
For each of ``--seeds``, two :class:`AdversarialDomainAdaptation` runs, the source stage trained on the
subtomograms as they are and on random rotated views (``rotated_views``): ``--source-epochs`` epochs of
supervised training on the labelled source, then ``--adaptation-epochs`` epochs of the adversarial game on
unlabelled target volumes.
Both models are scored on the same target test split in the same run: the source-only classifier
(``M_s`` + ``C``, i.e. the network as it was when the source stage ended) and the adapted one
(``M_t`` + ``C``). Target labels are used only for this scoring. Items are simulated once and kept in memory.

Usage: ``python scripts/bench_domain_adaptation.py [--quick] [--out bench_domain_adaptation.md]
[--json F]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset

from aitom.commands.shared import seed_number
from aitom.data.simulated import SimulatedSubtomogramDataModule
from aitom.tasks.domain_adaptation import AdversarialDomainAdaptation
from aitom.tasks.semi_supervised import AutoencoderClassifier3D
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


def materialise(dataset: Dataset, chunk: int = 64) -> list[dict[str, torch.Tensor]]:
    """Every item of a simulated dataset, generated once (batched) and kept in memory."""
    items: list[dict[str, torch.Tensor]] = []
    for start in range(0, len(dataset), chunk):
        items += dataset.__getitems__(list(range(start, min(start + chunk, len(dataset)))))
    return items


def domain(
    snr: float, tilt_deg: float, defocus_um: float, train_size: int, test_size: int, seed: int
) -> SimulatedSubtomogramDataModule:
    module = SimulatedSubtomogramDataModule(
        CLASSES,
        box_size_voxels=32,
        snr=snr,
        tilt_min_deg=-tilt_deg,
        tilt_max_deg=tilt_deg,
        defocus_um=defocus_um,
        train_size=train_size,
        val_size=0,
        test_size=test_size,
        seed=seed,
    )
    module.setup("fit")
    return module


def run(args: argparse.Namespace, seed: int, rotated_views: bool) -> tuple[float, float, float]:
    """One adaptation run: (source-only, adapted) target test accuracy and the training seconds."""
    source = domain(args.source_snr, 60.0, 3.0, args.train_size, 0, seed)
    target = domain(args.target_snr, 45.0, 6.0, args.train_size, args.test_size, seed + 1)
    source_train = materialise(source.datasets["train"])
    target_train = materialise(target.datasets["train"])
    target_test = materialise(target.datasets["test"])
    seed_everything(seed, verbose=False)
    net = AutoencoderClassifier3D(num_classes=len(CLASSES), with_decoder=False)
    model = AdversarialDomainAdaptation(
        net,
        len(CLASSES),
        box_size_voxels=32,
        class_names=CLASSES,
        source_epochs=args.source_epochs,
        adaptation_lr=args.adaptation_lr,
        rotated_views=rotated_views,
    )
    batch = args.batch_size
    train_loader = CombinedLoader(
        {
            "source": DataLoader(source_train, batch_size=batch, shuffle=True, drop_last=True),
            "target": DataLoader(target_train, batch_size=batch, shuffle=True, drop_last=True),
        },
        mode="max_size_cycle",
    )
    trainer = Trainer(
        max_epochs=args.source_epochs + args.adaptation_epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        deterministic=True,
    )
    start = time.perf_counter()
    trainer.fit(model, train_dataloaders=train_loader)
    seconds = time.perf_counter() - start
    (result,) = trainer.test(model, dataloaders=DataLoader(target_test, batch_size=64), verbose=False)
    return float(result["test/source_only_acc"]), float(result["test/acc"]), seconds


@reports_input_errors
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run (smoke test, numbers meaningless)")
    count, positive = whole_number(1), real_number(above=0.0)
    parser.add_argument(
        "--train-size", type=count, default=240, help="training items per domain (default 240)"
    )
    parser.add_argument("--test-size", type=count, default=300, help="target test items (default 300)")
    parser.add_argument("--source-epochs", type=count, default=24, help="source-stage epochs (default 24)")
    parser.add_argument("--adaptation-epochs", type=count, default=4, help="adaptation epochs (default 4)")
    parser.add_argument(
        "--batch-size", type=whole_number(2), default=16, help="batch size per domain (default 16)"
    )
    parser.add_argument(
        "--adaptation-lr", type=positive, default=1e-5, help="target extractor's Adam rate (default 1e-5)"
    )
    parser.add_argument(
        "--source-snr", type=positive, default=0.5, help="source SNR, var(signal) / var(noise) (default 0.5)"
    )
    parser.add_argument(
        "--target-snr", type=positive, default=0.2, help="target SNR, var(signal) / var(noise) (default 0.2)"
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
        args.train_size, args.test_size, args.source_epochs, args.adaptation_epochs = 32, 32, 1, 1
        args.seeds = [0]
    check_outputs(args.out, args.json)

    accuracy: dict[tuple[bool, str], list[float]] = {}
    seconds = 0.0
    for seed in args.seeds:
        for rotated_views in (False, True):
            source_only, adapted, elapsed = run(args, seed, rotated_views)
            accuracy.setdefault((rotated_views, "source-only"), []).append(source_only)
            accuracy.setdefault((rotated_views, "adapted"), []).append(adapted)
            seconds += elapsed
            print(
                f"seed {seed}, rotated views {'on' if rotated_views else 'off'}: "
                f"source-only {source_only:.3f}, adapted {adapted:.3f} ({elapsed:.0f} s)",
                flush=True,
            )

    lines = [
        f"Adversarial domain adaptation, 5 classes, 32³; source: SNR {args.source_snr}, ±60° tilt, 3 µm "
        f"defocus; target: SNR {args.target_snr}, ±45° tilt, 6 µm defocus; {args.train_size} training "
        f"items per domain, batch {args.batch_size}, {args.source_epochs} source + {args.adaptation_epochs} "
        f"adaptation epochs, adaptation lr {args.adaptation_lr:g}, seeds {', '.join(map(str, args.seeds))} "
        f"({seconds:.0f} s of training in all), {torch.get_num_threads()} CPU threads; target test split "
        f"{args.test_size} items per seed. Rotated views: the source stage trains on random rotated views "
        "(uniform rotation, shift, the source's wedge removed again).",
        "",
        "| source stage | model | " + " | ".join(f"seed {seed}" for seed in args.seeds) + " | mean ± sd |",
        "|---|---|" + "---:|" * (len(args.seeds) + 1),
    ]
    for rotated_views in (False, True):
        for name in ("source-only", "adapted"):
            values = accuracy[(rotated_views, name)]
            cells = " | ".join(f"{value:.3f}" for value in values)
            label = "rotated views" if rotated_views else "subtomograms as they are"
            mean, sd = mean_and_sd(values)
            lines.append(f"| {label} | {name} | {cells} | {mean:.3f} ± {sd:.3f} |")
    table = "\n".join(lines)
    print(table)
    write_figures(
        args.json,
        [
            figure_row(
                "domain_adaptation",
                f"target test accuracy, rotated views, mean of {len(args.seeds)} seeds",
                mean_and_sd(accuracy[(True, "adapted")])[0],
                "fraction",
                "source-only",
                mean_and_sd(accuracy[(True, "source-only")])[0],
            ),
            figure_row(
                "domain_adaptation",
                f"target test accuracy without rotated views, mean of {len(args.seeds)} seeds",
                mean_and_sd(accuracy[(False, "adapted")])[0],
                "fraction",
                "source-only",
                mean_and_sd(accuracy[(False, "source-only")])[0],
            ),
        ],
    )
    write_output(args.out, table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
