"""Tilt series: angles, acquisition order, dose, projector, back-projector, weighted back-projection (WBP).

Geometry (the project convention, see :mod:`aitom`): tilt axis Y, beam along Z. The tilt image at tilt angle
α is the projection along Z of the volume rotated actively by ``Ry(α) = [[c, 0, s], [0, 1, 0], [-s, 0, c]]``
(on ``(x, y, z)``), so a point at ``(x, y, z)`` (relative to the box centre) lands on detector column
``u = c·x + s·z``, row ``y``; by the Fourier slice theorem the tilt image samples the volume's frequencies
``(c·kx, ky, s·kx)``, i.e. the plane ``kz = kx·tan α``. The detector has the volume's ``(Y, X)`` size and its
centre column is ``X // 2``.

The projector computes true line integrals (voxel units: a slab of thickness ``T`` voxels and value 1 projects
to ``T / cos α``) with Joseph's method: a ray is sampled where it crosses each Z plane (``|α| ≤ 45°``) or each
X column (``|α| > 45°``), with linear interpolation inside the plane, so samples are one voxel apart along the
dominant axis. Rotation about Y maps every XZ plane on its own, so the projector is one sparse matrix per
plane geometry, shared by all Y rows (and all volumes of a batch): a tilt series is a sparse × dense matrix
product over chunks of Y rows, which bounds memory (512×512×200 voxels, 41 tilts: ≈3 s on 2 CPU cores).

The back-projector smears each tilt image back along its rays with linear interpolation on the detector (the
voxel-driven discretisation of the adjoint of the continuous projector, ``B p(x, y, z) = Σ_α p_α(c·x + s·z,
y)``). Weighted back-projection filters every tilt image along X with the discrete ramp of Kak & Slaney
(optionally rolled off by a cosine or Hamming window) and weights each tilt by its angular spacing in radians,
so that a full ±90° series reconstructs the volume on its own scale.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

__all__ = [
    "TILT_ORDERS",
    "WBP_WINDOWS",
    "acquisition_order",
    "back_project",
    "pre_exposure_e_per_a2",
    "project_tilt_series",
    "ramp_filter",
    "tilt_angle_weights",
    "tilt_angles_deg",
    "weighted_back_projection",
]

#: acquisition schemes understood by :func:`acquisition_order`
TILT_ORDERS = ("dose_symmetric", "sequential", "bidirectional")
#: roll-off windows of the WBP ramp filter understood by :func:`ramp_filter`
WBP_WINDOWS = ("ramp", "cosine", "hamming")

_DEFAULT_CHUNK_VOXELS = 1 << 24


def tilt_angles_deg(
    tilt_min_deg: float = -60.0,
    tilt_max_deg: float = 60.0,
    tilt_step_deg: float = 3.0,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Tilt angles from ``tilt_min_deg`` to ``tilt_max_deg`` (both included when on the step grid).

    Args:
        tilt_min_deg, tilt_max_deg: tilt range in degrees, ``-90 ≤ min ≤ max ≤ 90``.
        tilt_step_deg: increment in degrees, ``> 0``.
        dtype, device: of the result.

    Returns:
        ``(n,)`` angles in degrees, ascending, ``n = floor((max − min) / step) + 1``.

    >>> tilt_angles_deg(-60, 60, 3).shape
    torch.Size([41])
    """
    if not tilt_step_deg > 0:
        raise ValueError(f"tilt_step_deg must be positive, got {tilt_step_deg}")
    if not -90.0 <= tilt_min_deg <= tilt_max_deg <= 90.0:
        raise ValueError(
            f"need -90 <= tilt_min_deg <= tilt_max_deg <= 90, got ({tilt_min_deg}, {tilt_max_deg})"
        )
    n = math.floor((tilt_max_deg - tilt_min_deg) / tilt_step_deg + 1e-6) + 1
    return tilt_min_deg + tilt_step_deg * torch.arange(n, dtype=dtype, device=device)


def acquisition_order(tilt_angles: torch.Tensor, scheme: str = "dose_symmetric") -> torch.Tensor:
    """Order in which the tilts are recorded.

    Schemes: ``"dose_symmetric"`` (Hagen et al. 2017: the tilt nearest 0°, then alternating sides in groups of
    two: 0, +3, −3, −6, +6, +9, −9, …, finishing the longer side when the other is exhausted),
    ``"sequential"`` (from the most negative to the most positive tilt), ``"bidirectional"`` (from the tilt
    nearest 0° up to the most positive, then from the next negative one down to the most negative).

    Args:
        tilt_angles: ``(n,)`` tilt angles (any unit, any order).
        scheme: one of :data:`TILT_ORDERS`.

    Returns:
        ``(n,)`` int64 indices into ``tilt_angles``, first recorded first.
    """
    if scheme not in TILT_ORDERS:
        raise ValueError(f"unknown tilt order {scheme!r}; choose one of {', '.join(TILT_ORDERS)}")
    angles = tilt_angles.detach().to("cpu", torch.float64)
    ascending = torch.argsort(angles).tolist()
    if scheme == "sequential" or not ascending:
        return torch.tensor(ascending, dtype=torch.int64, device=tilt_angles.device)
    start = int(torch.argmin(angles.abs()))
    start_rank = ascending.index(start)
    positive = ascending[start_rank + 1 :]
    negative = ascending[:start_rank][::-1]
    if scheme == "bidirectional":
        order = [start, *positive, *negative]
    else:
        order = [start, *positive[:1]]
        positive = positive[1:]
        while negative or positive:
            order += negative[:2] + positive[:2]
            negative, positive = negative[2:], positive[2:]
    return torch.tensor(order, dtype=torch.int64, device=tilt_angles.device)


def pre_exposure_e_per_a2(
    tilt_angles: torch.Tensor, dose_per_tilt_e_per_a2: float, scheme: str = "dose_symmetric"
) -> torch.Tensor:
    """Electron dose received before each tilt (RELION's ``rlnMicrographPreExposure``).

    Args:
        tilt_angles: ``(n,)`` tilt angles.
        dose_per_tilt_e_per_a2: dose of one tilt image, e⁻/Å².
        scheme: acquisition order, see :func:`acquisition_order`.

    Returns:
        ``(n,)`` e⁻/Å² in the order of ``tilt_angles`` (float64, on its device).
    """
    order = acquisition_order(tilt_angles, scheme)
    exposure = torch.empty(order.shape, dtype=torch.float64, device=tilt_angles.device)
    exposure[order] = dose_per_tilt_e_per_a2 * torch.arange(
        order.numel(), dtype=torch.float64, device=tilt_angles.device
    )
    return exposure


def tilt_angle_weights(tilt_angles_deg: torch.Tensor) -> torch.Tensor:
    """Angular quadrature weights (radians) of a tilt series for back-projection.

    Each tilt gets half the angular gap to each neighbour; an end tilt gets its single gap (as if the spacing
    continued). A single tilt gets weight 1.

    Args:
        tilt_angles_deg: ``(n,)`` degrees, any order.

    Returns:
        ``(n,)`` radians, same dtype/device as the input.
    """
    n = tilt_angles_deg.numel()
    if n == 1:
        return torch.ones_like(tilt_angles_deg)
    order = torch.argsort(tilt_angles_deg)
    gaps = torch.diff(torch.deg2rad(tilt_angles_deg[order]))
    sorted_weights = torch.empty_like(tilt_angles_deg)
    sorted_weights[1:-1] = 0.5 * (gaps[:-1] + gaps[1:])
    sorted_weights[0] = gaps[0]
    sorted_weights[-1] = gaps[-1]
    weights = torch.empty_like(tilt_angles_deg)
    weights[order] = sorted_weights
    return weights


def _as_angles(tilt_angles_deg: torch.Tensor | Sequence[float]) -> list[float]:
    angles = torch.as_tensor(tilt_angles_deg, dtype=torch.float64).reshape(-1)
    if angles.numel() == 0:
        raise ValueError("need at least one tilt angle")
    if angles.abs().max() > 90.0:
        raise ValueError(
            f"tilt angles must lie in [-90, 90] degrees, got max |α| = {float(angles.abs().max())}"
        )
    return angles.tolist()


def _compressed_rows(col: torch.Tensor, value: torch.Tensor, n_columns: int) -> torch.Tensor:
    """CSR matrix from candidate entries ``(rows, k)`` (columns ascending along each row), zeros dropped."""
    keep = value != 0
    crow = torch.zeros(col.shape[0] + 1, dtype=torch.int64)
    torch.cumsum(keep.sum(dim=1), dim=0, out=crow[1:])
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Sparse CSR tensor support is in beta", category=UserWarning
        )
        return torch.sparse_csr_tensor(
            crow, col[keep], value[keep], size=(col.shape[0], n_columns), check_invariants=False
        )


def _linear_taps(position: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lower tap index and the weights of the two linear-interpolation taps at ``position`` on ``[0, size)``.

    A tap outside ``[0, size)`` gets weight 0 (zero padding).
    """
    lower = torch.floor(position)
    fraction = position - lower
    lower = lower.to(torch.int64)
    weight_lower = torch.where((lower >= 0) & (lower < size), 1 - fraction, 0.0)
    weight_upper = torch.where((lower >= -1) & (lower < size - 1), fraction, 0.0)
    return lower, weight_lower, weight_upper


def _projection_matrices(
    angles: list[float], size_z: int, size_x: int, dtype: torch.dtype, device: torch.device
) -> list[tuple[list[int], bool, torch.Tensor]]:
    """Sparse matrices of Joseph's projector for one XZ plane, shared by every Y row.

    Tilts with ``|α| ≤ 45°`` sample each ray where it crosses the Z planes (step length ``1/|cos α|``,
    interpolation along X) and act on the plane flattened as ``z·X + x``; the others sample where the ray
    crosses the X columns (step ``1/|sin α|``, interpolation along Z) and act on the transposed plane
    ``x·Z + z``. Both layouts keep the columns of every row ascending without sorting.

    Returns:
        ``[(tilt indices, transposed, CSR (n_group·X, Z·X))]`` for the non-empty groups; row ``i·X + u`` is
        detector column ``u`` of the group's ``i``-th tilt.
    """
    radians = torch.deg2rad(torch.tensor(angles, dtype=torch.float64))
    cos, sin = torch.cos(radians), torch.sin(radians)
    steep = (cos.abs() < sin.abs()).tolist()
    detector = (torch.arange(size_x, dtype=torch.float64) - size_x // 2)[None, :, None]
    groups = []
    for transposed in (False, True):
        tilts = [i for i, is_steep in enumerate(steep) if is_steep == transposed]
        if not tilts:
            continue
        c, s = cos[tilts][:, None, None], sin[tilts][:, None, None]
        # (tilt, u, step): the step runs over the planes crossed by the ray
        if transposed:
            n_steps, n_taps_axis = size_x, size_z
            step = (torch.arange(size_x, dtype=torch.float64) - size_x // 2)[None, None, :]
            tap_position = (detector - c * step) / s + size_z // 2
            length = 1.0 / s.abs()
        else:
            n_steps, n_taps_axis = size_z, size_x
            step = (torch.arange(size_z, dtype=torch.float64) - size_z // 2)[None, None, :]
            tap_position = (detector - s * step) / c + size_x // 2
            length = 1.0 / c.abs()
        lower, weight_lower, weight_upper = _linear_taps(tap_position, n_taps_axis)
        first_column = torch.arange(n_steps, dtype=torch.int64) * n_taps_axis + lower
        col = torch.stack((first_column, first_column + 1), dim=-1).reshape(len(tilts) * size_x, -1)
        value = (torch.stack((weight_lower, weight_upper), dim=-1) * length[..., None]).reshape(col.shape)
        matrix = _compressed_rows(col, value, size_z * size_x)
        groups.append((tilts, transposed, matrix.to(device=device, dtype=dtype)))
    return groups


def _back_projection_matrix(
    angles: list[float],
    size_z: int,
    size_x: int,
    weights: torch.Tensor,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """Sparse matrix of the voxel-driven back-projector for one XZ plane, shared by every Y row.

    Row ``z·X + x`` is voxel ``(z, x)``; column ``t·X + u`` is detector column ``u`` of tilt ``t``; the voxel
    takes ``weights[t]`` × the tilt image linearly interpolated at ``u = X//2 + cos α·x + sin α·z``.

    Returns:
        CSR tensor ``(Z·X, n·X)``.
    """
    n_tilts = len(angles)
    radians = torch.deg2rad(torch.tensor(angles, dtype=torch.float64))
    x = (torch.arange(size_x, dtype=torch.float64) - size_x // 2)[None, :, None]
    z = (torch.arange(size_z, dtype=torch.float64) - size_z // 2)[:, None, None]
    detector = torch.cos(radians) * x + torch.sin(radians) * z + size_x // 2  # (Z, X, n)
    lower, weight_lower, weight_upper = _linear_taps(detector, size_x)
    first_column = torch.arange(n_tilts, dtype=torch.int64) * size_x + lower
    col = torch.stack((first_column, first_column + 1), dim=-1).reshape(size_z * size_x, -1)
    value = (torch.stack((weight_lower, weight_upper), dim=-1) * weights[:, None]).reshape(col.shape)
    return _compressed_rows(col, value, n_tilts * size_x).to(device=device, dtype=dtype)


def _apply_to_rows(
    matrix: torch.Tensor,
    data: torch.Tensor,
    output: torch.Tensor,
    *,
    transposed: bool,
    chunk_voxels: int,
    progress: bool,
    description: str,
) -> None:
    """``output[b, :, y, :] = matrix @ data[b, :, y, :]`` for every batch item ``b`` and row ``y``.

    ``data (B, A, Y, X)`` and ``output (B, A', Y, X')``; each plane ``(A, X)`` is flattened row-major, or
    column-major when ``transposed``; the product is done for chunks of Y rows at once.
    """
    n_batch, size_a, size_y, size_x = data.shape
    per_row = size_a * size_x + output.shape[1] * output.shape[3]
    rows_per_chunk = max(1, chunk_voxels // max(1, per_row))
    if rows_per_chunk >= size_y:  # whole volumes, several at once
        items = rows_per_chunk // size_y
        chunks = [(b, min(n_batch, b + items), 0, size_y) for b in range(0, n_batch, items)]
    else:
        chunks = [
            (b, b + 1, y, min(size_y, y + rows_per_chunk))
            for b in range(n_batch)
            for y in range(0, size_y, rows_per_chunk)
        ]
    for b0, b1, y0, y1 in tqdm(chunks, desc=description, unit="chunk", disable=not progress, leave=False):
        block = data[b0:b1, :, y0:y1, :]  # (k, A, rows, X)
        block = block.permute(3, 1, 0, 2) if transposed else block.permute(1, 3, 0, 2)
        result = matrix @ block.reshape(size_a * size_x, -1)
        result = result.reshape(output.shape[1], output.shape[3], b1 - b0, y1 - y0)
        output[b0:b1, :, y0:y1, :] = result.permute(2, 0, 3, 1)


def project_tilt_series(
    volume: torch.Tensor,
    tilt_angles_deg: torch.Tensor | Sequence[float],
    *,
    chunk_voxels: int = _DEFAULT_CHUNK_VOXELS,
    progress: bool = False,
) -> torch.Tensor:
    """Parallel-beam tilt series of a volume: line integrals along Z after rotating by ``Ry(α)``.

    Args:
        volume: ``(..., Z, Y, X)`` real tensor (any leading batch dimensions), values per voxel.
        tilt_angles_deg: ``(n,)`` tilt angles in degrees, ``|α| ≤ 90``.
        chunk_voxels: bound on the voxels of the Y-row chunks processed at once (input plus output).
        progress: show a progress bar over the chunks.

    Returns:
        ``(..., n, Y, X)`` tilt images (line integrals, value × voxels), same device and dtype as ``volume``.
        A point at ``(x, y, z)`` relative to the box centre lands on column ``X // 2 + cos α·x + sin α·z``.
        Differentiable with respect to ``volume``.
    """
    if volume.ndim < 3:
        raise ValueError(f"volume must have shape (..., Z, Y, X), got {tuple(volume.shape)}")
    angles = _as_angles(tilt_angles_deg)
    *batch, size_z, size_y, size_x = volume.shape
    flat = volume.reshape(-1, size_z, size_y, size_x)
    tilts = volume.new_empty((flat.shape[0], len(angles), size_y, size_x))
    for group, transposed, matrix in _projection_matrices(
        angles, size_z, size_x, volume.dtype, volume.device
    ):
        projected = volume.new_empty((flat.shape[0], len(group), size_y, size_x))
        _apply_to_rows(
            matrix,
            flat,
            projected,
            transposed=transposed,
            chunk_voxels=chunk_voxels,
            progress=progress,
            description=f"projecting {len(group)} tilts",
        )
        tilts[:, group] = projected
    return tilts.reshape(*batch, len(angles), size_y, size_x)


def back_project(
    tilts: torch.Tensor,
    tilt_angles_deg: torch.Tensor | Sequence[float],
    size_z: int,
    *,
    weights: torch.Tensor | Sequence[float] | None = None,
    chunk_voxels: int = _DEFAULT_CHUNK_VOXELS,
    progress: bool = False,
) -> torch.Tensor:
    """Unfiltered back-projection: ``B p(x, y, z) = Σ_α w_α · p_α(X//2 + cos α·x + sin α·z, y)``.

    Linear interpolation along the detector; voxels whose ray misses the detector get nothing from that tilt.

    Args:
        tilts: ``(..., n, Y, X)`` tilt images.
        tilt_angles_deg: ``(n,)`` degrees.
        size_z: Z size of the output volume (its Y and X are the detector's).
        weights: ``(n,)`` per-tilt factors (default 1).
        chunk_voxels: bound on the voxels of the Y-row chunks processed at once (input plus output).
        progress: show a progress bar over the chunks.

    Returns:
        ``(..., Z, Y, X)`` volume, same device and dtype as ``tilts``; differentiable in ``tilts``.
    """
    if tilts.ndim < 3:
        raise ValueError(f"tilts must have shape (..., n, Y, X), got {tuple(tilts.shape)}")
    angles = _as_angles(tilt_angles_deg)
    *batch, n_tilts, size_y, size_x = tilts.shape
    if n_tilts != len(angles):
        raise ValueError(f"{n_tilts} tilt images but {len(angles)} tilt angles")
    if size_z < 1:
        raise ValueError(f"size_z must be positive, got {size_z}")
    tilt_weights = torch.ones(n_tilts, dtype=torch.float64) if weights is None else torch.as_tensor(weights)
    tilt_weights = tilt_weights.to("cpu", torch.float64).reshape(-1)
    if tilt_weights.numel() != n_tilts:
        raise ValueError(f"{tilt_weights.numel()} weights for {n_tilts} tilts")
    matrix = _back_projection_matrix(angles, size_z, size_x, tilt_weights, tilts.dtype, tilts.device)
    flat = tilts.reshape(-1, n_tilts, size_y, size_x)
    volume = tilts.new_empty((flat.shape[0], size_z, size_y, size_x))
    _apply_to_rows(
        matrix,
        flat,
        volume,
        transposed=False,
        chunk_voxels=chunk_voxels,
        progress=progress,
        description="back-projecting",
    )
    return volume.reshape(*batch, size_z, size_y, size_x)


def ramp_filter(
    size: int,
    *,
    window: str = "cosine",
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Discrete ramp filter (Kak & Slaney 1988, eq. 61) for weighted back-projection, ``rfft`` layout.

    The transfer function is the DFT of ``h[0] = 1/4``, ``h[n odd] = −1/(π n)²``, ``h[n even] = 0``: ≈ ``|k|``
    (cycles/pixel) with a small positive value at ``k = 0`` instead of the continuous ramp's 0, which avoids
    the DC offset of sampling ``|k|`` directly. The window rolls the high frequencies off: ``"ramp"`` (none),
    ``"cosine"`` (``cos(π k)``, zero at Nyquist), ``"hamming"`` (``0.54 + 0.46 cos(2π k)``).

    Args:
        size: length of the (zero-padded) signal the filter is applied to.
        window: one of :data:`WBP_WINDOWS`.
        device, dtype: of the result.

    Returns:
        ``(size // 2 + 1,)`` real transfer function for ``torch.fft.rfft`` of length ``size``.
    """
    if window not in WBP_WINDOWS:
        raise ValueError(f"unknown WBP window {window!r}; choose one of {', '.join(WBP_WINDOWS)}")
    offsets = torch.fft.fftfreq(size, d=1.0 / size, dtype=torch.float64)
    kernel = torch.zeros(size, dtype=torch.float64)
    kernel[0] = 0.25
    odd = offsets.remainder(2) == 1
    kernel[odd] = -1.0 / (math.pi * offsets[odd]) ** 2
    transfer = torch.fft.rfft(kernel).real
    frequency = torch.fft.rfftfreq(size, dtype=torch.float64)
    if window == "cosine":
        transfer = transfer * torch.cos(math.pi * frequency)
    elif window == "hamming":
        transfer = transfer * (0.54 + 0.46 * torch.cos(2 * math.pi * frequency))
    return transfer.to(device=device, dtype=dtype)


def weighted_back_projection(
    tilts: torch.Tensor,
    tilt_angles_deg: torch.Tensor | Sequence[float],
    size_z: int,
    *,
    window: str = "cosine",
    chunk_voxels: int = _DEFAULT_CHUNK_VOXELS,
    progress: bool = False,
) -> torch.Tensor:
    """Weighted back-projection (R-weighting): ramp-filter every tilt along X, then back-project.

    Each detector row first loses its mean (its ``kx = 0`` component, which the ramp filter zeroes anyway),
    so that zero-padding the rows to twice their width (no wrap-around in the filtering) adds no truncation
    edge: an object wider than the detector (an ice slab) reconstructs without cupping artefacts. Each tilt
    is weighted by its angular spacing in radians (:func:`tilt_angle_weights`), so for a complete ±90°
    series the result approximates the volume itself (inverse Radon transform) up to its mean in each XZ
    plane. With a limited range the missing wedge of frequencies stays empty.

    Args:
        tilts: ``(..., n, Y, X)`` tilt images (line integrals, as :func:`project_tilt_series` returns).
        tilt_angles_deg: ``(n,)`` degrees.
        size_z: Z size of the reconstruction.
        window: ramp roll-off, see :func:`ramp_filter`.
        chunk_voxels: bound on the temporary voxels held at once.
        progress: show a progress bar over the tilts.

    Returns:
        ``(..., Z, Y, X)`` reconstruction, same device and dtype as ``tilts``.
    """
    angles = torch.as_tensor(_as_angles(tilt_angles_deg), dtype=torch.float64)
    size_x = tilts.shape[-1]
    padded = 2 * size_x
    transfer = ramp_filter(padded, window=window, device=tilts.device, dtype=tilts.dtype)
    rows = tilts - tilts.mean(dim=-1, keepdim=True)
    spectrum = torch.fft.rfft(rows, n=padded, dim=-1) * transfer
    filtered = torch.fft.irfft(spectrum, n=padded, dim=-1)[..., :size_x]
    weights = tilt_angle_weights(angles)
    return back_project(
        filtered, angles, size_z, weights=weights, chunk_voxels=chunk_voxels, progress=progress
    )
