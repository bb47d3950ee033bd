"""Unsupervised classification of subtomograms by an autoencoder's latent codes (Zeng et al. 2018).

Training: each batch is pose-normalised (:func:`aitom.ops.pose_normalisation.pose_normalise`, no gradient)
and the network learns to reconstruct it (mean squared error). With ``contrastive_weight`` > 0 the codes are
also taught that orientation does not matter: two random rotated views of every subtomogram
(:func:`aitom.ops.augmentation.random_rotated_views`, the missing wedge kept) must have codes that a small
projection head maps close together and away from the other subtomograms' (the NT-Xent loss of SimCLR,
Chen et al. 2020, :func:`contrastive_loss`); the reconstruction term then reconstructs the first view.
k-means then clusters the L2-normalised codes. On 500 held-out simulated subtomograms of 5 classes at SNR
0.1 this lifts the adjusted Rand index from 0.33 (reconstruction alone; PCA of the low-passed voxels: 0.57)
to 0.80 (``scripts/bench_autoencoder.py``). Prediction: the latent codes of every predict
item are collected and, at the end of the predict epoch, clustered by k-means (faiss); the results go to
``output_dir``:

* ``clusters.star`` (``rlnCoordinateX/Y/Z`` when the batches carry ``coordinates_xyz``) or ``clusters.csv``,
  one row per item in input order: ``rlnClassNumber`` (1-based cluster), ``aitomParticleIndex`` and, when the
  data have labels, ``aitomTrueClass`` (1-based);
* ``latent.npy``: ``(N, latent_dim)`` latent codes in the same order;
* ``cluster_NNN_average.mrc``: the average of the (pose-normalised) members of cluster NNN (1-based);
* ``cluster_NNN_members.png``: central XY slices of up to 16 members;
* ``summary.json``: numbers of items and clusters, cluster sizes, and with labels the purity and the
  adjusted Rand index.

Batches are the classifier's dicts: ``{"volume": (B, 1, S, S, S), optional "label": (B,), "index": (B,),
"coordinates_xyz": (B, 3)}``.

Zeng X, Leung MR, Zeev-Ben-Mordehai T, Xu M. *A convolutional autoencoder approach for mining features in
cellular electron cryo-tomograms and weakly supervised coarse segmentation.* J Struct Biol 202:150-160 (2018).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from aitom.errors import InputError
from aitom.io import atomic_output, particles_table, write_particles, write_volume
from aitom.ops.augmentation import random_rotated_views
from aitom.ops.clustering import adjusted_rand_index, kmeans
from aitom.ops.filters import gaussian_filter3d
from aitom.ops.open_set import cluster_purity
from aitom.ops.pose_normalisation import pose_normalise
from aitom.tasks.classify import (
    check_checkpoint_fits,
    check_optimiser_options,
    check_tilt_range,
    check_views_match_data,
    qualified_name,
)

#: members shown in each cluster's montage
MONTAGE_MEMBERS = 16


def contrastive_loss(first: torch.Tensor, second: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (SimCLR): each item's two views must be each other's nearest among all ``2B`` embeddings.

    Args:
        first: ``(B, D)`` embeddings of the first views.
        second: ``(B, D)`` embeddings of the second views (row ``i`` is the same item as ``first[i]``).
        temperature: softmax temperature of the cosine similarities (> 0).

    Returns:
        The mean over the ``2B`` embeddings of ``-log softmax`` of the similarity to the item's other view,
        the softmax taken over the ``2B - 1`` other embeddings.
    """
    embeddings = nn.functional.normalize(torch.cat([first, second]), dim=1)
    similarity = embeddings @ embeddings.T / temperature
    similarity = similarity.masked_fill(
        torch.eye(similarity.shape[0], dtype=torch.bool, device=similarity.device), float("-inf")
    )
    size = first.shape[0]
    partner = torch.cat([torch.arange(size, 2 * size), torch.arange(size)]).to(similarity.device)
    return nn.functional.cross_entropy(similarity, partner)


class AutoencoderClustering(LightningModule):
    """Train an autoencoder on (pose-normalised) subtomograms; cluster their latent codes when predicting.

    Logged: ``train/loss`` (per step and epoch), ``val/loss``, ``test/loss`` (the weighted loss; the mean
    squared error of the reconstruction without the contrastive term) and ``{stage}/contrastive``. When
    predicting, the prepared volumes of all predict items are kept (on the device, and
    gathered to every process under DDP) until the cluster averages are written: ``N S³ 4`` bytes.

    The network is not among the hyper-parameters: load a checkpoint with
    ``AutoencoderClustering.load_from_checkpoint(path, net=SubtomogramAutoencoder(...))`` or through
    ``aitom predict --config ... --ckpt_path ...``.

    Args:
        net: an autoencoder with ``encode(x) -> z``, ``decode(z) -> x`` and ``forward(x) -> (x̂, z)`` on
            ``(B, 1, S, S, S)`` volumes (e.g. :class:`aitom.models.autoencoder.SubtomogramAutoencoder`).
        n_clusters: number of k-means clusters of the predict items (at least 1, at most the number of items).
        pose_normalisation: pose-normalise every volume before the network sees it.
        pose_sigma_voxels: Gaussian low-pass (voxels) of the density used to find the pose.
        pose_threshold_std: density threshold for the pose, standard deviations above the mean.
        lowpass_sigma_voxels: Gaussian low-pass (voxels) of the network's input and reconstruction target
            (after pose normalisation); 0 for none. At low SNR it leaves the network the signal to model.
        reconstruction_weight: weight of the reconstruction error in the loss (0: none).
        contrastive_weight: weight of the contrastive loss on rotated views (0: the plain autoencoder);
            needs a network with a ``latent_dim`` attribute.
        contrastive_temperature: temperature of the contrastive loss.
        contrastive_view_noise: standard deviation of white noise drawn afresh for each view, in units of the
            item's own standard deviation (0: none): the two views of an item then share its signal but not
            all of its noise, so the network cannot tell items apart by their noise alone.
        tilt_range_deg: the data's tilt range (lowest, highest), degrees: the views' missing wedge.
        lr: AdamW learning rate.
        weight_decay: AdamW decoupled weight decay.
        output_dir: folder for the prediction results (created; must be empty or absent unless ``overwrite``).
        overwrite: replace a non-empty ``output_dir``.
        output_voxel_size_a: voxel size (Å) written to the cluster averages; default the DataModule's
            ``voxel_size_a`` hyper-parameter, else 1.
        kmeans_seed: seed of k-means.
    """

    def __init__(
        self,
        net: nn.Module,
        n_clusters: int = 10,
        pose_normalisation: bool = True,
        pose_sigma_voxels: float = 2.0,
        pose_threshold_std: float = 0.0,
        lowpass_sigma_voxels: float = 0.0,
        reconstruction_weight: float = 1.0,
        contrastive_weight: float = 0.0,
        contrastive_temperature: float = 0.2,
        contrastive_view_noise: float = 0.0,
        tilt_range_deg: tuple[float, float] = (-60.0, 60.0),
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        output_dir: str = "outputs/autoencoder/clusters",
        overwrite: bool = False,
        output_voxel_size_a: float | None = None,
        kmeans_seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        if n_clusters < 1:
            raise InputError(f"n_clusters must be at least 1, got {n_clusters}")
        if pose_sigma_voxels < 0 or lowpass_sigma_voxels < 0:
            raise InputError(
                f"pose_sigma_voxels and lowpass_sigma_voxels must not be negative, got "
                f"{pose_sigma_voxels} and {lowpass_sigma_voxels}"
            )
        if output_voxel_size_a is not None and output_voxel_size_a <= 0:
            raise InputError(f"output_voxel_size_a must be positive, got {output_voxel_size_a}")
        if (
            reconstruction_weight < 0
            or contrastive_weight < 0
            or reconstruction_weight + contrastive_weight == 0
        ):
            raise InputError(
                "reconstruction_weight and contrastive_weight must be 0 or more and not both 0, got "
                f"{reconstruction_weight} and {contrastive_weight}"
            )
        if contrastive_temperature <= 0:
            raise InputError(f"contrastive_temperature must be positive, got {contrastive_temperature}")
        if not 0 <= contrastive_view_noise < math.inf:
            raise InputError(f"contrastive_view_noise must be 0 or more, got {contrastive_view_noise}")
        check_tilt_range(tilt_range_deg)
        check_optimiser_options(weight_decay, lr=lr)
        self.net = net
        self.projection: nn.Module | None = None
        if contrastive_weight > 0:
            latent_dim = getattr(net, "latent_dim", None)
            if latent_dim is None:
                raise InputError(
                    "contrastive_weight > 0 needs a network with a latent_dim attribute; "
                    f"{type(net).__name__} has none (use aitom.models.autoencoder.SubtomogramAutoencoder)"
                )
            self.projection = nn.Sequential(
                nn.Linear(latent_dim, 2 * latent_dim),
                nn.ReLU(inplace=True),
                nn.Linear(2 * latent_dim, latent_dim),
            )
        self._predicted: list[dict[str, torch.Tensor]] = []

    # ------------------------------------------------------------------------------------------ the steps

    def setup(self, stage: str) -> None:
        """Check that the contrastive views use the data's tilt range (when the DataModule states one) and,
        before predicting, that the predict split has at least ``n_clusters`` items."""
        if self.projection is not None:
            check_views_match_data(self, self.hparams.tilt_range_deg)
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        predict_data = getattr(datamodule, "datasets", {}).get("predict")
        if (
            stage == "predict"
            and predict_data is not None
            and 0 < len(predict_data) < self.hparams.n_clusters
        ):
            raise InputError(
                f"n_clusters is {self.hparams.n_clusters} but there are only {len(predict_data)} items "
                "to predict"
            )

    def prepare(self, volume: torch.Tensor) -> torch.Tensor:
        """The network's input: ``(B, 1, S, S, S)`` volumes, pose-normalised and low-pass filtered as set."""
        if volume.ndim != 5 or volume.shape[1] != 1:
            raise InputError(f"batches must hold volumes of shape (B, 1, S, S, S), got {tuple(volume.shape)}")
        hp = self.hparams
        with torch.no_grad():
            if hp.pose_normalisation:
                volume, _, _ = pose_normalise(
                    volume, sigma_voxels=hp.pose_sigma_voxels, threshold_std=hp.pose_threshold_std
                )
            if hp.lowpass_sigma_voxels > 0:
                volume = gaussian_filter3d(volume, hp.lowpass_sigma_voxels)
        return volume

    def forward(self, volume: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 1, S, S, S)`` -> ``(reconstruction of the prepared volume, latent (B, latent_dim))``."""
        return self.net(self.prepare(volume))

    def reconstruction_loss(self, volume: torch.Tensor) -> torch.Tensor:
        """Mean squared error between the prepared volumes and their reconstructions."""
        target = self.prepare(volume)
        reconstruction, _ = self.net(target)
        return nn.functional.mse_loss(reconstruction, target)

    def contrastive_losses(self, volume: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(contrastive loss of two rotated views, reconstruction error of the first view)``."""
        hp = self.hparams
        prepared = self.prepare(volume)
        views = {"noise_std": hp.contrastive_view_noise}
        first = random_rotated_views(prepared, *hp.tilt_range_deg, **views)
        second = random_rotated_views(prepared, *hp.tilt_range_deg, **views)
        first_code, second_code = self.net.encode(first), self.net.encode(second)
        contrastive = contrastive_loss(
            self.projection(first_code), self.projection(second_code), hp.contrastive_temperature
        )
        if hp.reconstruction_weight == 0:
            return contrastive, torch.zeros((), device=volume.device)
        return contrastive, nn.functional.mse_loss(self.net.decode(first_code), first)

    def _shared_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        hp = self.hparams
        if self.projection is None:
            loss = self.reconstruction_loss(batch["volume"])
        else:
            contrastive, reconstruction = self.contrastive_losses(batch["volume"])
            loss = hp.contrastive_weight * contrastive + hp.reconstruction_weight * reconstruction
            self.log(
                f"{stage}/contrastive",
                contrastive,
                on_epoch=True,
                batch_size=batch["volume"].shape[0],
                sync_dist=True,
            )
        self.log(
            f"{stage}/loss",
            loss,
            on_step=stage == "train",
            on_epoch=True,
            prog_bar=stage != "test",
            batch_size=batch["volume"].shape[0],
            # under DDP the epoch loss (best.ckpt's monitor) is the mean over the ranks, not rank 0's alone
            sync_dist=True,
        )
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint whose weights do not fit this model (trained with other network options)."""
        check_checkpoint_fits(self, checkpoint, qualified_name(self.net))

    # ------------------------------------------------------------------------------------------ predict

    def on_predict_start(self) -> None:
        """Refuse a non-empty output folder before any work is done."""
        check_output_folder(Path(self.hparams.output_dir), self.hparams.overwrite)
        self._predicted = []

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """``{"latent": (B, latent_dim), "volume": (B, S, S, S) prepared}`` + the batch's label, index, ..."""
        prepared = self.prepare(batch["volume"])
        prediction = {"latent": self.net.encode(prepared), "volume": prepared[:, 0]}
        for key in ("label", "index", "coordinates_xyz"):
            if key in batch:
                prediction[key] = batch[key]
        if "index" not in prediction:
            if self.trainer.world_size > 1:
                raise InputError("predicting on several processes needs batches that carry 'index'")
            start = sum(item["latent"].shape[0] for item in self._predicted)
            size = prepared.shape[0]
            prediction["index"] = torch.arange(start, start + size, device=prepared.device)
        self._predicted.append({key: value.detach() for key, value in prediction.items()})
        return {key: prediction[key] for key in ("latent", "index")}

    def on_predict_epoch_end(self) -> None:
        """Gather the codes of all processes, cluster them and (on rank 0) write the results."""
        if not self._predicted:
            return
        local = {key: torch.cat([item[key] for item in self._predicted]) for key in self._predicted[0]}
        self._predicted = []
        gathered = {key: self.all_gather(value) for key, value in local.items()}
        if self.trainer.world_size > 1:  # (world, n, ...) -> (world * n, ...)
            gathered = {key: value.flatten(0, 1) for key, value in gathered.items()}
        merged = {key: value.cpu() for key, value in gathered.items()}
        # items repeated to even out the processes' shares appear twice: keep one of each, in index order
        _, first = np.unique(merged["index"].numpy(), return_index=True)
        order = torch.as_tensor(first)
        merged = {key: value[order] for key, value in merged.items()}
        n_items = merged["latent"].shape[0]
        if self.hparams.n_clusters > n_items:
            raise InputError(f"n_clusters is {self.hparams.n_clusters} but there are only {n_items} items")
        codes = merged["latent"].float()
        if self.projection is not None:  # contrastive codes are compared by angle
            codes = nn.functional.normalize(codes, dim=1)
        clusters = kmeans(codes, self.hparams.n_clusters, seed=self.hparams.kmeans_seed)
        summary = self._summary(clusters, merged.get("label"))
        rank_zero_info(f"autoencoder clustering: {json.dumps(summary)}")
        if self.global_rank == 0:
            self._write_results(merged, clusters, summary)

    def _summary(self, clusters: torch.Tensor, labels: torch.Tensor | None) -> dict[str, Any]:
        counts = torch.bincount(clusters, minlength=self.hparams.n_clusters)
        summary: dict[str, Any] = {
            "n_items": int(clusters.shape[0]),
            "n_clusters": self.hparams.n_clusters,
            "pose_normalisation": self.hparams.pose_normalisation,
            "cluster_sizes": counts.tolist(),
            "purity": None,
            "adjusted_rand_index": None,
        }
        if labels is not None:
            summary["purity"] = cluster_purity(labels, clusters)
            summary["adjusted_rand_index"] = adjusted_rand_index(labels, clusters)
        return summary

    def _voxel_size_a(self) -> float:
        if self.hparams.output_voxel_size_a is not None:
            return float(self.hparams.output_voxel_size_a)
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        return float(getattr(datamodule, "hparams", {}).get("voxel_size_a", 1.0))

    def _write_results(
        self, merged: dict[str, torch.Tensor], clusters: torch.Tensor, summary: dict[str, Any]
    ) -> None:
        folder = Path(self.hparams.output_dir)
        overwrite = self.hparams.overwrite
        check_output_folder(folder, overwrite)
        voxel_size_a = self._voxel_size_a()
        volumes = merged["volume"].float()
        with atomic_output(folder / "latent.npy", overwrite) as temporary, temporary.open("wb") as stream:
            np.save(stream, merged["latent"].float().numpy())
        write_cluster_table(folder, merged, clusters, overwrite)
        for k in range(self.hparams.n_clusters):
            members = volumes[clusters == k]
            name = f"cluster_{k + 1:03d}"
            if members.shape[0]:
                write_volume(
                    folder / f"{name}_average.mrc", members.mean(0), voxel_size_a, overwrite=overwrite
                )
            save_member_montage(
                members[:MONTAGE_MEMBERS], folder / f"{name}_members.png", f"cluster {k + 1}", overwrite
            )
        with atomic_output(folder / "summary.json", overwrite) as temporary:
            temporary.write_text(json.dumps(summary, indent=2) + "\n")


def check_output_folder(folder: Path, overwrite: bool) -> None:
    """Refuse an output folder that is a file, or that holds files unless ``overwrite``."""
    if folder.exists() and not folder.is_dir():
        raise InputError("exists and is not a folder (output_dir)", folder)
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise InputError("output_dir exists and is not empty; set the model's overwrite: true", folder)


def write_cluster_table(
    folder: Path, merged: dict[str, torch.Tensor], clusters: torch.Tensor, overwrite: bool = False
) -> Path:
    """``clusters.star`` when the items have coordinates, else ``clusters.csv`` (columns: see the module)."""
    extra: dict[str, np.ndarray] = {"aitomParticleIndex": merged["index"].numpy().astype(np.int64)}
    if "label" in merged:
        extra["aitomTrueClass"] = merged["label"].numpy().astype(np.int64) + 1
    class_number = clusters.numpy() + 1
    if "coordinates_xyz" in merged:
        table = particles_table(
            merged["coordinates_xyz"].double().numpy(), class_number=class_number, extra=extra
        )
        return write_particles(folder / "clusters.star", table, overwrite=overwrite)
    path = folder / "clusters.csv"
    with atomic_output(path, overwrite) as temporary:
        pd.DataFrame({"rlnClassNumber": class_number, **extra}).to_csv(temporary, index=False)
    return path


def save_member_montage(members: torch.Tensor, path: Path, title: str, overwrite: bool = False) -> Path:
    """A grid of the central XY slices of ``(M, S, S, S)`` volumes (an empty figure when M is 0)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    count = max(members.shape[0], 1)
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(1.6 * columns, 1.6 * rows + 0.4), dpi=80)
    FigureCanvasAgg(figure)
    for i, volume in enumerate(members.numpy()):
        axes = figure.add_subplot(rows, columns, i + 1)
        axes.imshow(volume[volume.shape[0] // 2], cmap="gray", origin="lower", interpolation="nearest")
        axes.set_axis_off()
    figure.suptitle(f"{title}: {members.shape[0]} shown", fontsize=9)
    with atomic_output(path, overwrite) as temporary:
        figure.savefig(temporary, format="png")
    return path
