"""A LightningDataModule base: one dataset per split, all served with the same DataLoader settings."""

from __future__ import annotations

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from aitom.errors import InputError


class SplitDataModule(LightningDataModule):
    """Serves ``self.datasets[split]`` for ``train`` (shuffled), ``val``, ``test`` and ``predict``.

    Subclasses fill ``self.datasets`` in ``setup`` and save ``batch_size`` and ``num_workers`` as
    hyper-parameters.
    """

    def __init__(self) -> None:
        super().__init__()
        self.datasets: dict[str, Dataset] = {}

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            raise InputError(f"no data given for the {split} split")
        return DataLoader(
            self.datasets[split],
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
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
