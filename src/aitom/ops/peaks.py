"""Peaks of score maps, shared by every picker: local maxima, non-maximum suppression, false-alarm thresholds.

Names follow scikit-image (``peak_local_max``, ``min_distance``, ``threshold_abs``, ``num_peaks``,
``exclude_border``). Peak coordinates are voxel INDICES in tensor order ``(z, y, x)``, as scikit-image
returns them; pickers flip them to ``(x, y, z)`` for STAR tables.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch.nn.functional import max_pool3d

from aitom.errors import InputError

__all__ = [
    "cube_maximum",
    "false_alarm_threshold",
    "inside_faces",
    "local_maxima",
    "non_maximum_suppression",
    "otsu_threshold",
    "peak_local_max",
    "robust_mean_std",
    "sample_stride",
    "strided_sample",
    "thin_peaks",
]

ROBUST_MAX_SAMPLES = 1 << 22
"""At most this many values of a score map enter its robust statistics (:func:`robust_mean_std`)."""


def inside_faces(coordinates: torch.Tensor, size: torch.Tensor, border_voxels: float) -> torch.Tensor:
    """Which positions lie at least ``border_voxels`` from every face of a volume, ``(N,)`` bool.

    Args:
        coordinates: ``(N, 3)`` positions, voxels, in the same axis order as ``size``.
        size: ``(3,)`` the volume's size along those axes, voxels (valid positions ``0 … size − 1``).
        border_voxels: distance to keep from the faces, voxels (0 keeps every position inside).
    """
    size = size.to(coordinates)
    return ((coordinates >= border_voxels) & (coordinates <= size - 1 - border_voxels)).all(dim=-1)


def non_maximum_suppression(
    coordinates: torch.Tensor,
    scores: torch.Tensor,
    min_distance: float,
    *,
    p_norm: float = 2.0,
    radii: torch.Tensor | None = None,
) -> torch.Tensor:
    """Greedy non-maximum suppression: keep the best point, drop its neighbours, repeat.

    Two points conflict when their distance (Minkowski ``p_norm``; ``math.inf`` = Chebyshev) is at most
    ``min_distance`` — or, with per-point ``radii``, at most ``max(min_distance, radius_i, radius_j)`` (picks
    of particles of different sizes: a large particle's pick suppresses a smaller template's picks inside
    it, and the other way round). Ties in score keep the earlier point (stable order).

    Args:
        coordinates: ``(N, D)`` point positions (any units, same as ``min_distance``).
        scores: ``(N,)`` higher is better.
        min_distance: suppression radius (>= 0).
        p_norm: distance norm.
        radii: ``(N,)`` per-point suppression radii (>= 0), same units; None: ``min_distance`` for all.

    Returns:
        ``(K,)`` int64 indices of the kept points, best first, on the device of ``coordinates``.
    """
    if coordinates.ndim != 2 or scores.shape != coordinates.shape[:1]:
        raise ValueError(f"need coordinates (N, D) and scores (N,), got {coordinates.shape}, {scores.shape}")
    if radii is not None and radii.shape != scores.shape:
        raise ValueError(f"need radii (N,) like the scores, got {tuple(radii.shape)}")
    if min_distance < 0 or (radii is not None and bool((radii < 0).any())):
        raise InputError(f"min_distance and radii must be >= 0, got {min_distance}")
    order = np.argsort(-scores.detach().cpu().double().numpy(), kind="stable")
    points = coordinates.detach().cpu().double().numpy()[order]
    reach = np.full(len(order), float(min_distance))
    if radii is not None:
        reach = np.maximum(reach, radii.detach().cpu().double().numpy()[order])
    if len(order) == 0:
        return torch.as_tensor(order.copy(), dtype=torch.int64, device=coordinates.device)
    pairs = cKDTree(points).query_pairs(r=float(reach.max()), p=p_norm, output_type="ndarray")
    if radii is not None and len(pairs):
        distance = np.linalg.norm(points[pairs[:, 0]] - points[pairs[:, 1]], ord=p_norm, axis=-1)
        pairs = pairs[distance <= np.maximum(reach[pairs[:, 0]], reach[pairs[:, 1]])]
    neighbours: list[list[int]] = [[] for _ in range(len(points))]
    for first, second in pairs:
        neighbours[min(first, second)].append(max(first, second))
    suppressed = np.zeros(len(points), dtype=bool)
    for rank in range(len(points)):
        if not suppressed[rank]:
            suppressed[neighbours[rank]] = True
    kept = order[~suppressed]
    return torch.as_tensor(kept, dtype=torch.int64, device=coordinates.device)


def peak_local_max(
    volume: torch.Tensor,
    min_distance: int = 1,
    threshold_abs: float | None = None,
    threshold_rel: float | None = None,
    num_peaks: int | None = None,
    exclude_border: int | bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Local maxima of a volume, as scikit-image's ``peak_local_max`` (Chebyshev spacing).

    A voxel is a peak when it equals the maximum of the ``(2 min_distance + 1)³`` cube around it (computed
    with separable ``max_pool3d``), is strictly above the threshold, and lies at least ``exclude_border``
    voxels from every face. Peaks are then sorted by value (descending) and thinned greedily so that no two
    lie within ``min_distance`` voxels (Chebyshev distance) of each other (plateaus give one peak).

    Args:
        volume: ``(Z, Y, X)`` real tensor, any device.
        min_distance: minimal separation of peaks, voxels (>= 1).
        threshold_abs: minimal value; default the volume's minimum.
        threshold_rel: minimal value as a fraction of the maximum; the larger of the two thresholds applies.
        num_peaks: keep at most this many (the highest).
        exclude_border: ``True`` = ``min_distance``; ``False`` = 0; an int = that many voxels.

    Returns:
        ``(coordinates, values)``: ``(N, 3)`` int64 voxel indices ``(z, y, x)`` and ``(N,)`` values, highest
        first, on the device of ``volume``.

    Example:
        >>> volume = torch.zeros(9, 9, 9); volume[4, 5, 3] = 1.0
        >>> peak_local_max(volume, min_distance=2)[0].tolist()
        [[4, 5, 3]]
    """
    if volume.ndim != 3:
        raise ValueError(f"volume must be (Z, Y, X), got shape {tuple(volume.shape)}")
    if min_distance < 1:
        raise InputError(f"min_distance must be >= 1 voxel, got {min_distance}")
    if num_peaks is not None and num_peaks < 0:
        raise InputError(f"num_peaks must be >= 0, got {num_peaks}")
    border = min_distance if exclude_border is True else int(exclude_border)
    if border < 0:
        raise InputError(f"exclude_border must be >= 0, got {exclude_border}")
    threshold = float(volume.min()) if threshold_abs is None else float(threshold_abs)
    if threshold_rel is not None:
        threshold = max(threshold, float(threshold_rel) * float(volume.max()))
    is_peak = local_maxima(volume, min_distance) & (volume > threshold)
    if border > 0:
        interior = torch.zeros_like(is_peak)
        interior[border:-border, border:-border, border:-border] = True
        is_peak &= interior
    coordinates, values = torch.nonzero(is_peak), volume[is_peak]
    kept = thin_peaks(coordinates, values, min_distance, num_peaks=num_peaks)
    return coordinates[kept], values[kept]


def cube_maximum(volume: torch.Tensor, half_edge: int) -> torch.Tensor:
    """The maximum of the ``(2 half_edge + 1)³`` cube around each voxel, cut at the faces.

    Args:
        volume: ``(Z, Y, X)`` or ``(C, Z, Y, X)`` real tensor (channels pooled apart), any device.
        half_edge: half the cube's edge, voxels (>= 1).

    Returns:
        Same shape, dtype and device.
    """
    size = 2 * half_edge + 1
    # The maximum over a cube is separable: three 1-D running maxima (O(size) per voxel, not O(size³)).
    pooled = volume[None, None] if volume.dim() == 3 else volume[None]
    for axis in range(3):
        kernel = [1, 1, 1]
        kernel[axis] = size
        padding = [0, 0, 0]
        padding[axis] = half_edge
        pooled = max_pool3d(pooled, tuple(kernel), stride=1, padding=tuple(padding))
    return pooled.reshape(volume.shape)


def local_maxima(volume: torch.Tensor, min_distance: int) -> torch.Tensor:
    """Which voxels equal the maximum of the ``(2 min_distance + 1)³`` cube around them, ``(Z, Y, X)`` bool.

    The cube is cut at the faces of ``volume`` (:func:`cube_maximum`, padding ``−inf``). A voxel's answer
    depends only on the values within ``min_distance`` voxels of it (Chebyshev).

    Args:
        volume: ``(Z, Y, X)`` real tensor, any device.
        min_distance: half the cube's edge, voxels (>= 1).
    """
    return volume == cube_maximum(volume, min_distance)


def thin_peaks(
    coordinates: torch.Tensor,
    values: torch.Tensor,
    min_distance: int,
    threshold_abs: float | None = None,
    num_peaks: int | None = None,
) -> torch.Tensor:
    """Candidate peaks strictly above ``threshold_abs``, thinned greedily (highest first) so that no two lie
    within ``min_distance`` voxels (Chebyshev), at most ``num_peaks`` kept: the last steps of
    :func:`peak_local_max`, also for candidates gathered from several tiles. Ties in value keep the earlier
    candidate: candidates in raster order give :func:`peak_local_max`'s answer.

    Args:
        coordinates: ``(N, 3)`` int64 voxel indices ``(z, y, x)``.
        values: ``(N,)`` their values.
        min_distance: minimal separation, voxels (>= 1).
        threshold_abs: minimal value (exclusive); None keeps all.
        num_peaks: keep at most this many (the highest); None keeps all.

    Returns:
        ``(K,)`` int64 indices of the kept candidates, highest first, on the device of ``coordinates``.
    """
    above = torch.arange(len(values), device=coordinates.device)
    if threshold_abs is not None:
        above = above[values > threshold_abs]
    kept = above[
        non_maximum_suppression(coordinates[above], values[above], float(min_distance), p_norm=math.inf)
    ]
    return kept[:num_peaks]


def sample_stride(voxels: int, max_samples: int = ROBUST_MAX_SAMPLES) -> int:
    """Stride of the evenly strided sample of at most ``max_samples`` values that :func:`robust_mean_std`
    takes from ``voxels`` values (1: all of them)."""
    return math.ceil(voxels / max_samples) if voxels > max_samples else 1


def strided_sample(
    block: torch.Tensor, start_zyx: tuple[int, int, int], shape_zyx: tuple[int, int, int], stride: int
) -> torch.Tensor:
    """The values of a block of a volume whose raster index in the whole volume is a multiple of ``stride``.

    The samples of blocks that partition a volume pool into exactly ``volume.reshape(-1)[::stride]`` (in
    another order), so robust statistics of a volume seen tile by tile equal those of the whole volume.

    Args:
        block: ``(z, y, x)`` part of the volume.
        start_zyx: the voxel of the volume at ``block[0, 0, 0]``.
        shape_zyx: ``(Z, Y, X)`` the whole volume's shape, voxels.
        stride: from :func:`sample_stride` of the whole volume's voxel count.

    Returns:
        ``(M,)`` values, raster order within the block.
    """
    if stride == 1:
        return block.reshape(-1)
    steps = (shape_zyx[1] * shape_zyx[2], shape_zyx[2], 1)
    # raster index modulo the stride, summed per axis (each term < stride: int64 never overflows)
    residues = [
        (torch.arange(n, device=block.device) + start) * step % stride
        for n, start, step in zip(block.shape, start_zyx, steps)
    ]
    index = residues[0][:, None, None] + residues[1][None, :, None] + residues[2][None, None, :]
    return block[index % stride == 0]


def robust_mean_std(volume: torch.Tensor, max_samples: int = ROBUST_MAX_SAMPLES) -> tuple[float, float]:
    """Median and ``1.4826 · MAD`` of a tensor (robust mean and standard deviation of its bulk).

    At most ``max_samples`` evenly strided values are used (the statistics of a large map barely change):
    every :func:`sample_stride`-th value in raster order.
    """
    values = volume.detach().reshape(-1)[:: sample_stride(volume.numel(), max_samples)].double()
    median = values.median()
    mad = (values - median).abs().median()
    return float(median), float(1.4826 * mad)


def false_alarm_threshold(volume: torch.Tensor, false_alarm_rate: float) -> float:
    """Score above which a voxel of pure noise lies with probability ``false_alarm_rate``.

    Models the bulk of the score map as Gaussian with the robust mean and standard deviation of
    :func:`robust_mean_std` and returns ``mean + std · Φ⁻¹(1 − false_alarm_rate)``. Particles occupy a small
    fraction of the map, so they barely move the robust statistics.

    Args:
        volume: score map, any shape.
        false_alarm_rate: probability per voxel, in ``(0, 1)`` (e.g. ``1e-5``).
    """
    if not 0.0 < false_alarm_rate < 1.0:
        raise InputError(f"false-alarm rate must be in (0, 1), got {false_alarm_rate}")
    mean, std = robust_mean_std(volume)
    quantile = float(torch.special.ndtri(torch.tensor(1.0 - false_alarm_rate, dtype=torch.float64)))
    return mean + std * quantile


def otsu_threshold(values: torch.Tensor) -> float:
    """Otsu's threshold of a set of values: the split that maximises the between-class variance.

    For the values sorted, every split into the ``i`` smallest and the rest is scored by
    ``w₀ w₁ (μ₀ − μ₁)²`` (class fractions and means; all splits at once from cumulative sums) and the
    threshold is the midpoint between the two values at the best split. Exact on the values themselves (no
    histogram binning).

    Args:
        values: ``(N,)`` values, ``N >= 2`` (any shape; flattened).

    Returns:
        The threshold: values above it form the upper class.
    """
    ordered = values.detach().reshape(-1).double().sort().values
    count = ordered.numel()
    if count < 2:
        raise ValueError(f"Otsu's threshold needs at least 2 values, got {count}")
    lower_count = torch.arange(1, count, dtype=torch.float64, device=ordered.device)
    cumulative = ordered.cumsum(0)
    lower_mean = cumulative[:-1] / lower_count
    upper_mean = (cumulative[-1] - cumulative[:-1]) / (count - lower_count)
    between = lower_count * (count - lower_count) * (lower_mean - upper_mean).square()
    split = int(between.argmax())  # split after index `split`
    return float((ordered[split] + ordered[split + 1]) / 2)
