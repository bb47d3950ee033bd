"""Subtomograms simulated on the fly from the structure library (the fast Fourier model of the simulator).

Every item is a pure function of ``(seed, split, index)``: its class, orientation (uniform on SO(3)), shift
and noise come from a generator seeded with those three numbers, so a validation or test split is the same
in every run, on every device and under any batching or DDP sharding, and training data never repeats
between splits. Items are generated a batch at a time (``__getitems__``), so the CTF, wedge and FFT work
is batched.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from aitom.data.splits import SplitDataModule, check_data_tilt_range, check_loader_options
from aitom.errors import InputError
from aitom.geometry import matrix_to_euler_zyz, random_rotations
from aitom.simulate import (
    CtfConfig,
    class_potential,
    get_class,
    random_shifts,
    simulate_subtomogram_batch,
)

SPLIT_OFFSETS = {"train": 0, "val": 1, "test": 2, "predict": 3}
#: extra entropy word of the labelled-flag stream, so that it is independent of every item generator
LABELLED_STREAM = 0x1ABE11ED


def item_generator(seed: int, split: str, index: int) -> torch.Generator:
    """The generator that decides item ``index`` of ``split``; distinct for every (seed, split, index)."""
    return torch.Generator().manual_seed((seed * 4 + SPLIT_OFFSETS[split]) * 1_000_003 + index)


def labelled_flags(seed: int, indices: list[int], labelled_fraction: float) -> torch.Tensor:
    """``(N,)`` bool: whether training item ``indices[i]`` may use its label, for a semi-supervised run.

    Each flag is ``u < labelled_fraction`` with ``u`` uniform in [0, 1) from a NumPy generator seeded with
    ``(seed, index, LABELLED_STREAM)``: a pure function of (seed, index), independent of the item's class,
    pose and noise, and the same under any batching. About ``labelled_fraction`` of the items are labelled.
    """
    if not 0.0 < labelled_fraction <= 1.0:
        raise InputError(f"labelled_fraction must be in (0, 1], got {labelled_fraction}")
    uniforms = [np.random.default_rng((seed, index, LABELLED_STREAM)).random() for index in indices]
    return torch.tensor(uniforms, dtype=torch.float64) < labelled_fraction


def check_some_labelled(seed: int, train_size: int, labelled_fraction: float) -> None:
    """Raise :class:`InputError` when :func:`labelled_flags` leaves none of ``train_size`` items labelled
    (the classifier would never see a label)."""
    if not any(bool(labelled_flags(seed, [index], labelled_fraction)) for index in range(train_size)):
        raise InputError(
            f"labelled_fraction {labelled_fraction} leaves none of the {train_size} training items labelled "
            f"(seed {seed}): raise labelled_fraction or train_size"
        )


class LabelledShareBatchSampler(Sampler[list[int]]):
    """Batches of ``batch_size`` indices of which a fixed number are labelled items (semi-supervised runs).

    Each batch holds ``labelled_per_batch`` indices drawn uniformly WITH replacement from
    ``labelled_indices``, followed by ``batch_size - labelled_per_batch`` indices taken in order from a
    random permutation of all ``size`` items (labelled or not; a further permutation is appended when one
    runs out). An epoch has ``ceil(size / batch_size)`` full batches, as many steps as an ordinary shuffled
    epoch. The batches of an epoch are a pure function of ``(seed, epoch)``; each pass over the sampler is
    the next epoch (0, 1, 2, ... from construction), or the one :meth:`set_epoch` chose.

    Args:
        labelled_indices: indices of the labelled items, at least one.
        size: number of items (indices ``0 .. size - 1``).
        batch_size: indices per batch.
        labelled_per_batch: labelled draws per batch, in ``[1, batch_size]``.
        seed: seed of the draws.
    """

    def __init__(
        self, labelled_indices: Sequence[int], size: int, batch_size: int, labelled_per_batch: int, seed: int
    ) -> None:
        if len(labelled_indices) == 0:
            raise InputError("no labelled training item: raise labelled_fraction or train_size")
        if not 1 <= labelled_per_batch <= batch_size:
            raise ValueError(f"labelled_per_batch must be in [1, {batch_size}], got {labelled_per_batch}")
        self.labelled_indices = torch.as_tensor(list(labelled_indices), dtype=torch.int64)
        self.size = size
        self.batch_size = batch_size
        self.labelled_per_batch = labelled_per_batch
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass yield the batches of epoch ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.size / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        n_batches, n_any = len(self), self.batch_size - self.labelled_per_batch
        draws = torch.randint(
            len(self.labelled_indices), (n_batches, self.labelled_per_batch), generator=generator
        )
        labelled = self.labelled_indices[draws]
        n_permutations = max(1, math.ceil(n_batches * n_any / self.size))
        any_item = torch.cat([torch.randperm(self.size, generator=generator) for _ in range(n_permutations)])
        any_item = any_item[: n_batches * n_any].reshape(n_batches, n_any)
        for batch in torch.cat([labelled, any_item], dim=1):
            yield batch.tolist()


class SimulatedSubtomogramDataset(Dataset):
    """``size`` subtomograms of the library classes, each decided by (seed, split, index).

    Items: ``{"volume": (1,S,S,S), "label": 0-based class, "index", "rotation": (3,3) A, "shift_xyz": (3,)}``,
    plus ``"labelled"`` (bool, see :func:`labelled_flags`) when ``labelled_fraction`` is given.

    Args:
        class_maps: ``(C, S, S, S)`` potentials of the classes, centre of mass at voxel ``S // 2``.
        size: number of items.
        split: one of ``train``, ``val``, ``test``, ``predict`` (separate random streams).
        seed: base seed.
        snr: ``var(signal) / var(noise)`` of each subtomogram.
        voxel_size_a: voxel size, Å.
        tilt_range_deg: ``(min, max)`` tilt range of the missing wedge, degrees.
        ctf: CTF parameters (None: no CTF).
        max_shift_voxels: particles are shifted uniformly within a ball of this radius, voxels.
        labelled_fraction: when given, each item carries ``"labelled"``, True for about this fraction of
            the items (decided by ``(seed, index)`` alone); None: no ``"labelled"`` key.
    """

    def __init__(
        self,
        class_maps: torch.Tensor,
        size: int,
        split: str,
        seed: int,
        snr: float,
        voxel_size_a: float,
        tilt_range_deg: tuple[float, float],
        ctf: CtfConfig | None,
        max_shift_voxels: float,
        labelled_fraction: float | None = None,
    ) -> None:
        if labelled_fraction is not None and not 0.0 < labelled_fraction <= 1.0:
            raise InputError(f"labelled_fraction must be in (0, 1], got {labelled_fraction}")
        self.class_maps = class_maps
        self.size = size
        self.split = split
        self.seed = seed
        self.snr = snr
        self.voxel_size_a = voxel_size_a
        self.tilt_range_deg = tilt_range_deg
        self.ctf = ctf
        self.max_shift_voxels = max_shift_voxels
        self.labelled_fraction = labelled_fraction

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        n_classes, box = self.class_maps.shape[0], self.class_maps.shape[-1]
        labels, rotations, shifts, noises = [], [], [], []
        for index in indices:
            if not 0 <= index < self.size:
                raise IndexError(index)
            generator = item_generator(self.seed, self.split, index)
            labels.append(torch.randint(n_classes, (1,), generator=generator))
            rotations.append(random_rotations(1, generator=generator, dtype=torch.float32))
            shifts.append(random_shifts(1, self.max_shift_voxels, generator=generator, dtype=torch.float32))
            noises.append(torch.randn((1, box, box, box), generator=generator))
        label = torch.cat(labels)
        rotation = torch.cat(rotations)
        shift = torch.cat(shifts)
        volumes = simulate_subtomogram_batch(
            self.class_maps,
            label,
            rotation,
            shift,
            snr=self.snr,
            voxel_size_a=self.voxel_size_a,
            tilt_range_deg=self.tilt_range_deg,
            ctf=self.ctf,
            white_noise=torch.cat(noises),
        )
        items = [
            {
                "volume": volumes[i : i + 1],
                "label": label[i],
                "index": torch.tensor(index),
                "rotation": rotation[i],
                "shift_xyz": shift[i],
            }
            for i, index in enumerate(indices)
        ]
        if self.labelled_fraction is not None:
            for item, flag in zip(items, labelled_flags(self.seed, indices, self.labelled_fraction)):
                item["labelled"] = flag
        return items

    def angles_deg(self, index: int) -> torch.Tensor:
        """The true ZYZ (rot, tilt, psi) of item ``index``, degrees (RELION's convention)."""
        return torch.rad2deg(matrix_to_euler_zyz(self[index]["rotation"].double()))


def check_simulation_options(
    box_size_voxels: int,
    voxel_size_a: float,
    snr: float,
    tilt_min_deg: float,
    tilt_max_deg: float,
    defocus_um: float,
    max_shift_voxels: float,
    split_sizes: dict[str, int],
    batch_size: int,
    num_workers: int,
) -> None:
    """Raise :class:`InputError` naming the first impossible option of a simulated DataModule.

    ``split_sizes`` maps option names (``train_size``, ...) to their values.
    """
    if box_size_voxels < 8:
        raise InputError(f"box_size_voxels must be at least 8, got {box_size_voxels}")
    if not 0.0 < voxel_size_a < math.inf:
        raise InputError(f"voxel_size_a must be a positive number of Å, got {voxel_size_a}")
    if not 0.0 < snr < math.inf:
        raise InputError(f"snr must be positive, got {snr}")
    check_data_tilt_range(tilt_min_deg, tilt_max_deg)
    if not 0.0 <= defocus_um < math.inf:
        raise InputError(f"defocus_um must be 0 (no CTF) or a positive underfocus in µm, got {defocus_um}")
    if not 0.0 <= max_shift_voxels < box_size_voxels / 2:
        raise InputError(
            "max_shift_voxels must be 0 or more and less than half the box "
            f"({box_size_voxels / 2:g} voxels), got {max_shift_voxels}"
        )
    for name, size in split_sizes.items():
        if size < 0:
            raise InputError(f"{name} must be 0 or more, got {size}")
    check_loader_options(batch_size, num_workers)


def library_maps(class_names: list[str], voxel_size_a: float, box_size_voxels: int) -> torch.Tensor:
    """``(C, S, S, S)`` potentials of structure-library classes (or atomic model files) at a voxel size (Å)
    and box size (voxels)."""
    return torch.stack(
        [class_potential(name, voxel_size_a, box_size=box_size_voxels) for name in class_names]
    )


def split_datasets(
    hparams, maps: dict[str, torch.Tensor], labelled_fraction: float | None = None
) -> dict[str, SimulatedSubtomogramDataset]:
    """One :class:`SimulatedSubtomogramDataset` per split from a simulated DataModule's hyper-parameters.

    Args:
        hparams: ``seed``, ``snr``, ``voxel_size_a``, ``tilt_min_deg``, ``tilt_max_deg``, ``defocus_um``,
            ``max_shift_voxels`` and ``{train,val,test,predict}_size`` (as SimulatedSubtomogramDataModule's).
        maps: split name -> ``(C, S, S, S)`` class maps that split draws from.
        labelled_fraction: share of labelled training items (other splits are all labelled); None: no flag.
    """
    ctf = CtfConfig(defocus_um=hparams.defocus_um) if hparams.defocus_um > 0 else None
    return {
        split: SimulatedSubtomogramDataset(
            split_maps,
            hparams[f"{split}_size"],
            split,
            hparams.seed,
            hparams.snr,
            hparams.voxel_size_a,
            (hparams.tilt_min_deg, hparams.tilt_max_deg),
            ctf,
            hparams.max_shift_voxels,
            None if labelled_fraction is None else (labelled_fraction if split == "train" else 1.0),
        )
        for split, split_maps in maps.items()
    }


class SimulatedSubtomogramDataModule(SplitDataModule):
    """Simulated subtomograms of library classes, generated on the fly for every split.

    Args:
        classes: structure-library class names (``aitom.simulate.available_classes()``) or paths to atomic
            models (``.pdb``/``.cif``, optionally ``.gz``; a model's class is named by its file name).
        box_size_voxels: subtomogram edge, voxels.
        voxel_size_a: voxel size, Å.
        snr: ``var(signal) / var(noise)`` of each subtomogram.
        tilt_min_deg, tilt_max_deg: tilt range of the missing wedge, degrees.
        defocus_um: CTF defocus (underfocus positive), µm; 0 disables the CTF.
        max_shift_voxels: largest particle shift from the box centre, voxels.
        train_size, val_size, test_size, predict_size: items per split.
        batch_size: subtomograms per batch.
        num_workers: DataLoader worker processes.
        seed: base seed of every split.
        labelled_fraction: fraction of the TRAIN items whose label may be used (semi-supervised learning),
            in (0, 1]. Every item then carries ``"labelled"`` (bool): decided by ``(seed, index)`` for the
            train split (:func:`labelled_flags`), True for val, test and predict items.
        labelled_batch_fraction: with ``labelled_fraction < 1``, the share of every training batch drawn
            (with replacement) from the labelled items, the rest from all items
            (:class:`LabelledShareBatchSampler`; ``round(labelled_batch_fraction * batch_size)`` items, at
            least one); None: plain shuffled batches.
    """

    def __init__(
        self,
        classes: list[str],
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
        labelled_fraction: float = 1.0,
        labelled_batch_fraction: float | None = None,
    ) -> None:
        super().__init__()
        class_names = [get_class(name).name for name in classes]  # an unknown class fails here
        if len(set(class_names)) != len(class_names):
            raise InputError(f"classes are listed more than once (by name): {class_names}")
        if len(classes) < 2:
            raise InputError(f"need at least two classes to classify, got {classes}")
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
        if not 0.0 < labelled_fraction <= 1.0:
            raise InputError(f"labelled_fraction must be in (0, 1], got {labelled_fraction}")
        if labelled_batch_fraction is not None and not 0.0 < labelled_batch_fraction <= 1.0:
            raise InputError(f"labelled_batch_fraction must be in (0, 1], got {labelled_batch_fraction}")
        self.save_hyperparameters()
        self.class_names = class_names
        self.num_classes = len(classes)

    def class_maps(self) -> torch.Tensor:
        """``(C, S, S, S)`` potentials of the classes at the module's voxel and box size."""
        return library_maps(self.hparams.classes, self.hparams.voxel_size_a, self.hparams.box_size_voxels)

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if stage in ("fit", None) and hp.labelled_fraction < 1.0 and hp.train_size > 0:
            check_some_labelled(hp.seed, hp.train_size, hp.labelled_fraction)
        if self.datasets:
            return
        maps = self.class_maps()
        self.datasets.update(split_datasets(hp, dict.fromkeys(SPLIT_OFFSETS, maps), hp.labelled_fraction))

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        if hp.labelled_batch_fraction is None or hp.labelled_fraction >= 1.0:
            return super().train_dataloader()
        size = len(self.split_dataset("train"))
        flags = labelled_flags(hp.seed, list(range(size)), hp.labelled_fraction)
        sampler = LabelledShareBatchSampler(
            torch.nonzero(flags).flatten().tolist(),
            size,
            hp.batch_size,
            min(hp.batch_size, max(1, round(hp.labelled_batch_fraction * hp.batch_size))),
            hp.seed,
        )
        return DataLoader(
            self.datasets["train"],
            batch_sampler=sampler,
            num_workers=hp.num_workers,
            persistent_workers=hp.num_workers > 0,
        )
