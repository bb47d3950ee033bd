"""Centred FFTs, frequency grids and radial (shell) averages.

All transforms use ``torch.fft`` (cuFFT on CUDA, pocketfft on CPU); nothing here leaves torch.

Layouts. A *full* spectrum has the shape of the real-space array; a *half* (``rfft``) spectrum keeps only
``X // 2 + 1`` samples on the last axis (non-negative x frequencies), as ``torch.fft.rfftn`` returns. A
*centred* spectrum has the zero frequency at index ``N // 2`` on each (full) axis, the box-centre convention
of the project; a non-centred one has it at index 0, as ``torch.fft.fftn`` returns. The half axis of a half
spectrum is never shifted.

Frequencies are in cycles/Å when ``voxel_size_a`` is given and in cycles/voxel when it is 1 (the default).
Vectors of frequencies are in ``(x, y[, z])`` order, the reverse of the spatial axis order ``([Z,] Y, X)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "fftn_centered",
    "frequency_grid",
    "hermitian_half_to_centered",
    "ifftn_centered",
    "irfftn_centered",
    "nyquist_samples",
    "radial_average",
    "radial_frequency",
    "rfftn_centered",
    "shell_index",
]


def fftn_centered(x: torch.Tensor, dim: Sequence[int] = (-3, -2, -1)) -> torch.Tensor:
    """Fourier transform with the origin at the box centre in both spaces.

    ``fftshift(fftn(ifftshift(x)))`` over ``dim``: the real-space voxel ``N // 2`` is the phase origin and
    the zero frequency lands at index ``N // 2``.

    Args:
        x: real or complex tensor ``(..., Z, Y, X)`` (any axes named in ``dim``).
        dim: axes to transform.

    Returns:
        Complex tensor of the same shape, centred spectrum.
    """
    dim = tuple(dim)
    return torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(x, dim=dim), dim=dim), dim=dim)


def ifftn_centered(spectrum: torch.Tensor, dim: Sequence[int] = (-3, -2, -1)) -> torch.Tensor:
    """Inverse of :func:`fftn_centered`: ``fftshift(ifftn(ifftshift(spectrum)))`` over ``dim``.

    Args:
        spectrum: complex centred spectrum ``(..., Z, Y, X)``.
        dim: axes to transform.

    Returns:
        Complex tensor of the same shape (take ``.real`` for a real signal).
    """
    dim = tuple(dim)
    return torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(spectrum, dim=dim), dim=dim), dim=dim)


def rfftn_centered(x: torch.Tensor, dim: Sequence[int] = (-3, -2, -1)) -> torch.Tensor:
    """Half (``rfft``) spectrum of a real tensor, phase origin at the box centre, full axes centred.

    Args:
        x: real tensor ``(..., Z, Y, X)``.
        dim: axes to transform; the last one is halved.

    Returns:
        Complex tensor ``(..., Z, Y, X // 2 + 1)``: zero frequency at index ``N // 2`` on the full axes and
        at index 0 on the half axis.
    """
    dim = tuple(dim)
    spectrum = torch.fft.rfftn(torch.fft.ifftshift(x, dim=dim), dim=dim)
    return torch.fft.fftshift(spectrum, dim=dim[:-1])


def irfftn_centered(
    spectrum: torch.Tensor, s: Sequence[int], dim: Sequence[int] = (-3, -2, -1)
) -> torch.Tensor:
    """Inverse of :func:`rfftn_centered`.

    Args:
        spectrum: complex half spectrum ``(..., Z, Y, X // 2 + 1)`` as :func:`rfftn_centered` returns.
        s: real-space sizes of the transformed axes, e.g. ``(Z, Y, X)`` (needed to tell even from odd X).
        dim: axes to transform; the last one is the half axis.

    Returns:
        Real tensor ``(..., Z, Y, X)``.
    """
    dim = tuple(dim)
    unshifted = torch.fft.ifftshift(spectrum, dim=dim[:-1])
    return torch.fft.fftshift(torch.fft.irfftn(unshifted, s=tuple(s), dim=dim), dim=dim)


def hermitian_half_to_centered(half: torch.Tensor, size_x: int) -> torch.Tensor:
    """A real, centrosymmetric Fourier quantity in FFTW's half layout, as a full centred volume.

    RELION's and Warp's 3-D CTF volumes (``rlnCtfImage``) are stored as the non-negative x frequencies of a
    non-centred spectrum (zero frequency at index 0, negative frequencies wrapped), the layout of
    ``torch.fft.rfftn``. The missing half follows from ``w(-k) = w(k)``.

    Args:
        half: real tensor ``(..., Z, Y, size_x // 2 + 1)``, non-centred half layout.
        size_x: the full length of the last axis.

    Returns:
        ``(..., Z, Y, size_x)`` with the zero frequency at index ``N // 2`` on every axis (the project's
        centred layout), same dtype and device.
    """
    n_half = size_x // 2 + 1
    if half.shape[-1] != n_half:
        raise ValueError(f"the last axis must have size_x // 2 + 1 = {n_half} samples, got {half.shape[-1]}")
    # w(-k): index (-z) mod Z and (-y) mod Y, from a flip followed by a roll by one sample
    mirrored = torch.roll(torch.flip(half, dims=(-3, -2)), shifts=(1, 1), dims=(-3, -2))
    negative_x = size_x - torch.arange(n_half, size_x, device=half.device)
    full = torch.cat((half, mirrored[..., negative_x]), dim=-1)
    return torch.fft.fftshift(full, dim=(-3, -2, -1))


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(n) for n in shape)
    if len(shape) not in (1, 2, 3) or min(shape) < 1:
        raise ValueError(f"shape must be (Z, Y, X), (Y, X) or (X,) with positive sizes, got {shape}")
    return shape


def frequency_grid(
    shape: Sequence[int],
    *,
    voxel_size_a: float = 1.0,
    rfft: bool = False,
    centered: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Frequency vector of every Fourier sample.

    Args:
        shape: real-space shape ``(Z, Y, X)``, ``(Y, X)`` or ``(X,)``.
        voxel_size_a: voxel size in Å; frequencies are in cycles/Å (cycles/voxel when 1).
        rfft: half spectrum (last axis ``X // 2 + 1`` long) instead of the full one.
        centered: zero frequency at index ``N // 2`` of each full axis (else at index 0).
        device, dtype: of the result.

    Returns:
        Tensor ``(Z, Y, X', 3)`` with ``(kx, ky, kz)`` on the last axis (``(Y, X', 2)`` with ``(kx, ky)`` for
        2-D shapes, ``(X', 1)`` for 1-D ones), ``X' = X // 2 + 1`` when ``rfft`` else ``X``.
    """
    shape = _check_shape(shape)
    axes = []
    for i, n in enumerate(shape):
        if rfft and i == len(shape) - 1:
            axis = torch.fft.rfftfreq(n, d=voxel_size_a, device=device, dtype=dtype)
        else:
            axis = torch.fft.fftfreq(n, d=voxel_size_a, device=device, dtype=dtype)
            if centered:
                axis = torch.fft.fftshift(axis)
        axes.append(axis)
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.stack(grids[::-1], dim=-1)


def nyquist_samples(
    shape: Sequence[int],
    *,
    rfft: bool = False,
    centered: bool = True,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Which Fourier samples lie on the Nyquist plane of an even axis, per axis.

    On an even axis the sample at ``±1/2`` cycles/voxel stands for both signs (they alias), so a kernel that
    is not symmetric under that sign change (an asymmetric wedge, an astigmatic CTF) must treat it specially
    to stay Friedel symmetric on the grid.

    Returns:
        Boolean tensor ``(Z, Y, X', 3)`` (``(Y, X', 2)`` for 2-D shapes), layout and ``(x, y[, z])`` order as
        in :func:`frequency_grid`; all False along odd axes.
    """
    shape = _check_shape(shape)
    axes = []
    for i, n in enumerate(shape):
        half_axis = rfft and i == len(shape) - 1
        length = n // 2 + 1 if half_axis else n
        axis = torch.zeros(length, dtype=torch.bool, device=device)
        if n % 2 == 0:
            axis[0 if centered and not half_axis else n // 2] = True
        axes.append(axis)
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.stack(grids[::-1], dim=-1)


def radial_frequency(
    shape: Sequence[int],
    *,
    voxel_size_a: float = 1.0,
    rfft: bool = False,
    centered: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Magnitude ``|k|`` of :func:`frequency_grid` (same arguments): tensor ``(Z, Y, X')`` or ``(Y, X')``."""
    grid = frequency_grid(
        shape, voxel_size_a=voxel_size_a, rfft=rfft, centered=centered, device=device, dtype=dtype
    )
    return torch.linalg.vector_norm(grid, dim=-1)


def shell_index(
    shape: Sequence[int],
    *,
    rfft: bool = False,
    centered: bool = True,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Fourier-shell number of every Fourier sample.

    Each axis is expressed in cycles/voxel, so non-cubic boxes get spherical shells; the shell of a sample is
    ``⌊|k| N + ½⌋`` with ``N = min(shape)`` (rounded half up, so that a sample halfway between two shells
    goes to the outer one whatever their parity), i.e. shells are ``1 / min(shape)`` cycles/voxel wide and
    shell ``N // 2`` is at Nyquist. For a cubic box of size ``N`` this is the usual ``round(|k| N)``: no
    sample lies halfway there.

    Returns:
        ``torch.long`` tensor ``(Z, Y, X')`` (or ``(Y, X')``), layout as in :func:`frequency_grid`.
    """
    shape = _check_shape(shape)
    radius = radial_frequency(shape, rfft=rfft, centered=centered, device=device, dtype=torch.float64)
    return torch.floor(radius * min(shape) + 0.5).long()


def radial_average(
    values: torch.Tensor,
    n_shells: int | None = None,
    *,
    spatial_dims: int = 3,
    centered: bool = True,
) -> torch.Tensor:
    """Mean of a full-layout spectrum (or any function of frequency) over spherical Fourier shells.

    Shell ``i`` holds the samples with ``round(|k| * min(shape)) == i``, ``|k|`` in cycles/voxel (see
    :func:`shell_index`); its centre is ``i / min(shape)`` cycles/voxel. Differentiable in ``values``.

    Args:
        values: real or complex tensor ``(..., Z, Y, X)`` (``(..., Y, X)`` when ``spatial_dims=2``) in the
            full layout.
        n_shells: number of shells returned; default ``min(shape) // 2 + 1`` (up to Nyquist). Samples in
            higher shells (the corners) are ignored; a shell with no sample is NaN.
        spatial_dims: 3 for volumes, 2 for images.
        centered: whether ``values`` has the zero frequency at index ``N // 2`` (else at index 0).

    Returns:
        Tensor ``(..., n_shells)`` of the dtype of ``values``.
    """
    if spatial_dims not in (2, 3) or values.ndim < spatial_dims:
        raise ValueError(
            f"need spatial_dims in (2, 3) and values with at least that many dimensions, got "
            f"spatial_dims={spatial_dims}, values.shape={tuple(values.shape)}"
        )
    shape = tuple(values.shape[-spatial_dims:])
    if n_shells is None:
        n_shells = min(shape) // 2 + 1
    index = shell_index(shape, centered=centered, device=values.device).reshape(-1)
    inside = index < n_shells
    index = index[inside]
    flat = values.reshape(*values.shape[:-spatial_dims], -1)[..., inside]
    sums = torch.zeros(*flat.shape[:-1], n_shells, device=values.device, dtype=values.dtype)
    sums = sums.index_add(-1, index, flat)
    counts = torch.bincount(index, minlength=n_shells).to(sums.real.dtype)
    return sums / counts
