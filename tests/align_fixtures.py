"""Small synthetic data for the alignment, averaging and classification tests (no files, no downloads)."""

from __future__ import annotations

import torch

from aitom.fourier import apply_missing_wedge
from aitom.geometry import fourier_shift, random_rotations, rotate_volume

# Blob centres (x, y, z, voxels from the box centre) and widths of an asymmetric test object.
_BLOBS = {
    "a": [((0, 0, 0), 1.5), ((6, 1, -2), 2.0), ((-3, 5, 2), 1.5), ((1, -4, 5), 2.0), ((-5, -2, -4), 1.2)],
    "b": [((0, 0, 0), 3.5), ((-6, 2, 1), 2.0), ((2, 6, -3), 1.5), ((4, -2, 4), 1.2)],
    "c": [((0, 0, 0), 2.5), ((0, 7, 0), 2.0), ((5, 0, 3), 2.0), ((-4, -5, 3), 1.5), ((2, 3, -6), 1.2)],
}


def blob_volume(size: int = 32, kind: str = "a", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An asymmetric sum of Gaussian blobs ``(size, size, size)``, centre of the box at ``size // 2``."""
    axis = torch.arange(size, dtype=torch.float64) - size // 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    volume = torch.zeros(size, size, size, dtype=torch.float64)
    for (cx, cy, cz), sigma in _BLOBS[kind]:
        volume += torch.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma**2))
    return volume.to(dtype)


def posed_subtomograms(
    reference: torch.Tensor,
    n: int,
    *,
    seed: int = 0,
    max_shift: float = 3.0,
    snr: float | None = None,
    tilt_range_deg: tuple[float, float] | None = (-60.0, 60.0),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` copies of ``reference`` rotated by random ``R``, shifted by ``t``, wedge-filtered, noisy.

    Returns:
        ``(volumes (n, S, S, S), rotations (n, 3, 3), shifts (n, 3))``.
    """
    generator = torch.Generator().manual_seed(seed)
    rotations = random_rotations(n, generator=generator, dtype=reference.dtype)
    shifts = (torch.rand(n, 3, generator=generator, dtype=reference.dtype) * 2 - 1) * max_shift
    volumes = fourier_shift(rotate_volume(reference, rotations), shifts)
    if tilt_range_deg is not None:
        volumes = apply_missing_wedge(volumes, *tilt_range_deg)
    if snr is not None:
        noise = torch.randn(volumes.shape, generator=generator, dtype=volumes.dtype)
        if tilt_range_deg is not None:
            noise = apply_missing_wedge(noise, *tilt_range_deg)
        signal_var = volumes.var(dim=(-3, -2, -1), keepdim=True)
        volumes = volumes + noise * (signal_var / (snr * noise.var(dim=(-3, -2, -1), keepdim=True))).sqrt()
    return volumes, rotations, shifts
