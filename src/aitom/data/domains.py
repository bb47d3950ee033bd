"""Two data sources with the same classes (a labelled source domain, a target domain) for domain adaptation.

The source and target are any split DataModules (``SimulatedSubtomogramDataModule``,
``StarSubtomogramDataModule``) that differ in imaging conditions (CTF defocus, SNR, tilt range, noise, or
simulated vs real). Training batches pair them: ``{"source": batch, "target": batch}``; validation, test and
predict batches are the target's (its labels, when it has them, are used for scoring only).

The usual real-data case: a labelled simulated source and the user's subtomograms, a STAR table per split
(``StarSubtomogramDataModule``), as the target. A STAR table names no classes: the pair takes the class
names (and their number) from the domain that has them, and the class numbers of a STAR table
(``rlnClassNumber``, 1-based) must lie within them. The target may be unlabelled: its training table needs
no ``rlnClassNumber`` (target labels are never trained on), and without ``val_star`` a fit runs without
validation; but a target ``val_star`` or ``test_star`` without ``rlnClassNumber`` is refused, since
validation and testing score the adapted classifier against those labels (``predict`` takes unlabelled
tables). A STAR source must be labelled (its ``train_star`` needs ``rlnClassNumber``).

Each domain is given as a configuration, ``{"class_path": ..., "init_args": {...}}`` (the YAML shape), not
as a DataModule object: LightningCLI hands the hyper-parameters of the outer DataModule to every DataModule
built while it is being instantiated, so nested DataModules would record the wrong ones.
"""

from __future__ import annotations

import contextvars
import importlib
from typing import Any

from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader

from aitom.data.splits import (
    STAGE_SPLITS,
    SplitDataModule,
    check_loader_options,
    drops_single_item_batch,
    is_validating,
)
from aitom.data.subtomograms import StarSubtomogramDataset
from aitom.errors import InputError

DEFAULT_DOMAIN_CLASS = "aitom.data.simulated.SimulatedSubtomogramDataModule"


def build_domain(config: dict[str, Any], role: str) -> SplitDataModule:
    """Instantiate a domain's DataModule from ``{"class_path": ..., "init_args": {...}}``.

    ``class_path`` defaults to :data:`DEFAULT_DOMAIN_CLASS` and must name a :class:`SplitDataModule`. Other
    keys beside ``class_path`` and ``init_args`` replace the init_args of the same name: a command-line
    option ``--data.init_args.source.init_args.snr 2`` reaches the domain's dict as ``"snr": 2`` (jsonargparse
    treats the dict as a mapping, not as a class). The module is built in an empty ``contextvars`` context,
    so that it saves its own hyper-parameters even while LightningCLI instantiates the enclosing DataModule.

    Args:
        config: the domain's configuration.
        role: ``"source"`` or ``"target"`` (for messages).
    """
    class_path = config.get("class_path", DEFAULT_DOMAIN_CLASS)
    module_name, _, class_name = class_path.rpartition(".")
    try:
        module_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise InputError(
            f"the {role} domain's class_path {class_path!r} cannot be imported: {error}"
        ) from error
    if not (isinstance(module_class, type) and issubclass(module_class, SplitDataModule)):
        raise InputError(f"the {role} domain's class_path {class_path!r} is not a split DataModule")
    overrides = {key: value for key, value in config.items() if key not in ("class_path", "init_args")}
    init_args = {**(config.get("init_args") or {}), **overrides}
    try:
        return contextvars.Context().run(module_class, **init_args)
    except (TypeError, InputError) as error:
        raise InputError(f"the {role} domain ({class_name}): {error}") from error


class DomainPairDataModule(LightningDataModule):
    """A source and a target DataModule with the same classes, served together.

    Training batches: ``{"source": source train batch, "target": target train batch}``; an epoch lasts as
    long as the longer train split, the shorter one cycling (Lightning's ``max_size_cycle``); a last
    training batch of a single item is dropped, as in :class:`aitom.data.splits.SplitDataModule`.
    Validation, test and predict: the target's splits (a fit without a target validation split runs
    without validation). Both are loaded with this module's ``batch_size`` and ``num_workers`` (the inner
    modules' own settings are not used).

    Attributes:
        class_names: the class names of the domain(s) that name them (None when neither does, e.g. two STAR
            tables: the model's ``num_classes`` then decides).
        num_classes: their number, or None.

    Args:
        source: the labelled source domain, ``{"class_path": ..., "init_args": {...}}`` (class_path defaults
            to ``SimulatedSubtomogramDataModule``), see :func:`build_domain`.
        target: the target domain, likewise (train labels unused; val/test labels score the adaptation, see
            the module docstring for an unlabelled STAR target).
        batch_size: subtomograms per batch from each domain.
        num_workers: DataLoader worker processes per loader.
    """

    def __init__(
        self, source: dict[str, Any], target: dict[str, Any], batch_size: int = 16, num_workers: int = 0
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        source = build_domain(source, "source")
        target = build_domain(target, "target")
        source_names = getattr(source, "class_names", None)
        target_names = getattr(target, "class_names", None)
        if source_names is not None and target_names is not None and list(source_names) != list(target_names):
            raise InputError(
                f"the source and target domains must have the same classes in the same order; source "
                f"{list(source_names)}, target {list(target_names)}"
            )
        check_loader_options(batch_size, num_workers)
        self.source = source
        self.target = target
        names = source_names if source_names is not None else target_names
        self.class_names: list[str] | None = None if names is None else list(names)
        self.num_classes: int | None = None if names is None else len(names)

    def setup(self, stage: str | None = None) -> None:
        """Set up both domains for ``stage``, then check the labels of their STAR tables."""
        self.source.setup(stage)
        self.target.setup(stage)
        for role, module in (("source", self.source), ("target", self.target)):
            for split in STAGE_SPLITS[stage]:
                dataset = module.datasets.get(split)
                if isinstance(dataset, StarSubtomogramDataset):
                    self._check_star_labels(dataset, role, split)

    def _check_star_labels(self, dataset: StarSubtomogramDataset, role: str, split: str) -> None:
        """Refuse a STAR table whose labels are missing where they are needed (source training, target
        validation and test) or name a class beyond the pair's ``num_classes``."""
        option = f"the {role} domain's {split}_star"
        if dataset.labels is None:
            if role == "source" and split == "train":
                raise InputError(
                    f"{option} has no rlnClassNumber column: the source domain must be labelled",
                    dataset.star_path,
                )
            if role == "target" and split == "val":
                raise InputError(
                    f"{option} has no rlnClassNumber column: validation scores the adapted classifier "
                    "against the target's labels; label the table or leave val_star out (no validation)",
                    dataset.star_path,
                )
            if role == "target" and split == "test":
                raise InputError(
                    f"{option} has no rlnClassNumber column: testing scores the adapted classifier "
                    "against the target's labels; label the table, or use predict for unlabelled data",
                    dataset.star_path,
                )
            return
        if self.num_classes is not None and dataset.labels.max() >= self.num_classes:
            row = int(dataset.labels.argmax())
            raise InputError(
                f"{option} has rlnClassNumber {dataset.labels[row] + 1} (row {row + 1}) but the classes "
                f"are {self.class_names}; class numbers run from 1 to {self.num_classes}",
                dataset.star_path,
            )

    @property
    def largest_label(self) -> int | None:
        """The largest 0-based label of the STAR tables set up in either domain (None when none is
        labelled): a model needs more classes than this."""
        labels = [
            label
            for module in (self.source, self.target)
            if (label := getattr(module, "largest_label", None)) is not None
        ]
        return max(labels) if labels else None

    def _loader(self, module: SplitDataModule, split: str, shuffle: bool) -> DataLoader:
        role = "source" if module is self.source else "target"
        dataset = module.datasets.get(split)
        if dataset is None and split == "val" and not is_validating(self):
            dataset = []  # a fit without a validation split: no validation
        if dataset is None:
            raise InputError(
                f"no data given for the {split} split of the {role} domain ({type(module).__name__})"
            )
        if len(dataset) == 0 and (split != "val" or is_validating(self)):
            raise InputError(f"the {split} split of the {role} domain has no items ({split}_size: 0)")
        workers = self.hparams.num_workers
        batch_size = self.hparams.batch_size
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=split == "train" and drops_single_item_batch(self, len(dataset), batch_size),
            num_workers=workers,
            persistent_workers=workers > 0,
        )

    def train_dataloader(self) -> CombinedLoader:
        loaders = {
            "source": self._loader(self.source, "train", shuffle=True),
            "target": self._loader(self.target, "train", shuffle=True),
        }
        return CombinedLoader(loaders, mode="max_size_cycle")

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.target, "val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.target, "test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.target, "predict", shuffle=False)
