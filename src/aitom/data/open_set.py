"""Open-set splits of simulated subtomograms: train and validate on known classes, test on known + unknown.

The items are those of :class:`aitom.data.simulated.SimulatedSubtomogramDataset` (each a pure function of
``(seed, split, index)``). Train and validation draw their classes from ``known_classes`` only; test and
predict draw uniformly from ``known_classes + unknown_classes``, so labels ``>= num_known_classes`` mark
items of classes the model never saw.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from aitom.data.simulated import SPLIT_OFFSETS, check_simulation_options, library_maps, split_datasets
from aitom.data.splits import SplitDataModule
from aitom.errors import InputError
from aitom.simulate import get_class

#: splits whose items come from known and unknown classes; the others see known classes only
OPEN_SPLITS = ("test", "predict")


class OpenSetDataModule(SplitDataModule):
    """Simulated subtomograms with known classes for train/val and known + unknown classes for test/predict.

    Items: ``{"volume": (1, S, S, S), "label", "index", "rotation": (3, 3), "shift_xyz": (3,)}``; in the test
    and predict splits a label ``>= num_known_classes`` is an unknown class (index into ``class_names``).
    Training batches are all full (a last, smaller batch is dropped), as batch-normalised features need.

    Attributes:
        class_names: ``known_classes + unknown_classes``, in label order.
        num_known_classes, num_unknown_classes: how many of each.

    Args:
        known_classes: structure-library class names (or atomic model files, see
            :func:`aitom.simulate.get_class`) seen in training (at least two).
        unknown_classes: classes met only at test / predict time (at least one, none known).
        box_size_voxels: subtomogram edge, voxels.
        voxel_size_a: voxel size, Å.
        snr: ``var(signal) / var(noise)`` of each subtomogram.
        tilt_min_deg, tilt_max_deg: tilt range of the missing wedge, degrees.
        defocus_um: CTF defocus (underfocus positive), µm; 0 disables the CTF.
        max_shift_voxels: largest particle shift from the box centre, voxels.
        train_size, val_size, test_size, predict_size: items per split (train_size 0 or 2 or more).
        batch_size: subtomograms per batch (2 or more).
        num_workers: DataLoader worker processes.
        seed: base seed of every split.
    """

    def __init__(
        self,
        known_classes: list[str],
        unknown_classes: list[str],
        box_size_voxels: int = 32,
        voxel_size_a: float = 10.0,
        snr: float = 0.1,
        tilt_min_deg: float = -60.0,
        tilt_max_deg: float = 60.0,
        defocus_um: float = 3.0,
        max_shift_voxels: float = 2.0,
        train_size: int = 4000,
        val_size: int = 500,
        test_size: int = 1000,
        predict_size: int = 0,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        # An unknown class fails here; a model file's class is named by its file name.
        known_names = [get_class(name).name for name in known_classes]
        unknown_names = [get_class(name).name for name in unknown_classes]
        if len(set(known_names)) < 2 or len(set(known_names)) != len(known_names):
            raise InputError(f"known_classes must be two or more distinct classes, got {known_names}")
        if not unknown_names or len(set(unknown_names)) != len(unknown_names):
            raise InputError(f"unknown_classes must be one or more distinct classes, got {unknown_names}")
        overlap = sorted(set(known_names) & set(unknown_names))
        if overlap:
            raise InputError(f"class(es) {overlap} are in both known_classes and unknown_classes")
        check_simulation_options(
            box_size_voxels,
            voxel_size_a,
            snr,
            tilt_min_deg,
            tilt_max_deg,
            defocus_um,
            max_shift_voxels,
            {
                "train_size": train_size,
                "val_size": val_size,
                "test_size": test_size,
                "predict_size": predict_size,
            },
            batch_size,
            num_workers,
        )
        # the open-set features are batch-normalised: every training batch needs 2 or more items
        if batch_size < 2:
            raise InputError(f"batch_size must be 2 or more (batch-normalised features), got {batch_size}")
        if train_size == 1:
            raise InputError("train_size must be 0 or 2 or more (batch-normalised features), got 1")
        self.save_hyperparameters()
        self.known_class_names = known_names
        self.unknown_class_names = unknown_names
        self.class_names = self.known_class_names + self.unknown_class_names
        self.num_known_classes = len(known_classes)
        self.num_unknown_classes = len(unknown_classes)

    def class_maps(self) -> torch.Tensor:
        """``(K + U, S, S, S)`` potentials of the known then the unknown classes."""
        sources = [*self.hparams.known_classes, *self.hparams.unknown_classes]
        return library_maps(sources, self.hparams.voxel_size_a, self.hparams.box_size_voxels)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        maps = self.class_maps()
        known = maps[: self.num_known_classes]
        self.datasets.update(
            split_datasets(
                self.hparams, {split: maps if split in OPEN_SPLITS else known for split in SPLIT_OFFSETS}
            )
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches, all of ``batch_size`` items (the remainder is dropped each epoch)."""
        dataset = self.split_dataset("train")
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            shuffle=True,
            drop_last=len(dataset) > self.hparams.batch_size,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )
