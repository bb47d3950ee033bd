"""Subtomograms on disk: one MRC per particle (or ``N@stack.mrcs``) listed in a STAR file.

The STAR table needs ``rlnImageName`` (paths relative to the STAR file's folder); ``rlnClassNumber``
(1-based) gives the label when present, ``rlnCoordinateX/Y/Z`` (voxels) travel along for prediction.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from aitom.data.augment import augment_volume, subtomogram_augmentation
from aitom.data.splits import (
    STAGE_SPLITS,
    SplitDataModule,
    check_data_tilt_range,
    check_loader_options,
)
from aitom.errors import InputError
from aitom.io import HeaderWarning, VolumeHeader, open_volume_mmap, read_particles, read_volume
from aitom.io.relion5 import finite_number_columns

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
        table = read_particles(self.star_path, require=("rlnImageName",))
        if len(table) == 0:
            raise InputError("particle table is empty", self.star_path)
        self.table = finite_number_columns(
            table, ("rlnClassNumber", *COORDINATE_COLUMNS), self.star_path, "particles"
        )
        self.normalise = normalise
        self.transform = transform
        self.labels = self._class_numbers() - 1 if "rlnClassNumber" in self.table.columns else None
        self.coordinates = (
            self.table[list(COORDINATE_COLUMNS)].to_numpy(dtype=np.float32)
            if set(COORDINATE_COLUMNS) <= set(self.table.columns)
            else None
        )
        self.sources = [self._source(row) for row in range(len(self.table))]
        self.box_shape = self._check_volumes()

    def __len__(self) -> int:
        return len(self.table)

    def _class_numbers(self) -> np.ndarray:
        """``rlnClassNumber`` as int64, or InputError naming the first row that is not a whole number >= 1."""
        values = self.table["rlnClassNumber"].to_numpy(dtype=np.float64)
        bad = np.flatnonzero((values < 1) | (values != np.round(values)))
        if len(bad):
            raise InputError(
                f"rlnClassNumber must be a whole number, 1 or more; row {bad[0] + 1} has {values[bad[0]]:g}",
                self.star_path,
            )
        return values.astype(np.int64)

    def _source(self, row: int) -> tuple[Path, int | None]:
        """The file of row ``row``'s ``rlnImageName`` and the 0-based volume in it (``N@stack``), or None."""
        name = str(self.table["rlnImageName"].iloc[row])
        slice_index = None
        if "@" in name:
            number, name = name.split("@", 1)
            if not number.strip().isdigit() or int(number) < 1:
                raise InputError(
                    f"rlnImageName of row {row + 1} is {number}@{name}: the number before @ must be the "
                    "1-based volume in the stack",
                    self.star_path,
                )
            slice_index = int(number) - 1
        path = Path(name) if Path(name).is_absolute() else self.star_path.parent / name
        return path, slice_index

    def _check_volumes(self) -> tuple[int, ...]:
        """Read every file's header: each row must name one volume, all of one shape and voxel size.

        Returns the shared ``(Z, Y, X)`` shape. The networks work in voxels, so an unset voxel size in the
        headers is not warned about; only a difference between particles is an error.
        """
        headers: dict[Path, VolumeHeader] = {}
        first: tuple[Path, VolumeHeader] | None = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", HeaderWarning)
            for row, (path, slice_index) in enumerate(self.sources):
                if path not in headers:
                    headers[path] = open_volume_mmap(path, allow_2d=slice_index is not None)[1]
                header = headers[path]
                if slice_index is not None:
                    if len(header.shape) != 4:
                        raise InputError(
                            f"rlnImageName of row {row + 1} names volume {slice_index + 1} of it, but it "
                            f"holds one {'x'.join(map(str, header.shape))} array, not a stack of volumes",
                            path,
                        )
                    if slice_index >= header.shape[0]:
                        raise InputError(
                            f"rlnImageName of row {row + 1} names volume {slice_index + 1}, but the stack "
                            f"holds {header.shape[0]}",
                            path,
                        )
                if first is None:
                    first = (path, header)
                    continue
                shape, first_shape = header.shape[-3:], first[1].shape[-3:]
                if shape != first_shape:
                    raise InputError(
                        f"subtomogram of row {row + 1} is {'x'.join(map(str, shape))} voxels, the first "
                        f"({first[0].name}) {'x'.join(map(str, first_shape))}: all must have one box size",
                        path,
                    )
                voxel, first_voxel = header.voxel_size_a[0], first[1].voxel_size_a[0]
                if abs(voxel - first_voxel) > 1e-3 * max(abs(first_voxel), 1e-6):
                    raise InputError(
                        f"voxel size {voxel:g} Å differs from the first subtomogram's ({first[0].name}, "
                        f"{first_voxel:g} Å): rescale the particles to one voxel size",
                        path,
                    )
        return tuple(first[1].shape[-3:])

    def _read(self, index: int) -> torch.Tensor:
        path, slice_index = self.sources[index]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", HeaderWarning)  # checked for the whole set in _check_volumes
            volume, _ = read_volume(path, allow_2d=slice_index is not None)
        return volume if slice_index is None else volume[slice_index]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        volume = self._read(index).unsqueeze(0)
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
        check_loader_options(batch_size, num_workers)
        check_data_tilt_range(tilt_min_deg, tilt_max_deg)
        if not 0.0 <= max_shift_voxels < float("inf"):
            raise InputError(f"max_shift_voxels must be 0 or more (voxels), got {max_shift_voxels}")
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        """Read the STAR files of the splits ``stage`` uses (all given ones when ``stage`` is None)."""
        hp = self.hparams
        transform = (
            subtomogram_augmentation(hp.tilt_min_deg, hp.tilt_max_deg, hp.max_shift_voxels)
            if hp.augment
            else None
        )
        for split in STAGE_SPLITS[stage]:
            path = hp[f"{split}_star"]
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
