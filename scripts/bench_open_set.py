"""Open-set recognition: large margin centralised cosine loss against a softmax baseline, in one run.

Both models are the same network (``--backbone``: a small 3-stage CNN by default, or the DSRF3D-v2 trunk of
:class:`aitom.tasks.open_set.ClassifierTrunk`; a ``--feature-dim`` batch-normalised linear feature layer;
a linear head), started from the same weights and trained on the
same simulated subtomograms of ``--known`` classes (:class:`aitom.data.open_set.OpenSetDataModule`, SNR
``--snr``) with the same optimiser and schedule. They differ only in the loss and the score:

* ``cosine``: :class:`aitom.tasks.open_set.OpenSetClassifier` with ``loss="cosine"`` (CosFace logits with a
  margin ramped in, plus the centralisation term); score = max cosine to a known-class centre; the rejected
  items are clustered on their unit features.
* ``softmax``: ``loss="softmax"`` (plain cross-entropy); score = maximum softmax probability; the rejected
  items are clustered on their penultimate (feature-layer) features.

The test split mixes the known classes with ``--unknown`` classes. Reported per model: known-class accuracy,
AUROC of known vs unknown from the score, the fraction of unknown items rejected and of known items rejected
at the threshold set on the validation split (5th percentile of the known scores), and the purity and
adjusted Rand index of the k-means clusters (k = number of unknown classes) of the rejected items.

    python scripts/bench_open_set.py --out bench_open_set.md            # ~28 min per model on 2 busy cores
    python scripts/bench_open_set.py --quick --out bench_open_set.md    # a smoke run (too short to learn)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything
from torch import nn

from aitom.commands.shared import refuse_path_under_a_file, seed_number
from aitom.data.open_set import OpenSetDataModule
from aitom.io import atomic_output, check_output_path
from aitom.models import DSRF3Dv2
from aitom.models.classifiers import conv_bn_relu
from aitom.tasks.open_set import ClassifierTrunk, OpenSetClassifier
from run_benchmarks import (
    check_outputs,
    figure_row,
    real_number,
    reports_input_errors,
    whole_number,
    write_figures,
)

KNOWN = ["proteasome_20s", "ribosome_30s", "apoferritin", "rubisco"]
UNKNOWN = ["nucleosome", "p97"]
COLUMNS = ("known_acc", "auroc", "unknown_recall", "known_rejected", "unknown_purity", "unknown_ari")


class SmallTrunk(nn.Module):
    """A light feature network for CPU runs: three conv-BN-ReLU + 2³ max-pool stages (16, 32, 64 channels),
    global average pooling, linear to ``feature_dim``, batch normalisation."""

    def __init__(self, feature_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for width in (16, 32, 64):
            layers += [conv_bn_relu(channels, width, 3, True), nn.MaxPool3d(2)]
            channels = width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool3d(1), nn.Flatten())
        self.projection = nn.Sequential(nn.Linear(channels, feature_dim), nn.BatchNorm1d(feature_dim))
        self.feature_dim = feature_dim

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        return self.projection(self.features(volume))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="Markdown file to write the table to")
    parser.add_argument("--quick", action="store_true", help="small data and 2 epochs (a smoke run)")
    parser.add_argument("--known", nargs="+", default=KNOWN, help="known (training) library classes")
    parser.add_argument("--unknown", nargs="+", default=UNKNOWN, help="unknown (test-only) library classes")
    positive = real_number(above=0.0)
    parser.add_argument(
        "--snr", type=positive, default=0.5, help="var(signal) / var(noise) of the subtomograms"
    )
    parser.add_argument("--box", type=whole_number(8), default=16, help="subtomogram edge, voxels")
    parser.add_argument("--voxel-size", type=positive, default=20.0, help="voxel size, Å")
    parser.add_argument("--epochs", type=whole_number(1), default=8, help="training epochs (2 with --quick)")
    parser.add_argument(
        "--train-size", type=whole_number(1), default=1536, help="training items (192 with --quick)"
    )
    parser.add_argument(
        "--test-size", type=whole_number(1), default=400, help="test items (120 with --quick)"
    )
    parser.add_argument(
        "--backbone",
        choices=("small", "dsrf3d"),
        default="small",
        help="feature network: SmallTrunk (fast on CPU) or the DSRF3D-v2 trunk (ClassifierTrunk)",
    )
    parser.add_argument("--feature-dim", type=whole_number(1), default=64, help="dimension of the features")
    parser.add_argument(
        "--seed", type=seed_number, default=0, help="seed of the data, the weights and k-means"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument(
        "--json", type=Path, help="also write the headline figures here (JSON, see run_benchmarks.py)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.train_size, args.test_size = 2, 192, 120
    return args


def cached_data(args: argparse.Namespace) -> OpenSetDataModule:
    """The open-set DataModule with every split simulated once and held in memory.

    Items are pure functions of (seed, split, index), so this serves exactly what the on-the-fly module would,
    without simulating the training items again every epoch.
    """
    data = OpenSetDataModule(
        known_classes=args.known,
        unknown_classes=args.unknown,
        box_size_voxels=args.box,
        voxel_size_a=args.voxel_size,
        snr=args.snr,
        train_size=args.train_size,
        val_size=96,
        test_size=args.test_size,
        batch_size=16,
        seed=args.seed,
    )
    data.setup()
    for split, dataset in data.datasets.items():
        indices = list(range(len(dataset)))
        data.datasets[split] = [
            item
            for start in range(0, len(indices), 64)
            for item in dataset.__getitems__(indices[start : start + 64])
        ]
    return data


def run_model(
    loss: str, data: OpenSetDataModule, args: argparse.Namespace, accelerator: str
) -> tuple[dict[str, float], float]:
    """Train and test one model; returns its test metrics and the wall time, s."""
    seed_everything(args.seed, verbose=False)
    if args.backbone == "dsrf3d":
        net = ClassifierTrunk(DSRF3Dv2(num_classes=len(args.known)), feature_dim=args.feature_dim)
    else:
        net = SmallTrunk(args.feature_dim)
    steps = args.epochs * -(-args.train_size // 16)
    model = OpenSetClassifier(
        net,
        num_known_classes=len(args.known),
        loss=loss,
        margin_warmup_steps=max(1, steps // 3),
        unknown_clusters=len(args.unknown),
        cluster_seed=args.seed,
    )
    trainer = Trainer(
        max_epochs=args.epochs,
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    start = time.perf_counter()
    trainer.fit(model, data)
    trainer.test(model, data, verbose=False)
    return model.test_results, time.perf_counter() - start


def markdown_table(results: dict[str, dict[str, float]], times: dict[str, float]) -> str:
    header = "| model | " + " | ".join(COLUMNS) + " | time (s) |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 2)]
    for name, metrics in results.items():
        values = " | ".join(f"{metrics[column]:.3f}" for column in COLUMNS)
        lines.append(f"| {name} | {values} | {times[name]:.0f} |")
    return "\n".join(lines)


@reports_input_errors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_output_path(args.out, args.overwrite)
    refuse_path_under_a_file(args.out)
    check_outputs(args.json)
    accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    data = cached_data(args)
    results, times = {}, {}
    for loss, name in (
        ("cosine", "large margin centralised cosine"),
        ("softmax", "softmax + max probability"),
    ):
        results[name], times[name] = run_model(loss, data, args, accelerator)
        print(f"{name}: {results[name]}", flush=True)
    settings = (
        f"{args.backbone} backbone, known {args.known}, unknown {args.unknown}, SNR {args.snr}, "
        f"box {args.box}³ of {args.voxel_size} Å, {args.train_size} training items, "
        f"{args.epochs} epochs, {args.test_size} test items, seed {args.seed}, {accelerator}"
    )
    table = markdown_table(results, times)
    print(settings)
    print(table)
    with atomic_output(args.out, overwrite=args.overwrite) as path:
        Path(path).write_text(f"# Open-set recognition\n\n{settings}\n\n{table}\n")
    cosine, softmax = results.values()
    write_figures(
        args.json,
        [
            figure_row("open_set", f"{column}, cosine loss", cosine[column], "", "softmax", softmax[column])
            for column in COLUMNS
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
