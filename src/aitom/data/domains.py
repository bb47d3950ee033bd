"""Two data sources with the same classes (a labelled source domain, a target domain) for domain adaptation.

The source and target are any split DataModules (``SimulatedSubtomogramDataModule``,
``StarSubtomogramDataModule``) that differ in imaging conditions (CTF defocus, SNR, tilt range, noise, or
simulated vs real). Training batches pair them: ``{"source": batch, "target": batch}``; validation, test and
predict batches are the target's (its labels, when it has them, are used for scoring only).

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

from aitom.data.splits import SplitDataModule, check_loader_options, is_validating
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
    long as the longer train split, the shorter one cycling (Lightning's ``max_size_cycle``). Validation,
    test and predict: the target's splits. Both are loaded with this module's ``batch_size`` and
    ``num_workers`` (the inner modules' own settings are not used).

    Args:
        source: the labelled source domain, ``{"class_path": ..., "init_args": {...}}`` (class_path defaults
            to ``SimulatedSubtomogramDataModule``), see :func:`build_domain`.
        target: the target domain, likewise (train labels unused; val/test labels score the adaptation).
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
        if source_names is None or target_names is None:
            raise InputError("the source and target data must both name their classes (class_names)")
        if list(source_names) != list(target_names):
            raise InputError(
                f"the source and target domains must have the same classes in the same order; source "
                f"{list(source_names)}, target {list(target_names)}"
            )
        check_loader_options(batch_size, num_workers)
        self.source = source
        self.target = target
        self.class_names = list(source_names)
        self.num_classes = len(self.class_names)

    def setup(self, stage: str | None = None) -> None:
        self.source.setup(stage)
        self.target.setup(stage)

    def _loader(self, module: SplitDataModule, split: str, shuffle: bool) -> DataLoader:
        if split not in module.datasets:
            raise InputError(f"no data given for the {split} split of the {type(module).__name__}")
        if len(module.datasets[split]) == 0 and (split != "val" or is_validating(self)):
            role = "source" if module is self.source else "target"
            raise InputError(f"the {split} split of the {role} domain has no items ({split}_size: 0)")
        workers = self.hparams.num_workers
        return DataLoader(
            module.datasets[split],
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
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
