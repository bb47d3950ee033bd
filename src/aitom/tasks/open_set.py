"""Open-set recognition of subtomograms: tell known classes apart and flag, then cluster, unknown ones.

A feature network (``net:``, volumes -> ``(B, D)`` features; :class:`ClassifierTrunk` reuses the convolutional
trunk of any :mod:`aitom.models` classifier) feeds a linear head of ``num_known_classes`` rows. Two losses:

* ``loss: cosine`` (AITom's soft large margin centralised cosine loss, see :mod:`aitom.ops.open_set`): CosFace
  logits ``s (cos θ_j − m [j = y])`` against the head's rows, the margin ramped from 0 to ``m`` over
  ``margin_warmup_steps``, plus ``λ`` times the centre loss of the unit features to running class centres.
  An item's known-class score is its largest cosine to a class centre.
* ``loss: softmax``: the baseline, the same network trained with plain cross-entropy on the head's logits,
  scored by the maximum softmax probability.

Testing (known and unknown classes mixed, e.g. :class:`aitom.data.open_set.OpenSetDataModule`): a
threshold is set on the validation split (known classes only) at the ``rejection_quantile`` of the scores;
test items scoring below it are rejected as unknown and clustered by k-means (unit features for ``cosine``,
raw penultimate features for ``softmax``). Logged: ``test/known_acc`` (accuracy of the known-class items over
the known classes), ``test/auroc`` (known vs unknown from the score), ``test/unknown_purity`` and
``test/unknown_ari`` (purity and adjusted Rand index of the clusters of the rejected items against their true
labels; a known item wrongly rejected counts against both), ``test/unknown_recall`` (unknown items rejected),
``test/known_rejected`` (known items rejected), ``test/threshold``. The same numbers are kept in
``test_results``. Metrics are computed on the items this process saw (run tests on one device).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import LightningModule
from torch import nn

from aitom.errors import InputError
from aitom.models.classifiers import check_volume_channels
from aitom.ops.clustering import adjusted_rand_index, kmeans, silhouette_score
from aitom.ops.open_set import (
    auroc,
    centralization_loss,
    cluster_purity,
    large_margin_cosine_logits,
    open_set_scores,
    soft_margin,
)
from aitom.tasks.classify import (
    check_checkpoint_fits,
    check_optimiser_options,
    gather_from_ranks,
    qualified_name,
)

LOSSES = ("cosine", "softmax")
#: range of cluster numbers tried by the silhouette when ``unknown_clusters`` is None
AUTO_CLUSTERS = (2, 6)


class ClassifierTrunk(nn.Module):
    """Features from the convolutional trunk of an :mod:`aitom.models` classifier.

    ``(B, C, Z, Y, X)`` volumes -> the backbone's ``features`` stack -> its adaptive ``pool`` -> flatten ->
    linear -> batch normalisation -> ``(B, feature_dim)``. The backbone's fully connected head is not used
    (nor kept). The batch normalisation centres the features, so that their directions (what the cosine
    loss and score see) do not share one dominant common component from the start.

    Args:
        backbone: a :class:`aitom.models.classifiers.SubtomogramClassifierNet` (DSRF3Dv2, RB3D, CB3D);
            its ``num_classes`` is irrelevant.
        feature_dim: dimension ``D`` of the features.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int = 64) -> None:
        super().__init__()
        if not all(hasattr(backbone, name) for name in ("features", "pool", "head")):
            raise InputError(
                f"{type(backbone).__name__} has no features/pool/head stack; use a network from aitom.models"
            )
        if feature_dim < 2:
            raise InputError(f"feature_dim must be 2 or more, got {feature_dim}")
        first_linear = next(module for module in backbone.head.modules() if isinstance(module, nn.Linear))
        self.features = backbone.features
        self.pool = backbone.pool
        self.projection = nn.Sequential(
            nn.Linear(first_linear.in_features, feature_dim), nn.BatchNorm1d(feature_dim)
        )
        self.feature_dim = feature_dim
        self.in_channels = getattr(backbone, "in_channels", 1)
        self.minimum_box_voxels = getattr(backbone, "minimum_box_voxels", 1)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """``(B, C, Z, Y, X)`` volumes -> ``(B, feature_dim)`` features."""
        check_volume_channels(volume, self.in_channels, type(self).__name__)
        if min(volume.shape[-3:]) < self.minimum_box_voxels:
            raise InputError(
                f"the feature network needs a box of at least {self.minimum_box_voxels} voxels per axis, "
                f"got {tuple(volume.shape[-3:])}"
            )
        return self.projection(self.pool(self.features(volume)).flatten(1))


class OpenSetClassifier(LightningModule):
    """Train a subtomogram classifier on known classes and recognise items of unknown classes at test time.

    Batches: ``{"volume": (B, 1, S, S, S), "label": (B,) int64}``; in test batches labels
    ``>= num_known_classes`` are unknown classes. The DataModule must give a validation split of known
    classes: the rejection threshold is set on it at the start of every test and every prediction run (a
    DataModule that sets up only the running stage's splits, e.g. a STAR table per split, is asked for its
    validation split too).

    A network with ``BatchNorm1d`` (:class:`ClassifierTrunk`'s features) cannot train on a batch of one
    item: a fit with ``batch_size`` 1 or a training split of one item is refused, and the split DataModules
    drop a last training batch of a single item (:class:`aitom.data.splits.SplitDataModule`).

    Args:
        net: feature network, volumes -> ``(B, D)``; must have a ``feature_dim`` attribute (``D``).
        num_known_classes: number of known classes (rows of the head).
        loss: ``"cosine"`` (large margin cosine + centralisation) or ``"softmax"`` (cross-entropy baseline).
        scale: cosine logit scale ``s``.
        margin: cosine margin ``m`` (full value after the warm-up).
        margin_warmup_steps: training steps over which the margin ramps linearly from 0 to ``margin``.
        centre_weight: weight ``λ`` of the centralisation term.
        centre_momentum: running class centres ``c <- μ c + (1 − μ) mean(unit features of the class in the
            batch)``; a centre takes its first batch mean as is.
        rejection_quantile: fraction of validation (known) items that score below the threshold.
        unknown_clusters: number of clusters of the rejected items; None picks it by the mean silhouette in
            2 ... 6.
        lr: peak learning rate of AdamW (cosine decay to zero over the run).
        weight_decay: AdamW decoupled weight decay.
        cluster_seed: seed of k-means.
    """

    def __init__(
        self,
        net: nn.Module,
        num_known_classes: int,
        loss: Literal["cosine", "softmax"] = "cosine",
        scale: float = 16.0,
        margin: float = 0.35,
        margin_warmup_steps: int = 100,
        centre_weight: float = 0.1,
        centre_momentum: float = 0.9,
        rejection_quantile: float = 0.05,
        unknown_clusters: int | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        cluster_seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        if loss not in LOSSES:
            raise InputError(f"loss must be one of {LOSSES}, got {loss!r}")
        if num_known_classes < 2:
            raise InputError(f"num_known_classes must be 2 or more, got {num_known_classes}")
        check_optimiser_options(weight_decay, lr=lr)
        if not 0.0 < rejection_quantile < 1.0:
            raise InputError(f"rejection_quantile must be in (0, 1), got {rejection_quantile}")
        if not 0.0 <= centre_momentum < 1.0:
            raise InputError(f"centre_momentum must be in [0, 1), got {centre_momentum}")
        if scale <= 0 or margin < 0 or centre_weight < 0:
            raise InputError(
                f"scale must be positive and margin, centre_weight non-negative; got {scale}, {margin}, "
                f"{centre_weight}"
            )
        if margin_warmup_steps < 0:
            raise InputError(f"margin_warmup_steps must be 0 (no warm-up) or more, got {margin_warmup_steps}")
        if unknown_clusters is not None and unknown_clusters < 1:
            raise InputError(
                f"unknown_clusters must be 1 or more (or null for automatic), got {unknown_clusters}"
            )
        feature_dim = getattr(net, "feature_dim", None)
        if feature_dim is None:
            raise InputError(f"the feature network {type(net).__name__} has no feature_dim attribute")
        self.net = net
        self.num_known_classes = num_known_classes
        self.head = nn.Linear(feature_dim, num_known_classes, bias=loss == "softmax")
        self.register_buffer("centres", torch.zeros(num_known_classes, feature_dim))
        self.register_buffer("centre_seen", torch.zeros(num_known_classes, dtype=torch.bool))
        self.register_buffer("threshold", torch.tensor(float("nan")))
        self._test_outputs: list[dict[str, torch.Tensor]] = []
        self.test_results: dict[str, float] = {}
        #: names of the known classes in label order, from the DataModule (``known_class_names``) when it
        #: has them; the PredictionWriter writes them (and ``unknown`` for rejected items)
        self.class_names: list[str] | None = None

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """``(B, 1, Z, Y, X)`` volumes -> ``(B, D)`` features."""
        return self.net(volume)

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        data_known = getattr(datamodule, "num_known_classes", None)
        if data_known is not None and data_known != self.num_known_classes:
            raise InputError(
                f"the data have {data_known} known classes but the model has num_known_classes "
                f"{self.num_known_classes}"
            )
        known_names = getattr(datamodule, "known_class_names", None)
        if known_names is not None:
            self.class_names = list(known_names)
        datasets = getattr(datamodule, "datasets", None)
        if stage == "fit" and any(isinstance(module, nn.BatchNorm1d) for module in self.net.modules()):
            self._check_training_batches(datamodule, self.trainer.world_size)
        if stage in ("test", "predict") and datasets is not None and "val" not in datasets:
            datamodule.setup("validate")  # the threshold is set on the validation split
            if "val" not in datasets:
                raise InputError(
                    f"open-set {stage} sets the rejection threshold on the validation split (known "
                    "classes), but the data give none (StarSubtomogramDataModule: set val_star)"
                )
        clusters = self.hparams.unknown_clusters
        test_data = getattr(datamodule, "datasets", {}).get("test")
        if (
            stage == "test"
            and clusters is not None
            and test_data is not None
            and 0 < len(test_data) < clusters
        ):
            raise InputError(
                f"unknown_clusters is {clusters} but the test split has only {len(test_data)} items"
            )

    @staticmethod
    def _check_training_batches(datamodule: object, world_size: int) -> None:
        """Refuse data that would give a batch-normalised network a training batch of one item (each of
        ``world_size`` processes loads ``ceil(items / world_size)`` of the training split)."""
        batch_size = getattr(datamodule, "hparams", {}).get("batch_size")
        if batch_size is not None and batch_size < 2:
            raise InputError(
                "batch_size must be 2 or more (the features are batch-normalised in training), got "
                f"{batch_size}"
            )
        train = getattr(datamodule, "datasets", {}).get("train")
        if train is not None and math.ceil(len(train) / world_size) == 1:
            processes = f" shared by {world_size} processes (1 each)" if world_size > 1 else ""
            raise InputError(
                f"the training split has {len(train)} item{'s' if len(train) > 1 else ''}{processes}: the "
                "features are batch-normalised in training, which needs 2 or more items per batch"
            )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint whose weights do not fit this model (trained with other network options)."""
        check_checkpoint_fits(self, checkpoint, qualified_name(self.net))

    # ------------------------------------------------------------------------------------ scores and loss

    def logits(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, num_known_classes)`` logits; with ``labels`` (cosine loss) the true class has the margin."""
        hp = self.hparams
        if hp.loss == "softmax":
            return self.head(features)
        margin = self.current_margin() if labels is not None else 0.0
        return large_margin_cosine_logits(features, self.head.weight, labels, hp.scale, margin)

    def known_scores(self, features: torch.Tensor) -> torch.Tensor:
        """``(B,)`` known-class scores: max cosine to a class centre (cosine) or max softmax probability."""
        if self.hparams.loss == "softmax":
            return torch.softmax(self.head(features), dim=1).max(dim=1).values
        return open_set_scores(features, self.centres)

    def cluster_features(self, features: torch.Tensor) -> torch.Tensor:
        """Features the rejected items are clustered on: unit features (cosine) or raw features (softmax)."""
        if self.hparams.loss == "softmax":
            return features
        return nn.functional.normalize(features, dim=1)

    @torch.no_grad()
    def _update_centres(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        unit = nn.functional.normalize(features.detach(), dim=1)
        one_hot = nn.functional.one_hot(labels, self.num_known_classes).to(unit)  # (B, C)
        counts = one_hot.sum(dim=0)
        sums = one_hot.T @ unit  # (C, D)
        if self._trainer is not None and self.trainer.world_size > 1:
            # the means of the global batch, so every process keeps the centres of a single process
            counts, sums = self.all_gather(counts).sum(dim=0), self.all_gather(sums).sum(dim=0)
        present = counts > 0
        means = sums / counts.clamp(min=1)[:, None]
        momentum = self.hparams.centre_momentum
        blended = torch.where(
            self.centre_seen[:, None], momentum * self.centres + (1 - momentum) * means, means
        )
        self.centres.copy_(torch.where(present[:, None], blended, self.centres))
        self.centre_seen |= present

    def _loss(self, features: torch.Tensor, labels: torch.Tensor, stage: str) -> torch.Tensor:
        hp = self.hparams
        logits = self.logits(features, labels)
        loss = nn.functional.cross_entropy(logits, labels)
        batch_size = labels.shape[0]
        if hp.loss == "cosine" and hp.centre_weight > 0 and bool(self.centre_seen[labels].all()):
            centre_loss = centralization_loss(features, labels, self.centres)
            self.log(
                f"{stage}/centre_loss",
                centre_loss,
                on_epoch=True,
                batch_size=batch_size,
                # a training batch may hold a class not yet seen on one process only: no collective call then
                sync_dist=stage != "train",
            )
            loss = loss + hp.centre_weight * centre_loss
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        self.log(
            f"{stage}/loss",
            loss,
            on_step=stage == "train",
            on_epoch=True,
            prog_bar=True,
            batch_size=batch_size,
            # under DDP the means are over every rank (training steps too), not rank 0's shard alone
            sync_dist=True,
        )
        self.log(
            f"{stage}/acc",
            accuracy,
            on_epoch=True,
            prog_bar=stage == "val",
            batch_size=batch_size,
            sync_dist=True,
        )
        return loss

    @staticmethod
    def _labels(batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        if "label" not in batch:
            raise InputError(f"the {stage} data carry no labels")
        return batch["label"].long()

    def _check_known(self, labels: torch.Tensor, stage: str) -> None:
        if labels.numel() and int(labels.max()) >= self.num_known_classes:
            raise InputError(
                f"{stage} labels reach {int(labels.max())} but there are {self.num_known_classes} known "
                "classes; train and validate on known classes only"
            )

    # ------------------------------------------------------------------------------------------ the steps

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        labels = self._labels(batch, "train")
        self._check_known(labels, "train")
        features = self(batch["volume"])
        if self.hparams.loss == "cosine":
            self._update_centres(features, labels)
            self.log("train/margin", self.current_margin(), on_step=True, on_epoch=False)
        return self._loss(features, labels, "train")

    def current_margin(self) -> float:
        """The cosine margin in force at the current training step (the soft margin's ramp)."""
        hp = self.hparams
        return soft_margin(self.global_step, hp.margin, hp.margin_warmup_steps)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        labels = self._labels(batch, "val")
        self._check_known(labels, "val")
        self._loss(self(batch["volume"]), labels, "val")

    def on_test_epoch_start(self) -> None:
        self._test_outputs = []
        self.threshold.fill_(self.calibrate_threshold())

    def calibrate_threshold(self) -> float:
        """The ``rejection_quantile`` of the known-class scores of the DataModule's validation split."""
        datamodule = self.trainer.datamodule
        if datamodule is None:
            raise InputError(
                "open-set testing needs a DataModule with a validation split (to set the threshold)"
            )
        scores = []
        with torch.no_grad():
            for batch in datamodule.val_dataloader():
                scores.append(self.known_scores(self(batch["volume"].to(self.device))))
        if not scores:
            raise InputError("the validation split is empty; the rejection threshold is set on it")
        return float(torch.quantile(torch.cat(scores).double(), self.hparams.rejection_quantile))

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        labels = self._labels(batch, "test")
        features = self(batch["volume"])
        output = {
            "label": labels.detach().cpu(),
            "score": self.known_scores(features).detach().cpu(),
            "prediction": self.logits(features).argmax(dim=1).detach().cpu(),
            "cluster_features": self.cluster_features(features).detach().cpu(),
        }
        if "index" in batch:
            output["index"] = batch["index"].detach().cpu()
        self._test_outputs.append(output)

    def on_test_epoch_end(self) -> None:
        """Evaluate the whole test split: under DDP the ranks' outputs are gathered first (every rank then
        computes the same figures), and items the distributed sampler repeated to even out the ranks'
        shares are counted once (by their ``index``)."""
        outputs = [output for part in gather_from_ranks(self.trainer, self._test_outputs) for output in part]
        self._test_outputs = []
        if not outputs:
            raise InputError("the test split is empty")
        merged = {key: torch.cat([output[key] for output in outputs]) for key in outputs[0]}
        if "index" in merged:
            _, first = np.unique(merged["index"].numpy(), return_index=True)
            merged = {key: value[torch.as_tensor(first)] for key, value in merged.items()}
        self.test_results = open_set_evaluation(
            merged["label"],
            merged["score"],
            merged["prediction"],
            merged["cluster_features"],
            num_known_classes=self.num_known_classes,
            threshold=float(self.threshold),
            unknown_clusters=self.hparams.unknown_clusters,
            seed=self.hparams.cluster_seed,
        )
        for name, value in self.test_results.items():
            self.log(f"test/{name}", value, sync_dist=True)  # equal on every rank: averaging keeps it

    def on_predict_epoch_start(self) -> None:
        self.threshold.fill_(self.calibrate_threshold())

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """``{"class": (B,) known class or -1 if rejected as unknown, "score": (B,)}`` + the index."""
        features = self(batch["volume"])
        scores = self.known_scores(features)
        classes = self.logits(features).argmax(dim=1)
        prediction = {"class": torch.where(scores < self.threshold, -1, classes), "score": scores}
        if "index" in batch:
            prediction["index"] = batch["index"]
        return prediction

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        total_steps = self.trainer.estimated_stepping_batches
        if not np.isfinite(total_steps):
            raise InputError("the cosine schedule needs trainer.max_epochs or trainer.max_steps")
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, int(total_steps)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def choose_clusters(
    features: torch.Tensor, n_clusters: int | None, seed: int = 0
) -> tuple[torch.Tensor, int]:
    """k-means labels of ``(P, D)`` features, with ``n_clusters`` or the silhouette's best k in 2 ... 6."""
    n_items = features.shape[0]
    if n_clusters is not None:
        return kmeans(features, min(n_clusters, n_items), seed=seed), min(n_clusters, n_items)
    best_labels, best_k, best_score = torch.zeros(n_items, dtype=torch.long), 1, -float("inf")
    for k in range(AUTO_CLUSTERS[0], min(AUTO_CLUSTERS[1], n_items - 1) + 1):
        labels = kmeans(features, k, seed=seed)
        if labels.unique().numel() < 2:
            continue
        score = silhouette_score(features, labels)
        if score > best_score:
            best_labels, best_k, best_score = labels, k, score
    return best_labels, best_k


def open_set_evaluation(
    labels: torch.Tensor,
    scores: torch.Tensor,
    predictions: torch.Tensor,
    cluster_features: torch.Tensor,
    *,
    num_known_classes: int,
    threshold: float,
    unknown_clusters: int | None,
    seed: int = 0,
) -> dict[str, float]:
    """Open-set metrics of a test set (see the module docstring); NaN where a metric is undefined.

    Args:
        labels: ``(N,)`` true labels, ``>= num_known_classes`` for unknown classes.
        scores: ``(N,)`` known-class scores (higher: more likely known).
        predictions: ``(N,)`` predicted known class.
        cluster_features: ``(N, D)`` features the rejected items are clustered on.
        num_known_classes: number of known classes.
        threshold: items scoring below it are rejected as unknown.
        unknown_clusters: clusters of the rejected items (None: chosen by silhouette).
        seed: k-means seed.
    """
    known = labels < num_known_classes
    rejected = scores < threshold
    nan = float("nan")
    results = {
        "known_acc": float((predictions[known] == labels[known]).float().mean()) if known.any() else nan,
        "auroc": auroc(scores, known) if known.any() and (~known).any() else nan,
        "unknown_recall": float(rejected[~known].float().mean()) if (~known).any() else nan,
        "known_rejected": float(rejected[known].float().mean()) if known.any() else nan,
        "threshold": threshold,
        "unknown_purity": nan,
        "unknown_ari": nan,
        "unknown_clusters": 0.0,
    }
    if int(rejected.sum()) >= 2:
        cluster_labels, n_clusters = choose_clusters(
            cluster_features[rejected].float(), unknown_clusters, seed
        )
        results["unknown_purity"] = cluster_purity(labels[rejected], cluster_labels)
        results["unknown_ari"] = adjusted_rand_index(labels[rejected], cluster_labels)
        results["unknown_clusters"] = float(n_clusters)
    return results
