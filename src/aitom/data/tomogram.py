"""Tomograms for ``predict``: whole, or cut into overlapping tiles so memory stays bounded.

Tiles are read from a memory-mapped MRC, so a tomogram larger than RAM is never loaded whole. Each item
carries the tile, its origin in the tomogram (voxels, z, y, x order as the tensor) and the tomogram's path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from aitom.data.splits import check_loader_options
from aitom.errors import InputError
from aitom.io import open_volume_mmap


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of tiles of ``tile`` voxels covering ``[0, length)``, neighbours sharing ``overlap`` voxels.

    The last tile ends exactly at ``length``; a tile as long as the axis or longer gives one start, 0.
    """
    if tile >= length:
        return [0]
    if overlap >= tile:
        raise InputError(f"tile overlap ({overlap} voxels) must be smaller than the tile ({tile} voxels)")
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def tile_origins(
    shape_zyx: tuple[int, int, int], tile_zyx: tuple[int, int, int], overlap_voxels: int
) -> list[tuple[int, int, int]]:
    """Origins ``(z, y, x)`` of overlapping tiles covering a volume of ``shape_zyx`` voxels."""
    per_axis = [tile_starts(n, t, overlap_voxels) for n, t in zip(shape_zyx, tile_zyx)]
    return [(z, y, x) for z in per_axis[0] for y in per_axis[1] for x in per_axis[2]]


class TomogramTileDataset(Dataset):
    """Overlapping tiles of one tomogram, read lazily from a memory map.

    Args:
        path: tomogram (MRC).
        tile_voxels: tile edge, voxels (clipped to the tomogram's size on each axis); None = whole tomogram.
        overlap_voxels: voxels shared by neighbouring tiles (at least the particle diameter for pickers).
        voxel_size_a: voxel size, Å, replacing the header's (``self.header``); None keeps the header's.
    """

    def __init__(
        self,
        path: str | Path,
        tile_voxels: int | None = 256,
        overlap_voxels: int = 32,
        voxel_size_a: float | None = None,
    ) -> None:
        self.path = Path(path)
        self.array, self.header = open_volume_mmap(self.path, voxel_size_a=voxel_size_a)
        shape = tuple(int(n) for n in self.array.shape[-3:])
        if len(self.array.shape) != 3:
            raise InputError(f"expected a 3-D tomogram, got shape {tuple(self.array.shape)}", self.path)
        self.tile_shape = shape if tile_voxels is None else tuple(min(tile_voxels, n) for n in shape)
        self.origins = tile_origins(shape, self.tile_shape, overlap_voxels)

    def __len__(self) -> int:
        return len(self.origins)

    def __getitem__(self, index: int) -> dict[str, object]:
        z, y, x = self.origins[index]
        dz, dy, dx = self.tile_shape
        tile = np.array(self.array[z : z + dz, y : y + dy, x : x + dx], dtype=np.float32)
        if not np.isfinite(tile).all():
            raise InputError(f"tile at voxel (z={z}, y={y}, x={x}) holds NaN or Inf values", self.path)
        return {
            "volume": torch.from_numpy(tile).unsqueeze(0),
            "origin_zyx": torch.tensor([z, y, x]),
            "tomogram": str(self.path),
        }


class TomogramDataModule(LightningDataModule):
    """Tomograms for ``trainer.predict``: every tile of every listed tomogram, one tile per batch item.

    Args:
        tomograms: MRC paths.
        tile_voxels: tile edge in voxels; None reads each tomogram whole.
        overlap_voxels: overlap of neighbouring tiles, voxels.
        batch_size: tiles per batch (tiles of different tomograms may differ in size: keep 1 then).
        num_workers: DataLoader worker processes.
        voxel_size_a: voxel size of every tomogram, Å, replacing the headers'; None keeps the headers'.
    """

    def __init__(
        self,
        tomograms: list[str],
        tile_voxels: int | None = 256,
        overlap_voxels: int = 32,
        batch_size: int = 1,
        num_workers: int = 0,
        voxel_size_a: float | None = None,
    ) -> None:
        super().__init__()
        if not tomograms:
            raise InputError("no tomograms given")
        if tile_voxels is not None and tile_voxels < 1:
            raise InputError(f"tile_voxels must be at least 1 (or null: whole tomograms), got {tile_voxels}")
        if overlap_voxels < 0:
            raise InputError(f"overlap_voxels must be 0 or more, got {overlap_voxels}")
        check_loader_options(batch_size, num_workers)
        self.save_hyperparameters()
        self.dataset: ConcatDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        self.dataset = ConcatDataset(
            [
                TomogramTileDataset(path, hp.tile_voxels, hp.overlap_voxels, hp.voxel_size_a)
                for path in hp.tomograms
            ]
        )

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(
            self.dataset, batch_size=self.hparams.batch_size, num_workers=self.hparams.num_workers
        )
