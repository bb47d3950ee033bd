"""Real-space spherical masks (binary and with a raised-cosine edge)."""

from __future__ import annotations

import math

import torch

from aitom.geometry.coordinates import voxel_coordinates_xyz


def _distance_from_centre(
    shape: tuple[int, int, int] | torch.Size,
    centre_xyz: torch.Tensor | None,
    dtype: torch.dtype,
    device: torch.device | str | None,
) -> torch.Tensor:
    coordinates = voxel_coordinates_xyz(shape, centre_xyz=centre_xyz, dtype=dtype, device=device)
    return torch.linalg.vector_norm(coordinates, dim=-1)


def sphere_mask(
    shape: tuple[int, int, int] | torch.Size,
    radius_voxels: float,
    *,
    centre_xyz: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Binary ball: 1 where the distance to the centre is at most ``radius_voxels``, else 0.

    Args:
        shape: ``(Z, Y, X)`` box size.
        radius_voxels: radius in voxels, ``>= 0``.
        centre_xyz: ``(3,)`` centre in voxels ``(x, y, z)``; default voxel ``N // 2`` per axis.
        dtype: dtype of the result.
        device: device of the result.

    Returns:
        ``(Z, Y, X)`` of 0 and 1.
    """
    if not radius_voxels >= 0:
        raise ValueError(f"radius_voxels must be >= 0, got {radius_voxels}")
    distance = _distance_from_centre(shape, centre_xyz, torch.float64, device)
    return (distance <= radius_voxels).to(dtype)


def soft_sphere_mask(
    shape: tuple[int, int, int] | torch.Size,
    radius_voxels: float,
    edge_width_voxels: float,
    *,
    centre_xyz: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Ball with a raised-cosine edge: 1 within ``radius_voxels``, falling to 0 at ``radius + edge_width``.

    ``mask(d) = ½ (1 + cos(π (d − radius) / edge_width))`` for ``radius < d < radius + edge_width``, with
    ``d`` the distance to the centre in voxels (RELION's soft mask shape). ``edge_width_voxels = 0`` gives
    :func:`sphere_mask`.

    Args:
        shape: ``(Z, Y, X)`` box size.
        radius_voxels: radius of the plateau in voxels, ``>= 0``.
        edge_width_voxels: width of the cosine edge in voxels, ``>= 0``.
        centre_xyz: ``(3,)`` centre in voxels ``(x, y, z)``; default voxel ``N // 2`` per axis.
        dtype: dtype of the result.
        device: device of the result.

    Returns:
        ``(Z, Y, X)`` with values in ``[0, 1]``.
    """
    if not edge_width_voxels >= 0:
        raise ValueError(f"edge_width_voxels must be >= 0, got {edge_width_voxels}")
    if edge_width_voxels == 0:
        return sphere_mask(shape, radius_voxels, centre_xyz=centre_xyz, dtype=dtype, device=device)
    if not radius_voxels >= 0:
        raise ValueError(f"radius_voxels must be >= 0, got {radius_voxels}")
    distance = _distance_from_centre(shape, centre_xyz, torch.float64, device)
    edge_position = ((distance - radius_voxels) / edge_width_voxels).clamp(0.0, 1.0)
    return (0.5 * (1 + torch.cos(math.pi * edge_position))).to(dtype)
