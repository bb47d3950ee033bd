"""A tiny, learnable classification data set for the classifier tests: Gaussian blobs, one width per class.

Importable from YAML configs as ``tests.classify_fixtures.TinyBlobDataModule`` (run from the repository root).
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset


def blob_volumes(
    labels: torch.Tensor, box_size_voxels: int, noise: float, generator: torch.Generator
) -> torch.Tensor:
    """``(N, 1, S, S, S)`` Gaussian blobs of width ``1.5 + label`` voxels plus white noise (std ``noise``).

    The blob centre moves by up to one voxel per axis so that the networks cannot key on a single voxel.
    """
    size = box_size_voxels
    axis = torch.arange(size, dtype=torch.float32) - size // 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    shifts = torch.randint(-1, 2, (labels.shape[0], 3), generator=generator).float()
    sigma = 1.5 + labels.float()
    squared = (
        (x - shifts[:, 0, None, None, None]) ** 2
        + (y - shifts[:, 1, None, None, None]) ** 2
        + (z - shifts[:, 2, None, None, None]) ** 2
    )
    blobs = torch.exp(-squared / (2 * sigma[:, None, None, None] ** 2))
    volumes = blobs + noise * torch.randn(blobs.shape, generator=generator)
    return volumes.unsqueeze(1)


class TinyBlobDataset(Dataset):
    """Items ``{"volume": (1, S, S, S), "label", "index", "coordinates_xyz": (3,)}`` made once, in memory."""

    def __init__(self, size: int, num_classes: int, box_size_voxels: int, noise: float, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(size) % num_classes
        self.volumes = blob_volumes(self.labels, box_size_voxels, noise, generator)
        self.coordinates_xyz = torch.rand((size, 3), generator=generator) * 100

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "volume": self.volumes[index],
            "label": self.labels[index],
            "index": torch.tensor(index),
            "coordinates_xyz": self.coordinates_xyz[index],
        }


class TinyBlobDataModule(LightningDataModule):
    """Train / val / test / predict splits of :class:`TinyBlobDataset` (different seeds per split).

    Args:
        num_classes: number of blob widths.
        box_size_voxels: box edge, voxels.
        train_size, val_size, test_size, predict_size: items per split.
        batch_size: items per batch.
        noise: standard deviation of the added white noise (blob peak = 1).
        seed: seed of the data (the training order follows Lightning's global seed).
    """

    def __init__(
        self,
        num_classes: int = 3,
        box_size_voxels: int = 16,
        train_size: int = 24,
        val_size: int = 12,
        test_size: int = 12,
        predict_size: int = 10,
        batch_size: int = 4,
        noise: float = 0.3,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.num_classes = num_classes
        self.class_names = [f"blob{k}" for k in range(num_classes)]
        self.datasets: dict[str, TinyBlobDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        sizes = {"train": hp.train_size, "val": hp.val_size, "test": hp.test_size, "predict": hp.predict_size}
        for offset, (split, size) in enumerate(sizes.items()):
            if split not in self.datasets:
                self.datasets[split] = TinyBlobDataset(
                    size, hp.num_classes, hp.box_size_voxels, hp.noise, hp.seed + 1000 * offset
                )

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.datasets["train"], batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.datasets["val"], batch_size=self.hparams.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.datasets["test"], batch_size=self.hparams.batch_size)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.datasets["predict"], batch_size=self.hparams.batch_size)
