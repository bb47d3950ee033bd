"""Saliency-based particle picking (after Zhou et al., BIBM 2018), in torch.

1. Supervoxels: SLIC in 3-D — k-means on (intensity, position) started from a regular grid of spacing ``S``;
   each voxel is compared only with the 8 clusters whose initial centres are nearest to it, with distance
   ``(ΔI / m)² + (Δp / S)²`` (``m`` the compactness, in intensity units).
2. Features per supervoxel: means of the tomogram smoothed at several scales and of their differences
   (band-passes), and the intensity standard deviation, each feature standardised over supervoxels.
3. Robust PCA by the inexact augmented Lagrange multiplier method (Candès, Li, Ma & Wright 2011; Lin, Chen &
   Ma 2010): features ``D = L + S`` with ``L`` low rank (the background, which repeats) and ``S`` sparse (what
   stands out). The saliency of a supervoxel is ``‖S_i‖₂``, kept only when it is brighter than the
   background (protein-bright polarity) and 0 otherwise.
4. Picks: the per-voxel saliency map, smoothed at about a third of the particle radius, and its local maxima.
"""

from __future__ import annotations

import itertools
import math

import torch

from aitom.errors import InputError
from aitom.ops.filters import gaussian_filter3d
from aitom.ops.peaks import false_alarm_threshold, otsu_threshold, peak_local_max

__all__ = [
    "robust_pca",
    "saliency_map",
    "saliency_pick",
    "saliency_smoothing_sigma",
    "singular_value_threshold",
    "slic_supervoxels",
    "smoothed_saliency",
    "supervoxel_features",
    "supervoxel_spacing",
]


def _grid_centres(shape: tuple[int, int, int], spacing: int, device: torch.device) -> torch.Tensor:
    counts = [max(1, math.ceil(n / spacing)) for n in shape]
    axes = [
        torch.clamp((torch.arange(c, device=device) + 0.5) * spacing, max=n - 1)
        for c, n in zip(counts, shape)
    ]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3), counts


def slic_supervoxels(
    volume: torch.Tensor,
    spacing_voxels: int,
    *,
    compactness: float | None = None,
    iterations: int = 5,
    chunk_voxels: int = 1 << 20,
) -> torch.Tensor:
    """SLIC supervoxels of a volume.

    Args:
        volume: ``(Z, Y, X)`` real tensor, any device.
        spacing_voxels: grid spacing ``S`` of the initial cluster centres, voxels (>= 2).
        compactness: intensity difference ``m`` worth one grid spacing in position; default the volume's
            standard deviation.
        iterations: k-means iterations.
        chunk_voxels: voxels assigned at once (bounds memory at ``8 · chunk_voxels`` distances).

    Returns:
        ``(Z, Y, X)`` int64 labels in ``[0, K)``, ``K`` the number of grid cells (empty clusters may occur).
    """
    if volume.ndim != 3:
        raise ValueError(f"volume must be (Z, Y, X), got shape {tuple(volume.shape)}")
    if spacing_voxels < 2:
        raise InputError(f"supervoxel spacing must be >= 2 voxels, got {spacing_voxels}")
    device, dtype = volume.device, volume.dtype
    shape = tuple(int(n) for n in volume.shape)
    m = float(volume.std()) if compactness is None else compactness
    if not m > 0:
        raise InputError("the volume is constant (empty): no supervoxels")
    centres, counts = _grid_centres(shape, spacing_voxels, device)
    centres = centres.to(dtype)
    flat = volume.reshape(-1)
    positions = torch.stack(
        torch.meshgrid(*[torch.arange(n, device=device, dtype=dtype) for n in shape], indexing="ij"), dim=-1
    ).reshape(-1, 3)
    count_tensor = torch.tensor(counts, device=device)
    cell = torch.minimum(positions.long() // spacing_voxels, count_tensor - 1)
    # The 2 x 2 x 2 cells whose initial centres are nearest: the voxel's own and, on each axis, the neighbour
    # on the side of the voxel's half of its cell.
    toward = torch.where(positions - cell * spacing_voxels < spacing_voxels / 2, -1, 1)
    corners = torch.stack(
        torch.meshgrid(*[torch.arange(2, device=device)] * 3, indexing="ij"), dim=-1
    ).reshape(-1, 3)
    neighbour_cells = torch.clamp(cell[:, None, :] + corners[None] * toward[:, None, :], min=0)
    neighbour_cells = torch.minimum(neighbour_cells, count_tensor - 1)
    strides = torch.tensor([counts[1] * counts[2], counts[2], 1], device=device)
    candidates = (neighbour_cells * strides).sum(-1)
    centre_values = volume[tuple(centres.round().long().T)]
    labels = torch.zeros(flat.shape[0], device=device, dtype=torch.int64)
    for _ in range(iterations):
        for start in range(0, flat.shape[0], chunk_voxels):
            part = slice(start, start + chunk_voxels)
            near = candidates[part]
            distance = ((flat[part, None] - centre_values[near]) / m).square() + (
                (positions[part, None, :] - centres[near]) / spacing_voxels
            ).square().sum(-1)
            labels[part] = near.gather(1, distance.argmin(dim=1, keepdim=True))[:, 0]
        sizes = torch.zeros(centres.shape[0], device=device, dtype=dtype).index_add_(
            0, labels, torch.ones_like(flat)
        )
        occupied = sizes > 0
        position_sums = torch.zeros_like(centres).index_add_(0, labels, positions)
        value_sums = torch.zeros_like(centre_values).index_add_(0, labels, flat)
        centres = torch.where(occupied[:, None], position_sums / sizes.clamp(min=1)[:, None], centres)
        centre_values = torch.where(occupied, value_sums / sizes.clamp(min=1), centre_values)
    return labels.reshape(shape)


def supervoxel_features(
    volume: torch.Tensor, labels: torch.Tensor, scales_voxels: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``(K, F)`` of each supervoxel and its voxel count ``(K,)``.

    Features: the supervoxel's mean of the volume smoothed at each scale, the means of the differences of
    consecutive scales (band-passes), and the intensity standard deviation; each standardised (zero mean, unit
    variance) over the non-empty supervoxels. Empty supervoxels get zero features.
    """
    n_labels = int(labels.max()) + 1
    flat_labels = labels.reshape(-1)
    sizes = torch.zeros(n_labels, device=volume.device, dtype=volume.dtype).index_add_(
        0, flat_labels, torch.ones_like(volume).reshape(-1)
    )

    def supervoxel_mean(values: torch.Tensor) -> torch.Tensor:
        sums = torch.zeros(n_labels, device=volume.device, dtype=volume.dtype)
        return sums.index_add_(0, flat_labels, values.reshape(-1)) / sizes.clamp(min=1)

    smoothed = [gaussian_filter3d(volume, scale) for scale in scales_voxels]
    features = [supervoxel_mean(level) for level in smoothed]
    features += [supervoxel_mean(fine - coarse) for fine, coarse in itertools.pairwise(smoothed)]
    mean = supervoxel_mean(volume)
    features.append(torch.sqrt(torch.clamp(supervoxel_mean(volume.square()) - mean.square(), min=0.0)))
    matrix = torch.stack(features, dim=1)
    occupied = sizes > 0
    centred = matrix - matrix[occupied].mean(0)
    matrix = centred / matrix[occupied].std(0).clamp(min=1e-12)
    return torch.where(occupied[:, None], matrix, torch.zeros_like(matrix)), sizes


def singular_value_threshold(matrix: torch.Tensor, threshold: float) -> torch.Tensor:
    """``U max(Σ − threshold, 0) Vᵀ`` of a matrix, via the eigen-decomposition of its smaller Gram matrix.

    Much faster than a full SVD for the tall, thin feature matrices of Robust PCA; use float64 for accuracy.
    """
    tall = matrix.shape[0] >= matrix.shape[1]
    gram = matrix.T @ matrix if tall else matrix @ matrix.T
    eigenvalues, vectors = torch.linalg.eigh(gram)
    singular = torch.sqrt(torch.clamp(eigenvalues, min=0.0))
    shrink = torch.where(singular > threshold, (singular - threshold) / singular.clamp(min=1e-300), 0.0)
    projector = (vectors * shrink) @ vectors.T
    return matrix @ projector if tall else projector @ matrix


def robust_pca(
    data: torch.Tensor, *, lam: float | None = None, tol: float = 1e-7, max_iterations: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """Robust PCA ``D = L + S`` by the inexact augmented Lagrange multiplier method (Lin et al. 2010).

    Minimises ``‖L‖_* + λ ‖S‖₁`` subject to ``L + S = D``. Computed in float64, returned in ``data``'s dtype.

    Args:
        data: ``(m, n)`` real matrix.
        lam: sparsity weight; default ``1 / sqrt(max(m, n))`` (Candès et al. 2011).
        tol: stop when ``‖D − L − S‖_F ≤ tol ‖D‖_F``.
        max_iterations: upper bound on iterations.

    Returns:
        ``(low_rank, sparse)``, each ``(m, n)``.
    """
    if data.ndim != 2:
        raise ValueError(f"data must be a matrix, got shape {tuple(data.shape)}")
    lam = 1.0 / math.sqrt(max(data.shape)) if lam is None else lam
    matrix = data.double()
    norm_fro = float(torch.linalg.matrix_norm(matrix))
    if norm_fro == 0.0:
        return torch.zeros_like(data), torch.zeros_like(data)
    gram = matrix.T @ matrix if matrix.shape[0] >= matrix.shape[1] else matrix @ matrix.T
    norm_two = float(torch.linalg.eigvalsh(gram)[-1].sqrt())
    dual = matrix / max(norm_two, float(matrix.abs().max()) / lam)
    mu = 1.25 / norm_two
    mu_max, rho = mu * 1e7, 1.5
    sparse = torch.zeros_like(matrix)
    low_rank = torch.zeros_like(matrix)
    for _ in range(max_iterations):
        low_rank = singular_value_threshold(matrix - sparse + dual / mu, 1.0 / mu)
        residual = matrix - low_rank + dual / mu
        sparse = torch.sign(residual) * torch.clamp(residual.abs() - lam / mu, min=0.0)
        gap = matrix - low_rank - sparse
        dual = dual + mu * gap
        mu = min(mu * rho, mu_max)
        if float(torch.linalg.matrix_norm(gap)) <= tol * norm_fro:
            break
    return low_rank.to(data.dtype), sparse.to(data.dtype)


def supervoxel_spacing(particle_radius_voxels: float) -> int:
    """SLIC grid spacing of :func:`saliency_map` for a particle radius (voxels): the radius, at least 2."""
    return max(2, round(particle_radius_voxels))


def saliency_smoothing_sigma(particle_radius_voxels: float) -> float:
    """σ, voxels, of the Gaussian that :func:`smoothed_saliency` applies: a third of the particle radius."""
    return max(0.5, particle_radius_voxels / 3)


def smoothed_saliency(
    volume: torch.Tensor, particle_radius_voxels: float, *, iterations: int = 5
) -> torch.Tensor:
    """:func:`saliency_map` smoothed by a Gaussian of :func:`saliency_smoothing_sigma`: ``(Z, Y, X)``, whose
    local maxima are the particle candidates of :func:`saliency_pick`."""
    saliency = saliency_map(volume, particle_radius_voxels, iterations=iterations)
    return gaussian_filter3d(saliency, saliency_smoothing_sigma(particle_radius_voxels))


def saliency_map(volume: torch.Tensor, particle_radius_voxels: float, *, iterations: int = 5) -> torch.Tensor:
    """Per-voxel saliency ``(Z, Y, X)`` (0 on background) of a protein-bright tomogram.

    Supervoxels of spacing ``≈ particle radius`` (at least 2), features, Robust PCA; each voxel gets its
    supervoxel's saliency ``‖S_i‖₂`` when the supervoxel is brighter than the median one, else 0.
    """
    if volume.ndim != 3:
        raise ValueError(f"volume must be (Z, Y, X), got shape {tuple(volume.shape)}")
    if not particle_radius_voxels > 0:
        raise InputError(f"particle radius must be > 0 voxels, got {particle_radius_voxels}")
    if float(volume.std()) == 0.0:
        raise InputError("the tomogram is constant (empty): nothing to pick")
    smoothed = gaussian_filter3d(volume, max(0.5, particle_radius_voxels / 4))
    labels = slic_supervoxels(smoothed, supervoxel_spacing(particle_radius_voxels), iterations=iterations)
    features, sizes = supervoxel_features(volume, labels)
    occupied = sizes > 0
    _, sparse = robust_pca(features[occupied])
    saliency = torch.zeros(features.shape[0], device=volume.device, dtype=volume.dtype)
    brightness = features[occupied, 0]
    saliency[occupied] = torch.where(
        brightness > brightness.median(), sparse.norm(dim=1), torch.zeros_like(brightness)
    )
    return saliency[labels]


def saliency_pick(
    volume: torch.Tensor,
    particle_radius_voxels: float,
    *,
    min_distance: int | None = None,
    threshold_abs: float | None = None,
    false_alarm_rate: float | None = None,
    num_peaks: int | None = None,
    exclude_border: int | bool = False,
    iterations: int = 5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick particles at the maxima of the smoothed saliency map.

    Args:
        volume: ``(Z, Y, X)`` protein-bright tomogram.
        particle_radius_voxels: expected particle radius, voxels (sets supervoxel size and smoothing).
        min_distance: minimal distance between picks; default the particle radius.
        threshold_abs, false_alarm_rate, num_peaks, exclude_border: as :func:`aitom.ops.dog_picking.dog_pick`
            (thresholds apply to the smoothed saliency). With neither threshold, the peaks are split by
            Otsu's threshold of their log-saliency (:func:`aitom.ops.peaks.otsu_threshold`) and the upper
            class is kept.
        iterations: SLIC iterations.

    Returns:
        ``(coordinates, scores)``: ``(N, 3)`` int64 voxel indices ``(z, y, x)``, ``(N,)`` smoothed saliency.
    """
    smoothed = smoothed_saliency(volume, particle_radius_voxels, iterations=iterations)
    automatic = threshold_abs is None and false_alarm_rate is None
    if threshold_abs is None and false_alarm_rate is not None:
        threshold_abs = false_alarm_threshold(smoothed, false_alarm_rate)
    distance = max(1, round(particle_radius_voxels)) if min_distance is None else min_distance
    coordinates, scores = peak_local_max(
        smoothed,
        min_distance=distance,
        threshold_abs=0.0 if threshold_abs is None else threshold_abs,
        num_peaks=None if automatic else num_peaks,
        exclude_border=exclude_border,
    )
    if automatic and scores.numel() >= 2:
        # Half the map is exactly 0 (dim supervoxels), so voxel statistics say nothing about the noise; the
        # peak values split into background and particles, and Otsu's threshold of their logarithm separates
        # the two (the saliency of particles spans orders of magnitude).
        keep = scores.log() > otsu_threshold(scores.log())
        coordinates, scores = coordinates[keep][:num_peaks], scores[keep][:num_peaks]
    return coordinates, scores
