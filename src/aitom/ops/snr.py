"""Signal-to-noise ratio from pairs of aligned copies of the same structure (Frank & Al-Ali 1975).

Two copies ``a = s + n_a`` and ``b = s + n_b`` with independent noise of equal variance have the expected
correlation coefficient ``cc = var(s) / (var(s) + var(n))``, hence ``SNR = var(s) / var(n) = cc / (1 - cc)``.
Per frequency the same relation holds between the Fourier shell correlation and the spectral SNR of one copy
(:func:`aitom.fourier.ssnr_from_fsc`).
"""

from __future__ import annotations

import math

import torch

from aitom.errors import InputError
from aitom.fourier import fourier_shell_correlation, ssnr_from_fsc

__all__ = ["pair_correlations", "snr_from_cc", "snr_from_pairs", "ssnr_from_pairs"]


def _check_pairs(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.ndim != 4:
        raise InputError(
            f"need two stacks of paired volumes (P, Z, Y, X) of the same shape, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )
    if not (a.is_floating_point() and b.is_floating_point()):
        raise ValueError(f"volumes must be floating point, got {a.dtype} and {b.dtype}")


def pair_correlations(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Pearson correlation coefficient of each pair, over the voxels where ``mask`` is non-zero.

    Args:
        a, b: ``(P, Z, Y, X)`` paired volumes (aligned copies).
        mask: optional ``(Z, Y, X)`` weights in ``[0, 1]`` (e.g. a soft sphere); voxels are weighted by it.

    Returns:
        ``(P,)`` correlations in ``[-1, 1]`` (0 for a pair where either volume is constant).
    """
    _check_pairs(a, b)
    weight = (
        torch.ones(a.shape[-3:], device=a.device, dtype=a.dtype)
        if mask is None
        else mask.to(device=a.device, dtype=a.dtype).expand(a.shape[-3:])
    )
    if not weight.sum() > 0:
        raise InputError("the mask selects no voxel")
    total = weight.sum()
    centred_a = a - (a * weight).sum((-3, -2, -1), keepdim=True) / total
    centred_b = b - (b * weight).sum((-3, -2, -1), keepdim=True) / total
    covariance = (weight * centred_a * centred_b).sum((-3, -2, -1))
    spread_a = (weight * centred_a**2).sum((-3, -2, -1))
    spread_b = (weight * centred_b**2).sum((-3, -2, -1))
    # a constant volume's centred voxels are rounding errors of its mean, not zeros: a relative test
    rounding = (64 * torch.finfo(a.dtype).eps) ** 2
    varying = (spread_a > rounding * (weight * a**2).sum((-3, -2, -1))) & (
        spread_b > rounding * (weight * b**2).sum((-3, -2, -1))
    )
    variance = torch.sqrt(spread_a * spread_b)
    return torch.where(varying, covariance / variance.clamp_min(torch.finfo(a.dtype).tiny), 0.0)


def snr_from_cc(cc: torch.Tensor | float) -> torch.Tensor | float:
    """``SNR = cc / (1 - cc)`` with ``cc`` clamped to ``[0, 1)`` (a negative correlation means SNR 0)."""
    if isinstance(cc, torch.Tensor):
        clamped = cc.clamp(0.0, 1.0 - torch.finfo(cc.dtype).eps)
        return clamped / (1.0 - clamped)
    clamped = min(max(float(cc), 0.0), 1.0 - 1e-15)
    return clamped / (1.0 - clamped)


def snr_from_pairs(
    a: torch.Tensor,
    b: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    confidence: float = 0.95,
    n_bootstrap: int = 2000,
    seed: int = 0,
) -> dict[str, float | int]:
    """SNR of paired copies from their mean correlation, with a confidence interval.

    ``cc_mean`` is the mean of the per-pair correlations and ``snr = cc_mean / (1 - cc_mean)``. The interval
    is the percentile bootstrap over pairs (``n_bootstrap`` resamples, seeded) when there are at least two
    pairs; for a single pair it is the Fisher-z interval with the number of voxels in the mask as the sample
    size (Kish's effective number ``(Σw)² / Σw²`` for a soft mask), which is too narrow when the noise is
    correlated between voxels (e.g. after filtering).

    Args:
        a, b: ``(P, Z, Y, X)`` paired volumes: same structure, same pose, independent noise.
        mask: optional ``(Z, Y, X)`` weights (see :func:`pair_correlations`).
        confidence: coverage of the interval, in ``(0, 1)``.
        n_bootstrap: bootstrap resamples.
        seed: seed of the bootstrap.

    Returns:
        ``{"snr", "cc_mean", "ci_low", "ci_high", "n_pairs", "confidence"}``; the interval bounds are SNRs.
    """
    if not 0 < confidence < 1:
        raise InputError(f"confidence must be in (0, 1), got {confidence}")
    if n_bootstrap < 1:
        raise InputError(f"n_bootstrap must be >= 1, got {n_bootstrap}")
    cc = pair_correlations(a, b, mask).to(torch.float64).cpu()
    n_pairs = cc.numel()
    cc_mean = float(cc.mean())
    tail = (1 - confidence) / 2
    if n_pairs >= 2:
        generator = torch.Generator().manual_seed(seed)
        resamples = torch.randint(0, n_pairs, (n_bootstrap, n_pairs), generator=generator)
        means = cc[resamples].mean(-1)
        cc_low, cc_high = (
            float(v) for v in torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=means.dtype))
        )
    else:
        # a soft mask weighs voxels unequally: Kish's effective number (Σw)² / Σw² (the count for a 0/1 mask)
        weight = torch.ones(a.shape[-3:]) if mask is None else mask.to(torch.float64).expand(a.shape[-3:])
        n_voxels = float(weight.sum() ** 2 / weight.square().sum())
        z = math.atanh(min(max(cc_mean, -1 + 1e-15), 1 - 1e-15))
        half_width = _normal_quantile(1 - tail) / math.sqrt(max(n_voxels - 3, 1.0))
        cc_low, cc_high = math.tanh(z - half_width), math.tanh(z + half_width)
    return {
        "snr": snr_from_cc(cc_mean),
        "cc_mean": cc_mean,
        "ci_low": snr_from_cc(cc_low),
        "ci_high": snr_from_cc(cc_high),
        "n_pairs": n_pairs,
        "confidence": confidence,
    }


def _normal_quantile(probability: float) -> float:
    """Standard normal quantile."""
    return math.sqrt(2.0) * float(
        torch.special.erfinv(torch.tensor(2 * probability - 1, dtype=torch.float64))
    )


def ssnr_from_pairs(
    a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spectral SNR of one copy per Fourier shell: ``FSC / (1 - FSC)`` of the pair-averaged FSC.

    Args:
        a, b: ``(P, Z, Y, X)`` paired volumes.
        mask: optional real-space mask ``(Z, Y, X)`` applied to both.

    Returns:
        ``(frequency, ssnr)``: shell centres in cycles/voxel ``(n,)`` and the SNR per shell ``(n,)``
        (see :func:`aitom.fourier.fourier_shell_correlation` and :func:`aitom.fourier.ssnr_from_fsc`).
    """
    _check_pairs(a, b)
    frequency, fsc = fourier_shell_correlation(a, b, mask=mask)
    return frequency, ssnr_from_fsc(fsc.mean(0))
