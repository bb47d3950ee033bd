"""Particle picking by a 3-D difference of Gaussians (AITom's DoG picker, ``blob_dog`` at one scale).

The tomogram is band-passed by ``G(σ1) − G(σ2)`` with ``σ2 = 1.1 σ1`` (AITom's defaults: ``σ1`` about 7 nm
expressed in voxels), which peaks on blobs of radius ≈ ``√(3 σ1 σ2)`` = 1.82 σ1 of the chosen polarity; local
maxima of the response above a threshold, at least ``min_distance`` apart, are the picks.
"""

from __future__ import annotations

import torch

from aitom.errors import InputError
from aitom.ops.filters import difference_of_gaussians
from aitom.ops.peaks import false_alarm_threshold, peak_local_max

__all__ = ["dog_pick", "dog_response"]

POLARITIES = ("bright", "dark")


def dog_response(
    volume: torch.Tensor, sigma1_voxels: float, sigma2_voxels: float | None = None, polarity: str = "bright"
) -> torch.Tensor:
    """DoG response ``(Z, Y, X)``, positive on blobs of the requested polarity.

    Args:
        volume: ``(..., Z, Y, X)`` tomogram.
        sigma1_voxels: the smaller Gaussian's standard deviation, voxels (> 0).
        sigma2_voxels: the larger one; default ``1.1 σ1`` (AITom).
        polarity: ``"bright"`` (protein bright, as simulated) or ``"dark"`` (raw contrast).
    """
    if polarity not in POLARITIES:
        raise InputError(f"polarity must be one of {POLARITIES}, got {polarity!r}")
    if not sigma1_voxels > 0:
        raise InputError(f"sigma1 must be > 0 voxels, got {sigma1_voxels}")
    sigma2 = 1.1 * sigma1_voxels if sigma2_voxels is None else sigma2_voxels
    response = difference_of_gaussians(volume, sigma1_voxels, sigma2)
    return response if polarity == "bright" else -response


def dog_pick(
    volume: torch.Tensor,
    sigma1_voxels: float,
    sigma2_voxels: float | None = None,
    *,
    polarity: str = "bright",
    min_distance: int | None = None,
    threshold_abs: float | None = None,
    false_alarm_rate: float | None = None,
    num_peaks: int | None = None,
    exclude_border: int | bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick blobs in a tomogram with a difference of Gaussians.

    Args:
        volume: ``(Z, Y, X)`` tomogram, any device.
        sigma1_voxels, sigma2_voxels, polarity: as in :func:`dog_response`.
        min_distance: minimal distance between picks, voxels; default ``round(2 σ1)``.
        threshold_abs: minimal response; otherwise the false-alarm threshold of ``false_alarm_rate`` (when
            given), otherwise any local maximum above the response's minimum.
        num_peaks, exclude_border: as :func:`aitom.ops.peaks.peak_local_max`.

    Returns:
        ``(coordinates, scores)``: ``(N, 3)`` int64 voxel indices ``(z, y, x)`` and ``(N,)`` responses, best
        first.
    """
    if volume.ndim != 3:
        raise ValueError(f"volume must be (Z, Y, X), got shape {tuple(volume.shape)}")
    if float(volume.std()) == 0.0:
        raise InputError("the tomogram is constant (empty): nothing to pick")
    response = dog_response(volume, sigma1_voxels, sigma2_voxels, polarity)
    if threshold_abs is None and false_alarm_rate is not None:
        threshold_abs = false_alarm_threshold(response, false_alarm_rate)
    distance = max(1, round(2 * sigma1_voxels)) if min_distance is None else min_distance
    return peak_local_max(
        response,
        min_distance=distance,
        threshold_abs=threshold_abs,
        num_peaks=num_peaks,
        exclude_border=exclude_border,
    )
