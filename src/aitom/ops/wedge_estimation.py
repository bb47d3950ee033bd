"""Estimate a tomogram's tilt range (missing wedge) from its Fourier amplitudes.

Method. The log-amplitude ``log |F(k)|`` of the volume (floored at 1e-3 times the band's median amplitude)
is whitened by subtracting its mean over each Fourier shell, so that the signal's fall-off with frequency
cancels and what remains is, to first order, a function of the direction of ``k``: high where the tilt
series sampled, low in the missing wedge. Only the shells between ``frequency_band`` (cycles/voxel) are used
(the lowest are dominated by large features, the highest by interpolation losses). Each candidate tilt range
``[tilt_min, tilt_max]`` defines the mask of :func:`aitom.fourier.missing_wedge_mask`, which depends on ``k``
only through ``θ = atan(kz / kx)``; its Pearson correlation with the whitened log-amplitude over the band is
computed exactly for all candidates at once from the samples sorted by ``θ`` (prefix sums), and the best
candidate wins. With ``axes=("y", "x")`` the tilt axis X (``θ = atan(kz / ky)``) is tried too. With
anisotropic voxels (``voxel_size_xyz_a``) the directions and shells are those of the physical frequencies
(each axis in cycles per smallest voxel), so that the angles are the tilt angles of the microscope.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence

import torch

from aitom.errors import InputError
from aitom.fourier import frequency_grid

__all__ = ["TiltAxisWarning", "estimate_missing_wedge", "wedge_angle_profile"]

#: Smallest size, per axis, that a wedge estimate needs (voxels).
MIN_SIZE = 16
#: Below this score the spectrum shows no wedge (white noise without one scores ~0.03 at 32³; real and
#: simulated tomograms 0.7-0.8, wedge-masked noise 0.98).
DETECTION_SCORE = 0.2
#: Amplitudes are floored at this fraction of the band's median before the logarithm.
_AMPLITUDE_FLOOR = 1e-3
#: Fewest Fourier samples in the band that a wedge estimate accepts.
MIN_BAND_SAMPLES = 100
_AXES = ("y", "x")


class TiltAxisWarning(UserWarning):
    """The spectrum fits a tilt axis that was not searched better than the axes searched."""


def _whitened_band(
    volume: torch.Tensor,
    frequency_band: tuple[float, float],
    voxel_size_xyz_a: Sequence[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whitened log-amplitudes of the half-spectrum samples in the band and their frequency vectors (x, y,
    z), in cycles per voxel, or per smallest voxel with ``voxel_size_xyz_a``; shells ``round(|k| min(shape))``
    as :func:`aitom.fourier.shell_index`."""
    shape = tuple(volume.shape)
    data = volume if volume.dtype == torch.float64 else volume.to(torch.float32)
    amplitude = torch.fft.rfftn(data - data.mean()).abs()
    grid = frequency_grid(shape, rfft=True, centered=False, device=volume.device, dtype=torch.float64)
    if voxel_size_xyz_a is not None:
        sizes = torch.tensor([float(v) for v in voxel_size_xyz_a], dtype=torch.float64, device=volume.device)
        grid = grid * (sizes.min() / sizes)
    radius = torch.linalg.vector_norm(grid, dim=-1)
    low, high = frequency_band
    # Exclude the k_x = k_z = 0 line (seen by every tilt, whatever the range).
    inside = (radius >= low) & (radius <= high) & ((grid[..., 0] != 0) | (grid[..., 2] != 0))
    n_samples = int(inside.sum())
    if n_samples < MIN_BAND_SAMPLES:
        raise InputError(
            f"the frequency band {low:g}-{high:g} cycles/voxel holds {n_samples} Fourier samples of a "
            f"{'x'.join(map(str, shape))} volume, fewer than {MIN_BAND_SAMPLES}: widen it (the shells are "
            f"1/{min(shape)} cycles/voxel apart)"
        )
    shells = torch.round(radius[inside] * min(shape)).long()
    amplitude = amplitude[inside].to(torch.float64)
    log_amplitude = torch.log(amplitude.clamp_min(_AMPLITUDE_FLOOR * float(amplitude.median())))
    n_shells = int(shells.max()) + 1
    sums = torch.zeros(n_shells, dtype=torch.float64, device=volume.device).index_add(
        0, shells, log_amplitude
    )
    counts = torch.bincount(shells, minlength=n_shells).to(torch.float64)
    return log_amplitude - (sums / counts.clamp_min(1))[shells], grid[inside]


def _fold_angle_deg(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``atan(numerator / denominator)`` in degrees, folded into ``(-90, 90]``."""
    angle = torch.rad2deg(torch.atan2(numerator, denominator))
    angle = torch.where(angle > 90.0, angle - 180.0, angle)
    return torch.where(angle <= -90.0, angle + 180.0, angle)


def wedge_angle_profile(
    volume: torch.Tensor,
    *,
    frequency_band: tuple[float, float] = (0.05, 0.4),
    axis: str = "y",
    bin_deg: float = 1.0,
    voxel_size_xyz_a: Sequence[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean whitened log-amplitude per direction ``θ = atan(kz / k_perp)`` (for plots and diagnostics).

    Args:
        volume: ``(Z, Y, X)`` volume.
        frequency_band: shells used, cycles/voxel.
        axis: tilt axis, ``"y"`` (``k_perp = kx``) or ``"x"`` (``k_perp = ky``).
        bin_deg: width of the angle bins, degrees.
        voxel_size_xyz_a: voxel size per axis (x, y, z), Å, for anisotropic voxels (None: isotropic).

    Returns:
        ``(angle_deg, profile)``: bin centres in ``(-90, 90]`` and the mean per bin (NaN for empty bins).
    """
    _check_volume(volume, frequency_band, voxel_size_xyz_a)
    values, grid = _whitened_band(volume, frequency_band, voxel_size_xyz_a)
    angle = _fold_angle_deg(grid[..., 2], grid[..., 0 if axis == "y" else 1])
    n_bins = round(180 / bin_deg)
    index = ((angle + 90.0) / bin_deg).floor().long().clamp(0, n_bins - 1)
    sums = torch.zeros(n_bins, dtype=torch.float64, device=volume.device).index_add(0, index, values)
    counts = torch.bincount(index, minlength=n_bins).to(torch.float64)
    centres = -90.0 + bin_deg * (torch.arange(n_bins, dtype=torch.float64) + 0.5)
    return centres, torch.where(counts > 0, sums / counts.clamp_min(1), math.nan).cpu()


def _check_volume(
    volume: torch.Tensor, frequency_band: tuple[float, float], voxel_size_xyz_a: Sequence[float] | None
) -> None:
    if voxel_size_xyz_a is not None and (
        len(voxel_size_xyz_a) != 3 or not all(0 < float(v) < math.inf for v in voxel_size_xyz_a)
    ):
        raise InputError(f"voxel sizes must be three positive numbers of Å (x, y, z), got {voxel_size_xyz_a}")
    if volume.ndim != 3:
        raise InputError(f"wedge estimate needs one (Z, Y, X) volume, got shape {tuple(volume.shape)}")
    if min(volume.shape) < MIN_SIZE:
        raise InputError(
            f"volume {tuple(volume.shape)} is too small for a wedge estimate "
            f"(need >= {MIN_SIZE} voxels per axis)"
        )
    low, high = frequency_band
    if not 0 <= low < high <= 0.5:
        raise InputError(
            f"frequency band must satisfy 0 <= low < high <= 0.5 cycles/voxel, got {frequency_band}"
        )


def _range_scores(
    angle: torch.Tensor, values: torch.Tensor, tilt_min: torch.Tensor, tilt_max: torch.Tensor
) -> torch.Tensor:
    """Correlation of ``values`` with the indicator of the observed directions, per candidate.

    A direction is observed when ``tilt_min <= angle <= tilt_max``; the direction folded to +90° (``kz``
    alone, ``angle`` in ``(-90, 90]``) is also −90°, so a range starting at −90° observes it too.
    """
    order = torch.argsort(angle)
    sorted_angle = angle[order]
    centred = values[order] - values.mean()
    prefix = torch.cat([centred.new_zeros(1), torch.cumsum(centred, 0)])
    n = angle.numel()
    tolerance = 1e-9
    first = torch.searchsorted(sorted_angle, tilt_min - tolerance, side="left")
    last = torch.searchsorted(sorted_angle, tilt_max + tolerance, side="right")
    n_inside = (last - first).to(torch.float64)
    covariance = prefix[last] - prefix[first]
    # +90° lies beyond tilt_max < 90° but within a range from −90°: add it to such ranges
    start_90 = torch.searchsorted(sorted_angle, torch.tensor(90.0 - tolerance, dtype=sorted_angle.dtype))
    add_90 = (tilt_min <= -90.0 + tolerance) & (last <= start_90)
    n_inside = n_inside + add_90 * float(n - start_90)
    covariance = (covariance + add_90 * (prefix[n] - prefix[start_90])) / n
    fraction = n_inside / n
    spread = torch.sqrt((centred**2).mean() * fraction * (1 - fraction))
    return torch.where(spread > 0, covariance / spread.clamp_min(1e-300), -math.inf)


def estimate_missing_wedge(
    volume: torch.Tensor,
    *,
    candidate_tilt_max_deg: Iterable[float] = range(30, 91, 1),
    asymmetric: bool = True,
    frequency_band: tuple[float, float] = (0.05, 0.4),
    axes: Sequence[str] = ("y",),
    voxel_size_xyz_a: Sequence[float] | None = None,
) -> dict[str, float | str]:
    """Estimate the tilt range of a single-axis tomogram from the missing wedge in its spectrum.

    Args:
        volume: ``(Z, Y, X)`` tensor (beam along Z), at least 16 voxels per axis.
        candidate_tilt_max_deg: candidate values of the largest tilt, degrees in ``(0, 90]``; the smallest
            tilt takes the negated values (all pairs when ``asymmetric``, else ``tilt_min = -tilt_max``).
        asymmetric: search ``tilt_min`` and ``tilt_max`` independently.
        frequency_band: shells used, cycles/voxel ``(low, high)``.
        axes: tilt axes to try, among ``"y"`` (the project's convention) and ``"x"``.
        voxel_size_xyz_a: voxel size per axis (x, y, z), Å, for anisotropic voxels (None: isotropic); the
            band is then in cycles per smallest voxel.

    Returns:
        ``{"tilt_min_deg", "tilt_max_deg", "half_angle_deg", "missing_wedge_deg", "axis", "score",
        "wedge_detected"}``:
        ``half_angle_deg = (tilt_max - tilt_min) / 2`` is half the sampled tilt range,
        ``missing_wedge_deg = 180 - (tilt_max - tilt_min)`` the opening angle of the missing wedge, and
        ``score`` the correlation of the best mask with the whitened log-amplitude, and ``wedge_detected``
        whether it reaches :data:`DETECTION_SCORE` (if not, the range is meaningless: the full range
        ±90° has no missing wedge to correlate with and is never reported).

    Raises:
        InputError: not a 3-D volume, smaller than 16 voxels on an axis, constant, bad candidates (or only
            90°, the full range), band (or one holding fewer than :data:`MIN_BAND_SAMPLES` Fourier samples)
            or axes.

    Warns:
        TiltAxisWarning: an axis not in ``axes`` fits better and reaches :data:`DETECTION_SCORE`: the
            range reported, for an axis searched, is then not the tomogram's.
    """
    _check_volume(volume, frequency_band, voxel_size_xyz_a)
    candidates = torch.tensor(sorted({float(c) for c in candidate_tilt_max_deg}), dtype=torch.float64)
    if candidates.numel() == 0 or not bool(((candidates > 0) & (candidates <= 90)).all()):
        raise InputError("candidate tilt angles must be a non-empty set of values in (0, 90] degrees")
    if not axes or any(axis not in _AXES for axis in axes):
        raise InputError(f"tilt axes must be among 'y' and 'x', got {list(axes)}")
    if not bool(torch.isfinite(volume).all()):
        raise InputError("volume contains NaN or Inf voxels")
    if float(volume.std()) == 0.0:
        raise InputError("volume is constant: its spectrum shows no tilt range")
    values, grid = _whitened_band(volume, frequency_band, voxel_size_xyz_a)
    if asymmetric:
        tilt_min, tilt_max = torch.meshgrid(-candidates, candidates, indexing="ij")
        tilt_min, tilt_max = tilt_min.reshape(-1), tilt_max.reshape(-1)
    else:
        tilt_min, tilt_max = -candidates, candidates
    # every axis is scored (the spectrum is shared), so that a better fit on an axis not searched is told
    best_range: dict[str, tuple[int, float]] = {}
    for axis in _AXES:
        angle = _fold_angle_deg(grid[..., 2], grid[..., 0 if axis == "y" else 1]).cpu()
        scores = _range_scores(angle, values.cpu(), tilt_min, tilt_max)
        i = int(torch.argmax(scores))
        best_range[axis] = (i, float(scores[i]))
    axis = max(axes, key=lambda name: (best_range[name][1], -list(axes).index(name)))
    i, score = best_range[axis]
    if not math.isfinite(score):  # only the full range ±90°: it has no wedge to correlate with
        raise InputError(
            "every candidate tilt range is the full ±90° (no missing wedge to compare with): "
            "include candidates below 90°"
        )
    for other in _AXES:
        other_score = best_range[other][1]
        if other not in axes and other_score > score and other_score >= DETECTION_SCORE:
            warnings.warn(
                TiltAxisWarning(
                    f"the spectrum fits tilt axis {other.upper()} (score {other_score:.2f}) better than "
                    f"{axis.upper()} (score {score:.2f}): the tilt range reported for {axis.upper()} is not "
                    "the tomogram's"
                ),
                stacklevel=2,
            )
    low, high = float(tilt_min[i]), float(tilt_max[i])
    return {
        "tilt_min_deg": low,
        "tilt_max_deg": high,
        "half_angle_deg": (high - low) / 2,
        "missing_wedge_deg": 180.0 - (high - low),
        "axis": axis,
        "score": score,
        "wedge_detected": score >= DETECTION_SCORE,
    }
