"""Rotate and shift volumes: trilinear rotation about the box centre, and sub-voxel Fourier shifts.

Conventions: volumes are ``(..., Z, Y, X)``; rotation matrices act on ``(x, y, z)`` column vectors; shifts
are ``(x, y, z)`` in voxels; the box centre is voxel ``N // 2`` on each axis. Rotations are active: a feature
at position ``p`` (relative to the centre) moves to ``R @ p + t``.
"""

from __future__ import annotations

import math

import torch
from torch.nn.functional import grid_sample

from aitom.geometry.coordinates import box_centre_xyz, voxel_coordinates_xyz


def rotate_volume(
    volume: torch.Tensor,
    rotation: torch.Tensor,
    shift_xyz: torch.Tensor | None = None,
    *,
    mode: str = "bilinear",
    padding_value: float = 0.0,
    centre_xyz: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rotate volumes actively about the box centre, then shift them.

    ``output(x) = volume(R.T @ (x - c - t) + c)``, sampled by ``torch.nn.functional.grid_sample``
    (``align_corners=True``), so a feature at ``c + p`` ends up at ``c + R @ p + t``. With RELION's matrix
    ``A`` of a particle's angles, ``rotate_volume(reference, A)`` is the particle and
    ``rotate_volume(particle, A.T)`` aligns it back. Differentiable with respect to ``volume``,
    ``rotation`` and ``shift_xyz``.

    Args:
        volume: ``(Z, Y, X)`` or ``(B, Z, Y, X)``, every size at least 2.
        rotation: ``(3, 3)`` or ``(B, 3, 3)`` rotation matrices on ``(x, y, z)``.
        shift_xyz: ``(3,)`` or ``(B, 3)`` shifts in voxels, ``(x, y, z)``; ``None`` for no shift.
        mode: ``"bilinear"`` (trilinear in 3-D) or ``"nearest"``.
        padding_value: value of samples taken from outside the box.
        centre_xyz: ``(3,)`` centre of rotation in voxels ``(x, y, z)``; default ``N // 2`` per axis.

    Returns:
        ``(Z, Y, X)`` when the volume, rotation and shift are all unbatched, else ``(B, Z, Y, X)`` (a batch
        of size 1 broadcasts against the others). Device and dtype of ``volume``.
    """
    if volume.ndim not in (3, 4):
        raise ValueError(f"volume must have shape (Z, Y, X) or (B, Z, Y, X), got {tuple(volume.shape)}")
    if min(volume.shape[-3:]) < 2:
        raise ValueError(f"every spatial size must be at least 2, got {tuple(volume.shape[-3:])}")
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    if rotation.shape[-2:] != (3, 3) or rotation.ndim not in (2, 3):
        raise ValueError(f"rotation must have shape (3, 3) or (B, 3, 3), got {tuple(rotation.shape)}")
    dtype, device = volume.dtype, volume.device
    if shift_xyz is None:
        shift_xyz = torch.zeros(3, dtype=dtype, device=device)
    if shift_xyz.shape[-1:] != (3,) or shift_xyz.ndim not in (1, 2):
        raise ValueError(f"shift_xyz must have shape (3,) or (B, 3), got {tuple(shift_xyz.shape)}")
    unbatched = volume.ndim == 3 and rotation.ndim == 2 and shift_xyz.ndim == 1

    volumes = volume.reshape(-1, *volume.shape[-3:])
    rotations = rotation.to(dtype=dtype, device=device).reshape(-1, 3, 3)
    shifts = shift_xyz.to(dtype=dtype, device=device).reshape(-1, 3)
    sizes = {volumes.shape[0], rotations.shape[0], shifts.shape[0]} - {1}
    if len(sizes) > 1:
        raise ValueError(
            f"batch sizes differ: volume {volumes.shape[0]}, rotation {rotations.shape[0]}, "
            f"shift {shifts.shape[0]}"
        )
    batch = sizes.pop() if sizes else 1

    shape = volumes.shape[-3:]
    centre = box_centre_xyz(shape, dtype=dtype, device=device) if centre_xyz is None else centre_xyz
    centre = torch.as_tensor(centre, dtype=dtype, device=device)
    relative = voxel_coordinates_xyz(shape, centre_xyz=centre, dtype=dtype, device=device).reshape(1, -1, 3)
    # Row-vector form of R.T @ (x - c - t) + c.
    source = (relative - shifts[:, None, :]) @ rotations + centre
    extent = torch.tensor([shape[2] - 1, shape[1] - 1, shape[0] - 1], dtype=dtype, device=device)
    grid = (2 * source / extent - 1).reshape(-1, *shape, 3).expand(batch, *shape, 3)

    padded_input = (volumes - padding_value)[:, None].expand(batch, 1, *shape)
    rotated = grid_sample(padded_input, grid, mode=mode, padding_mode="zeros", align_corners=True)
    rotated = rotated[:, 0] + padding_value
    return rotated[0] if unbatched else rotated


def _shift_phase(size: int, shift: torch.Tensor, one_sided: bool) -> torch.Tensor:
    """Phase factor ``exp(-2πi k t)`` along one axis; ``shift`` (...) -> (..., n_frequencies) complex.

    At the Nyquist frequency of an even size the factor is the real ``cos(π t)`` (the average of the +½ and
    −½ cycles/voxel factors), which keeps the spectrum Hermitian and the output real; for integer ``t`` it
    equals the exact ``(-1)^t``.
    """
    frequencies = (torch.fft.rfftfreq if one_sided else torch.fft.fftfreq)(
        size, dtype=shift.dtype, device=shift.device
    )
    angle = -2 * math.pi * shift[..., None] * frequencies
    # Only the Nyquist frequency of an even size is exactly ±0.5 cycles/voxel.
    imaginary = torch.where(frequencies.abs() == 0.5, torch.zeros_like(angle), torch.sin(angle))
    return torch.complex(torch.cos(angle), imaginary)


def fourier_shift(volume: torch.Tensor, shift_xyz: torch.Tensor) -> torch.Tensor:
    """Shift real volumes by any (sub-voxel) amount with a Fourier phase ramp, periodic boundaries.

    ``output(x) = volume(x - t)``: a feature at ``p`` moves to ``p + t``. Integer shifts equal
    ``torch.roll`` exactly (up to rounding). Shifting by ``t`` then ``-t`` restores the volume except for the
    Nyquist components of even-sized axes, which are scaled by ``cos²(π t)`` (a real signal's Nyquist term
    cannot carry a sub-voxel phase). Differentiable with respect to ``volume`` and ``shift_xyz``.

    Args:
        volume: ``(..., Z, Y, X)`` real.
        shift_xyz: ``(..., 3)`` shifts in voxels ``(x, y, z)``, leading dims broadcast against the volume's.

    Returns:
        ``(..., Z, Y, X)`` real, the broadcast batch shape, device and dtype of ``volume``.
    """
    if volume.ndim < 3 or volume.is_complex():
        raise ValueError(f"volume must be real with shape (..., Z, Y, X), got {tuple(volume.shape)}")
    if shift_xyz.ndim < 1 or shift_xyz.shape[-1] != 3:
        raise ValueError(f"shift_xyz must have shape (..., 3), got {tuple(shift_xyz.shape)}")
    depth, height, width = volume.shape[-3:]
    shift = shift_xyz.to(dtype=volume.dtype, device=volume.device)
    phase_x = _shift_phase(width, shift[..., 0], one_sided=True)[..., None, None, :]
    phase_y = _shift_phase(height, shift[..., 1], one_sided=False)[..., None, :, None]
    phase_z = _shift_phase(depth, shift[..., 2], one_sided=False)[..., :, None, None]
    spectrum = torch.fft.rfftn(volume, dim=(-3, -2, -1))
    shifted = spectrum * phase_z * phase_y * phase_x
    return torch.fft.irfftn(shifted, s=(depth, height, width), dim=(-3, -2, -1))


def rescale_volume(
    volume: torch.Tensor,
    voxel_size_a: float,
    new_voxel_size_a: float,
    *,
    shape: tuple[int, int, int] | None = None,
    padding_value: float = 0.0,
) -> torch.Tensor:
    """Resample a volume to another voxel size, about the box centre ``N // 2`` (kept at ``M // 2``).

    Output voxel ``m`` (per axis) samples the input at ``(m - M // 2) · new / old + N // 2`` (trilinear,
    ``grid_sample``). When the new voxels are coarser, the volume is first low-passed to their Nyquist
    frequency (:func:`aitom.fourier.lowpass` at ``2 · new_voxel_size_a``), so nothing aliases.

    Args:
        volume: ``(Z, Y, X)`` or ``(B, Z, Y, X)``, every size at least 2.
        voxel_size_a: the volume's voxel size, Å.
        new_voxel_size_a: the output's voxel size, Å.
        shape: output ``(Z, Y, X)``; default each size ``round(N · old / new)`` (at least 2): the same extent.
        padding_value: value of samples from outside the input box.

    Returns:
        ``shape`` (with the batch dimension when given), dtype and device of ``volume``.
    """
    from aitom.fourier.filters import lowpass

    if volume.ndim not in (3, 4) or min(volume.shape[-3:]) < 2:
        raise ValueError(
            f"volume must be (Z, Y, X) or (B, Z, Y, X) with sizes >= 2, got {tuple(volume.shape)}"
        )
    if not (voxel_size_a > 0 and new_voxel_size_a > 0):
        raise ValueError(f"voxel sizes must be positive, got {voxel_size_a} and {new_voxel_size_a} Å")
    ratio = voxel_size_a / new_voxel_size_a
    if shape is None:
        shape = tuple(max(2, round(n * ratio)) for n in volume.shape[-3:])
    if new_voxel_size_a > voxel_size_a:
        volume = lowpass(volume, 2 * new_voxel_size_a, voxel_size_a)
    axes = []
    for size_in, size_out in zip(volume.shape[-3:], shape):
        index = (torch.arange(size_out, dtype=volume.dtype, device=volume.device) - size_out // 2) / ratio
        axes.append(2 * (index + size_in // 2) / (size_in - 1) - 1)
    grid_z, grid_y, grid_x = torch.meshgrid(*axes, indexing="ij")
    volumes = volume.reshape(-1, 1, *volume.shape[-3:])
    grid = torch.stack((grid_x, grid_y, grid_z), dim=-1).expand(volumes.shape[0], *shape, 3)
    offset = padding_value
    sampled = grid_sample(volumes - offset, grid, mode="bilinear", align_corners=True) + offset
    return sampled.reshape(*volume.shape[:-3], *shape)


def _keys_cubic_weights(offset: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Weights of the 4 samples ``floor(p) - 1 ... floor(p) + 2`` for cubic convolution at fractional offset
    ``offset = p - floor(p)`` in [0, 1) (Keys 1981, a = -0.5: exact for quadratics, interpolating)."""
    t = offset
    return (
        ((-0.5 * t + 1.0) * t - 0.5) * t,
        (1.5 * t - 2.5) * t * t + 1.0,
        ((-1.5 * t + 2.0) * t + 0.5) * t,
        (0.5 * t - 0.5) * t * t,
    )


def resample_axis(
    volume: torch.Tensor,
    voxel_size_a: float,
    new_voxel_size_a: float,
    *,
    dim: int = -1,
    size: int | None = None,
) -> torch.Tensor:
    """Resample a volume along one axis to another spacing, about index ``N // 2`` (kept at ``M // 2``).

    Output sample ``m`` takes the input at position ``(m - M // 2) · new / old + N // 2`` by cubic convolution
    (Keys, a = −0.5), the samples beyond either end repeating the edge value. When the new spacing is coarser
    the axis is first low-passed to the new Nyquist frequency ``1 / (2 · new)`` (a 1-D raised-cosine filter
    along this axis only: :func:`aitom.fourier.lowpass`), so nothing aliases; an integer binning then keeps
    every ``k``-th sample of the filtered line (Fourier binning). Every other axis is untouched, so
    resampling the three axes one after another resamples anisotropic voxels to cubic ones.

    Args:
        volume: real tensor of any shape; ``dim`` is the axis resampled (at least 2 samples).
        voxel_size_a: spacing of the input along ``dim``, Å.
        new_voxel_size_a: spacing of the output along ``dim``, Å.
        dim: the axis.
        size: output length along ``dim``; default ``round(N · old / new)`` (at least 1): the same extent.

    Returns:
        Tensor of ``volume``'s shape with ``size`` samples along ``dim``, its dtype and device.
    """
    from aitom.fourier.filters import lowpass

    if not (0 < voxel_size_a < math.inf and 0 < new_voxel_size_a < math.inf):
        raise ValueError(f"voxel sizes must be positive and finite, got {voxel_size_a}, {new_voxel_size_a} Å")
    length = volume.shape[dim]
    if length < 2:
        raise ValueError(f"need at least 2 samples along dim {dim}, got shape {tuple(volume.shape)}")
    ratio = new_voxel_size_a / voxel_size_a
    if size is None:
        size = max(1, round(length / ratio))
    lines = volume.movedim(dim, -1)
    if ratio > 1:
        lines = lowpass(lines, 2 * new_voxel_size_a, voxel_size_a, spatial_dims=1)
    output_index = torch.arange(size, dtype=torch.float64, device=volume.device)
    position = (output_index - size // 2) * ratio + length // 2
    base = torch.floor(position)
    weights = _keys_cubic_weights((position - base).to(volume.dtype))
    resampled = torch.zeros((*lines.shape[:-1], size), dtype=volume.dtype, device=volume.device)
    for tap, weight in zip(range(-1, 3), weights):
        index = (base.long() + tap).clamp(0, length - 1)
        resampled += lines.index_select(-1, index) * weight
    return resampled.movedim(-1, dim)


def resample_to_cubic_voxels(
    volume: torch.Tensor,
    voxel_size_xyz_a: tuple[float, float, float],
    new_voxel_size_a: float,
    *,
    chunk_elements: int = 1 << 25,
) -> torch.Tensor:
    """Resample a ``(Z, Y, X)`` volume with (possibly anisotropic) voxels to cubic voxels of a given size.

    Each axis is resampled in turn with :func:`resample_axis` (its length becomes ``round(N · old / new)``,
    the same extent; the voxel ``N // 2`` stays at the centre ``M // 2``). The work is done in slabs of at
    most ``chunk_elements`` input voxels cut across another axis, so memory stays a few times the volume's
    size.

    Args:
        volume: real ``(Z, Y, X)`` tensor.
        voxel_size_xyz_a: its voxel size along (x, y, z), Å.
        new_voxel_size_a: the output's cubic voxel size, Å.
        chunk_elements: largest slab handled at once, voxels.

    Returns:
        ``(Z', Y', X')`` tensor of ``volume``'s dtype and device.
    """
    if volume.ndim != 3:
        raise ValueError(f"volume must be (Z, Y, X), got shape {tuple(volume.shape)}")
    for dim, voxel_size_a in zip((-1, -2, -3), voxel_size_xyz_a):
        if abs(voxel_size_a - new_voxel_size_a) <= 1e-6 * new_voxel_size_a:
            continue
        across = 0 if dim != -3 else 1  # slabs cut across an axis other than the one resampled
        slab = max(1, chunk_elements * volume.shape[across] // volume.numel())
        volume = torch.cat(
            [
                resample_axis(piece, voxel_size_a, new_voxel_size_a, dim=dim)
                for piece in volume.split(slab, dim=across)
            ],
            dim=across,
        )
    return volume
