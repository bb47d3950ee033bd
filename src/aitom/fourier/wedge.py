"""Missing-wedge masks for single-axis tilt series.

Geometry (the project's convention): tilt axis Y, beam along Z. The tilt image at angle α (degrees) is the
projection along Z of the volume rotated actively by ``Ry(α)``; by the Fourier slice theorem it samples the
frequencies with ``kz = kx tan α``. A frequency ``k = (kx, ky, kz)`` is therefore observed iff
``atan(kz / kx)`` lies in ``[tilt_min_deg, tilt_max_deg]``; the line ``kx = kz = 0`` (along ky) is seen by
every tilt, and any other point with ``kx = 0`` only by a ±90° tilt. ``atan(kz / kx)`` is the same for
``k`` and ``-k``, so the masks are Friedel symmetric. On the Nyquist plane of an even axis a grid sample
stands for both ``+1/2`` and ``-1/2`` cycles/voxel and is observed only if both are, so that the mask stays
Friedel symmetric on the grid (and masking a real volume's spectrum gives a real volume) for asymmetric
tilt ranges too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from aitom.errors import InputError
from aitom.fourier.fft import frequency_grid, nyquist_samples
from aitom.fourier.filters import apply_fourier_filter

__all__ = ["apply_missing_wedge", "missing_wedge_mask", "wedge_observed_fraction"]

# Angles within this many degrees of the tilt range count as inside (float round-off on the boundary).
_ANGLE_TOLERANCE_DEG = 1e-9


def _check_tilt_range(tilt_min_deg: float, tilt_max_deg: float, edge_deg: float) -> None:
    if not -90.0 <= tilt_min_deg <= tilt_max_deg <= 90.0:
        raise InputError(
            f"tilt range must satisfy -90 <= min <= max <= 90 degrees, got ({tilt_min_deg}, {tilt_max_deg})"
        )
    if edge_deg < 0:
        raise InputError(f"wedge edge width must be >= 0 degrees, got {edge_deg}")


def _distance_to_tilt_range_deg(
    kx: torch.Tensor, kz: torch.Tensor, tilt_min_deg: float, tilt_max_deg: float
) -> torch.Tensor:
    """Angle (degrees) from atan(kz / kx) to the tilt range, on the circle of orientations (period 180°)."""
    # atan(kz / kx) folded into (-90, 90]; kx = 0 gives ±90 (kx = kz = 0 gives 0: the caller handles it).
    angle = torch.rad2deg(torch.atan2(kz, kx))
    angle = torch.where(angle > 90.0, angle - 180.0, angle)
    angle = torch.where(angle <= -90.0, angle + 180.0, angle)
    distance = torch.full_like(angle, math.inf)
    for period_shift in (-180.0, 0.0, 180.0):
        shifted = angle + period_shift
        outside = torch.clamp(torch.maximum(tilt_min_deg - shifted, shifted - tilt_max_deg), min=0.0)
        distance = torch.minimum(distance, outside)
    return distance


def missing_wedge_mask(
    shape: Sequence[int],
    *,
    tilt_min_deg: float = -60.0,
    tilt_max_deg: float = 60.0,
    edge_deg: float = 0.0,
    rfft: bool = False,
    centered: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Fourier-space mask of the frequencies a tilt series over ``[tilt_min_deg, tilt_max_deg]`` observes.

    Args:
        shape: real-space shape ``(Z, Y, X)``; voxels are taken as isotropic (angles use cycles/voxel).
        tilt_min_deg, tilt_max_deg: tilt range, degrees, ``-90 <= min <= max <= 90``.
        edge_deg: soft edge: the mask falls from 1 to 0 as a half cosine over this many degrees *outside*
            the tilt range (0: a hard {0, 1} mask).
        rfft, centered: layout of the mask (see :mod:`aitom.fourier.fft`). Use ``rfft=True,
            centered=False`` to multiply ``torch.fft.rfftn`` output.
        device, dtype: of the result.

    Returns:
        Tensor ``(Z, Y, X)`` (``(Z, Y, X // 2 + 1)`` when ``rfft``), 1 where observed, 0 in the missing wedge.
    """
    if len(shape) != 3:
        raise ValueError(f"shape must be (Z, Y, X), got {tuple(shape)}")
    _check_tilt_range(tilt_min_deg, tilt_max_deg, edge_deg)
    grid = frequency_grid(shape, rfft=rfft, centered=centered, device=device, dtype=torch.float64)
    kx, kz = grid[..., 0], grid[..., 2]
    distance = _distance_to_tilt_range_deg(kx, kz, tilt_min_deg, tilt_max_deg)
    # On the Nyquist plane of an even axis a sample stands for both +1/2 and -1/2 cycles/voxel, i.e. for the
    # angles θ and -θ: it counts as observed only if both are, which keeps the mask Friedel symmetric on the
    # grid (so masking a real volume's spectrum keeps the volume real).
    nyquist = nyquist_samples(shape, rfft=rfft, centered=centered, device=device)
    at_nyquist = nyquist[..., 0] | nyquist[..., 2]
    mirrored = _distance_to_tilt_range_deg(kx, -kz, tilt_min_deg, tilt_max_deg)
    distance = torch.where(at_nyquist, torch.maximum(distance, mirrored), distance)
    distance = torch.where((kx == 0) & (kz == 0), torch.zeros_like(distance), distance)
    if edge_deg > 0:
        position = (distance / edge_deg).clamp(max=1.0)
        mask = 0.5 * (1.0 + torch.cos(math.pi * position))
    else:
        mask = (distance <= _ANGLE_TOLERANCE_DEG).to(torch.float64)
    return mask.to(dtype)


def apply_missing_wedge(
    volume: torch.Tensor,
    tilt_min_deg: float = -60.0,
    tilt_max_deg: float = 60.0,
    *,
    edge_deg: float = 0.0,
) -> torch.Tensor:
    """Remove the frequencies a tilt series over ``[tilt_min_deg, tilt_max_deg]`` does not observe.

    Args:
        volume: real tensor ``(..., Z, Y, X)``.
        tilt_min_deg, tilt_max_deg, edge_deg: as in :func:`missing_wedge_mask`.

    Returns:
        Real tensor of the same shape and dtype (computed via ``rfftn``).
    """
    mask = missing_wedge_mask(
        volume.shape[-3:],
        tilt_min_deg=tilt_min_deg,
        tilt_max_deg=tilt_max_deg,
        edge_deg=edge_deg,
        rfft=True,
        centered=False,
        device=volume.device,
        dtype=volume.dtype,
    )
    return apply_fourier_filter(volume, mask, spatial_dims=3)


def wedge_observed_fraction(
    shape: Sequence[int],
    *,
    tilt_min_deg: float = -60.0,
    tilt_max_deg: float = 60.0,
    max_frequency: float = 0.5,
) -> float:
    """Fraction of the Fourier samples with ``|k| <= max_frequency`` (cycles/voxel) that are observed.

    For a tilt range of width ``w`` degrees the continuous answer is ``w / 180`` (the wedge does not depend
    on ky); the sampled value differs from it by the discreteness of the grid.
    """
    mask = missing_wedge_mask(
        shape, tilt_min_deg=tilt_min_deg, tilt_max_deg=tilt_max_deg, dtype=torch.float64
    )
    inside = torch.linalg.vector_norm(frequency_grid(shape, dtype=torch.float64), dim=-1) <= max_frequency
    return float(mask[inside].mean())
