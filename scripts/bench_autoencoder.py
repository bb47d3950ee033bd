"""Unsupervised classification of simulated subtomograms: autoencoder + k-means against PCA + k-means.

Held-out subtomograms of ``--classes`` (simulated by :class:`aitom.data.SimulatedSubtomogramDataModule`:
random orientation and shift, missing wedge, CTF, noise at ``--snr``) are clustered by k-means (faiss) with
K = the number of classes and K = twice that, on

* the latent codes of :class:`aitom.models.autoencoder.SubtomogramAutoencoder` trained for ``--epochs`` on
  ``--train-size`` other subtomograms by :class:`aitom.tasks.autoencoder.AutoencoderClustering` (under
  Lightning), with and without pose normalisation, and with the contrastive loss on rotated views added
  (``contrastive_weight=1``, no pose normalisation; its codes L2-normalised);
* the baseline, in the same run: the leading ``--components`` principal components of the raw voxels (and,
  for reference, of the voxels low-pass filtered as the autoencoder's input, with and without pose
  normalisation).

The autoencoder's input and target are low-pass filtered (Gaussian, ``--lowpass-sigma`` voxels): at SNR 0.1
most of the variance of the raw voxels is noise, which an autoencoder would otherwise spend its capacity on.

Purity and adjusted Rand index (ARI) are measured against the true classes; wall time covers training (for
the autoencoder), feature extraction and k-means. The last column is the ratio of the method's ARI to the
PCA-on-raw-voxels ARI at the same K.

Usage: ``python scripts/bench_autoencoder.py [--quick] [--out bench_autoencoder.md]`` (the full run takes
about 10 minutes on 2 quiet CPU cores; ``--quick`` under 2).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything
from torch.utils.data import DataLoader

from aitom.commands.shared import seed_number
from aitom.data import SimulatedSubtomogramDataModule
from aitom.errors import InputError
from aitom.models.autoencoder import SubtomogramAutoencoder
from aitom.ops.clustering import adjusted_rand_index, kmeans
from aitom.ops.filters import gaussian_filter3d
from aitom.ops.open_set import cluster_purity
from aitom.ops.pose_normalisation import pose_normalise
from aitom.tasks.autoencoder import AutoencoderClustering
from run_benchmarks import (
    check_outputs,
    figure_row,
    real_number,
    reports_input_errors,
    whole_number,
    write_figures,
    write_output,
)

CLASSES = ["proteasome_20s", "ribosome_30s", "apoferritin", "rubisco", "nucleosome"]
POSE_SIGMA_VOXELS = 2.0


def simulate(data: SimulatedSubtomogramDataModule, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All items of a split: ``(N, 1, S, S, S)`` volumes and ``(N,)`` labels."""
    dataset = data.datasets[split]
    volumes, labels = [], []
    for start in range(0, len(dataset), 64):
        items = dataset.__getitems__(list(range(start, min(start + 64, len(dataset)))))
        volumes.append(torch.stack([item["volume"] for item in items]))
        labels.append(torch.stack([item["label"] for item in items]))
    return torch.cat(volumes), torch.cat(labels)


def scores(features: torch.Tensor, labels: torch.Tensor, n_clusters: int, seed: int) -> tuple[float, float]:
    """Purity and ARI of k-means (``n_clusters``) of ``(N, D)`` features against ``labels``."""
    clusters = kmeans(features, n_clusters, seed=seed)
    return cluster_purity(labels, clusters), adjusted_rand_index(labels, clusters)


def train_autoencoder(
    volumes: torch.Tensor, pose_normalisation: bool, args: argparse.Namespace, contrastive_weight: float = 0.0
) -> AutoencoderClustering:
    seed_everything(args.seed, verbose=False)
    net = SubtomogramAutoencoder(box_size_voxels=volumes.shape[-1], latent_dim=args.latent_dim)
    model = AutoencoderClustering(
        net,
        n_clusters=len(args.classes),
        pose_normalisation=pose_normalisation,
        pose_sigma_voxels=POSE_SIGMA_VOXELS,
        lowpass_sigma_voxels=args.lowpass_sigma,
        contrastive_weight=contrastive_weight,
        lr=args.lr,
    )
    loader = DataLoader([{"volume": volume} for volume in volumes], batch_size=args.batch_size, shuffle=True)
    trainer = Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    trainer.fit(model, train_dataloaders=loader)
    return model.eval()


def latent_codes(model: AutoencoderClustering, volumes: torch.Tensor) -> torch.Tensor:
    """The codes k-means clusters: L2-normalised when the model was trained with the contrastive loss."""
    with torch.no_grad():
        codes = torch.cat([model.net.encode(model.prepare(part)) for part in volumes.split(64)])
    return codes if model.projection is None else torch.nn.functional.normalize(codes, dim=1)


def pca(volumes: torch.Tensor, n_components: int) -> torch.Tensor:
    """``(N, n_components)`` projections of the flattened, centred volumes on their leading principal axes."""
    data = volumes.flatten(1)
    data = data - data.mean(0, keepdim=True)
    _, _, basis = torch.linalg.svd(data, full_matrices=False)
    return data @ basis[:n_components].T


@reports_input_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", nargs="+", default=CLASSES, help="structure-library classes")
    positive = real_number(above=0.0)
    parser.add_argument(
        "--snr",
        type=positive,
        default=0.1,
        help="signal-to-noise ratio of the subtomograms, var(signal) / var(noise)",
    )
    parser.add_argument("--box", type=whole_number(8), default=32, help="box edge, voxels (a multiple of 8)")
    parser.add_argument("--voxel-size", type=positive, default=10.0, help="voxel size, Å")
    parser.add_argument("--train-size", type=whole_number(1), default=600, help="training subtomograms")
    parser.add_argument(
        "--test-size", type=whole_number(2), default=500, help="held-out subtomograms that are clustered"
    )
    parser.add_argument(
        "--epochs", type=whole_number(1), default=8, help="training epochs of the autoencoder"
    )
    parser.add_argument(
        "--batch-size",
        type=whole_number(1),
        default=32,
        help="training batch size (the contrastive loss wants 32 or more)",
    )
    parser.add_argument("--latent-dim", type=whole_number(1), default=32, help="autoencoder latent length")
    parser.add_argument("--lr", type=positive, default=2e-3, help="AdamW learning rate")
    parser.add_argument(
        "--lowpass-sigma",
        type=positive,
        default=1.5,
        help="Gaussian low-pass of the autoencoder input, voxels",
    )
    parser.add_argument(
        "--components", type=whole_number(1), default=32, help="principal components of the baseline"
    )
    parser.add_argument("--seed", type=seed_number, default=0, help="seed of data, training and k-means")
    parser.add_argument("--out", type=Path, help="write the Markdown table here")
    parser.add_argument(
        "--json", type=Path, help="also write the headline figures here (JSON, see run_benchmarks.py)"
    )
    parser.add_argument("--quick", action="store_true", help="128 training, 150 held-out items, 2 epochs")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_size, args.test_size, args.epochs = 128, 150, 2
    if args.box % 8:
        raise InputError(f"--box must be a multiple of 8 voxels, got {args.box}")
    check_outputs(args.out, args.json)

    data = SimulatedSubtomogramDataModule(
        classes=args.classes,
        box_size_voxels=args.box,
        voxel_size_a=args.voxel_size,
        snr=args.snr,
        train_size=args.train_size,
        predict_size=args.test_size,
        seed=args.seed,
    )
    data.setup()
    train_volumes, _ = simulate(data, "train")
    test_volumes, test_labels = simulate(data, "predict")
    n_classes = len(args.classes)
    cluster_counts = (n_classes, 2 * n_classes)

    rows: list[tuple[str, int, float, float, float]] = []  # method, K, purity, ARI, seconds
    baselines = {
        f"PCA ({args.components} comps) of raw voxels": lambda: pca(test_volumes, args.components),
        f"PCA ({args.components} comps) of low-passed voxels": lambda: pca(
            gaussian_filter3d(test_volumes, args.lowpass_sigma), args.components
        ),
        f"PCA ({args.components} comps) of pose-normalised, low-passed voxels": lambda: pca(
            gaussian_filter3d(
                pose_normalise(test_volumes, sigma_voxels=POSE_SIGMA_VOXELS)[0], args.lowpass_sigma
            ),
            args.components,
        ),
    }
    for name, features_of in baselines.items():
        start = time.perf_counter()
        features = features_of()
        extraction = time.perf_counter() - start
        for k in cluster_counts:
            start = time.perf_counter()
            purity, ari = scores(features, test_labels, k, args.seed)
            rows.append((name, k, purity, ari, extraction + time.perf_counter() - start))
    variants = [
        (f"autoencoder ({args.latent_dim}-d latent), pose normalisation on", True, 0.0),
        (f"autoencoder ({args.latent_dim}-d latent), pose normalisation off", False, 0.0),
        (f"autoencoder ({args.latent_dim}-d latent) + contrastive loss on rotated views", False, 1.0),
    ]
    for name, pose_normalisation, contrastive_weight in variants:
        start = time.perf_counter()
        model = train_autoencoder(train_volumes, pose_normalisation, args, contrastive_weight)
        codes = latent_codes(model, test_volumes)
        extraction = time.perf_counter() - start
        for k in cluster_counts:
            start = time.perf_counter()
            purity, ari = scores(codes, test_labels, k, args.seed)
            rows.append((name, k, purity, ari, extraction + time.perf_counter() - start))
        print(f"{name}: done in {extraction:.0f} s", flush=True)

    reference = {k: ari for name, k, _, ari, _ in rows if name.endswith("of raw voxels")}
    lines = [
        f"Unsupervised classification of {args.test_size} held-out simulated subtomograms "
        f"({n_classes} classes, {args.box}³, {args.voxel_size:g} Å, SNR {args.snr:g}); autoencoder trained "
        f"on {args.train_size} others for {args.epochs} epochs; low-pass σ {args.lowpass_sigma:g} voxels.",
        "",
        "| method | K | purity | ARI | wall time | ARI / ARI(PCA raw) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    figures = []
    for name, k, purity, ari, seconds in rows:
        ratio = f"{ari / reference[k]:.2f}" if reference[k] > 0 else "—"
        lines.append(f"| {name} | {k} | {purity:.3f} | {ari:.3f} | {seconds:.1f} s | {ratio} |")
        if name.startswith("autoencoder"):
            figures.append(
                figure_row("autoencoder", f"ARI, {name}, K = {k}", ari, "", "PCA of raw voxels", reference[k])
            )
    table = "\n".join(lines) + "\n"
    print(table)
    write_output(args.out, table)
    write_figures(args.json, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
