"""Crowded placement of particles: non-overlapping spheres by random sequential addition, random orientations.

Every particle is a sphere of its class's radius (the largest distance of an atom from the centre of mass,
:func:`aitom.simulate.library.class_radius_a`, in voxels). Spheres are placed one at a time at uniformly
random positions where the whole sphere lies inside the box and no other sphere is closer than the sum of
the radii plus ``margin_voxels``; rejected positions are redrawn (random sequential addition, the usual
model of crowded cytoplasm in simulated cryo-ET data). Neighbours are found through a spatial hash with cells
as wide as the largest exclusion diameter, so each trial checks the 27 surrounding cells only. Random
sequential addition of equal spheres jams near a volume fraction of 0.38; when the requested count cannot be
reached within the attempt budget a :class:`PackingWarning` says how many were placed.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch

from aitom.errors import InputError
from aitom.geometry import matrix_to_euler_zyz, random_rotations

__all__ = ["Packing", "PackingWarning", "pack_particles", "pack_spheres"]


class PackingWarning(UserWarning):
    """The box was too full to place the requested number of particles."""


@dataclasses.dataclass(frozen=True)
class Packing:
    """Placed particles.

    Attributes:
        positions_xyz: ``(N, 3)`` float64 sphere centres ``(x, y, z)`` in voxels of the box (voxel indices).
        class_ids: ``(N,)`` int64, 0-based index into the list of classes (radii) given.
        radii_voxels: ``(N,)`` float64 sphere radius of each particle.
        rotations: ``(N, 3, 3)`` float64 uniform random rotations (RELION's matrix ``A``: the particle is
            the class map rotated actively by it).
        angles_rad: ``(N, 3)`` float64 ZYZ Euler angles (rot, tilt, psi) of ``rotations``, radians.
    """

    positions_xyz: np.ndarray
    class_ids: np.ndarray
    radii_voxels: np.ndarray
    rotations: np.ndarray
    angles_rad: np.ndarray

    def __len__(self) -> int:
        return int(self.class_ids.shape[0])


def _counts_per_class(
    radii: np.ndarray, box_volume: float, number: int | None, crowding_fraction: float | None
) -> np.ndarray:
    n_classes = radii.shape[0]
    if (number is None) == (crowding_fraction is None):
        raise InputError("give exactly one of the particle number and the crowding fraction")
    if crowding_fraction is not None:
        if not 0 < crowding_fraction < 1:
            raise InputError(f"crowding fraction must lie in (0, 1), got {crowding_fraction}")
        sphere_volume = (4.0 / 3.0 * math.pi * radii**3).sum()
        number = round(crowding_fraction * box_volume / sphere_volume * n_classes)
    if number < 0:
        raise InputError(f"number of particles must be >= 0, got {number}")
    counts = np.full(n_classes, number // n_classes, dtype=np.int64)
    counts[: number % n_classes] += 1
    return counts


def pack_spheres(
    shape_zyx: Sequence[int],
    radii_voxels: Sequence[float],
    *,
    number: int | None = None,
    crowding_fraction: float | None = None,
    margin_voxels: float = 1.0,
    max_attempts_per_particle: int = 2000,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Place non-overlapping spheres of several classes in a box (random sequential addition).

    The classes get equal numbers of particles (the first classes one more when the total does not divide);
    larger classes are placed first, in random order within the box.

    Args:
        shape_zyx: box ``(Z, Y, X)`` in voxels.
        radii_voxels: ``(C,)`` sphere radius of each class, voxels.
        number: total number of particles, or
        crowding_fraction: fraction of the box volume to fill with the spheres (equal counts per class).
        margin_voxels: extra gap kept between sphere surfaces, voxels (>= 0).
        max_attempts_per_particle: random positions tried for one particle before its class is given up.
        rng: NumPy random generator (default: a fresh unseeded one).

    Returns:
        ``positions_xyz (N, 3)`` float64 voxel coordinates ``(x, y, z)`` and ``class_ids (N,)`` int64.
        Every sphere lies inside the box (``r <= position <= size − 1 − r`` per axis) and
        ``|p_i − p_j| >= r_i + r_j + margin_voxels``.

    Raises:
        InputError: a class that cannot fit in the box, bad counts or fractions.

    Warns:
        PackingWarning: fewer particles placed than requested (the box is too full).
    """
    rng = np.random.default_rng() if rng is None else rng
    shape = np.asarray(shape_zyx, dtype=np.int64)
    if shape.shape != (3,) or (shape < 1).any():
        raise InputError(f"box shape must be three positive sizes (Z, Y, X), got {tuple(shape_zyx)}")
    radii = np.asarray(radii_voxels, dtype=np.float64).reshape(-1)
    if radii.size == 0 or (radii <= 0).any():
        raise InputError(f"particle radii must be positive, got {radii.tolist()}")
    if margin_voxels < 0:
        raise InputError(f"margin must be >= 0 voxels, got {margin_voxels}")
    size_xyz = shape[::-1].astype(np.float64)
    too_big = np.flatnonzero(2 * radii > size_xyz.min() - 1)
    if too_big.size:
        raise InputError(
            f"particle radius {radii[too_big[0]]:.1f} voxels does not fit in the box (Z, Y, X) = "
            f"{tuple(shape.tolist())}"
        )
    box_volume = float(np.prod(shape))
    counts = _counts_per_class(radii, box_volume, number, crowding_fraction)
    # disjoint spheres inside the box fill at most its volume: no more of a class can be placed than this
    fitting = np.floor(box_volume / (4.0 / 3.0 * math.pi * radii**3))
    capacity = int(np.minimum(counts, fitting).sum())

    cell = 2 * radii.max() + margin_voxels
    grid: defaultdict[tuple[int, int, int], list[int]] = defaultdict(list)
    positions = np.empty((capacity, 3), dtype=np.float64)
    placed_radii = np.empty(capacity, dtype=np.float64)
    class_ids = np.empty(capacity, dtype=np.int64)
    n_placed = 0
    shortfall = {}
    for class_id in np.argsort(-radii, kind="stable"):
        radius = radii[class_id]
        low, high = radius, size_xyz - 1 - radius
        for placed_of_class in range(counts[class_id]):
            for _ in range(max_attempts_per_particle):
                candidate = low + rng.random(3) * (high - low)
                key = tuple(int(v) for v in np.floor(candidate / cell))
                neighbours = [
                    index
                    for dx in (-1, 0, 1)
                    for dy in (-1, 0, 1)
                    for dz in (-1, 0, 1)
                    for index in grid.get((key[0] + dx, key[1] + dy, key[2] + dz), ())
                ]
                if neighbours:
                    distance = np.linalg.norm(positions[neighbours] - candidate, axis=1)
                    if (distance < placed_radii[neighbours] + radius + margin_voxels).any():
                        continue
                positions[n_placed] = candidate
                placed_radii[n_placed] = radius
                class_ids[n_placed] = class_id
                grid[key].append(n_placed)
                n_placed += 1
                break
            else:
                shortfall[int(class_id)] = int(counts[class_id] - placed_of_class)
                break
    if shortfall:
        missing = ", ".join(f"class {c}: {n}" for c, n in sorted(shortfall.items()))
        warnings.warn(
            f"box too full: placed {n_placed} of {int(counts.sum())} particles (missing {missing}); "
            "lower the number or crowding fraction, or enlarge the box",
            PackingWarning,
            stacklevel=2,
        )
    order = rng.permutation(n_placed)
    return positions[:n_placed][order], class_ids[:n_placed][order]


def pack_particles(
    shape_zyx: Sequence[int],
    radii_voxels: Sequence[float],
    *,
    number: int | None = None,
    crowding_fraction: float | None = None,
    margin_voxels: float = 1.0,
    max_attempts_per_particle: int = 2000,
    seed: int = 0,
) -> Packing:
    """Non-overlapping particles with uniformly random orientations (see :func:`pack_spheres`).

    Args:
        shape_zyx, radii_voxels, number, crowding_fraction, margin_voxels, max_attempts_per_particle: as in
            :func:`pack_spheres`.
        seed: seeds the positions (NumPy) and the rotations (torch); the same seed gives the same packing.

    Returns:
        :class:`Packing`; rotations are Haar-uniform (:func:`aitom.geometry.random_rotations`) and their
        Euler angles follow RELION's convention (:func:`aitom.geometry.matrix_to_euler_zyz`).
    """
    positions, class_ids = pack_spheres(
        shape_zyx,
        radii_voxels,
        number=number,
        crowding_fraction=crowding_fraction,
        margin_voxels=margin_voxels,
        max_attempts_per_particle=max_attempts_per_particle,
        rng=np.random.default_rng(seed),
    )
    generator = torch.Generator().manual_seed(seed)
    rotations = random_rotations(len(class_ids), generator=generator, dtype=torch.float64)
    radii = np.asarray(radii_voxels, dtype=np.float64).reshape(-1)
    return Packing(
        positions_xyz=positions,
        class_ids=class_ids,
        radii_voxels=radii[class_ids],
        rotations=rotations.numpy(),
        angles_rad=matrix_to_euler_zyz(rotations).numpy(),
    )
