"""IMOD point lists: plain text that IMOD's ``point2model`` turns into a model file (``.mod``).

Format (``point2model`` with its default options reads it): one point per line, five numbers
``object contour x y z``. Objects and contours are numbered from 1 (point2model's default; no ``-zero``);
all the points of one object form one contour, so the model is meant as scattered points:

    point2model -scat -sphere 8 points.txt points.mod

Coordinates: aitom's voxel coordinates (x, y, z) put the centre of the first voxel at (0, 0, 0); IMOD's model
coordinates put it at (0.5, 0.5, 0): X and Y count from the pixel's corner, Z is the section index. The writer
adds 0.5 to x and y, so a point drawn by 3dmod on the volume sits on the voxel aitom names.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from aitom.io.atomic import atomic_output


def write_imod_points(
    path: str | Path,
    coordinates_xyz: np.ndarray | torch.Tensor | Sequence[Sequence[float]],
    *,
    object_ids: np.ndarray | torch.Tensor | Sequence[int] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write points as ``object contour x y z`` lines for ``point2model`` (see the module docstring).

    Args:
        path: output text file (written atomically).
        coordinates_xyz: ``(N, 3)`` points (x, y, z) in aitom's voxel coordinates (first voxel centre at 0);
            written as IMOD model coordinates (x + 0.5, y + 0.5, z).
        object_ids: ``(N,)`` IMOD object of each point, 1-based (e.g. ``rlnClassNumber``); default all 1.
            Object k holds one contour, numbered 1.
        overwrite: replace an existing file.

    Returns:
        The path written.

    Raises:
        InputError: the file exists and ``overwrite`` is false.
        ValueError: wrong shapes or object ids below 1.
    """
    points = _numpy(coordinates_xyz).astype(np.float64)
    if points.size == 0:
        points = points.reshape(0, 3)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"coordinates_xyz must be (N, 3), got {points.shape}")
    objects = np.ones(len(points), dtype=np.int64) if object_ids is None else _numpy(object_ids)
    objects = objects.astype(np.int64)
    if objects.shape != (len(points),):
        raise ValueError(f"object_ids must have shape ({len(points)},), got {objects.shape}")
    if objects.size and objects.min() < 1:
        raise ValueError("IMOD object numbers start at 1")
    if not np.isfinite(points).all():
        raise ValueError("coordinates_xyz holds NaN or Inf")
    points = points + np.array([0.5, 0.5, 0.0])  # IMOD: X, Y from the pixel corner; Z the section index
    order = np.argsort(objects, kind="stable")
    lines = [f"{objects[i]} 1 {points[i, 0]:.3f} {points[i, 1]:.3f} {points[i, 2]:.3f}\n" for i in order]
    path = Path(path)
    with atomic_output(path, overwrite) as temporary:
        temporary.write_text("".join(lines))
    return path


def _numpy(values: np.ndarray | torch.Tensor | Sequence) -> np.ndarray:
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
