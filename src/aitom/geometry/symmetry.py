"""Point-group symmetry: the rotations of Cn, Dn, T, O and I, and orientation errors that allow for them.

Standard frames (those of ``scipy.spatial.transform.Rotation.create_group``): Cn about z; Dn: Cn and a
2-fold about x; T: 2-folds along x, y and z, 3-folds along the cube diagonals; O: 4-folds along x, y and z;
I: 2-folds along x, y and z, 5-folds through the vertices ``(0, ±1, ±φ)`` and their cyclic permutations. A
structure whose symmetry axes lie elsewhere has the group ``Q G Q^T`` for the rotation ``Q`` that takes the
standard frame to its own.

With RELION's matrix ``A`` of a particle (``rotate_volume(reference, A)`` is the particle) and a symmetry
rotation ``S`` of the reference (``rotate_volume(reference, S) == reference``), ``A S`` describes the same
particle: orientations of a symmetric particle are compared up to ``A -> A S``.
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from aitom.errors import InputError
from aitom.geometry.euler import rotation_about_axis, rotation_angle_between

__all__ = ["point_group_generators", "point_group_order", "point_group_rotations", "symmetric_angle_between"]

_GOLDEN = (1 + math.sqrt(5)) / 2
_SYMBOL = re.compile(r"^(?:([CD])([1-9][0-9]*)|([TOI]))$")


def _parse(symbol: str) -> tuple[str, int]:
    match = _SYMBOL.match(symbol.strip().upper())
    if match is None:
        raise InputError(f"unknown point group {symbol!r}: use Cn, Dn (n >= 1), T, O or I")
    if match.group(3):
        return match.group(3), 0
    return match.group(1), int(match.group(2))


def point_group_order(symbol: str) -> int:
    """Number of rotations of the point group ``symbol`` (``"C7"``: 7, ``"D7"``: 14, T 12, O 24, I 60)."""
    family, n = _parse(symbol)
    return {"C": n, "D": 2 * n, "T": 12, "O": 24, "I": 60}[family]


def point_group_generators(symbol: str, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``(G, 3, 3)`` rotations that generate the point group in its standard frame, the highest-order axis
    first (for Cn and Dn the n-fold about z; for C1 the identity)."""
    family, n = _parse(symbol)

    def turn(axis: tuple[float, float, float], fold: int) -> torch.Tensor:
        return rotation_about_axis(torch.tensor(axis, dtype=dtype), 2 * math.pi / fold)

    if family == "C":
        return turn((0.0, 0.0, 1.0), n)[None]
    if family == "D":
        return torch.stack((turn((0.0, 0.0, 1.0), n), turn((1.0, 0.0, 0.0), 2)))
    if family == "T":
        return torch.stack((turn((1.0, 1.0, 1.0), 3), turn((0.0, 0.0, 1.0), 2)))
    if family == "O":
        return torch.stack((turn((0.0, 0.0, 1.0), 4), turn((1.0, 1.0, 1.0), 3)))
    return torch.stack((turn((0.0, 1.0, _GOLDEN), 5), turn((0.0, 0.0, 1.0), 2)))


def point_group_rotations(symbol: str, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """All ``(K, 3, 3)`` rotations of a point group in its standard frame, the identity first
    (``scipy.spatial.transform.Rotation.create_group``, whose frames are the ones above)."""
    family, n = _parse(symbol)
    group = Rotation.create_group(family if family in "TOI" else f"{family}{n}").as_matrix()
    identity_first = np.argsort(-np.trace(group, axis1=1, axis2=2), kind="stable")
    return torch.as_tensor(group[identity_first], dtype=dtype)


def symmetric_angle_between(
    first: torch.Tensor, second: torch.Tensor, symmetry_rotations: torch.Tensor | None = None
) -> torch.Tensor:
    """Geodesic angle (radians) between ``first`` and ``second @ S``, smallest over the symmetry ``S``.

    Args:
        first, second: ``(..., 3, 3)`` rotations (RELION matrices of particles of a symmetric reference).
        symmetry_rotations: ``(K, 3, 3)`` rotations ``S`` with ``rotate_volume(reference, S) == reference``
            (in the reference's own frame); None or the identity alone: the plain angle.

    Returns:
        ``(...)`` angles in radians, in ``[0, π]``.
    """
    if symmetry_rotations is None:
        return rotation_angle_between(first, second)
    equivalent = second[..., None, :, :] @ symmetry_rotations.to(second)
    return rotation_angle_between(first[..., None, :, :], equivalent).amin(-1)
