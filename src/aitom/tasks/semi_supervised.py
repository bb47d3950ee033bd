"""Semi-supervised autoencoding classification of subtomograms (AITom's "semi-supervised" model, §3.4.3).

Liu S, Zeng X, Xu M et al.: one 3-D convolutional encoder feeds both a decoder, trained to reconstruct
**every** subtomogram (mean squared error), and a classifier head, trained with cross-entropy on the
**labelled** subtomograms only; the two are trained jointly::

    loss = CE(labelled items) + reconstruction_weight · MSE(all items)

so the many unlabelled subtomograms shape the encoder's features through the reconstruction term.

Three additions:

* ``rotated_views``: every training subtomogram is replaced, at each step, by a random view of itself, a
  uniform rotation and a shift of up to ``view_max_shift_voxels`` with the missing wedge removed again
  (:func:`aitom.ops.augmentation.random_rotated_views`), so 10 labelled items per class are seen in every
  orientation;
* ``contrastive_weight`` > 0 (default 1): every subtomogram, labelled or not, is seen in two rotated views
  whose pooled features, through a small projection head, must match each other and differ from the rest of
  the batch (SimCLR's NT-Xent, :func:`aitom.tasks.autoencoder.contrastive_loss`), so the unlabelled data
  teach the encoder features that ignore orientation;
* ``consistency_weight`` > 0 (default 0): the unlabelled subtomograms teach the classifier by consistency
  with confident pseudo-labels (FixMatch, Sohn et al. 2020): the class the network predicts for an unlabelled
  item, where its probability reaches ``confidence_threshold``, is the target of a cross-entropy on a second
  view of the same item, with noise added (``view_noise_std``)::

    loss = CE(labelled) + reconstruction_weight · MSE(all)
         + consistency_weight · CE(second view of an unlabelled item, its confident pseudo-label)

Measured (``scripts/bench_semi_supervised.py``, 10 % of 800 simulated subtomograms labelled, 3 seeds): AITom's
form reaches a test accuracy of 0.54 ± 0.17; rotated views with the contrastive loss and no reconstruction
term, 0.81 ± 0.19, level with a supervised :class:`~aitom.tasks.classify.Classifier` with
``rotated_views=True`` on the labelled items alone (0.80 ± 0.11).

Batches are the classifier's dicts (``aitom.tasks.classify``) plus an optional ``"labelled": (B,) bool``
(``SimulatedSubtomogramDataModule(labelled_fraction=...)`` sets it); a batch without it is fully labelled.
With few labels, give every batch a fixed labelled share (``labelled_batch_fraction``, e.g. 0.5: half of each
batch drawn with replacement from the labelled items), else most batches hold almost no labelled item.
``predict_step`` returns what :class:`aitom.tasks.classify.PredictionWriter` writes to a STAR table.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from aitom.data.splits import data_box_shapes
from aitom.errors import InputError
from aitom.models.classifiers import check_volume_channels, conv_bn_relu
from aitom.ops.augmentation import random_rotated_views
from aitom.tasks.autoencoder import contrastive_loss
from aitom.tasks.classify import (
    HeldEvaluation,
    adopt_data_classes,
    check_checkpoint_fits,
    check_optimiser_options,
    check_tilt_range,
    check_views_match_data,
    distributed,
    qualified_name,
)

STAGES = ("train", "val", "test")


class AutoencoderClassifier3D(nn.Module):
    """A small 3-D convolutional encoder with a classifier head and (optionally) a mirrored decoder.

    Encoder (``features``), one stage per width, each halving the box: the first stage is a 4×4×4 stride-2
    convolution (no full-resolution feature maps: the cheap way in on a CPU), the others a 3×3×3
    convolution then 2×2×2 max pooling; every convolution is followed by BatchNorm3d and ReLU. A ``(B,
    in_channels, S, S, S)`` volume becomes a ``(B, widths[-1], S/2^n, ...)`` map (``n = len(widths)``).
    Head (``head``): adaptive average pooling to 2³, dropout, a linear layer to ``num_classes`` logits.
    Decoder (``decoder``): 2×2×2 stride-2 transposed convolutions through the widths in reverse (each
    followed by BatchNorm3d and ReLU), the last one to ``in_channels`` with a linear output (the volume's
    own intensities).

    Every spatial size must be a multiple of ``2^n`` so that the reconstruction has the input's shape.

    Args:
        in_channels: channels of the input volumes.
        num_classes: number of classes (logits returned by ``forward``).
        widths: channels of the encoder stages (decoder in reverse).
        dropout: dropout probability before the linear layer of the head.
        with_decoder: build the decoder (``False`` for a plain classifier, e.g. domain adaptation).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        widths: Sequence[int] = (8, 16, 32),
        dropout: float = 0.3,
        with_decoder: bool = True,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise InputError(f"num_classes must be 2 or more, got {num_classes}")
        if not widths or min(widths) < 1:
            raise InputError(f"widths must be a non-empty list of positive channel counts, got {widths}")
        if not 0.0 <= dropout < 1.0:
            raise InputError(f"dropout must be in [0, 1), got {dropout}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.box_multiple = 2 ** len(widths)
        encoder: list[nn.Module] = [
            nn.Conv3d(in_channels, widths[0], 4, stride=2, padding=1, bias=False),
            nn.BatchNorm3d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        for channels, width in itertools.pairwise(widths):
            encoder += [conv_bn_relu(channels, width, 3, batch_norm=True), nn.MaxPool3d(2)]
        self.features = nn.Sequential(*encoder)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool3d(2), nn.Flatten(), nn.Dropout(dropout), nn.Linear(widths[-1] * 8, num_classes)
        )
        self.decoder: nn.Sequential | None = None
        if with_decoder:
            decoder: list[nn.Module] = []
            for channels, width in itertools.pairwise(widths[::-1]):
                decoder += [
                    nn.ConvTranspose3d(channels, width, 2, stride=2, bias=False),
                    nn.BatchNorm3d(width),
                    nn.ReLU(inplace=True),
                ]
            decoder.append(nn.ConvTranspose3d(widths[0], in_channels, 2, stride=2))
            self.decoder = nn.Sequential(*decoder)

    def check_input(self, volume: torch.Tensor) -> None:
        """Raise if ``volume`` is not ``(B, in_channels, Z, Y, X)`` with sizes multiples of ``2^n``."""
        check_volume_channels(volume, self.in_channels, type(self).__name__)
        if any(size % self.box_multiple for size in volume.shape[-3:]):
            raise InputError(
                f"{type(self).__name__} halves the box {self.box_multiple.bit_length() - 1} times: it needs "
                f"sizes that are multiples of {self.box_multiple} voxels, got {tuple(volume.shape[-3:])}"
            )

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, Z, Y, X)`` volumes -> ``(B, num_classes)`` logits."""
        self.check_input(volume)
        return self.head(self.features(volume))

    @property
    def embedding_size(self) -> int:
        """Length of :meth:`embed`'s vectors: the last width times 2³ pooled positions."""
        return self.head[-1].in_features

    def embed(self, volume: torch.Tensor) -> torch.Tensor:
        """``(B, C, Z, Y, X)`` -> ``(B, embedding_size)``, the pooled features the head classifies."""
        self.check_input(volume)
        return self.head[:2](self.features(volume))

    def classify_and_embed(self, volume: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(B, C, Z, Y, X)`` -> logits ``(B, num_classes)``, :meth:`embed` vectors and the feature maps."""
        self.check_input(volume)
        features = self.features(volume)
        return self.head(features), self.head[:2](features), features

    def classify_and_reconstruct(self, volume: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, Z, Y, X)`` -> ``(B, num_classes)`` logits and the ``(B, C, Z, Y, X)`` reconstruction."""
        if self.decoder is None:
            raise InputError(
                f"{type(self).__name__} was built with with_decoder: false; it cannot reconstruct"
            )
        self.check_input(volume)
        features = self.features(volume)
        return self.head(features), self.decoder(features)


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled items only; zero (with a gradient path) when none is labelled.

    Args:
        logits: ``(B, C)`` class scores.
        labels: ``(B,)`` int64 0-based classes (values of unlabelled items are ignored).
        labelled: ``(B,)`` bool, which items' labels may be used.
    """
    per_item = nn.functional.cross_entropy(logits, labels.clamp(0, logits.shape[1] - 1), reduction="none")
    weights = labelled.to(per_item.dtype)
    return (per_item * weights).sum() / weights.sum().clamp(min=1.0)


def semi_supervised_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    labelled: torch.Tensor,
    reconstruction: torch.Tensor,
    volume: torch.Tensor,
    reconstruction_weight: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, cross_entropy, mse)`` with ``loss = cross_entropy + reconstruction_weight · mse``.

    ``cross_entropy`` is :func:`masked_cross_entropy`; ``mse`` is the mean squared difference between
    ``reconstruction`` and ``volume`` over all items and voxels.
    """
    cross_entropy = masked_cross_entropy(logits, labels, labelled)
    mse = nn.functional.mse_loss(reconstruction, volume)
    return cross_entropy + reconstruction_weight * mse, cross_entropy, mse


def pseudo_label_consistency_loss(
    view_logits: torch.Tensor, target_logits: torch.Tensor, confidence_threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """FixMatch's unlabelled loss: cross-entropy of a view against the confident predicted class of the item.

    Args:
        view_logits: ``(B, C)`` class scores of the augmented views (the gradient flows through these).
        target_logits: ``(B, C)`` class scores of the items themselves (treated as constants).
        confidence_threshold: smallest softmax probability of the predicted class that makes it a target.

    Returns:
        ``(loss, used)``: the cross-entropy summed over the confident items divided by the number of items
        (``B``; 0 when ``B`` is 0), and the fraction of items that were confident.
    """
    probabilities = torch.softmax(target_logits.detach(), dim=1)
    confidence, pseudo_labels = probabilities.max(dim=1)
    confident = (confidence >= confidence_threshold).to(view_logits.dtype)
    per_item = nn.functional.cross_entropy(view_logits, pseudo_labels, reduction="none")
    count = max(view_logits.shape[0], 1)
    return (per_item * confident).sum() / count, confident.sum() / count


class SemiSupervisedClassifier(LightningModule):
    """Train a classifier on partly labelled subtomograms, regularised by reconstructing all of them.

    Logged: ``train/loss``, ``train/ce``, ``train/reconstruction``, ``train/consistency`` and
    ``train/pseudo_labelled`` (the fraction of unlabelled items confident enough to be used; per step and
    epoch), ``{val,test}/loss`` (cross-entropy), ``{train,val,test}/acc`` (accuracy over labelled items, per
    epoch).

    Args:
        net: a network with ``forward(volume) -> logits`` and, for ``reconstruction_weight`` > 0, a
            ``decoder`` and ``classify_and_reconstruct(volume) -> (logits, reconstruction)``, e.g.
            :class:`AutoencoderClassifier3D`.
        num_classes: number of classes; must equal the network's and the data's.
        class_names: names in label order (taken from the DataModule when not given).
        reconstruction_weight: λ, weight of the reconstruction MSE in the loss (0: none).
        contrastive_weight: weight of the contrastive loss on two rotated views of every item (0: none);
            needs a network with ``classify_and_embed``, ``embed`` and ``embedding_size``
            (:class:`AutoencoderClassifier3D`) and, with ``reconstruction_weight`` > 0, its ``decoder``.
        contrastive_temperature: temperature of the contrastive loss (> 0).
        consistency_weight: weight of the pseudo-label consistency term (0: none).
        confidence_threshold: softmax probability, in (0, 1], an unlabelled item's predicted class needs
            to become its pseudo-label.
        rotated_views: train on random rotated views of the subtomograms instead of the subtomograms as
            they are.
        tilt_range_deg: the data's tilt range (lowest, highest), degrees: the views' missing wedge.
        view_max_shift_voxels: largest shift of a view along each axis, voxels.
        view_noise_std: standard deviation of the noise added to a view, in units of the item's own voxel
            standard deviation.
        lr: AdamW learning rate.
        weight_decay: AdamW decoupled weight decay.
    """

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        class_names: list[str] | None = None,
        reconstruction_weight: float = 1.0,
        contrastive_weight: float = 1.0,
        contrastive_temperature: float = 0.2,
        consistency_weight: float = 0.0,
        confidence_threshold: float = 0.9,
        rotated_views: bool = True,
        tilt_range_deg: tuple[float, float] = (-60.0, 60.0),
        view_max_shift_voxels: float = 2.0,
        view_noise_std: float = 0.5,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        if reconstruction_weight < 0 or consistency_weight < 0:
            raise InputError(
                "reconstruction_weight and consistency_weight must be 0 or more, got "
                f"{reconstruction_weight} and {consistency_weight}"
            )
        if not 0.0 < confidence_threshold <= 1.0:
            raise InputError(f"confidence_threshold must be in (0, 1], got {confidence_threshold}")
        check_tilt_range(tilt_range_deg)
        check_optimiser_options(weight_decay, lr=lr)
        if contrastive_weight < 0 or contrastive_temperature <= 0:
            raise InputError(
                "contrastive_weight must be 0 or more and contrastive_temperature positive, got "
                f"{contrastive_weight} and {contrastive_temperature}"
            )
        self.projection: nn.Module | None = None
        if contrastive_weight > 0:
            size = getattr(net, "embedding_size", None)
            if size is None or not hasattr(net, "classify_and_embed"):
                raise InputError(
                    f"contrastive_weight > 0 needs a network with classify_and_embed and embedding_size; "
                    f"{type(net).__name__} has not (use AutoencoderClassifier3D, or contrastive_weight: 0)"
                )
            self.projection = nn.Sequential(nn.Linear(size, 128), nn.ReLU(inplace=True), nn.Linear(128, 64))
        if reconstruction_weight > 0 and getattr(net, "decoder", None) is None:
            raise InputError(
                f"reconstruction_weight > 0 needs a network with a decoder; {type(net).__name__} has none "
                "(set its with_decoder: true, or reconstruction_weight: 0)"
            )
        if view_max_shift_voxels < 0 or view_noise_std < 0:
            raise InputError(
                f"view_max_shift_voxels and view_noise_std must be 0 or more, got {view_max_shift_voxels} "
                f"and {view_noise_std}"
            )
        net_classes = getattr(net, "num_classes", None)
        if net_classes is not None and net_classes != num_classes:
            raise InputError(
                f"model num_classes is {num_classes} but the network {type(net).__name__} has "
                f"num_classes {net_classes}; set both to the number of classes in the data"
            )
        if class_names is not None and len(class_names) != num_classes:
            raise InputError(f"{len(class_names)} class_names given for {num_classes} classes")
        self.net = net
        self.num_classes = num_classes
        self.class_names = None if class_names is None else list(class_names)
        self.accuracy = nn.ModuleDict(
            {
                # validation and test updates are gathered before they are counted (HeldEvaluation)
                f"{stage}_acc": MulticlassAccuracy(
                    num_classes, average="micro", sync_on_compute=stage == "train"
                )
                for stage in STAGES
            }
        )
        self.held = {stage: HeldEvaluation() for stage in ("val", "test")}
        self.mean_loss = nn.ModuleDict(
            {stage: MeanMetric(nan_strategy="disable", sync_on_compute=False) for stage in ("val", "test")}
        )

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """``(B, 1, Z, Y, X)`` volumes -> ``(B, num_classes)`` logits."""
        return self.net(volume)

    def setup(self, stage: str) -> None:
        adopt_data_classes(self)
        hp = self.hparams
        if hp.rotated_views or hp.contrastive_weight > 0 or hp.consistency_weight > 0:
            check_views_match_data(self, hp.tilt_range_deg)
            datamodule = self.trainer.datamodule if self._trainer is not None else None
            for shape in data_box_shapes(datamodule):
                if hp.view_max_shift_voxels >= min(shape) / 2:
                    raise InputError(
                        f"view_max_shift_voxels must be less than half the data's box ({min(shape) / 2:g} "
                        f"voxels), got {hp.view_max_shift_voxels}"
                    )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint whose weights do not fit this model (trained with other network options)."""
        check_checkpoint_fits(self, checkpoint, qualified_name(self.net))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if "label" not in batch:
            raise InputError("the train data carry no labels (a STAR table needs rlnClassNumber)")
        volume, labels = batch["volume"], batch["label"]
        labelled = batch.get("labelled", torch.ones_like(labels, dtype=torch.bool))
        hp = self.hparams
        size = labels.shape[0]
        original = volume
        if hp.rotated_views:
            volume = random_rotated_views(volume, *hp.tilt_range_deg, hp.view_max_shift_voxels)
        if self.projection is None and hp.reconstruction_weight > 0:
            logits, reconstruction = self.net.classify_and_reconstruct(volume)
            loss, cross_entropy, mse = semi_supervised_loss(
                logits, labels, labelled, reconstruction, volume, hp.reconstruction_weight
            )
        elif self.projection is None:
            logits = self.net(volume)
            cross_entropy = masked_cross_entropy(logits, labels, labelled)
            loss, mse = cross_entropy, torch.zeros((), device=volume.device)
        else:
            logits, embedding, features = self.net.classify_and_embed(volume)
            if hp.reconstruction_weight > 0:
                loss, cross_entropy, mse = semi_supervised_loss(
                    logits, labels, labelled, self.net.decoder(features), volume, hp.reconstruction_weight
                )
            else:
                cross_entropy = masked_cross_entropy(logits, labels, labelled)
                loss, mse = cross_entropy, torch.zeros((), device=volume.device)
            second = random_rotated_views(original, *hp.tilt_range_deg, hp.view_max_shift_voxels)
            contrastive = contrastive_loss(
                self.projection(embedding),
                self.projection(self.net.embed(second)),
                hp.contrastive_temperature,
            )
            loss = loss + hp.contrastive_weight * contrastive
            self.log(
                "train/contrastive", contrastive, on_step=True, on_epoch=True, batch_size=size, sync_dist=True
            )
        if hp.consistency_weight > 0 and not labelled.all():
            unlabelled = ~labelled
            views = random_rotated_views(
                volume[unlabelled], *hp.tilt_range_deg, hp.view_max_shift_voxels, hp.view_noise_std
            )
            consistency, used = pseudo_label_consistency_loss(
                self.net(views), logits[unlabelled], hp.confidence_threshold
            )
            loss = loss + hp.consistency_weight * consistency
            # logged only by the processes whose batch has unlabelled items: not synchronised across them
            self.log("train/consistency", consistency, on_step=True, on_epoch=True, batch_size=size)
            self.log("train/pseudo_labelled", used, on_step=True, on_epoch=True, batch_size=size)
        self.log(
            "train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=size, sync_dist=True
        )
        self.log("train/ce", cross_entropy, on_step=True, on_epoch=True, batch_size=size, sync_dist=True)
        self.log("train/reconstruction", mse, on_step=True, on_epoch=True, batch_size=size, sync_dist=True)
        if labelled.any():
            self.accuracy["train_acc"].update(logits.detach()[labelled], labels[labelled])
        return loss

    def _evaluation_step(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        if "label" not in batch:
            raise InputError(f"the {stage} data carry no labels (a STAR table needs rlnClassNumber)")
        logits = self(batch["volume"])
        labels = batch["label"]
        item_losses = nn.functional.cross_entropy(logits, labels, reduction="none")
        # each item counted once under DDP (HeldEvaluation)
        held, index = self.held[stage], batch.get("index")
        held.update(self, "acc", self.accuracy[f"{stage}_acc"], logits, labels, index=index)
        held.update(self, "loss", self.mean_loss[stage], item_losses, index=index)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluation_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluation_step(batch, "test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """``{"class": (B,) 0-based, "probabilities": (B, num_classes)}`` + the batch's index, coordinates."""
        probabilities = torch.softmax(self(batch["volume"]), dim=1)
        prediction = {"class": probabilities.argmax(dim=1), "probabilities": probabilities}
        for key in ("index", "coordinates_xyz"):
            if key in batch:
                prediction[key] = batch[key]
        return prediction

    def _log_accuracy(self, stage: str) -> None:
        metric = self.accuracy[f"{stage}_acc"]
        if stage != "train":
            mean_loss = self.mean_loss[stage]
            self.held[stage].count(self, {"acc": metric, "loss": mean_loss})
            if mean_loss.update_count and not self.trainer.sanity_checking:
                self.log(f"{stage}/loss", mean_loss.compute(), prog_bar=stage == "val", sync_dist=True)
            mean_loss.reset()
        updated = metric.update_count > 0  # validation, test: the same on every rank
        if stage == "train" and distributed(self):
            # a rank may have seen no labelled item: compute() gathers, so every rank or none must call it
            flag = torch.tensor(float(updated), device=self.device)
            updated = bool(self.trainer.strategy.reduce(flag, reduce_op="max") > 0)
        if updated and not self.trainer.sanity_checking:
            # the figure of every rank's items on every rank: sync_dist averages equal values (and tells
            # Lightning)
            self.log(f"{stage}/acc", metric.compute(), prog_bar=stage != "train", sync_dist=True)
        metric.reset()

    def on_train_epoch_end(self) -> None:
        self._log_accuracy("train")

    def on_validation_epoch_end(self) -> None:
        self._log_accuracy("val")

    def on_test_epoch_end(self) -> None:
        self._log_accuracy("test")

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
