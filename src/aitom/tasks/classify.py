"""Supervised classification of subtomograms: one LightningModule for every classifier network.

The network is a plain ``nn.Module`` passed in (``net:`` in the YAML, as a ``class_path``); this module holds
the loss (cross-entropy), the metrics (accuracy, macro-F1, per-class recall, confusion matrix) and the
optimiser wiring. Batches are dicts::

    {"volume": (B, 1, S, S, S) float32, "label": (B,) int64, 0-based,
     optional "index": (B,) int64 row of the particle table, optional "coordinates_xyz": (B, 3) voxels}

``predict_step`` returns the class and the probabilities; :class:`PredictionWriter` writes them to a STAR
table. Checkpoints record the network's class (a checkpoint of another network is refused with a clear
message) and the random-number states, so a run resumed from ``last.ckpt`` ends where an uninterrupted run
with the same seed would.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torchmetrics import MeanMetric, Metric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassRecall,
)

from aitom.errors import InputError
from aitom.io import particles_table, write_particles
from aitom.ops.augmentation import random_rotated_views

OPTIMIZERS = ("adamw", "sgd")
SCHEDULERS = ("cosine", "step", "none")
STAGES = ("train", "val", "test")
#: key of this task's own entries in a Lightning checkpoint
CHECKPOINT_KEY = "aitom_classifier"
#: key under which the prediction writers keep each row's index in the data set
DATASET_ORDER_KEY = "_dataset_order"
#: ``aitomClassName`` of an item an open-set model rejects as none of its known classes
UNKNOWN_CLASS_NAME = "unknown"


def qualified_name(obj: object) -> str:
    """``module.ClassName`` of an object's class."""
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def check_tilt_range(tilt_range_deg: tuple[float, float] | list[float]) -> None:
    """Raise :class:`InputError` unless ``tilt_range_deg`` is ``(lowest, highest)`` within ±90°."""
    if len(tilt_range_deg) != 2 or not -90.0 <= tilt_range_deg[0] < tilt_range_deg[1] <= 90.0:
        raise InputError(f"tilt_range_deg must be (lowest, highest) within ±90°, got {tilt_range_deg}")


def check_optimiser_options(weight_decay: float, **learning_rates: float) -> None:
    """Raise :class:`InputError` unless every learning rate (keyword: its option name) is a positive number
    and ``weight_decay`` is 0 or more."""
    for name, rate in learning_rates.items():
        if not 0.0 < rate < float("inf"):
            raise InputError(f"{name} (learning rate) must be positive, got {rate}")
    if not 0.0 <= weight_decay < float("inf"):
        raise InputError(f"weight_decay must be 0 or more, got {weight_decay}")


def check_views_match_data(
    task: LightningModule, tilt_range_deg: tuple[float, float] | list[float], data_part: str | None = None
) -> None:
    """Raise :class:`InputError` when a task's rotated views would use another tilt range than its data's.

    The data's range is read from its DataModule's ``tilt_min_deg`` / ``tilt_max_deg`` hyper-parameters
    (:class:`aitom.data.SimulatedSubtomogramDataModule`, :class:`aitom.data.StarSubtomogramDataModule`), or
    from those of its attribute ``data_part`` (e.g. ``"source"`` of a domain pair); DataModules without them
    are not checked.
    """
    datamodule = task.trainer.datamodule if task._trainer is not None else None
    if data_part is not None:
        datamodule = getattr(datamodule, data_part, None)
    hparams = getattr(datamodule, "hparams", {})
    if "tilt_min_deg" not in hparams or "tilt_max_deg" not in hparams:
        return
    data_range = (float(hparams["tilt_min_deg"]), float(hparams["tilt_max_deg"]))
    if max(abs(ours - theirs) for ours, theirs in zip(tilt_range_deg, data_range, strict=True)) > 1e-6:
        raise InputError(
            f"the model's tilt_range_deg {list(tilt_range_deg)} differs from the data's tilt range "
            f"{list(data_range)}: its rotated views would carry the wrong missing wedge; set the model's "
            f"tilt_range_deg to {list(data_range)}"
        )


class Classifier(LightningModule):
    """Train, evaluate and apply a subtomogram classifier network.

    The network is not among the hyper-parameters (its weights are in the state dict): load a checkpoint
    with ``Classifier.load_from_checkpoint(path, net=DSRF3Dv2(num_classes=5))``, or through
    ``aitom test|predict --config ... --ckpt_path ...``.

    Logged metrics (per epoch; ``train/loss`` also per step): ``{train,val,test}/loss``, ``/acc`` (overall
    accuracy), ``/f1_macro``, ``/recall/<class name>``; a confusion-matrix image per validation epoch and at
    test time when the logger is a :class:`~lightning.pytorch.loggers.WandbLogger`.

    Args:
        net: the network, ``(B, 1, Z, Y, X)`` volumes -> ``(B, num_classes)`` logits.
        num_classes: number of classes; must equal the network's ``num_classes`` and the data's.
        class_names: names of the classes in label order; taken from the DataModule (``class_names``
            attribute) or the checkpoint when not given.
        optimizer: ``"adamw"`` or ``"sgd"`` (SGD with Nesterov momentum when ``momentum > 0``, as in AITom).
        lr: learning rate (peak rate for the cosine schedule).
        weight_decay: decoupled weight decay (AdamW) or L2 penalty (SGD).
        momentum: SGD momentum (unused by AdamW).
        scheduler: ``"cosine"`` (per-step cosine decay to zero over the whole run), ``"step"`` (multiply
            the rate by ``step_gamma`` every ``step_size_epochs`` epochs) or ``"none"``.
        step_size_epochs: epochs between learning-rate drops of the ``"step"`` schedule.
        step_gamma: factor of each drop of the ``"step"`` schedule.
        rotated_views: train on a random rotated view of every subtomogram at every step (a uniform
            rotation and a shift of up to 2 voxels, the missing wedge removed again;
            :func:`aitom.ops.augmentation.random_rotated_views`). Worth it with few training items: on
            69–97 labelled simulated subtomograms of 5 classes it raised the test accuracy from 0.54 to 0.80
            (mean of 3 seeds, ``scripts/bench_semi_supervised.py``).
        tilt_range_deg: the data's tilt range (lowest, highest), degrees: the views' missing wedge.
    """

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        class_names: list[str] | None = None,
        optimizer: Literal["adamw", "sgd"] = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        scheduler: Literal["cosine", "step", "none"] = "cosine",
        step_size_epochs: int = 10,
        step_gamma: float = 0.1,
        rotated_views: bool = False,
        tilt_range_deg: tuple[float, float] = (-60.0, 60.0),
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        check_tilt_range(tilt_range_deg)
        check_optimiser_options(weight_decay, lr=lr)
        if not 0.0 <= momentum < 1.0:
            raise InputError(f"momentum must be in [0, 1), got {momentum}")
        if step_size_epochs < 1 or not 0.0 < step_gamma <= 1.0:
            raise InputError(
                f"step_size_epochs must be at least 1 and step_gamma in (0, 1], got {step_size_epochs} and "
                f"{step_gamma}"
            )
        if optimizer not in OPTIMIZERS:
            raise InputError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if scheduler not in SCHEDULERS:
            raise InputError(f"scheduler must be one of {SCHEDULERS}, got {scheduler!r}")
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
        # keys are suffixed: a ModuleDict key "train" would shadow nn.Module.train
        self.metrics = nn.ModuleDict(
            {f"{stage}_metrics": self._stage_metrics(num_classes, stage) for stage in STAGES}
        )
        self.held = {stage: HeldEvaluation() for stage in ("val", "test")}
        self.mean_loss = nn.ModuleDict(
            {stage: MeanMetric(nan_strategy="disable", sync_on_compute=False) for stage in ("val", "test")}
        )

    @staticmethod
    def _stage_metrics(num_classes: int, stage: str) -> MetricCollection:
        # validation and test updates are gathered before they are counted (HeldEvaluation)
        sync = {"sync_on_compute": stage == "train"}
        return MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes, average="micro", **sync),
                "f1_macro": MulticlassF1Score(num_classes, average="macro", **sync),
                "recall": MulticlassRecall(num_classes, average="none", **sync),
                "confusion": MulticlassConfusionMatrix(num_classes, **sync),
            }
        )

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """``(B, 1, Z, Y, X)`` volumes -> ``(B, num_classes)`` logits."""
        return self.net(volume)

    # ----------------------------------------------------------------------------------------------- setup

    def setup(self, stage: str) -> None:
        """Check the model against the DataModule's ``num_classes`` / ``class_names`` when it has them."""
        adopt_data_classes(self)
        if self.hparams.rotated_views:
            check_views_match_data(self, self.hparams.tilt_range_deg)

    def display_names(self) -> list[str]:
        """Class names in label order (``class_1`` ... when no names are known)."""
        return self.class_names or [f"class_{k + 1}" for k in range(self.num_classes)]

    # ------------------------------------------------------------------------------------------- the steps

    def _shared_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        if "label" not in batch:
            raise InputError(f"the {stage} data carry no labels (a STAR table needs rlnClassNumber)")
        volume = batch["volume"]
        if stage == "train" and self.hparams.rotated_views:
            volume = random_rotated_views(volume, *self.hparams.tilt_range_deg)
        logits = self(volume)
        labels = batch["label"]
        if stage != "train":
            # the epoch's mean loss and metrics, each item counted once under DDP (HeldEvaluation)
            item_losses = nn.functional.cross_entropy(logits, labels, reduction="none")
            held, index = self.held[stage], batch.get("index")
            held.update(self, "metrics", self.metrics[f"{stage}_metrics"], logits, labels, index=index)
            held.update(self, "loss", self.mean_loss[stage], item_losses, index=index)
            return item_losses.mean()
        loss = nn.functional.cross_entropy(logits, labels)
        self.metrics["train_metrics"].update(logits.detach(), labels)
        self.log(
            "train/loss",
            loss,
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            batch_size=labels.shape[0],
            # under DDP the loss is the mean over the ranks (per step too), as a single process would log it
            sync_dist=True,
        )
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """``{"class": (B,) 0-based, "probabilities": (B, num_classes)}`` + the batch's index, coordinates."""
        probabilities = torch.softmax(self(batch["volume"]), dim=1)
        prediction = {"class": probabilities.argmax(dim=1), "probabilities": probabilities}
        for key in ("index", "coordinates_xyz"):
            if key in batch:
                prediction[key] = batch[key]
        return prediction

    # ----------------------------------------------------------------------------------------- epoch ends

    def _log_epoch_metrics(self, stage: str) -> None:
        metrics = self.metrics[f"{stage}_metrics"]
        if stage != "train":
            mean_loss = self.mean_loss[stage]
            self.held[stage].count(self, {"metrics": metrics, "loss": mean_loss})
            loss = mean_loss.compute()
            mean_loss.reset()
            if not self.trainer.sanity_checking:
                self.log(f"{stage}/loss", loss, prog_bar=stage != "test", sync_dist=True)
        values = metrics.compute()
        metrics.reset()
        if self.trainer.sanity_checking:
            return
        # every rank holds the figures of all ranks' items: sync_dist averages equal values (and tells
        # Lightning)
        self.log(f"{stage}/acc", values["acc"], prog_bar=stage != "train", sync_dist=True)
        self.log(f"{stage}/f1_macro", values["f1_macro"], sync_dist=True)
        for name, recall in zip(self.display_names(), values["recall"]):
            self.log(f"{stage}/recall/{name}", recall, sync_dist=True)
        if stage != "train":
            self._log_confusion_matrix(values["confusion"], stage)

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def _log_confusion_matrix(self, matrix: torch.Tensor, stage: str) -> None:
        loggers = [logger for logger in self.loggers if isinstance(logger, WandbLogger)]
        if not loggers or self.global_rank != 0:
            return
        image = confusion_matrix_image(
            matrix.cpu(), self.display_names(), title=f"{stage}, epoch {self.current_epoch}"
        )
        for logger in loggers:
            logger.log_image(key=f"{stage}/confusion_matrix", images=[image])

    # ------------------------------------------------------------------------------------------ optimiser

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        if hp.optimizer == "adamw":
            optimizer = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            optimizer = torch.optim.SGD(
                self.parameters(),
                lr=hp.lr,
                momentum=hp.momentum,
                weight_decay=hp.weight_decay,
                nesterov=hp.momentum > 0,
            )
        if hp.scheduler == "none":
            return {"optimizer": optimizer}
        if hp.scheduler == "cosine":
            total_steps = self.trainer.estimated_stepping_batches
            if not np.isfinite(total_steps):
                raise InputError("the cosine schedule needs trainer.max_epochs or trainer.max_steps")
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, int(total_steps)))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
        schedule = torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=hp.step_size_epochs, gamma=hp.step_gamma
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}

    # ----------------------------------------------------------------------------------------- checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "net_class": qualified_name(self.net),
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "rng_states": collect_rng_states(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another network; restore class names and (when fitting) the RNG states."""
        path = self._trainer.ckpt_path if self._trainer is not None else None
        own = checkpoint.get(CHECKPOINT_KEY, {})
        this_net = qualified_name(self.net)
        saved_net = own.get("net_class")
        if saved_net is not None and saved_net != this_net:
            raise InputError(
                f"checkpoint holds network {saved_net}, but the model's network is {this_net}", path
            )
        check_state_dict_matches(checkpoint.get("state_dict", {}), self.state_dict(), this_net, path)
        if self.class_names is None and own.get("class_names") is not None:
            self.class_names = list(own["class_names"])
        if "rng_states" in own and self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
            restore_rng_states(own["rng_states"])


def adopt_data_classes(task: LightningModule) -> None:
    """Check ``task.num_classes`` and ``task.class_names`` against its DataModule's (its ``num_classes``, the
    largest label of a STAR table, ``class_names``) and take the data's ``class_names`` if it has none.

    For tasks with ``num_classes`` and ``class_names`` attributes, called from their ``setup``.
    """
    datamodule = task.trainer.datamodule if task._trainer is not None else None
    data_classes = getattr(datamodule, "num_classes", None)
    if data_classes is not None and data_classes != task.num_classes:
        raise InputError(
            f"the data has {data_classes} classes but the model has num_classes {task.num_classes}"
        )
    largest_label = getattr(datamodule, "largest_label", None)
    if largest_label is not None and largest_label >= task.num_classes:
        raise InputError(
            f"the data have class number {largest_label + 1} (rlnClassNumber) but the model has "
            f"num_classes {task.num_classes}; set model.num_classes and the network's num_classes to "
            f"at least {largest_label + 1}"
        )
    data_names = getattr(datamodule, "class_names", None)
    if data_names is not None and task.class_names is not None and list(data_names) != task.class_names:
        raise InputError(f"the data's classes {list(data_names)} differ from the model's {task.class_names}")
    if data_names is not None:
        task.class_names = list(data_names)


def check_state_dict_matches(
    saved: dict[str, torch.Tensor],
    expected: dict[str, torch.Tensor],
    model_name: str,
    path: str | Path | None,
) -> None:
    """Raise :class:`InputError` if a checkpoint's weights do not fit the model (names or shapes differ)."""
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    reshaped = [
        f"{name} {tuple(saved[name].shape)} != {tuple(expected[name].shape)}"
        for name in sorted(set(saved) & set(expected))
        if saved[name].shape != expected[name].shape
    ]
    if not (missing or unexpected or reshaped):
        return
    details = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("shape", reshaped)):
        if names:
            shown = ", ".join(names[:3]) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")
            details.append(f"{label}: {shown}")
    raise InputError(
        f"checkpoint weights do not fit the model {model_name} (trained with another network or number of "
        f"classes?); {'; '.join(details)}",
        path,
    )


def check_checkpoint_fits(module: LightningModule, checkpoint: dict[str, Any], model_name: str) -> None:
    """:func:`check_state_dict_matches` for a checkpoint being loaded into ``module`` (from its
    ``on_load_checkpoint``), naming the checkpoint file the Trainer loads."""
    path = module._trainer.ckpt_path if module._trainer is not None else None
    check_state_dict_matches(checkpoint.get("state_dict", {}), module.state_dict(), model_name, path)


def collect_rng_states() -> dict[str, Any]:
    """The global RNG states of torch (CPU and CUDA), NumPy and Python, as tensors and plain numbers.

    Plain types keep the checkpoint loadable with ``torch.load(weights_only=True)``.
    """
    _, numpy_keys, numpy_pos, numpy_has_gauss, numpy_gauss = np.random.get_state()
    python_version, python_state, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [
            torch.from_numpy(numpy_keys.astype(np.int64)),
            int(numpy_pos),
            int(numpy_has_gauss),
            float(numpy_gauss),
        ],
        "python": [int(python_version), list(python_state), python_gauss],
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    """Inverse of :func:`collect_rng_states` (CUDA states only when as many devices are present)."""
    torch.set_rng_state(states["torch"].cpu())
    if (
        states["torch_cuda"]
        and torch.cuda.is_available()
        and len(states["torch_cuda"]) == torch.cuda.device_count()
    ):
        torch.cuda.set_rng_state_all([state.cpu() for state in states["torch_cuda"]])
    keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, state, python_gauss = states["python"]
    random.setstate((version, tuple(state), python_gauss))


def confusion_matrix_image(matrix: torch.Tensor, class_names: list[str], title: str = "") -> np.ndarray:
    """Draw a ``(C, C)`` confusion matrix (rows: true class, columns: predicted) as an RGB (H, W, 3) image.

    Cells show counts; colour is the fraction of the true class (row-normalised).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = matrix.to(torch.float64).numpy()
    fractions = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = 2.6 + 0.5 * len(class_names)
    figure = Figure(figsize=(size, size), dpi=80)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=90)
    axes.set_yticks(ticks, class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    if len(class_names) <= 20:
        for row in ticks:
            for column in ticks:
                colour = "white" if fractions[row, column] > 0.5 else "black"
                axes.text(
                    column,
                    row,
                    f"{int(counts[row, column])}",
                    ha="center",
                    va="center",
                    color=colour,
                    fontsize=7,
                )
    figure.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


class HeldEvaluation:
    """A validation or test split's metric updates, held under DDP until the epoch ends.

    Lightning's distributed sampler repeats up to N − 1 items so that N processes get as many; counted as
    they come, those items would weigh twice. Under DDP (:func:`distributed`) the updates are held with the
    items' ``index``, gathered from every process when the epoch ends, and every process counts each item
    once: its metrics then hold the whole split, so they are built with ``sync_on_compute=False``. In one
    process a metric is updated at once.
    """

    def __init__(self) -> None:
        self._held: list[dict[str, Any]] = []

    def update(
        self,
        module: LightningModule,
        name: str,
        metric: Metric | MetricCollection,
        *values: torch.Tensor,
        index: torch.Tensor | None,
    ) -> None:
        """``metric.update(*values)`` (per-item tensors, items first), or under DDP the values held with the
        items' ``index`` (None: the batch carries none) until :meth:`count` updates ``metric``, there called
        ``name``."""
        if not distributed(module):
            metric.update(*(value.detach() for value in values))
            return
        self._held.append(
            {
                "name": name,
                "values": [value.detach().cpu() for value in values],
                "index": None if index is None else index.detach().cpu(),
            }
        )

    def count(self, module: LightningModule, metrics: Mapping[str, Metric | MetricCollection]) -> None:
        """Under DDP, gather the held updates of every process (a collective call: every rank makes it) and
        update each metric of ``metrics`` (by name) with every item once (by ``index``, where the batches
        carry one). Nothing in one process."""
        if not distributed(module):
            return
        held = [entry for part in gather_from_ranks(module.trainer, self._held) for entry in part]
        self._held = []
        for name, metric in metrics.items():
            entries = [entry for entry in held if entry["name"] == name]
            if not entries:
                continue
            values = [torch.cat(parts) for parts in zip(*(entry["values"] for entry in entries))]
            if all(entry["index"] is not None for entry in entries):
                index = torch.cat([entry["index"] for entry in entries]).numpy()
                first = torch.as_tensor(np.unique(index, return_index=True)[1])
                values = [value[first] for value in values]
            metric.update(*(value.to(module.device) for value in values))


def distributed(module: LightningModule) -> bool:
    """Whether ``module`` runs under a trainer with several processes (DDP)."""
    trainer = module._trainer
    return (
        trainer is not None
        and trainer.world_size > 1
        and torch.distributed.is_available()
        and torch.distributed.is_initialized()
    )


class PredictionWriter(BasePredictionWriter):
    """Write a classifier's predictions to a STAR table at the end of ``trainer.predict``.

    Columns: ``rlnClassNumber`` (1-based; 0 for an item an open-set model rejects as unknown),
    ``rlnMaxValueProbDistribution`` (probability of that class), ``aitomClassProbability_<k>`` for
    k = 1 ... num_classes (open-set models: ``aitomKnownScore`` instead), ``aitomClassName`` when the
    model knows the names, ``aitomParticleIndex`` (0-based row of the input table) when batches carry
    ``"index"``, and
    ``rlnCoordinateX/Y/Z`` (voxels) when batches carry ``"coordinates_xyz"``. Rows are in input order.
    With several processes (DDP), the predictions of every rank are gathered and rank 0 writes the one table,
    the same as a single process writes.

    Args:
        output_path: the STAR file to write.
        overwrite: replace an existing file (otherwise an existing file is an error, before predicting).
    """

    def __init__(self, output_path: str = "outputs/predictions.star", overwrite: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.output_path = Path(output_path)
        if self.output_path.suffix.lower() != ".star":
            raise InputError(
                "the PredictionWriter's output_path is written as a STAR table: name it .star",
                self.output_path,
            )
        self.overwrite = overwrite
        self._batches: list[dict[str, torch.Tensor]] = []

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.output_path.is_dir():
            raise InputError("is a folder; the PredictionWriter's output_path names a file", self.output_path)
        if self.output_path.exists() and not self.overwrite:
            raise InputError(
                "exists; set the PredictionWriter's overwrite: true, or move the file", self.output_path
            )
        for path in data_input_files(trainer.datamodule):
            if self.output_path.exists() and self.output_path.samefile(path):
                raise InputError(
                    "is also an input of the data: set the PredictionWriter's output_path to another file",
                    self.output_path,
                )
        self._batches = []

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: dict[str, torch.Tensor],
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        batch_prediction = {key: value.detach().cpu() for key, value in prediction.items()}
        if batch_indices is not None:
            # the rows' places in the data set: the order of a single process, restored after gathering
            batch_prediction[DATASET_ORDER_KEY] = torch.as_tensor(list(batch_indices), dtype=torch.long)
        self._batches.append(batch_prediction)

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        batches = [batch for part in gather_from_ranks(trainer, self._batches) for batch in part]
        self._batches = []
        if trainer.is_global_zero and batches:
            merged = {key: torch.cat([batch[key] for batch in batches]) for key in batches[0]}
            order = merged.pop(DATASET_ORDER_KEY, None)
            if order is not None:
                merged = {key: value[order.argsort(stable=True)] for key, value in merged.items()}
            names = getattr(pl_module, "class_names", None)
            write_particles(self.output_path, prediction_table(merged, names), overwrite=self.overwrite)
        trainer.strategy.barrier("prediction_writer")


def data_input_files(datamodule: object) -> list[Path]:
    """The existing files that a DataModule's hyper-parameters name (STAR tables, tomograms), nested
    configurations (a domain pair's source and target) included."""
    found: list[Path] = []

    def visit(value: object) -> None:
        if isinstance(value, str | Path):
            if Path(value).is_file():
                found.append(Path(value))
        elif isinstance(value, Mapping):
            for item in value.values():
                visit(item)
        elif isinstance(value, list | tuple):
            for item in value:
                visit(item)

    visit(dict(getattr(datamodule, "hparams", {})))
    return found


def gather_from_ranks(trainer: Trainer, part: Any) -> list[Any]:
    """Every process's ``part`` (picklable), in rank order; ``[part]`` in a single process.

    A collective call under DDP: every rank must make it (``torch.distributed.all_gather_object``).
    """
    if (
        trainer.world_size == 1
        or not torch.distributed.is_available()
        or not torch.distributed.is_initialized()
    ):
        return [part]
    gathered: list[Any] = [None] * trainer.world_size
    torch.distributed.all_gather_object(gathered, part)
    return gathered


def prediction_table(
    prediction: dict[str, torch.Tensor], class_names: list[str] | None = None
) -> pd.DataFrame:
    """A STAR-ready table from merged ``predict_step`` outputs (see :class:`PredictionWriter` for columns).

    Open-set predictions (:class:`aitom.tasks.open_set.OpenSetClassifier`) carry a ``"score"`` (the
    known-class score, rejected below the threshold) instead of probabilities, and class -1 for an item
    rejected as unknown: written as ``aitomKnownScore``, ``rlnClassNumber`` 0 and ``aitomClassName``
    ``unknown``.
    """
    classes = prediction["class"].numpy().astype(np.int64)
    order = (
        np.argsort(prediction["index"].numpy(), kind="stable")
        if "index" in prediction
        else np.arange(len(classes))
    )
    extra: dict[str, np.ndarray] = {}
    if "probabilities" in prediction:
        probabilities = prediction["probabilities"].to(torch.float64).numpy()
        extra["rlnMaxValueProbDistribution"] = probabilities[order, classes[order]]
        for k in range(probabilities.shape[1]):
            extra[f"aitomClassProbability_{k + 1}"] = probabilities[order, k]
    if "score" in prediction:
        extra["aitomKnownScore"] = prediction["score"].to(torch.float64).numpy()[order]
    if class_names is not None:
        names = np.asarray([*class_names, UNKNOWN_CLASS_NAME], dtype=object)  # index -1: unknown
        extra["aitomClassName"] = names[classes[order]]
    if "index" in prediction:
        extra["aitomParticleIndex"] = prediction["index"].numpy()[order].astype(np.int64)
    if "coordinates_xyz" in prediction:
        return particles_table(
            prediction["coordinates_xyz"].numpy()[order], class_number=classes[order] + 1, extra=extra
        )
    return pd.DataFrame({"rlnClassNumber": classes[order] + 1, **extra})
