"""A LightningDataModule base: one dataset per split, all served with the same DataLoader settings."""

from __future__ import annotations

import math

from lightning.pytorch import LightningDataModule
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader, Dataset

from aitom.errors import InputError

#: the splits each Lightning stage (``setup(stage)``) uses; None: all
STAGE_SPLITS: dict[str | None, tuple[str, ...]] = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    "predict": ("predict",),
    None: ("train", "val", "test", "predict"),
}


def check_loader_options(batch_size: int, num_workers: int) -> None:
    """Raise :class:`InputError` unless ``batch_size >= 1`` and ``num_workers >= 0``."""
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    if num_workers < 0:
        raise InputError(f"num_workers must be 0 or more, got {num_workers}")


def check_data_tilt_range(tilt_min_deg: float, tilt_max_deg: float) -> None:
    """Raise :class:`InputError` unless ``-90 <= tilt_min_deg < tilt_max_deg <= 90`` (degrees)."""
    if not -90.0 <= tilt_min_deg < tilt_max_deg <= 90.0:
        raise InputError(
            f"tilt_min_deg and tilt_max_deg must satisfy -90 <= tilt_min_deg < tilt_max_deg <= 90 (degrees), "
            f"got {tilt_min_deg} and {tilt_max_deg}"
        )


def data_box_shapes(datamodule: object) -> set[tuple[int, ...]]:
    """The box shapes (voxels) of a DataModule's subtomograms: ``box_size_voxels``³ from its
    hyper-parameters (simulated data), else the ``box_shape`` of its datasets (STAR tables, once set up);
    empty when neither says."""
    box = getattr(datamodule, "hparams", {}).get("box_size_voxels")
    if box is not None:
        return {(int(box),) * 3}
    datasets = getattr(datamodule, "datasets", {}).values()
    return {tuple(dataset.box_shape) for dataset in datasets if hasattr(dataset, "box_shape")}


def drops_single_item_batch(datamodule: LightningDataModule, size: int, batch_size: int) -> bool:
    """Whether a training DataLoader over ``size`` items drops its last batch: when that batch would hold a
    single item of a split of two or more. Batch normalisation in training mode cannot normalise one item
    (``BatchNorm1d`` on per-item features, e.g. the open-set task's, raises a ValueError), and a single item
    skews the statistics of any other; a last batch of two or more items is kept. With several processes
    (DDP, the Trainer ``datamodule`` is attached to), each loads its share, ``ceil(size / world_size)``."""
    trainer = datamodule.trainer
    share = math.ceil(size / (trainer.world_size if trainer is not None else 1))
    return share > 1 and share % batch_size == 1


def is_validating(datamodule: LightningDataModule) -> bool:
    """Whether the Trainer ``datamodule`` is attached to runs ``validate`` (``fit`` may run without
    validation, on an empty validation split)."""
    return datamodule.trainer is not None and datamodule.trainer.state.fn == TrainerFn.VALIDATING


class SplitDataModule(LightningDataModule):
    """Serves ``self.datasets[split]`` for ``train`` (shuffled), ``val``, ``test`` and ``predict``.

    Subclasses fill ``self.datasets`` in ``setup`` and save ``batch_size`` and ``num_workers`` as
    hyper-parameters. A training epoch whose last batch would hold a single item drops that item (it comes
    back in another batch of the next, reshuffled epoch): batch-normalised networks cannot train on a batch
    of one (:func:`drops_single_item_batch`). Validation, test and predict batches keep every item.
    """

    def __init__(self) -> None:
        super().__init__()
        self.datasets: dict[str, Dataset] = {}

    def split_dataset(self, split: str) -> Dataset:
        """The dataset of ``split``, or :class:`InputError` when there is none or it is empty (an empty
        validation split is allowed in ``fit``: no validation)."""
        if split not in self.datasets:
            raise InputError(f"no data given for the {split} split")
        if len(self.datasets[split]) == 0 and (split != "val" or is_validating(self)):
            raise InputError(f"the {split} split has no items ({split}_size: 0)")
        return self.datasets[split]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.split_dataset(split)
        batch_size = self.hparams.batch_size
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=split == "train" and drops_single_item_batch(self, len(dataset), batch_size),
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", shuffle=False)
