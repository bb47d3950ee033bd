"""Point-group symmetry of maps: finding a map's symmetry axes and imposing the symmetry.

A map of a symmetric complex in an arbitrary orientation (a reference-free average, say) has the group
``Q G Q^T`` of its point group ``G`` (:func:`aitom.geometry.point_group_rotations`); ``Q`` is found from the
map itself by :func:`aitom.geometry.symmetry.find_symmetry_frame`, with the misfit of a rotation ``S`` being
one minus the correlation of the map and the map rotated by ``S`` inside a sphere.
"""

from __future__ import annotations

import numpy as np
import torch

from aitom.geometry import point_group_rotations, rotate_volume, soft_sphere_mask
from aitom.geometry.symmetry import find_symmetry_frame

__all__ = ["map_symmetry_rotations", "symmetrize_volume"]


def symmetrize_volume(volume: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Mean of ``rotate_volume(volume, S)`` over the symmetry rotations ``S`` (trilinear interpolation).

    Args:
        volume: ``(S, S, S)`` map, real space or a centred Fourier-space quantity (rotations commute with
            the Fourier transform about the box centre).
        rotations: ``(K, 3, 3)`` rotations (identity included).

    Returns:
        ``(S, S, S)`` symmetrised map, dtype and device of ``volume``.
    """
    rotated = rotate_volume(volume.expand(len(rotations), *volume.shape), rotations.to(volume))
    return rotated.mean(0)


def map_symmetry_rotations(
    volume: torch.Tensor, symbol: str, *, radius_voxels: float | None = None, batch_size: int = 256
) -> tuple[torch.Tensor, float]:
    """Symmetry rotations ``Q G Q^T`` of a map with point group ``symbol``, axes found from the map.

    Args:
        volume: ``(S, S, S)`` map, the symmetry centre at the box centre.
        symbol: point group (``"C7"``, ``"D7"``, ``"O"``...).
        radius_voxels: soft spherical mask of the correlation, voxels; default ``0.45 S``.
        batch_size: rotations correlated at once.

    Returns:
        ``((K, 3, 3) float64 rotations, identity first; correlation)``: the group and the smaller
        correlation of the map with itself under the two generators (1: exactly symmetric).
    """
    size = volume.shape[-1]
    mask = soft_sphere_mask(volume.shape, 0.45 * size if radius_voxels is None else radius_voxels, 2.0)
    mask = mask.to(volume)
    centred = (volume - (volume * mask).sum() / mask.sum()) * mask

    def misfit(rotations: np.ndarray) -> np.ndarray:
        values = []
        for start in range(0, len(rotations), batch_size):
            chunk = torch.as_tensor(
                rotations[start : start + batch_size], dtype=volume.dtype, device=volume.device
            )
            rotated = rotate_volume(centred.expand(len(chunk), *centred.shape), chunk) * mask
            correlation = (rotated * centred).sum((1, 2, 3)) / (
                rotated.square().sum((1, 2, 3)) * centred.square().sum()
            ).sqrt().clamp(min=1e-30)
            values.append(1.0 - correlation.double().cpu().numpy())
        return np.concatenate(values)

    frame, worst = find_symmetry_frame(misfit, symbol)
    return point_group_rotations(symbol, frame=frame), 1.0 - worst
