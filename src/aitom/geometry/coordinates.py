"""Voxel coordinates of a box in ``(x, y, z)`` order, relative to the box centre (voxel ``N // 2``)."""

from __future__ import annotations

import torch


def _check_shape(shape: tuple[int, int, int] | torch.Size) -> tuple[int, int, int]:
    if len(shape) != 3 or any(int(size) < 1 for size in shape):
        raise ValueError(f"shape must be three positive sizes (Z, Y, X), got {tuple(shape)}")
    return int(shape[0]), int(shape[1]), int(shape[2])


def box_centre_xyz(
    shape: tuple[int, int, int] | torch.Size,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Centre of a ``(Z, Y, X)`` box in voxels, ``(X // 2, Y // 2, Z // 2)`` (FFT / RELION convention).

    Returns:
        ``(3,)`` voxel indices in ``(x, y, z)`` order.
    """
    depth, height, width = _check_shape(shape)
    return torch.tensor([width // 2, height // 2, depth // 2], dtype=dtype, device=device)


def voxel_coordinates_xyz(
    shape: tuple[int, int, int] | torch.Size,
    *,
    centre_xyz: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Position of every voxel of a ``(Z, Y, X)`` box relative to a centre.

    Args:
        shape: ``(Z, Y, X)`` box size.
        centre_xyz: ``(3,)`` centre in voxels, ``(x, y, z)``; default :func:`box_centre_xyz`.
        dtype: dtype of the result.
        device: device of the result.

    Returns:
        ``(Z, Y, X, 3)`` with ``[k, j, i] = (i, j, k) - centre_xyz`` in voxels.
    """
    depth, height, width = _check_shape(shape)
    if centre_xyz is None:
        centre_xyz = box_centre_xyz(shape, dtype=dtype, device=device)
    centre_xyz = torch.as_tensor(centre_xyz, dtype=dtype, device=device)
    if centre_xyz.shape != (3,):
        raise ValueError(f"centre_xyz must have shape (3,), got {tuple(centre_xyz.shape)}")
    z, y, x = torch.meshgrid(
        torch.arange(depth, dtype=dtype, device=device),
        torch.arange(height, dtype=dtype, device=device),
        torch.arange(width, dtype=dtype, device=device),
        indexing="ij",
    )
    return torch.stack((x, y, z), dim=-1) - centre_xyz
