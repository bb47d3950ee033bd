"""Fourier filters: apply a kernel, band-pass kernels with raised-cosine edges, band-pass and low-pass.

Kernels are in the half (``rfft``), non-centred layout by default, the layout that multiplies
``torch.fft.rfftn(volume)`` directly (see :mod:`aitom.fourier.fft` for layouts).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from aitom.errors import InputError
from aitom.fourier.fft import radial_frequency

__all__ = ["apply_fourier_filter", "bandpass", "bandpass_filter_kernel", "lowpass"]


def apply_fourier_filter(data: torch.Tensor, kernel: torch.Tensor, *, spatial_dims: int = 3) -> torch.Tensor:
    """Multiply a real signal's spectrum by a kernel: ``irfftn(rfftn(data) * kernel)``.

    Args:
        data: real tensor ``(..., Z, Y, X)`` (``(..., Y, X)`` when ``spatial_dims=2``).
        kernel: real or complex kernel in the half, non-centred layout ``(..., Z, Y, X // 2 + 1)``,
            broadcastable against the spectrum of ``data`` (e.g. one kernel per batch item).
        spatial_dims: number of trailing axes transformed (3 for volumes, 2 for images, 1 for lines).

    Returns:
        Real tensor of the broadcast batch shape and ``data``'s spatial shape and dtype.
    """
    if spatial_dims < 1 or data.ndim < spatial_dims:
        raise ValueError(f"data {tuple(data.shape)} has fewer than spatial_dims={spatial_dims} dimensions")
    if not data.is_floating_point():
        raise ValueError(f"data must be a real floating-point tensor, got {data.dtype}")
    shape = tuple(data.shape[-spatial_dims:])
    half_shape = (*shape[:-1], shape[-1] // 2 + 1)
    if kernel.ndim < spatial_dims or tuple(kernel.shape[-spatial_dims:]) != half_shape:
        raise ValueError(
            f"kernel shape {tuple(kernel.shape)} does not end with the half-spectrum shape {half_shape} "
            f"of data {tuple(data.shape)}"
        )
    dims = tuple(range(-spatial_dims, 0))
    spectrum = torch.fft.rfftn(data, dim=dims)
    return torch.fft.irfftn(spectrum * kernel, s=shape, dim=dims).to(data.dtype)


def _raised_cosine_step(frequency: torch.Tensor, cutoff: float, width: float) -> torch.Tensor:
    """1 below ``cutoff - width/2``, 0 above ``cutoff + width/2``, half a cosine period in between.

    With ``width <= 0`` a hard step, 1 up to and including ``cutoff``. Negate both arguments for the
    rising (high-pass) edge.
    """
    if width <= 0:
        return (frequency <= cutoff).to(frequency.dtype)
    position = ((frequency - (cutoff - width / 2)) / width).clamp(0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(math.pi * position))


def bandpass_filter_kernel(
    shape: Sequence[int],
    *,
    voxel_size_a: float,
    highpass_a: float | None = None,
    lowpass_a: float | None = None,
    edge_width_frac: float = 0.05,
    rfft: bool = True,
    centered: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Radial band-pass kernel with raised-cosine edges.

    The pass band is ``1/highpass_a <= |k| <= 1/lowpass_a`` (cycles/Å). Each edge is a half cosine period
    ``edge_width_frac * nyquist`` wide (Nyquist ``= 1 / (2 voxel_size_a)``), centred on its cut-off, where the
    kernel is 0.5: the kernel is exactly 1 further than half an edge inside the band and exactly 0 further
    than half an edge outside. ``edge_width_frac = 0`` gives hard edges (cut-offs inclusive).

    Args:
        shape: real-space shape ``(Z, Y, X)``, ``(Y, X)`` or ``(X,)`` (one axis: a 1-D filter).
        voxel_size_a: voxel size, Å.
        highpass_a: remove structure coarser than this (Å); None keeps the low frequencies.
        lowpass_a: remove structure finer than this (Å), at least Nyquist ``2 * voxel_size_a``; None keeps
            the high frequencies.
        edge_width_frac: width of each soft edge as a fraction of Nyquist, in [0, 1].
        rfft, centered: layout (see :mod:`aitom.fourier.fft`); the default multiplies ``rfftn`` output.
        device, dtype: of the result.

    Returns:
        Real kernel in ``[0, 1]`` of shape ``(Z, Y, X // 2 + 1)`` (``rfft``) or ``(Z, Y, X)``.

    Raises:
        InputError: non-positive sizes, ``lowpass_a`` finer than Nyquist, ``highpass_a <= lowpass_a``, or an
            edge width outside [0, 1].
    """
    if not voxel_size_a > 0:
        raise InputError(f"voxel size must be positive, got {voxel_size_a} Å")
    if not 0 <= edge_width_frac <= 1:
        raise InputError(f"edge width must be in [0, 1] (a fraction of Nyquist), got {edge_width_frac}")
    if lowpass_a is not None and lowpass_a < 2 * voxel_size_a:
        raise InputError(
            f"low-pass resolution {lowpass_a} Å is finer than Nyquist (2 x voxel size = {2 * voxel_size_a} Å)"
        )
    if highpass_a is not None and not highpass_a > 0:
        raise InputError(f"high-pass resolution must be positive, got {highpass_a} Å")
    if highpass_a is not None and lowpass_a is not None and highpass_a <= lowpass_a:
        raise InputError(
            f"high-pass resolution ({highpass_a} Å) must be coarser (larger) than low-pass ({lowpass_a} Å)"
        )
    frequency = radial_frequency(
        shape, voxel_size_a=voxel_size_a, rfft=rfft, centered=centered, device=device, dtype=dtype
    )
    width = edge_width_frac / (2 * voxel_size_a)
    kernel = torch.ones_like(frequency)
    if lowpass_a is not None:
        kernel = kernel * _raised_cosine_step(frequency, 1.0 / lowpass_a, width)
    if highpass_a is not None:
        kernel = kernel * _raised_cosine_step(-frequency, -1.0 / highpass_a, width)
    return kernel


def bandpass(
    volume: torch.Tensor,
    *,
    voxel_size_a: float,
    highpass_a: float | None = None,
    lowpass_a: float | None = None,
    edge_width_frac: float = 0.05,
    spatial_dims: int = 3,
) -> torch.Tensor:
    """Band-pass a real volume (or image) with :func:`bandpass_filter_kernel` (same arguments).

    Args:
        volume: real tensor ``(..., Z, Y, X)`` (``(..., Y, X)`` when ``spatial_dims=2``).

    Returns:
        Filtered tensor of the same shape and dtype.
    """
    kernel = bandpass_filter_kernel(
        volume.shape[-spatial_dims:],
        voxel_size_a=voxel_size_a,
        highpass_a=highpass_a,
        lowpass_a=lowpass_a,
        edge_width_frac=edge_width_frac,
        device=volume.device,
        dtype=volume.dtype,
    )
    return apply_fourier_filter(volume, kernel, spatial_dims=spatial_dims)


def lowpass(
    volume: torch.Tensor,
    resolution_a: float,
    voxel_size_a: float,
    *,
    edge_width_frac: float = 0.05,
    spatial_dims: int = 3,
) -> torch.Tensor:
    """Low-pass a real volume to ``resolution_a`` (Å) with a raised-cosine edge; see :func:`bandpass`."""
    return bandpass(
        volume,
        voxel_size_a=voxel_size_a,
        lowpass_a=resolution_a,
        edge_width_frac=edge_width_frac,
        spatial_dims=spatial_dims,
    )
