"""Subtomogram reconstruction from 2-D particle tilt images by Fourier insertion (direct Fourier inversion).

Geometry. Tilt image ``t`` of a particle is the projection along the beam (Z) of the volume rotated actively
by ``rotations[t]`` = ``M`` (rows: image x, image y, beam, in the volume's (x, y, z) frame), i.e.
``image(u, v) = ∫ volume(M.T @ (u, v, w)) dw`` with ``u, v, w`` relative to the box centre (index ``S // 2``).
By the Fourier slice theorem its 2-D spectrum samples the volume's spectrum at ``k = M.T @ (kx, ky, 0)``. The
project's tilt convention (:mod:`aitom.simulate.tiltseries`: tilt ``α`` = projection of the volume rotated by
``Ry(α)``) is ``M = Ry(α)``; a RELION 5 tilt series gives ``M`` = the 3×3 part of its projection matrix
(tomogram frame) or that times the particle's RELION matrix ``A`` (particle frame, as RELION's
``reconstruct`` does: the tilt image is then the projection of the *reference* rotated by ``M A``).

Gridding. The full centred 2-D spectrum of every image (samples strictly inside the Nyquist circle) is
placed in a full centred 3-D spectrum by **trilinear** interpolation (each sample spreads to its 8 nearest
grid points with the trilinear weights; ``interpolation="nearest"`` puts it on the nearest one). Both members
of every Friedel pair are inserted (the full 2-D spectrum holds both), so the 3-D spectrum stays Hermitian
and its inverse transform real. Weights are gridded the same way; the reconstruction divides data by weight
(+ a Wiener constant) voxel by voxel, transforms back, divides by the Fourier transform of the gridding kernel
(``sinc²`` per axis for trilinear, ``sinc`` for nearest) and crops. :func:`reconstruct_subtomogram` pads the
images (``padding_factor``, default 2) so that the 3-D spectrum is sampled twice as finely as the box needs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from aitom.fourier.fft import fftn_centered, frequency_grid, ifftn_centered, radial_frequency

__all__ = [
    "RECONSTRUCTION_MODES",
    "FourierSums",
    "centre_contrast",
    "finish_reconstruction",
    "insert_for_reconstruction",
    "insert_tilt_images",
    "reconstruct_subtomogram",
]

#: CTF handling of :func:`reconstruct_subtomogram`
RECONSTRUCTION_MODES = ("wiener", "phase_flip")
_INTERPOLATIONS = ("trilinear", "nearest")


def _check_stack(images: torch.Tensor, rotations: torch.Tensor) -> int:
    if images.ndim < 3 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"images must have shape (..., T, S, S), got {tuple(images.shape)}")
    if rotations.shape != (*images.shape[:-2], 3, 3):
        raise ValueError(
            f"rotations must have shape {(*images.shape[:-2], 3, 3)} to match images {tuple(images.shape)}, "
            f"got {tuple(rotations.shape)}"
        )
    return images.shape[-1]


def _scatter_corners(
    positions: torch.Tensor, size: int, interpolation: str
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Grid corners of ``positions (N, 3)`` (x, y, z grid indices): ``[(flat index or -1, weight)]``."""
    if interpolation == "nearest":
        nearest = torch.round(positions).long()
        inside = ((nearest >= 0) & (nearest < size)).all(dim=-1)
        flat = (nearest[:, 2] * size + nearest[:, 1]) * size + nearest[:, 0]
        return [(torch.where(inside, flat, -1), torch.ones_like(positions[:, 0]))]
    lower_float = torch.floor(positions)
    fraction = positions - lower_float
    lower = lower_float.long()
    axis_weights = (1.0 - fraction, fraction)
    axis_inside = ((lower >= 0) & (lower < size), (lower >= -1) & (lower < size - 1))
    base = (lower[:, 2] * size + lower[:, 1]) * size + lower[:, 0]
    corners = []
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                weight = axis_weights[dx][:, 0] * axis_weights[dy][:, 1] * axis_weights[dz][:, 2]
                inside = axis_inside[dx][:, 0] & axis_inside[dy][:, 1] & axis_inside[dz][:, 2]
                flat = base + ((dz * size + dy) * size + dx)
                corners.append((torch.where(inside, flat, -1), weight))
    return corners


def insert_tilt_images(
    images: torch.Tensor,
    rotations: torch.Tensor,
    weights_2d: torch.Tensor | None = None,
    *,
    data_filter: torch.Tensor | None = None,
    interpolation: str = "trilinear",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Insert the 2-D spectra of tilt images into 3-D spectra (Fourier slice theorem, see module docstring).

    Args:
        images: ``(..., T, S, S)`` real tilt images (phase origin at pixel ``S // 2``), any batch dims.
        rotations: ``(..., T, 3, 3)`` projection orientation of every image (rows: image x, image y, beam).
        weights_2d: ``(..., T, S, S)`` real weight of every 2-D Fourier sample, full centred layout
            (``fftn_centered``; e.g. ``(dose · CTF)²``); default 1 (the weight then counts samples).
        data_filter: ``(..., T, S, S)`` factor applied to every 2-D spectrum before insertion, full centred
            layout (e.g. ``dose · CTF``); default none.
        interpolation: ``"trilinear"`` or ``"nearest"`` gridding.

    Returns:
        ``(data, weight)``: complex ``(..., S, S, S)`` and real ``(..., S, S, S)`` full centred 3-D spectra
        (zero frequency at index ``S // 2``, axes (kz, ky, kx)), sums over the tilts of the gridded
        ``filter · spectrum`` and ``weights_2d``. Device and dtype of ``images``; differentiable in
        ``images``.
    """
    _check_stack(images, rotations)
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}")
    weight = torch.ones_like(images) if weights_2d is None else weights_2d.expand(images.shape)
    data, (weight_3d,) = _insert(images, rotations, [weight], data_filter, interpolation)
    return data, weight_3d


def _insert(
    images: torch.Tensor,
    rotations: torch.Tensor,
    weight_maps: list[torch.Tensor],
    data_filter: torch.Tensor | None,
    interpolation: str,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """:func:`insert_tilt_images` with any number of weight maps ``(..., T, S, S)`` gridded alongside."""
    size = images.shape[-1]
    batch = images.shape[:-3]
    n_tilts = images.shape[-3]
    spectrum = fftn_centered(images, dim=(-2, -1))
    if data_filter is not None:
        spectrum = spectrum * data_filter

    frequency = frequency_grid((size, size), device=images.device, dtype=images.dtype) * size  # (S, S, 2)
    inside = (frequency**2).sum(dim=-1) < (size / 2) ** 2  # strictly inside Nyquist: every sample has a mate
    k2 = frequency[inside]  # (M, 2) (kx, ky) in grid units
    n_batch = images[..., 0, 0, 0].numel()
    matrices = rotations.to(images.dtype).reshape(n_batch, n_tilts, 1, 3, 3)
    k3 = k2[:, 0, None] * matrices[..., 0, :] + k2[:, 1, None] * matrices[..., 1, :]  # (B, T, M, 3)
    positions = (k3 + size // 2).reshape(-1, 3)
    values = spectrum.reshape(n_batch, n_tilts, size, size)[..., inside].reshape(-1)
    weights = [w.reshape(n_batch, n_tilts, size, size)[..., inside].reshape(-1) for w in weight_maps]
    n_samples = n_tilts * k2.shape[0]
    volume_offset = torch.arange(n_batch, device=images.device).repeat_interleave(n_samples) * size**3

    columns = torch.stack((values.real, values.imag, *weights), dim=-1)  # (N, 2 + n_weights)
    n_voxels = n_batch * size**3
    accumulated = images.new_zeros((n_voxels + 1, columns.shape[-1]))  # last row: samples off the grid
    for flat, corner_weight in _scatter_corners(positions, size, interpolation):
        index = torch.where(flat >= 0, flat + volume_offset, n_voxels)
        accumulated = accumulated.index_add(0, index, columns * corner_weight[:, None])
    accumulated = accumulated[:n_voxels].reshape(*batch, size, size, size, columns.shape[-1])
    data = torch.complex(accumulated[..., 0], accumulated[..., 1])
    return data, list(accumulated[..., 2:].unbind(-1))


def _gridding_correction(
    size: int, interpolation: str, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Fourier transform of the gridding kernel on the real-space grid: ``(S, S, S)``, 1 at the centre."""
    axis = torch.sinc((torch.arange(size, device=device, dtype=dtype) - size // 2) / size)
    if interpolation == "trilinear":
        axis = axis**2
    return axis[:, None, None] * axis[None, :, None] * axis[None, None, :]


def _upsample_centered(values: torch.Tensor, padded: int) -> torch.Tensor:
    """Bilinear resampling of full centred 2-D maps ``(..., S, S)`` onto a ``padded``-sized centred grid."""
    size = values.shape[-1]
    coordinate = (torch.arange(padded, device=values.device, dtype=values.dtype) - padded // 2) * (
        size / padded
    )
    position = (coordinate + size // 2).clamp(0, size - 1)
    lower = torch.floor(position).long().clamp(max=size - 2)
    fraction = position - lower
    rows = values[..., lower, :] * (1 - fraction)[:, None] + values[..., lower + 1, :] * fraction[:, None]
    return rows[..., lower] * (1 - fraction) + rows[..., lower + 1] * fraction


class FourierSums(NamedTuple):
    """Padded 3-D Fourier accumulators of :func:`insert_for_reconstruction` (full centred layout).

    ``data`` complex ``(..., P, P, P)``, ``normaliser`` and ``weight`` real ``(..., P, P, P)`` with
    ``P = padding_factor · image_size``; sums of several particles (or batches) add element-wise.
    """

    data: torch.Tensor
    normaliser: torch.Tensor
    weight: torch.Tensor


def _check_options(mode: str, padding_factor: int, interpolation: str) -> None:
    if mode not in RECONSTRUCTION_MODES:
        raise ValueError(f"mode must be one of {RECONSTRUCTION_MODES}, got {mode!r}")
    if padding_factor < 1:
        raise ValueError(f"padding_factor must be >= 1, got {padding_factor}")
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}")


def insert_for_reconstruction(
    images: torch.Tensor,
    rotations: torch.Tensor,
    ctfs: torch.Tensor | None = None,
    dose_weights: torch.Tensor | None = None,
    *,
    mode: str = "wiener",
    ctf_premultiplied: bool = False,
    padding_factor: int = 2,
    interpolation: str = "trilinear",
) -> FourierSums:
    """First half of :func:`reconstruct_subtomogram`: CTF/dose-filtered insertion into padded 3-D spectra.

    Arguments as in :func:`reconstruct_subtomogram`. Returns the accumulators with the batch dims of
    ``images`` (sum them over particles, e.g. ``.sum(dim=0)`` per field, for a merged reconstruction, then
    call :func:`finish_reconstruction`).
    """
    size = _check_stack(images, rotations)
    _check_options(mode, padding_factor, interpolation)
    ones = torch.ones((), device=images.device, dtype=images.dtype)
    ctf = ones if ctfs is None else ctfs.to(images.dtype)
    dose = ones if dose_weights is None else dose_weights.to(images.dtype)
    if ctf_premultiplied:
        data_filter = dose
        normaliser = dose**2 * (ctf**2 if mode == "wiener" else ctf.abs())
    elif mode == "wiener":
        data_filter = dose * ctf
        normaliser = (dose * ctf) ** 2
    else:
        data_filter = dose * torch.where(ctf < 0, -ones, ones)
        normaliser = dose**2
    weight_2d = ((dose * ctf) ** 2).expand(images.shape)
    normaliser = normaliser.expand(images.shape)

    filtered = ifftn_centered(fftn_centered(images, dim=(-2, -1)) * data_filter, dim=(-2, -1)).real
    padded_size = padding_factor * size
    start = padded_size // 2 - size // 2
    padded = images.new_zeros((*images.shape[:-2], padded_size, padded_size))
    padded[..., start : start + size, start : start + size] = filtered
    if padding_factor > 1:
        normaliser = _upsample_centered(normaliser, padded_size)
        weight_2d = _upsample_centered(weight_2d, padded_size)
    data, (normaliser_3d, weight_3d) = _insert(
        padded, rotations, [normaliser, weight_2d], None, interpolation
    )
    return FourierSums(data, normaliser_3d, weight_3d)


def finish_reconstruction(
    sums: FourierSums,
    image_size: int,
    *,
    wiener_constant: float = 0.1,
    padding_factor: int = 2,
    interpolation: str = "trilinear",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Second half of :func:`reconstruct_subtomogram`: divide, transform back, correct gridding, crop.

    Args:
        sums: accumulators from :func:`insert_for_reconstruction` (possibly summed over particles).
        image_size: ``S``, the box of the result.
        wiener_constant, padding_factor, interpolation: as in :func:`reconstruct_subtomogram` (the last two
            must be those of the insertion).

    Returns:
        ``(volume, weight)`` as :func:`reconstruct_subtomogram` returns them.
    """
    _check_options("wiener", padding_factor, interpolation)
    if not wiener_constant > 0:
        raise ValueError(f"wiener_constant must be positive, got {wiener_constant}")
    data, normaliser, weight = sums
    padded_size = data.shape[-1]
    if padded_size != padding_factor * image_size:
        raise ValueError(f"sums of size {padded_size} do not match {padding_factor} x {image_size}")
    device, dtype = normaliser.device, normaliser.dtype
    radius = frequency_grid((padded_size,) * 3, device=device, dtype=dtype).norm(dim=-1) * padded_size
    sampled = (normaliser > 0) & (radius < padded_size / 2)
    epsilon = (
        wiener_constant
        * (normaliser * sampled).sum(dim=(-3, -2, -1), keepdim=True)
        / sampled.sum(dim=(-3, -2, -1), keepdim=True).clamp(min=1)
    )
    volume = ifftn_centered(data / (normaliser + epsilon)).real
    volume = volume / _gridding_correction(padded_size, interpolation, device, dtype)
    start = padded_size // 2 - image_size // 2
    volume = volume[..., start : start + image_size, start : start + image_size, start : start + image_size]
    subsample = torch.arange(image_size, device=device) * padding_factor + (
        padded_size // 2 - padding_factor * (image_size // 2)
    )
    return volume, weight[..., subsample, :, :][..., subsample, :][..., subsample]


def reconstruct_subtomogram(
    images: torch.Tensor,
    rotations: torch.Tensor,
    ctfs: torch.Tensor | None = None,
    dose_weights: torch.Tensor | None = None,
    *,
    mode: str = "wiener",
    wiener_constant: float = 0.1,
    ctf_premultiplied: bool = False,
    padding_factor: int = 2,
    interpolation: str = "trilinear",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstruct subtomograms from their tilt images with CTF and dose weighting.

    With the image spectrum ``X = d · c · F`` (raw images: dose filter ``d``, CTF ``c``) or ``X = d · c² · F``
    (``ctf_premultiplied``: images already multiplied by their CTF, as WarpTools and RELION 5 write 2-D
    stacks), the Fourier voxels accumulate

    * ``mode="wiener"``: data ``Σ d·c·X`` (premultiplied: ``Σ d·X``), weight ``W = Σ (d·c)²``; the result is
      ``data / (W + ε)`` → ``F`` where sampled;
    * ``mode="phase_flip"``: data ``Σ d·sign(c)·X`` (premultiplied: ``Σ d·X``), normaliser ``Σ d²``
      (premultiplied: ``Σ d²·|c|``); the result is ``|c|``-weighted, i.e. not amplitude-corrected.

    ``ε = wiener_constant × mean(normaliser over the sampled Fourier voxels inside Nyquist)``, so the
    constant does not depend on the number of tilts or the scale of the CTF. This is
    :func:`insert_for_reconstruction` followed by :func:`finish_reconstruction`; summing the former's output
    over particles (in the particle frame) before the latter gives the merged reconstruction of RELION's
    ``reconstruct``.

    Args:
        images: ``(..., T, S, S)`` tilt images of each particle (box centre ``S // 2``), any batch dims.
        rotations: ``(..., T, 3, 3)`` projection orientation of every image (see module docstring).
        ctfs: ``(..., T, S, S)`` CTF of every image in the full centred layout (``ctf_2d(..., rfft=False,
            centered=True)``); ``None`` for no CTF (``c = 1``).
        dose_weights: ``(..., T, S, S)`` dose filter of every image (full centred layout); ``None`` for 1.
        mode: one of :data:`RECONSTRUCTION_MODES`.
        wiener_constant: relative Wiener constant (> 0).
        ctf_premultiplied: whether the images are already multiplied by their CTF.
        padding_factor: oversampling of the 3-D spectrum (images zero-padded to ``padding_factor · S``).
        interpolation: ``"trilinear"`` or ``"nearest"`` gridding.

    Returns:
        ``(volume, weight)``: real ``(..., S, S, S)`` reconstruction (values per voxel such that its line
        integrals are the images) and the real ``(..., S, S, S)`` 3-D weight ``Σ (d·c)²`` of every Fourier
        voxel in the full centred layout (zero frequency at ``S // 2``): the sampled missing wedge times the
        CTF² and dose weighting, for wedge-aware averaging.
    """
    if not wiener_constant > 0:
        raise ValueError(f"wiener_constant must be positive, got {wiener_constant}")
    sums = insert_for_reconstruction(
        images,
        rotations,
        ctfs,
        dose_weights,
        mode=mode,
        ctf_premultiplied=ctf_premultiplied,
        padding_factor=padding_factor,
        interpolation=interpolation,
    )
    return finish_reconstruction(
        sums,
        images.shape[-1],
        wiener_constant=wiener_constant,
        padding_factor=padding_factor,
        interpolation=interpolation,
    )


def centre_contrast(volumes: torch.Tensor) -> torch.Tensor:
    """Mean of the central sphere (radius S/4 voxels) minus the mean of the shell from S/4 to S/2 voxels.

    Positive for a particle brighter than its surroundings (protein positive), negative for a dark one;
    sign-aware and offset-free, so it tells the contrast of centred particles or maps whatever their mean.

    Args:
        volumes: ``(..., S, S, S)`` cubes, centre at voxel ``S // 2``.

    Returns:
        ``(...)`` tensor of the volumes' dtype.
    """
    size = volumes.shape[-1]
    radius = radial_frequency(volumes.shape[-3:], device=volumes.device) * size  # voxels from the centre
    core, shell = radius <= size / 4, (radius > size / 4) & (radius <= size / 2)
    return volumes[..., core].mean(dim=-1) - volumes[..., shell].mean(dim=-1)
