"""Template matching by FFT: locally normalised cross-correlation over a grid of rotations.

For each rotation ``R`` the template is rotated actively (``rotate_volume(template, R)``: a particle with
RELION matrix ``A`` is matched best by ``R ≈ A``), filtered in its own box like the data (missing wedge of
the tomogram's tilt range, optionally the CTF with the sign of protein-bright data, optionally the tomogram's
spectral whitening), multiplied by the footprint mask, normalised to zero mean and unit variance under the
mask, and correlated with the tomogram by FFT. The score is Roseman's fast local correlation (FLCF)::

    score(p) = Σ_y M(y) (f(p + y) − μ_M(p)) T(y) / (n σ_M(p))

with ``μ_M, σ_M`` the mean and standard deviation of the tomogram under the mask centred at ``p`` and ``n``
the number of mask voxels; it lies in ``[−1, 1]``. Correlations are circular: scores within half a template
of the faces are unreliable (``exclude_border`` when picking, overlapping tiles for large tomograms).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import scipy.fft
import torch

from aitom.errors import InputError
from aitom.fourier import ctf_3d, frequency_grid, missing_wedge_mask
from aitom.geometry import rotate_volume, sphere_mask

__all__ = [
    "TemplateFilter",
    "match_template",
    "spectral_whitening_filter",
    "template_filter_kernel",
]


@dataclass(frozen=True)
class TemplateFilter:
    """How the template is filtered to look like the tomogram.

    Attributes:
        tilt_range_deg: ``(min, max)`` tilt range of the tomogram, degrees; None: no missing wedge.
        voxel_size_a: voxel size, Å (needed for the CTF).
        defocus_um: CTF defocus (positive = underfocus); None: no CTF.
        voltage_kv, cs_mm, amplitude_contrast: CTF parameters.
        lowpass_frequency: cut-off in cycles/voxel (``≤ 0.5``); None: no low-pass.
    """

    tilt_range_deg: tuple[float, float] | None = (-60.0, 60.0)
    voxel_size_a: float = 1.0
    defocus_um: float | None = None
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07
    lowpass_frequency: float | None = None


def spectral_whitening_filter(
    volume: torch.Tensor, n_shells: int = 64
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The radial whitening filter of a volume, as a function of ``|k|`` (cycles/voxel).

    The filter is ``1 / sqrt(P(|k|))`` with ``P`` the volume's radially averaged power spectrum (``n_shells``
    shells from 0 to ``√3 / 2``), normalised to 1 at its median; interpolated linearly between shells.

    Returns:
        ``filter(k_magnitude) -> weights`` for a tensor of frequencies in cycles/voxel.
    """
    shape = volume.shape[-3:]
    power = torch.fft.rfftn(volume, dim=(-3, -2, -1)).abs().square()
    k = frequency_grid(shape, rfft=True, centered=False, device=volume.device, dtype=volume.dtype).norm(
        dim=-1
    )
    k_max = math.sqrt(3) / 2
    shell = torch.clamp((k / k_max * (n_shells - 1)).round().long(), 0, n_shells - 1).reshape(-1)
    sums = torch.zeros(n_shells, device=volume.device, dtype=volume.dtype).index_add_(
        0, shell, power.reshape(-1, *power.shape[-3:]).sum(0).reshape(-1)
    )
    counts = torch.zeros_like(sums).index_add_(0, shell, torch.ones_like(shell, dtype=volume.dtype))
    filled = counts > 0
    amplitude = torch.sqrt(sums[filled] / counts[filled])
    weights = 1.0 / torch.clamp(amplitude, min=amplitude.max() * 1e-6)
    weights = weights / weights.median()
    centres = torch.nonzero(filled)[:, 0].to(volume.dtype) * (k_max / (n_shells - 1))

    def whitening(k_magnitude: torch.Tensor) -> torch.Tensor:
        position = torch.clamp(torch.searchsorted(centres, k_magnitude.contiguous()), 1, len(centres) - 1)
        left, right = centres[position - 1], centres[position]
        fraction = torch.clamp((k_magnitude - left) / (right - left), 0.0, 1.0)
        return weights[position - 1] * (1 - fraction) + weights[position] * fraction

    return whitening


def template_filter_kernel(
    shape: tuple[int, int, int],
    template_filter: TemplateFilter,
    whitening: Callable[[torch.Tensor], torch.Tensor] | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Fourier filter ``(Z, Y, X // 2 + 1)`` (``rfftn`` layout, not centred) applied to the rotated template.

    Product of the missing-wedge mask, the CTF (sign flipped: the data are protein bright), the whitening
    filter and a hard low-pass, as configured; all ones when nothing is.
    """
    kernel = torch.ones(shape[0], shape[1], shape[2] // 2 + 1, device=device, dtype=dtype)
    if template_filter.tilt_range_deg is not None:
        low, high = template_filter.tilt_range_deg
        kernel = kernel * missing_wedge_mask(
            shape, tilt_min_deg=low, tilt_max_deg=high, rfft=True, centered=False, device=device, dtype=dtype
        )
    if template_filter.defocus_um is not None:
        kernel = kernel * -ctf_3d(
            shape,
            voxel_size_a=template_filter.voxel_size_a,
            defocus_um=template_filter.defocus_um,
            voltage_kv=template_filter.voltage_kv,
            cs_mm=template_filter.cs_mm,
            amplitude_contrast=template_filter.amplitude_contrast,
            device=device,
            dtype=dtype,
        )
    needs_k = whitening is not None or template_filter.lowpass_frequency is not None
    if needs_k:
        k = frequency_grid(shape, rfft=True, centered=False, device=device, dtype=dtype).norm(dim=-1)
        if whitening is not None:
            kernel = kernel * whitening(k)
        if template_filter.lowpass_frequency is not None:
            kernel = kernel * (k <= template_filter.lowpass_frequency).to(dtype)
    return kernel


_DIMS = (-3, -2, -1)


def _rfftn(volume: torch.Tensor, shape: tuple[int, int, int] | None = None) -> torch.Tensor:
    """Real 3-D FFT over the last three axes (zero-padded at the end to ``shape``).

    On the CPU this dispatches to ``scipy.fft`` with one worker per torch thread, several times faster than
    ``torch.fft`` there (see ``scripts/bench_template_matching.py``); not differentiable on that path.
    """
    if volume.device.type == "cpu" and not volume.requires_grad:
        spectrum = scipy.fft.rfftn(volume.numpy(), s=shape, axes=_DIMS, workers=torch.get_num_threads())
        return torch.from_numpy(spectrum)
    return torch.fft.rfftn(volume, s=shape, dim=_DIMS)


def _irfftn(spectrum: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Inverse of :func:`_rfftn` to a real volume of the last three axes ``shape``."""
    if spectrum.device.type == "cpu" and not spectrum.requires_grad:
        volume = scipy.fft.irfftn(spectrum.numpy(), s=shape, axes=_DIMS, workers=torch.get_num_threads())
        return torch.from_numpy(volume)
    return torch.fft.irfftn(spectrum, s=shape, dim=_DIMS)


def _normalise_under_mask(templates: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance under the mask, zero outside it; ``(B, t, t, t)``."""
    count = masks.sum(dim=(-3, -2, -1), keepdim=True)
    mean = (templates * masks).sum(dim=(-3, -2, -1), keepdim=True) / count
    centred = (templates - mean) * masks
    std = torch.sqrt(centred.square().sum(dim=(-3, -2, -1), keepdim=True) / count)
    if bool((std <= 0).any()):
        raise InputError("the template is constant under its mask (after filtering): nothing to match")
    return centred / std


def _local_std(
    tomogram_spectrum: torch.Tensor,
    squared_spectrum: torch.Tensor,
    mask_spectrum: torch.Tensor,
    count: torch.Tensor,
    shape: tuple[int, int, int],
) -> torch.Tensor:
    """σ of the tomogram under the mask placed at every voxel (index = mask corner; rolled later)."""
    local_mean = _irfftn(tomogram_spectrum * mask_spectrum.conj(), shape) / count
    local_square = _irfftn(squared_spectrum * mask_spectrum.conj(), shape) / count
    variance = torch.clamp(local_square - local_mean.square(), min=0.0)
    return torch.sqrt(variance)


def match_template(
    tomogram: torch.Tensor,
    template: torch.Tensor,
    rotations: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    template_filter: TemplateFilter | None = None,
    whiten: bool = False,
    rotation_batch: int = 8,
    progress: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best FLCF score and its rotation at every voxel of a tomogram.

    Args:
        tomogram: ``(Z, Y, X)`` real tensor, any device (float32 or float64).
        template: ``(t, t, t)`` cubic reference in the tomogram's contrast (protein bright), ``t`` no larger
            than any tomogram axis.
        rotations: ``(R, 3, 3)`` rotation matrices on ``(x, y, z)`` (e.g. ``so3_grid(step_deg)``).
        mask: ``(t, t, t)`` footprint mask (rotated with the template); default a sphere of radius ``t / 2``
            (rotation-invariant: the tomogram's local statistics are then computed once).
        template_filter: how to filter the template (default: missing wedge ±60°, no CTF).
        whiten: whiten the tomogram's spectrum and filter the template with the same whitening.
        rotation_batch: rotations correlated at once (memory ∝ ``rotation_batch · Z · Y · X``).
        progress: called with the number of rotations done after each batch.

    Returns:
        ``(score, rotation_index)``: ``(Z, Y, X)`` best score (dtype of the tomogram) and ``(Z, Y, X)`` int64
        index into ``rotations`` of the best rotation, on the tomogram's device.

    Raises:
        InputError: the template is larger than the tomogram, not cubic, or constant; the tomogram is
            constant; ``rotation_batch < 1``.
    """
    if tomogram.ndim != 3 or template.ndim != 3:
        raise ValueError(f"need (Z, Y, X) tomogram and template, got {tomogram.shape}, {template.shape}")
    if len(set(template.shape)) != 1:
        raise InputError(f"the template must be a cube, got {tuple(template.shape)} voxels")
    if any(t > n for t, n in zip(template.shape, tomogram.shape)):
        raise InputError(
            f"the template ({tuple(template.shape)} voxels) is larger than the tomogram "
            f"({tuple(tomogram.shape)} voxels)"
        )
    if rotations.ndim != 3 or rotations.shape[-2:] != (3, 3) or rotations.shape[0] == 0:
        raise ValueError(f"rotations must be (R, 3, 3) with R >= 1, got {tuple(rotations.shape)}")
    if rotation_batch < 1:
        raise InputError(f"rotation batch must be >= 1, got {rotation_batch}")
    if float(tomogram.std()) == 0.0:
        raise InputError("the tomogram is constant (empty): nothing to pick")
    device, dtype = tomogram.device, tomogram.dtype
    shape = tuple(int(n) for n in tomogram.shape)
    size = int(template.shape[0])
    template_filter = TemplateFilter() if template_filter is None else template_filter
    template = template.to(device=device, dtype=dtype)
    data = (tomogram - tomogram.mean()) / tomogram.std()
    whitening = None
    if whiten:
        whitening = spectral_whitening_filter(data)
        k = frequency_grid(shape, rfft=True, centered=False, device=device, dtype=dtype).norm(dim=-1)
        data = _irfftn(_rfftn(data) * whitening(k), shape)
    kernel = template_filter_kernel((size,) * 3, template_filter, whitening, device=device, dtype=dtype)
    spectrum = _rfftn(data)
    squared_spectrum = _rfftn(data.square())

    spherical = mask is None
    if mask is None:
        mask = sphere_mask((size,) * 3, radius_voxels=size / 2, device=device, dtype=dtype)
    mask = mask.to(device=device, dtype=dtype)
    if spherical:
        mask_spectrum = _rfftn(mask, shape)
        std_map = _local_std(spectrum, squared_spectrum, mask_spectrum, mask.sum(), shape)
        std_floor = std_map.max() * 1e-4

    best_score = torch.full(shape, -math.inf, device=device, dtype=dtype)
    best_index = torch.zeros(shape, device=device, dtype=torch.int64)
    for start in range(0, rotations.shape[0], rotation_batch):
        batch = rotations[start : start + rotation_batch].to(device=device, dtype=dtype)
        rotated = rotate_volume(template[None], batch)
        filtered = _irfftn(_rfftn(rotated) * kernel, (size,) * 3)
        rotated_masks = mask[None].expand_as(filtered) if spherical else rotate_volume(mask[None], batch)
        normalised = _normalise_under_mask(filtered, rotated_masks)
        correlation = _irfftn(spectrum * _rfftn(normalised, shape).conj(), shape)
        if spherical:
            # The denominator n σ_M(p) is the same for every rotation: divide once, after the maximum.
            scores = correlation
        else:
            mask_spectra = _rfftn(rotated_masks, shape)
            counts = rotated_masks.sum(dim=_DIMS).reshape(-1, 1, 1, 1)
            local = _local_std(spectrum, squared_spectrum, mask_spectra, counts, shape)
            scores = correlation / (counts * torch.clamp(local, min=local.amax() * 1e-4))
        batch_best, batch_index = scores.max(dim=0)
        better = batch_best > best_score
        best_score = torch.maximum(batch_best, best_score)
        best_index = torch.where(better, batch_index + start, best_index)
        if progress is not None:
            progress(min(start + rotation_batch, rotations.shape[0]))
    if spherical:
        best_score = best_score / (mask.sum() * torch.clamp(std_map, min=std_floor))
    # Index 0 of the circular correlation is the template's corner on voxel 0: roll so that it is its centre.
    centre = size // 2
    best_score = torch.roll(best_score, shifts=(centre,) * 3, dims=_DIMS)
    best_index = torch.roll(best_index, shifts=(centre,) * 3, dims=_DIMS)
    return best_score, best_index
