"""Tomograms for ``predict``: whole, or cut into overlapping tiles so memory stays bounded.

Tiles are read from a memory-mapped MRC, so a tomogram larger than RAM is never loaded whole. Each item
carries the tile, its origin in the tomogram (voxels, z, y, x order as the tensor), its CORE (the part of the
tomogram it answers for: the cores of a tomogram's tiles partition it, and each core stays at least half the
overlap away from every tile face shared with a neighbour), the tomogram's shape and its path.

With ``boundary="periodic"`` the tiles are cut from the tomogram repeated periodically: on an axis that
takes several tiles, the first tile starts half the overlap before voxel 0 and the last ends half the overlap
after the end, with the voxels of the opposite face there. A filter that treats the whole tomogram as
periodic (FFT correlation, as template matching) then gives in every core what it gives on the whole
tomogram.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from aitom.data.splits import check_loader_options
from aitom.errors import InputError
from aitom.io import open_volume_mmap
from aitom.ops.template_matching import radial_power_spectrum


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


BOUNDARIES = ("clamp", "periodic")
"""How tiles meet the tomogram's faces: ``clamp`` (tiles inside the tomogram) or ``periodic`` (module doc)."""


def axis_tiles(length: int, tile: int, overlap: int, boundary: str = "clamp") -> list[tuple[int, int, int]]:
    """Tiles along one axis of ``length`` voxels: ``(start, core_start, core_stop)`` each, voxels.

    The tile is ``[start, start + tile)`` (with ``boundary="periodic"``, ``start`` may be negative and the
    end beyond ``length``: positions modulo ``length``); the cores ``[core_start, core_stop)`` partition
    ``[0, length)``, and each lies at least ``overlap // 2`` voxels inside its tile on a side shared with a
    neighbour and ``overlap - overlap // 2`` on the other. A tile as long as the axis or longer is the axis.
    """
    if boundary not in BOUNDARIES:
        raise InputError(f"tile boundary must be one of {', '.join(BOUNDARIES)}, got {boundary!r}")
    if tile >= length:
        return [(0, 0, length)]
    if boundary == "periodic":
        starts = [start - overlap // 2 for start in tile_starts(length + overlap, tile, overlap)]
    else:
        starts = tile_starts(length, tile, overlap)
    core_starts = [0] + [start + overlap // 2 for start in starts[1:]]
    return list(zip(starts, core_starts, [*core_starts[1:], length]))


def count_tiles(
    shape_zyx: tuple[int, int, int], tile_voxels: int | None, overlap_voxels: int, boundary: str
) -> int:
    """Number of tiles of :class:`TomogramTileDataset` on a tomogram of ``shape_zyx`` voxels."""
    if tile_voxels is None:
        return 1
    return math.prod(len(axis_tiles(n, min(tile_voxels, n), overlap_voxels, boundary)) for n in shape_zyx)


WHITENING_SEGMENT_VOXELS = 64
"""Edge of the cubic segments whose periodograms estimate a tomogram's power spectrum, voxels."""
WHITENING_MAX_SEGMENTS = 256
"""Most segments read for that estimate (evenly spread over the tomogram when it holds more)."""


def tomogram_power_spectrum(
    volume: np.ndarray | torch.Tensor,
    segment_voxels: int = WHITENING_SEGMENT_VOXELS,
    max_segments: int = WHITENING_MAX_SEGMENTS,
    n_shells: int = 64,
    path: str | Path | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A tomogram's radial power spectrum by Welch's method, read segment by segment (a memory map is not
    loaded whole).

    The tomogram is cut into non-overlapping cubes of ``min(segment_voxels, shortest axis)`` voxels on a
    grid from voxel 0 (at most ``max_segments``, evenly spread, when it holds more) and their periodograms
    are averaged (:func:`aitom.ops.template_matching.radial_power_spectrum`). The estimate depends on the
    tomogram only, not on how it is tiled for picking.

    Args:
        volume: ``(Z, Y, X)`` array (a NumPy memory map, an array or a tensor).
        segment_voxels, max_segments, n_shells: as above.
        path: the tomogram's file, named in errors.

    Returns:
        ``(centres, power)`` float64 CPU tensors: shell centres (cycles/voxel) and mean power per shell.

    Raises:
        InputError: the tomogram holds NaN or Inf values.
    """
    shape = tuple(int(n) for n in volume.shape[-3:])
    edge = min(segment_voxels, *shape)
    starts = [range(0, n - edge + 1, edge) for n in shape]
    corners = list(itertools.product(*starts))
    if len(corners) > max_segments:
        corners = [corners[int(i)] for i in np.unique(np.linspace(0, len(corners) - 1, max_segments).round())]
    total, sums, centres = 0, None, None
    for first in range(0, len(corners), 16):
        batch = torch.stack(
            [
                torch.from_numpy(np.array(volume[z : z + edge, y : y + edge, x : x + edge], dtype=np.float64))
                for z, y, x in corners[first : first + 16]
            ]
        )
        if not torch.isfinite(batch).all():
            raise InputError("holds NaN or Inf values", path)
        centres, power = radial_power_spectrum(batch, n_shells)
        sums = power * len(batch) if sums is None else sums + power * len(batch)
        total += len(batch)
    return centres, sums / total


class TomogramTileDataset(Dataset):
    """Overlapping tiles of one tomogram, read lazily from a memory map.

    Items: ``volume`` ``(1, z, y, x)`` float32 tile; ``origin_zyx`` ``(3,)`` the tomogram voxel at the tile's
    first voxel (negative or beyond the tomogram with ``boundary="periodic"``); ``core_start_zyx``,
    ``core_stop_zyx`` ``(3,)`` the tile's core, tomogram voxels (``start <= voxel < stop``); ``shape_zyx``
    ``(3,)`` the tomogram's shape, voxels; ``tomogram`` its path.

    Args:
        path: tomogram (MRC).
        tile_voxels: tile edge, voxels (clipped to the tomogram's size on each axis); None = whole tomogram.
        overlap_voxels: voxels shared by neighbouring tiles (at least twice the reach of the filter a picker
            applies plus its peak spacing, for picks independent of the tiling).
        voxel_size_a: voxel size, Å, replacing the header's (``self.header``); None keeps the header's.
        boundary: :data:`BOUNDARIES` (module doc).
    """

    def __init__(
        self,
        path: str | Path,
        tile_voxels: int | None = 256,
        overlap_voxels: int = 32,
        voxel_size_a: float | None = None,
        boundary: str = "clamp",
    ) -> None:
        self.path = Path(path)
        self.array, self.header = open_volume_mmap(self.path, voxel_size_a=voxel_size_a)
        shape = tuple(int(n) for n in self.array.shape[-3:])
        if len(self.array.shape) != 3:
            raise InputError(f"expected a 3-D tomogram, got shape {tuple(self.array.shape)}", self.path)
        self.shape = shape
        self.tile_shape = shape if tile_voxels is None else tuple(min(tile_voxels, n) for n in shape)
        per_axis = [axis_tiles(n, t, overlap_voxels, boundary) for n, t in zip(shape, self.tile_shape)]
        #: per tile, per axis ``(start, core_start, core_stop)``
        self.tiles = [(z, y, x) for z in per_axis[0] for y in per_axis[1] for x in per_axis[2]]

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, index: int) -> dict[str, object]:
        origin = tuple(axis[0] for axis in self.tiles[index])
        ranges = [(start, start + size) for start, size in zip(origin, self.tile_shape)]
        if all(start >= 0 and stop <= n for (start, stop), n in zip(ranges, self.shape)):
            region = self.array[tuple(slice(start, stop) for start, stop in ranges)]
        else:  # a periodic tile across a face: the voxels of the opposite face
            region = self.array[np.ix_(*[np.arange(a, b) % n for (a, b), n in zip(ranges, self.shape)])]
        tile = np.array(region, dtype=np.float32)
        if not np.isfinite(tile).all():
            z, y, x = origin
            raise InputError(f"tile at voxel (z={z}, y={y}, x={x}) holds NaN or Inf values", self.path)
        return {
            "volume": torch.from_numpy(tile).unsqueeze(0),
            "origin_zyx": torch.tensor(origin),
            "core_start_zyx": torch.tensor([axis[1] for axis in self.tiles[index]]),
            "core_stop_zyx": torch.tensor([axis[2] for axis in self.tiles[index]]),
            "shape_zyx": torch.tensor(self.shape),
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
        boundary: how tiles meet the tomograms' faces, :data:`BOUNDARIES` (module doc).
    """

    def __init__(
        self,
        tomograms: list[str],
        tile_voxels: int | None = 256,
        overlap_voxels: int = 32,
        batch_size: int = 1,
        num_workers: int = 0,
        voxel_size_a: float | None = None,
        boundary: str = "clamp",
    ) -> None:
        super().__init__()
        if not tomograms:
            raise InputError("no tomograms given")
        if tile_voxels is not None and tile_voxels < 1:
            raise InputError(f"tile_voxels must be at least 1 (or null: whole tomograms), got {tile_voxels}")
        if overlap_voxels < 0:
            raise InputError(f"overlap_voxels must be 0 or more, got {overlap_voxels}")
        if boundary not in BOUNDARIES:
            raise InputError(f"boundary must be one of {', '.join(BOUNDARIES)}, got {boundary!r}")
        check_loader_options(batch_size, num_workers)
        self.save_hyperparameters()
        self.dataset: ConcatDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        self.dataset = ConcatDataset(
            [
                TomogramTileDataset(path, hp.tile_voxels, hp.overlap_voxels, hp.voxel_size_a, hp.boundary)
                for path in hp.tomograms
            ]
        )

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(
            self.dataset, batch_size=self.hparams.batch_size, num_workers=self.hparams.num_workers
        )
