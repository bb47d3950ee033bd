"""Subtomograms on disk: one MRC per particle (or ``N@stack.mrcs``) listed in a STAR file.

The STAR table needs ``rlnImageName`` (paths relative to the STAR file's folder); ``rlnClassNumber``
(1-based) gives the label when present, ``rlnCoordinateX/Y/Z`` (voxels) travel along for prediction.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from aitom.data.augment import augment_volume, subtomogram_augmentation
from aitom.data.splits import SplitDataModule
from aitom.errors import InputError
from aitom.io import read_particles, read_volume

COORDINATE_COLUMNS = ("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ")


def normalise_volume(volume: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit standard deviation over the last three axes (a constant volume becomes zeros)."""
    mean = volume.mean(dim=(-3, -2, -1), keepdim=True)
    std = volume.std(dim=(-3, -2, -1), keepdim=True).clamp_min(1e-8)
    return (volume - mean) / std


class StarSubtomogramDataset(Dataset):
    """Subtomograms listed in a STAR file; items are ``{"volume": (1,S,S,S), "label", "index"[, ...]}``.

    Args:
        star_path: STAR file with ``rlnImageName`` and optionally ``rlnClassNumber`` (1-based).
        normalise: give each subtomogram zero mean and unit standard deviation.
        transform: optional torchio transform applied to each ``(1, S, S, S)`` volume.
    """

    def __init__(self, star_path: str | Path, normalise: bool = True, transform=None) -> None:
        self.star_path = Path(star_path)
        self.table = read_particles(self.star_path, require=("rlnImageName",))
        if len(self.table) == 0:
            raise InputError("particle table is empty", self.star_path)
        self.normalise = normalise
        self.transform = transform
        self.labels = (
            self.table["rlnClassNumber"].to_numpy(dtype=np.int64) - 1
            if "rlnClassNumber" in self.table.columns
            else None
        )
        if self.labels is not None and self.labels.min() < 0:
            raise InputError("rlnClassNumber must be 1 or more", self.star_path)
        self.coordinates = (
            self.table[list(COORDINATE_COLUMNS)].to_numpy(dtype=np.float32)
            if set(COORDINATE_COLUMNS) <= set(self.table.columns)
            else None
        )
        self.box_shape = tuple(self._read(0).shape[-3:])

    def __len__(self) -> int:
        return len(self.table)

    def _read(self, index: int) -> torch.Tensor:
        name = str(self.table["rlnImageName"].iloc[index])
        slice_index = None
        if "@" in name:
            number, name = name.split("@", 1)
            slice_index = int(number) - 1
        path = Path(name) if Path(name).is_absolute() else self.star_path.parent / name
        volume, _ = read_volume(path, allow_2d=slice_index is not None)
        if slice_index is not None:
            volume = volume[slice_index]
        return volume

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        volume = self._read(index)
        if volume.shape[-3:] != self.box_shape:
            raise InputError(
                f"subtomogram {index + 1} has shape {tuple(volume.shape)}, the first has {self.box_shape}",
                self.star_path,
            )
        volume = volume.unsqueeze(0)
        if self.normalise:
            volume = normalise_volume(volume)
        if self.transform is not None:
            volume = augment_volume(volume, self.transform)
        item = {"volume": volume, "index": torch.tensor(index)}
        if self.labels is not None:
            item["label"] = torch.tensor(self.labels[index])
        if self.coordinates is not None:
            item["coordinates_xyz"] = torch.from_numpy(self.coordinates[index])
        return item


class StarSubtomogramDataModule(SplitDataModule):
    """Train / validation / test / predict splits, each a STAR file of subtomograms.

    Args:
        train_star, val_star, test_star, predict_star: STAR files (any may be omitted).
        batch_size: subtomograms per batch.
        num_workers: DataLoader worker processes.
        augment: wedge-preserving 180° rotations and shifts on the training split.
        tilt_min_deg, tilt_max_deg: tilt range of the data, degrees (decides which rotations keep the wedge).
        max_shift_voxels: largest random shift per axis in training, voxels.
    """

    def __init__(
        self,
        train_star: str | None = None,
        val_star: str | None = None,
        test_star: str | None = None,
        predict_star: str | None = None,
        batch_size: int = 16,
        num_workers: int = 0,
        augment: bool = True,
        tilt_min_deg: float = -60.0,
        tilt_max_deg: float = 60.0,
        max_shift_voxels: float = 2.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        transform = (
            subtomogram_augmentation(hp.tilt_min_deg, hp.tilt_max_deg, hp.max_shift_voxels)
            if hp.augment
            else None
        )
        for split, path in (
            ("train", hp.train_star),
            ("val", hp.val_star),
            ("test", hp.test_star),
            ("predict", hp.predict_star),
        ):
            if path is not None and split not in self.datasets:
                self.datasets[split] = StarSubtomogramDataset(
                    path, transform=transform if split == "train" else None
                )

    @property
    def largest_label(self) -> int | None:
        """The largest 0-based label (``rlnClassNumber - 1``) of the splits set up (None when none is
        labelled): a model needs more classes than this."""
        labels = [
            int(dataset.labels.max()) for dataset in self.datasets.values() if dataset.labels is not None
        ]
        return max(labels) if labels else None
