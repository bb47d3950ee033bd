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
from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import minimize
from scipy.spatial.transform import Rotation

from aitom.errors import InputError
from aitom.geometry.euler import rotation_about_axis, rotation_angle_between

__all__ = [
    "find_symmetry_frame",
    "point_group_generators",
    "point_group_order",
    "point_group_rotations",
    "symmetric_angle_between",
]

_GOLDEN = (1 + math.sqrt(5)) / 2
_SYMBOL = re.compile(r"^(?:([CD])([1-9][0-9]*)|([TOI]))$")
#: Largest n of Cn / Dn accepted: well above the rings of known complexes (the vault is D39), and at 100 a
#: 2π/n turn moves a point 50 voxels from the axis by about 3 voxels: higher orders are a cylindrical average.
MAX_CYCLIC_ORDER = 100


def _parse(symbol: str) -> tuple[str, int]:
    match = _SYMBOL.match(symbol.strip().upper())
    if match is None:
        raise InputError(f"unknown point group {symbol!r}: use Cn, Dn (n >= 1), T, O or I")
    if match.group(3):
        return match.group(3), 0
    n = int(match.group(2))
    if n > MAX_CYCLIC_ORDER:
        raise InputError(
            f"point group {symbol!r}: n above {MAX_CYCLIC_ORDER} is not a symmetry a subtomogram can show "
            "(the rings of known complexes stop below 50)"
        )
    return match.group(1), n


def point_group_order(symbol: str) -> int:
    """Number of rotations of the point group ``symbol`` (``"C7"``: 7, ``"D7"``: 14, T 12, O 24, I 60)."""
    family, n = _parse(symbol)
    return {"C": n, "D": 2 * n, "T": 12, "O": 24, "I": 60}[family]


def point_group_generators(symbol: str, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``(G, 3, 3)`` rotations that generate the point group in its standard frame, the highest-order axis
    first (for Cn and Dn the n-fold about z; for D1 its only axis, the 2-fold about x; for C1 the
    identity)."""
    family, n = _parse(symbol)

    def turn(axis: tuple[float, float, float], fold: int) -> torch.Tensor:
        return rotation_about_axis(torch.tensor(axis, dtype=dtype), 2 * math.pi / fold)

    if family == "C":
        return turn((0.0, 0.0, 1.0), n)[None]
    if family == "D" and n == 1:
        return turn((1.0, 0.0, 0.0), 2)[None]
    if family == "D":
        return torch.stack((turn((0.0, 0.0, 1.0), n), turn((1.0, 0.0, 0.0), 2)))
    if family == "T":
        return torch.stack((turn((1.0, 1.0, 1.0), 3), turn((0.0, 0.0, 1.0), 2)))
    if family == "O":
        return torch.stack((turn((0.0, 0.0, 1.0), 4), turn((1.0, 1.0, 1.0), 3)))
    return torch.stack((turn((0.0, 1.0, _GOLDEN), 5), turn((0.0, 0.0, 1.0), 2)))


def point_group_rotations(
    symbol: str, *, frame: np.ndarray | torch.Tensor | None = None, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """All ``(K, 3, 3)`` rotations of a point group, the identity first: in its standard frame
    (``scipy.spatial.transform.Rotation.create_group``, whose frames are the ones above), or ``Q G Q^T`` in
    the frame ``Q`` (``(3, 3)``, e.g. from :func:`find_symmetry_frame`)."""
    family, n = _parse(symbol)
    group = Rotation.create_group(family if family in "TOI" else f"{family}{n}").as_matrix()
    if frame is not None:
        frame = np.asarray(frame, dtype=np.float64)
        group = frame @ group @ frame.T
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


#: Candidate directions of the highest-order axis (half sphere) in :func:`find_symmetry_frame`.
AXIS_CANDIDATES = 2000


def _half_sphere(count: int) -> np.ndarray:
    """``(count, 3)`` near-uniform unit vectors with z > 0 (Fibonacci lattice)."""
    index = np.arange(count) + 0.5
    z = index / count
    azimuth = math.pi * (1 + math.sqrt(5)) * index
    radial = np.sqrt(1 - z**2)
    return np.stack((radial * np.cos(azimuth), radial * np.sin(azimuth), z), axis=1)


def _polar_unit(angles: np.ndarray) -> np.ndarray:
    polar, azimuth = angles
    return np.array([np.sin(polar) * np.cos(azimuth), np.sin(polar) * np.sin(azimuth), np.cos(polar)])


def _rotation_taking(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The smallest rotation taking unit vector ``source`` to unit vector ``target``."""
    axis = np.cross(source, target)
    sine, cosine = np.linalg.norm(axis), float(source @ target)
    if sine < 1e-9:
        if cosine > 0:
            return np.eye(3)
        perpendicular = np.cross(source, [1.0, 0.0, 0.0] if abs(source[0]) < 0.9 else [0.0, 1.0, 0.0])
        return Rotation.from_rotvec(perpendicular / np.linalg.norm(perpendicular) * math.pi).as_matrix()
    return Rotation.from_rotvec(axis / sine * math.atan2(sine, cosine)).as_matrix()


def find_symmetry_frame(misfit: Callable[[np.ndarray], np.ndarray], symbol: str) -> tuple[np.ndarray, float]:
    """Rotation ``Q`` that takes the standard frame of point group ``symbol`` to an object's own frame.

    ``misfit`` scores how far the object is from being unchanged by rotations (0: unchanged). The
    highest-order generator's axis is searched over :data:`AXIS_CANDIDATES` directions of a half sphere,
    the five best refined (Nelder–Mead on the axis's polar angles); for groups with a second generator, the
    turn about that axis is searched in 1° steps and refined.

    Args:
        misfit: ``(B, 3, 3)`` float64 rotations → ``(B,)`` misfits.
        symbol: point group (``"C6"``, ``"D7"``, ``"O"``...); C1 gives the identity.

    Returns:
        ``(Q (3, 3) float64, misfit)``: the frame and the larger misfit of the two generators in it.
    """
    generators = point_group_generators(symbol).numpy()
    if np.allclose(generators[0], np.eye(3)):
        return np.eye(3), 0.0
    turn = Rotation.from_matrix(generators[0]).as_rotvec()
    angle, standard_axis = float(np.linalg.norm(turn)), turn / np.linalg.norm(turn)

    def axis_misfit(polar_azimuth: np.ndarray) -> float:
        return float(misfit(Rotation.from_rotvec(_polar_unit(polar_azimuth) * angle).as_matrix()[None])[0])

    candidates = _half_sphere(AXIS_CANDIDATES)
    coarse = misfit(Rotation.from_rotvec(candidates * angle).as_matrix())
    starts = [
        np.array([math.acos(axis[2]), math.atan2(axis[1], axis[0])])
        for axis in candidates[coarse.argsort()[:5]]
    ]
    best = min(
        (
            minimize(axis_misfit, start, method="Nelder-Mead", options={"xatol": 1e-5, "fatol": 1e-6})
            for start in starts
        ),
        key=lambda result: result.fun,
    )
    axis = _polar_unit(best.x)
    frame = _rotation_taking(standard_axis, axis)
    if len(generators) == 1:
        return frame, float(best.fun)

    def turned(about_axis: np.ndarray) -> np.ndarray:
        """``(T,)`` turns about the axis → ``(T, 3, 3)`` frames."""
        return Rotation.from_rotvec(axis[None] * about_axis[:, None]).as_matrix() @ frame

    def second_misfit(about_axis: np.ndarray) -> np.ndarray:
        frames = turned(np.atleast_1d(about_axis))
        return misfit(frames @ generators[1] @ frames.transpose(0, 2, 1))

    turns = np.deg2rad(np.arange(0.0, 360.0, 1.0))
    start = turns[np.argmin(second_misfit(turns))]
    second = minimize(lambda x: float(second_misfit(x)[0]), np.array([start]), method="Nelder-Mead")
    return turned(second.x)[0], max(float(best.fun), float(second.fun))
