"""Datasets and LightningDataModules: subtomograms on disk, simulated on the fly, tomogram tiles."""

from aitom.data.augment import (
    RandomWedgePreservingRotation,
    subtomogram_augmentation,
    wedge_preserving_rotations,
)
from aitom.data.domains import DomainPairDataModule, build_domain
from aitom.data.open_set import OpenSetDataModule
from aitom.data.simulated import SimulatedSubtomogramDataModule, SimulatedSubtomogramDataset
from aitom.data.subtomograms import StarSubtomogramDataModule, StarSubtomogramDataset
from aitom.data.tomogram import TomogramDataModule, TomogramTileDataset, tile_origins

__all__ = [
    "DomainPairDataModule",
    "OpenSetDataModule",
    "RandomWedgePreservingRotation",
    "SimulatedSubtomogramDataModule",
    "SimulatedSubtomogramDataset",
    "StarSubtomogramDataModule",
    "StarSubtomogramDataset",
    "TomogramDataModule",
    "TomogramTileDataset",
    "build_domain",
    "subtomogram_augmentation",
    "tile_origins",
    "wedge_preserving_rotations",
]
