"""Fourier shell correlation, resolution at a threshold, spectral SNR from FSC.

Shells follow :func:`aitom.fourier.shell_index`: shell ``i`` holds the frequencies with
``round(|k| * min(shape)) == i`` (``|k|`` in cycles/voxel) and is centred on ``i / min(shape)`` cycles/voxel;
shells run from 0 (the zero frequency alone) to ``min(shape) // 2`` (Nyquist for even boxes).
"""

from __future__ import annotations

import math

import torch

from aitom.fourier.fft import shell_index

__all__ = ["fourier_shell_correlation", "fsc_resolutions", "resolution_at", "ssnr_from_fsc"]


def fourier_shell_correlation(
    a: torch.Tensor, b: torch.Tensor, *, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fourier shell correlation of two real volumes.

    ``FSC(shell) = Re Σ F_a F_b* / sqrt(Σ |F_a|² Σ |F_b|²)`` over the full spectrum of each shell (computed on
    the half spectrum with Friedel weights). A shell where either volume has no power gets 0.

    Args:
        a, b: real volumes ``(..., Z, Y, X)`` with the same ``(Z, Y, X)`` and broadcastable batch shapes.
        mask: optional real-space mask ``(Z, Y, X)`` (or broadcastable) multiplied into both volumes first.

    Returns:
        ``(frequency, fsc)``: shell centres in cycles/voxel ``(n,)`` with ``n = min(Z, Y, X) // 2 + 1``, and
        the correlation ``(..., n)``, differentiable in ``a`` and ``b``.
    """
    if a.ndim < 3 or b.ndim < 3 or a.shape[-3:] != b.shape[-3:]:
        raise ValueError(
            f"need two volumes (..., Z, Y, X) of the same size, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if not (a.is_floating_point() and b.is_floating_point()):
        raise ValueError(f"volumes must be real floating point, got {a.dtype} and {b.dtype}")
    if mask is not None:
        a, b = a * mask, b * mask
    shape = tuple(a.shape[-3:])
    n_ref = min(shape)
    n_shells = n_ref // 2 + 1
    index = shell_index(shape, rfft=True, centered=False, device=a.device)
    # Friedel weights: every half-spectrum column stands for itself and its mirror image, except kx = 0 and,
    # for even X, kx = Nyquist, which hold both members of each pair already.
    weight = torch.full((shape[-1] // 2 + 1,), 2.0, device=a.device, dtype=a.dtype)
    weight[0] = 1.0
    if shape[-1] % 2 == 0:
        weight[-1] = 1.0
    weight = weight.expand(index.shape).reshape(-1)
    index = index.reshape(-1)
    inside = index < n_shells
    index, weight = index[inside], weight[inside]

    dims = (-3, -2, -1)
    spectrum_a = torch.fft.rfftn(a, dim=dims).flatten(-3)[..., inside]
    spectrum_b = torch.fft.rfftn(b, dim=dims).flatten(-3)[..., inside]

    def shell_sum(values: torch.Tensor) -> torch.Tensor:
        sums = torch.zeros(*values.shape[:-1], n_shells, device=values.device, dtype=values.dtype)
        return sums.index_add(-1, index, values * weight)

    cross = shell_sum((spectrum_a * spectrum_b.conj()).real)
    power_a = shell_sum(spectrum_a.abs() ** 2)
    power_b = shell_sum(spectrum_b.abs() ** 2)
    denominator = torch.sqrt(power_a * power_b)
    has_power = denominator > 0
    fsc = torch.where(has_power, cross / torch.where(has_power, denominator, 1.0), 0.0)
    frequency = torch.arange(n_shells, device=a.device, dtype=a.dtype) / n_ref
    return frequency, fsc


def resolution_at(
    frequency: torch.Tensor, fsc: torch.Tensor, threshold: float = 0.143, *, voxel_size_a: float
) -> torch.Tensor:
    """Resolution (Å) where an FSC curve first drops below ``threshold``.

    Shell 0 (the zero frequency) is ignored. The crossing is linearly interpolated between the last shell
    at or above the threshold and the first one below it.

    Args:
        frequency: shell centres, cycles/voxel ``(n,)``, as :func:`fourier_shell_correlation` returns.
        fsc: FSC curves ``(..., n)``.
        threshold: e.g. 0.143 (gold-standard half maps) or 0.5.
        voxel_size_a: voxel size, Å.

    Returns:
        Tensor ``(...)`` in Å: ``voxel_size_a / f_crossing``; ``voxel_size_a / frequency[-1]`` (the finest
        shell measured: Nyquist, ``2 * voxel_size_a``, for even boxes, a little coarser for odd ones) if the
        curve never drops below the threshold; ``inf`` if it is already below at shell 1.
    """
    if frequency.ndim != 1 or fsc.shape[-1] != frequency.shape[0] or frequency.shape[0] < 2:
        raise ValueError(
            f"need frequency (n,) with n >= 2 and fsc (..., n), got {tuple(frequency.shape)} "
            f"and {tuple(fsc.shape)}"
        )
    below = fsc[..., 1:] < threshold
    crossed = below.any(dim=-1)
    first_below = torch.argmax(below.to(torch.uint8), dim=-1, keepdim=True) + 1
    last_above = (first_below - 1).clamp(min=1)
    fsc_after = torch.gather(fsc, -1, first_below).squeeze(-1)
    fsc_before = torch.gather(fsc, -1, last_above).squeeze(-1)
    frequency_after = frequency[first_below.squeeze(-1)]
    frequency_before = frequency[last_above.squeeze(-1)]
    fraction = (fsc_before - threshold) / (fsc_before - fsc_after)
    crossing = frequency_before + fraction * (frequency_after - frequency_before)
    resolution = voxel_size_a / crossing
    finest = voxel_size_a / frequency[-1].to(resolution.dtype)
    resolution = torch.where(crossed, resolution, finest)
    return torch.where(
        crossed & (first_below.squeeze(-1) == 1), torch.full_like(resolution, math.inf), resolution
    )


def fsc_resolutions(
    a: torch.Tensor, b: torch.Tensor, *, voxel_size_a: float, mask: torch.Tensor | None = None
) -> dict[str, float]:
    """Resolutions (Å) at the FSC = 0.5 and 0.143 thresholds of two volumes ``(Z, Y, X)``.

    Returns:
        ``{"fsc_0.5_a": ..., "fsc_0.143_a": ...}`` as Python floats (see :func:`resolution_at`).
    """
    if a.ndim != 3 or b.ndim != 3:
        raise ValueError(f"need two single volumes (Z, Y, X), got {tuple(a.shape)} and {tuple(b.shape)}")
    frequency, fsc = fourier_shell_correlation(a, b, mask=mask)
    return {
        f"fsc_{threshold}_a": float(resolution_at(frequency, fsc, threshold, voxel_size_a=voxel_size_a))
        for threshold in (0.5, 0.143)
    }


def ssnr_from_fsc(fsc: torch.Tensor, *, max_fsc: float = 0.999) -> torch.Tensor:
    """Spectral SNR ``FSC / (1 − FSC)`` of each of two volumes with independent noise.

    The FSC is clamped to ``[0, max_fsc]`` first, so the SNR is finite and non-negative (at most
    ``max_fsc / (1 − max_fsc)``, 999 by default). For the SNR of the average of the two, double it.
    """
    clamped = fsc.clamp(min=0.0, max=max_fsc)
    return clamped / (1.0 - clamped)
