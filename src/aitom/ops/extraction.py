"""Subtomogram extraction: cubic boxes cut from a tomogram around particle centres.

The box of edge ``S`` around a centre ``c`` (x, y, z voxels, rounded to the nearest voxel, half-way
coordinates up) covers voxels ``c - S // 2 … c - S // 2 + S - 1`` on each axis, so the centre lands on voxel
``S // 2`` of the box (the project's FFT/RELION convention). Voxels outside the tomogram are filled with
zeros, or with the mean of the box's voxels inside the tomogram (``padding="mean"``, which avoids a step at
the border of a zero-mean box). The tomogram may be a tensor or a NumPy array such as a memory map
(:func:`aitom.io.open_volume_mmap`): only the boxes are read, never the whole file.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["box_bounds", "extract_subvolumes", "nearest_voxel"]

PADDINGS = ("zero", "mean")


def nearest_voxel(coordinates: np.ndarray) -> np.ndarray:
    """Index of the nearest voxel, int64: ``floor(c + 0.5)``, so a half-way coordinate always rounds up.

    (``np.rint`` rounds half-way coordinates to the even index: 10.5 -> 10 but 11.5 -> 12, which moves
    particles at half-voxel positions, e.g. after a change of binning, by -0.5 or +0.5 depending on parity.)
    """
    return np.floor(np.asarray(coordinates, dtype=np.float64) + 0.5).astype(np.int64)


def box_bounds(centres_xyz: torch.Tensor | np.ndarray, box_size: int) -> np.ndarray:
    """First voxel of each box, ``(P, 3)`` int64 in (z, y, x) order: ``nearest_voxel(c) - box_size // 2``.

    Args:
        centres_xyz: ``(P, 3)`` centres (x, y, z), voxels, integer or float.
        box_size: box edge, voxels.
    """
    centres = np.asarray(torch.as_tensor(centres_xyz).detach().cpu(), dtype=np.float64).reshape(-1, 3)
    return nearest_voxel(centres[:, ::-1]) - box_size // 2


def extract_subvolumes(
    volume: torch.Tensor | np.ndarray,
    centres_xyz: torch.Tensor | np.ndarray,
    box_size: int,
    *,
    padding: str = "zero",
) -> torch.Tensor:
    """Cut ``(P, S, S, S)`` boxes centred on particle positions out of a ``(Z, Y, X)`` tomogram.

    Args:
        volume: ``(Z, Y, X)`` tensor (any device) or NumPy array / memory map (read box by box).
        centres_xyz: ``(P, 3)`` particle centres (x, y, z) in voxels; floats are rounded to the nearest voxel
            (half-way up, :func:`nearest_voxel`).
        box_size: box edge ``S``, voxels (>= 1).
        padding: ``"zero"`` or ``"mean"`` (the mean of the box's voxels inside the tomogram) outside it.

    Returns:
        ``(P, S, S, S)`` tensor: float32 for arrays (on the CPU), the volume's floating dtype and device for
        tensors (float32 for integer tensors).

    Raises:
        ValueError: the volume is not 3-D, the centres are not ``(P, 3)``, ``box_size < 1`` or an unknown
            padding.
    """
    if len(volume.shape) != 3:
        raise ValueError(f"volume must be (Z, Y, X), got shape {tuple(volume.shape)}")
    if box_size < 1:
        raise ValueError(f"box_size must be >= 1 voxel, got {box_size}")
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    centres = torch.as_tensor(np.array(centres_xyz) if isinstance(centres_xyz, np.ndarray) else centres_xyz)
    if centres.ndim != 2 or centres.shape[1] != 3:
        raise ValueError(f"centres_xyz must be (P, 3), got shape {tuple(centres.shape)}")
    if isinstance(volume, torch.Tensor):
        device = volume.device
        dtype = volume.dtype if volume.dtype.is_floating_point else torch.float32
    else:
        device, dtype = torch.device("cpu"), torch.float32
    shape = np.array(volume.shape, dtype=np.int64)
    starts = box_bounds(centres, box_size)
    boxes = torch.zeros((len(starts), box_size, box_size, box_size), device=device, dtype=dtype)
    for index, start in enumerate(starts):
        low = np.clip(start, 0, shape)
        high = np.clip(start + box_size, 0, shape)
        if (high <= low).any():
            continue
        region = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
        inside = tuple(slice(int(a - s), int(b - s)) for a, b, s in zip(low, high, start))
        values = volume[region]
        values = (
            values.to(dtype)
            if isinstance(values, torch.Tensor)
            else torch.from_numpy(np.array(values, dtype=np.float32)).to(dtype)
        )
        if padding == "mean":
            boxes[index] = values.mean()
        boxes[index][inside] = values
    return boxes
