"""Adversarial domain adaptation of a subtomogram classifier (ADDA-style; Lin et al. 2019).

Lin R, Zeng X, Kitani K, Xu M. *Adversarial domain adaptation for cross data source macromolecule in situ
structural classification in cellular electron cryo-tomograms.* Bioinformatics 35:i260-i268 (2019).

Three stages in one LightningModule, with manual optimisation:

1. **source** (the first ``source_epochs`` epochs): the source feature extractor ``M_s`` and the classifier
   ``C`` learn the source domain's labels (cross-entropy).
2. **adaptation** (the remaining epochs): a target extractor ``M_t``, initialised with ``M_s``'s weights,
   plays a GAN game against a domain discriminator ``D`` on the features, with ``M_s`` and ``C`` frozen.
   ``D`` learns to tell source features (label 1) from target features (label 0),
   :func:`discriminator_loss`; ``M_t`` learns to make ``D`` call its features source, the inverted-label
   loss :func:`generator_loss`. Target labels are never used for training.
3. **prediction**: target volumes go through ``M_t`` then ``C``.

Training batches are ``{"source": batch, "target": batch}``
(:class:`aitom.data.domains.DomainPairDataModule`); validation and test batches are target batches with
labels, used only for scoring: ``val/acc`` and ``test/acc`` score the current model (``M_t`` + ``C`` once
adaptation has begun, ``M_s`` + ``C`` before) and ``val/source_only_acc``, ``test/source_only_acc`` score
``M_s`` + ``C`` (the source-only classifier) on the same target batches.

The target may be the user's real subtomograms, a STAR table per split
(:class:`aitom.data.StarSubtomogramDataModule`), unlabelled for training: the classes are the source's; a
fit without a target ``val_star`` runs without validation; ``test`` needs a labelled ``test_star``
(``rlnClassNumber``; an unlabelled one is refused before the run) and ``predict`` takes any table. The box
of every domain, STAR tables included, must be the model's ``box_size_voxels``.

Note: with manual optimisation Lightning counts every optimiser step in ``trainer.global_step``: one per batch
in the source stage, two (discriminator, then target extractor) per batch in the adaptation stage.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from aitom.data.splits import data_box_shapes
from aitom.errors import InputError
from aitom.ops.augmentation import random_rotated_views
from aitom.tasks.classify import (
    HeldEvaluation,
    adopt_data_classes,
    check_checkpoint_fits,
    check_optimiser_options,
    check_tilt_range,
    check_views_match_data,
    qualified_name,
)

EVALUATION_STAGES = ("val", "test")


def feature_extractor(net: nn.Module) -> nn.Module:
    """The feature part of a classifier network: ``net.features`` followed by ``net.pool`` when it has one.

    The networks of :mod:`aitom.models` and :class:`aitom.tasks.semi_supervised.AutoencoderClassifier3D`
    compute ``logits = head([pool](features(volume)))``.
    """
    if not (hasattr(net, "features") and hasattr(net, "head")):
        raise InputError(
            f"domain adaptation needs a network with 'features' and 'head' parts; {type(net).__name__} has "
            "not (use aitom.tasks.semi_supervised.AutoencoderClassifier3D or an aitom.models network)"
        )
    pool = getattr(net, "pool", None)
    return net.features if pool is None else nn.Sequential(net.features, pool)


def probe_features(net: nn.Module, extractor: nn.Module, box_size_voxels: int) -> torch.Tensor:
    """The features ``extractor`` (``net``'s feature part) computes for two empty ``box_size_voxels``³
    volumes, or :class:`InputError` when the network cannot take that box."""
    volume = torch.zeros(2, getattr(net, "in_channels", 1), *(3 * [box_size_voxels]))
    check_input = getattr(net, "check_input", None)  # AutoencoderClassifier3D: a multiple of 2^n voxels
    try:
        if check_input is not None:
            check_input(volume)
        extractor.eval()
        with torch.no_grad():
            return extractor(volume)
    except InputError as error:
        raise InputError(f"box_size_voxels {box_size_voxels}: {error}") from error
    except RuntimeError as error:
        raise InputError(
            f"box_size_voxels {box_size_voxels} is too small for the network {type(net).__name__}: "
            f"{str(error).strip().splitlines()[0]}"
        ) from error
    finally:
        extractor.train()


class DomainDiscriminator(nn.Module):
    """Features -> one logit per item, ``> 0`` meaning "source domain".

    Flatten, then two hidden layers (Linear -> LeakyReLU(0.2)), then a linear layer to one logit.

    Args:
        in_features: number of feature values per item (after flattening).
        hidden_features: width of the hidden layers.
    """

    def __init__(self, in_features: int, hidden_features: int = 256) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden_features),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden_features, hidden_features),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden_features, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, ...)`` features -> ``(B,)`` logits."""
        return self.layers(features).squeeze(1)


def discriminator_loss(source_logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """The discriminator's GAN loss: ``-mean log σ(d_s) - mean log(1 - σ(d_t))``.

    Binary cross-entropy with source features labelled 1 and target features labelled 0.

    Args:
        source_logits: ``(B_s,)`` discriminator logits of source features.
        target_logits: ``(B_t,)`` discriminator logits of target features.
    """
    bce = nn.functional.binary_cross_entropy_with_logits
    return bce(source_logits, torch.ones_like(source_logits)) + bce(
        target_logits, torch.zeros_like(target_logits)
    )


def generator_loss(target_logits: torch.Tensor) -> torch.Tensor:
    """The target extractor's inverted-label GAN loss: ``-mean log σ(d_t)`` (target features labelled 1).

    Args:
        target_logits: ``(B_t,)`` discriminator logits of target features.
    """
    return nn.functional.binary_cross_entropy_with_logits(target_logits, torch.ones_like(target_logits))


class AdversarialDomainAdaptation(LightningModule):
    """Train a classifier on a labelled source domain, then adapt its feature extractor to a target domain.

    Logged: ``train/source_ce`` (source stage), ``train/discriminator_loss``, ``train/generator_loss`` and
    ``train/discriminator_acc`` (adaptation stage), ``{val,test}/acc`` and ``{val,test}/source_only_acc``
    (target accuracy of the current and of the source-only model), ``{val,test}/loss`` (cross-entropy of
    the current model).

    Args:
        net: the classifier network with ``features`` and ``head`` parts (see :func:`feature_extractor`),
            e.g. ``AutoencoderClassifier3D(with_decoder=False)``; its parts become ``M_s`` and ``C``.
        num_classes: number of classes; must equal the network's and the data's.
        box_size_voxels: edge of the subtomograms, voxels (sizes the discriminator's input).
        class_names: names in label order (taken from the DataModule when not given).
        source_epochs: epochs of the source stage; the adaptation stage takes the rest of the run (a fit
            with ``trainer.max_epochs`` not above ``source_epochs`` is refused).
        discriminator_hidden: width of the discriminator's hidden layers.
        lr: AdamW learning rate of the source stage.
        weight_decay: AdamW decoupled weight decay of the source stage.
        adaptation_lr: Adam learning rate of the target extractor (betas 0.5, 0.999, as in ADDA).
        discriminator_lr: Adam learning rate of the discriminator (betas 0.5, 0.999).
        rotated_views: in the source stage, train on a random rotated view of every source subtomogram
            (:func:`aitom.ops.augmentation.random_rotated_views`: a uniform rotation and a shift of up to 2
            voxels, the source's missing wedge removed again). Features that do not depend on the
            orientation are what lets the adaptation help (``scripts/bench_domain_adaptation.py``).
        source_tilt_range_deg: the source data's tilt range (lowest, highest), degrees: the views' wedge.
    """

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        box_size_voxels: int = 32,
        class_names: list[str] | None = None,
        source_epochs: int = 3,
        discriminator_hidden: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        adaptation_lr: float = 1e-4,
        discriminator_lr: float = 1e-4,
        rotated_views: bool = True,
        source_tilt_range_deg: tuple[float, float] = (-60.0, 60.0),
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.automatic_optimization = False
        check_tilt_range(source_tilt_range_deg)
        check_optimiser_options(
            weight_decay, lr=lr, adaptation_lr=adaptation_lr, discriminator_lr=discriminator_lr
        )
        if source_epochs < 1:
            raise InputError(f"source_epochs must be at least 1, got {source_epochs}")
        if box_size_voxels < 1:
            raise InputError(f"box_size_voxels must be a positive number of voxels, got {box_size_voxels}")
        if discriminator_hidden < 1:
            raise InputError(f"discriminator_hidden must be at least 1, got {discriminator_hidden}")
        net_classes = getattr(net, "num_classes", None)
        if net_classes is not None and net_classes != num_classes:
            raise InputError(
                f"model num_classes is {num_classes} but the network {type(net).__name__} has "
                f"num_classes {net_classes}; set both to the number of classes in the data"
            )
        if class_names is not None and len(class_names) != num_classes:
            raise InputError(f"{len(class_names)} class_names given for {num_classes} classes")
        self.num_classes = num_classes
        self.class_names = None if class_names is None else list(class_names)
        self.source_extractor = feature_extractor(net)
        self.classifier = net.head
        self.target_extractor = copy.deepcopy(self.source_extractor)
        probe = probe_features(net, self.source_extractor, box_size_voxels)
        self.discriminator = DomainDiscriminator(probe[0].numel(), discriminator_hidden)
        # saved with the weights, so that a resumed run knows whether M_t has been initialised from M_s
        self.register_buffer("adaptation_started", torch.tensor(False))
        self.accuracy = nn.ModuleDict(
            {
                # updates gathered before they are counted (HeldEvaluation): no synchronisation
                f"{stage}_{name}": MulticlassAccuracy(num_classes, average="micro", sync_on_compute=False)
                for stage in EVALUATION_STAGES
                for name in ("acc", "source_only_acc")
            }
        )
        self.held = {stage: HeldEvaluation() for stage in EVALUATION_STAGES}
        self.mean_loss = nn.ModuleDict(
            {stage: MeanMetric(nan_strategy="disable", sync_on_compute=False) for stage in EVALUATION_STAGES}
        )

    # ------------------------------------------------------------------------------------------ the model

    def current_extractor(self) -> nn.Module:
        """``M_t`` once adaptation has begun, ``M_s`` before."""
        return self.target_extractor if bool(self.adaptation_started) else self.source_extractor

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """``(B, 1, Z, Y, X)`` target volumes -> ``(B, num_classes)`` logits of the current model."""
        return self.classifier(self.current_extractor()(volume))

    def source_only_logits(self, volume: torch.Tensor) -> torch.Tensor:
        """``(B, 1, Z, Y, X)`` volumes -> ``(B, num_classes)`` logits of ``M_s`` + ``C``."""
        return self.classifier(self.source_extractor(volume))

    def in_adaptation_stage(self) -> bool:
        """Whether the current epoch belongs to the adaptation stage."""
        return self.current_epoch >= self.hparams.source_epochs

    def setup(self, stage: str) -> None:
        adopt_data_classes(self)
        if self.hparams.rotated_views:
            check_views_match_data(self, self.hparams.source_tilt_range_deg, data_part="source")
        self._check_data_boxes()
        max_epochs = self.trainer.max_epochs
        source_stage_only = max_epochs is not None and 0 <= max_epochs <= self.hparams.source_epochs
        # fast_dev_run (a one-batch check of the config) is allowed to stop in the source stage
        if stage == "fit" and source_stage_only and not self.trainer.fast_dev_run:
            raise InputError(
                f"source_epochs is {self.hparams.source_epochs} but trainer.max_epochs is {max_epochs}: the "
                "adaptation stage would never run; set source_epochs below max_epochs"
            )

    def _check_data_boxes(self) -> None:
        """Refuse data whose box is not the model's ``box_size_voxels`` (the discriminator's input size)."""
        datamodule = self.trainer.datamodule
        expected = (self.hparams.box_size_voxels,) * 3
        for role in ("source", "target"):
            for shape in data_box_shapes(getattr(datamodule, role, None)):
                if shape != expected:
                    raise InputError(
                        f"the model's box_size_voxels is {self.hparams.box_size_voxels} but the {role} "
                        f"data's subtomograms are {'x'.join(map(str, shape))} voxels; set box_size_voxels "
                        "to the data's box size"
                    )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint whose weights do not fit this model (trained with other network options)."""
        check_checkpoint_fits(self, checkpoint, qualified_name(self))

    # ------------------------------------------------------------------------------------------ training

    def on_train_epoch_start(self) -> None:
        """Entering the adaptation stage: copy ``M_s`` into ``M_t`` (once); freeze ``M_s`` and ``C``."""
        if not self.in_adaptation_stage():
            return
        if not bool(self.adaptation_started):
            self.target_extractor.load_state_dict(self.source_extractor.state_dict())
            self.adaptation_started.fill_(True)
        self.source_extractor.requires_grad_(False)
        self.classifier.requires_grad_(False)

    def training_step(self, batch: dict[str, dict[str, torch.Tensor]], batch_idx: int) -> None:
        if set(batch) != {"source", "target"}:
            raise InputError(
                "domain adaptation trains on {'source': batch, 'target': batch} "
                "(use aitom.data.domains.DomainPairDataModule)"
            )
        if self.in_adaptation_stage():
            self._adaptation_step(batch["source"]["volume"], batch["target"]["volume"])
        else:
            self._source_step(batch["source"])

    def _source_step(self, source: dict[str, torch.Tensor]) -> None:
        source_optimizer = self.optimizers()[0]
        volume = source["volume"]
        if self.hparams.rotated_views:
            volume = random_rotated_views(volume, *self.hparams.source_tilt_range_deg)
        loss = nn.functional.cross_entropy(self.source_only_logits(volume), source["label"])
        source_optimizer.zero_grad()
        self.manual_backward(loss)
        source_optimizer.step()
        self.log(
            "train/source_ce",
            loss,
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            batch_size=source["label"].shape[0],
            sync_dist=True,
        )

    def _adaptation_step(self, source_volume: torch.Tensor, target_volume: torch.Tensor) -> None:
        _, target_optimizer, discriminator_optimizer = self.optimizers()
        self.source_extractor.eval()  # frozen: its batch-normalisation statistics stay the source's
        with torch.no_grad():
            source_features = self.source_extractor(source_volume)
            target_features = self.target_extractor(target_volume)
        source_logits = self.discriminator(source_features)
        target_logits = self.discriminator(target_features)
        d_loss = discriminator_loss(source_logits, target_logits)
        discriminator_optimizer.zero_grad()
        self.manual_backward(d_loss)
        discriminator_optimizer.step()

        g_loss = generator_loss(self.discriminator(self.target_extractor(target_volume)))
        target_optimizer.zero_grad()
        self.manual_backward(g_loss)
        target_optimizer.step()

        correct = torch.cat([source_logits > 0, target_logits <= 0]).float().mean()
        size = target_volume.shape[0]
        for name, value in (("discriminator_loss", d_loss), ("generator_loss", g_loss)):
            self.log(
                f"train/{name}",
                value,
                on_step=True,
                on_epoch=True,
                prog_bar=True,
                batch_size=size,
                sync_dist=True,
            )
        self.log(
            "train/discriminator_acc", correct, on_step=False, on_epoch=True, batch_size=size, sync_dist=True
        )

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        hp = self.hparams
        source_parameters = [*self.source_extractor.parameters(), *self.classifier.parameters()]
        return [
            torch.optim.AdamW(source_parameters, lr=hp.lr, weight_decay=hp.weight_decay),
            torch.optim.Adam(self.target_extractor.parameters(), lr=hp.adaptation_lr, betas=(0.5, 0.999)),
            torch.optim.Adam(self.discriminator.parameters(), lr=hp.discriminator_lr, betas=(0.5, 0.999)),
        ]

    # ---------------------------------------------------------------------------------------- evaluation

    def _evaluation_step(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        if "label" not in batch:
            raise InputError(
                f"the target {stage} data carry no labels; they are needed to score the adaptation"
            )
        labels = batch["label"]
        logits = self(batch["volume"])
        # each item counted once under DDP (HeldEvaluation)
        held, index = self.held[stage], batch.get("index")
        held.update(self, "acc", self.accuracy[f"{stage}_acc"], logits, labels, index=index)
        source_only = self.source_only_logits(batch["volume"])
        source_only_acc = self.accuracy[f"{stage}_source_only_acc"]
        held.update(self, "source_only_acc", source_only_acc, source_only, labels, index=index)
        item_losses = nn.functional.cross_entropy(logits, labels, reduction="none")
        held.update(self, "loss", self.mean_loss[stage], item_losses, index=index)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluation_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluation_step(batch, "test")

    def _log_accuracy(self, stage: str) -> None:
        names = ("acc", "source_only_acc")
        mean_loss = self.mean_loss[stage]
        metrics = {name: self.accuracy[f"{stage}_{name}"] for name in names}
        self.held[stage].count(self, {**metrics, "loss": mean_loss})
        if mean_loss.update_count and not self.trainer.sanity_checking:
            self.log(f"{stage}/loss", mean_loss.compute(), sync_dist=True)
        mean_loss.reset()
        for name in names:
            metric = self.accuracy[f"{stage}_{name}"]
            if metric.update_count and not self.trainer.sanity_checking:
                # every rank counted all ranks' items: sync_dist averages equal values (and tells Lightning)
                self.log(f"{stage}/{name}", metric.compute(), prog_bar=name == "acc", sync_dist=True)
            metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_accuracy("val")

    def on_test_epoch_end(self) -> None:
        self._log_accuracy("test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, Any]:
        """``{"class": (B,) 0-based, "probabilities": (B, num_classes)}`` + the batch's index, coordinates."""
        probabilities = torch.softmax(self(batch["volume"]), dim=1)
        prediction = {"class": probabilities.argmax(dim=1), "probabilities": probabilities}
        for key in ("index", "coordinates_xyz"):
            if key in batch:
                prediction[key] = batch[key]
        return prediction
