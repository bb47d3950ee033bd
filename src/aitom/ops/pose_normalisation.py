"""Pose normalisation of subtomograms by their centre of mass and principal axes (Zeng et al. 2018).

Each volume's density is optionally low-pass filtered and thresholded; its positive part (the weights) gives a
centre of mass and a weighted covariance ("inertia") tensor. The volume is moved so that the centre of mass
lies at the box centre and rotated so that the principal axes lie on the coordinate axes: the axis of largest
variance on x, the next on y, the smallest on z. Eigenvector signs are fixed by the sign of the third moment
of the weights along the x and y axes (made positive); the z axis is their cross product, so the matrix is a
proper rotation. Copies of one object in any pose are thus brought to one pose, up to interpolation, noise,
and the arbitrariness of axes with (near-)equal variances or vanishing third moments.

Zeng X, Leung MR, Zeev-Ben-Mordehai T, Xu M. *A convolutional autoencoder approach for mining features in
cellular electron cryo-tomograms and weakly supervised coarse segmentation.* J Struct Biol 202:150-160 (2018).
"""

from __future__ import annotations

import torch

from aitom.geometry import rotate_volume, voxel_coordinates_xyz
from aitom.ops.filters import gaussian_filter3d

__all__ = ["pose_normalise"]


def pose_normalise(
    volumes: torch.Tensor,
    *,
    sigma_voxels: float = 0.0,
    threshold_std: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Move each volume's centre of mass to the box centre and its principal axes onto x, y, z.

    The weights are ``max(d - mean(d) - threshold_std * std(d), 0)`` of the density ``d`` (the volume, or
    its Gaussian blur of ``sigma_voxels`` when that is positive), mean and standard deviation taken per
    volume. The centre of mass ``m`` (x, y, z, voxels) and the covariance ``C = Σ w (p − m)(p − m)ᵀ / Σ w``
    are taken over voxel positions ``p``; the rows of ``rotation`` are the eigenvectors of ``C`` by
    decreasing eigenvalue, the first two signed so that the third moment ``Σ w ((p − m)·e)³`` is not
    negative, the third their cross product. A volume whose weights are all zero is returned unchanged
    (identity rotation, zero shift).

    The output is ``rotate_volume(volume, rotation, rotation @ shift_xyz)`` (one trilinear interpolation): a
    feature at position ``p`` moves to ``c + R (p − m)``, with ``c`` the box centre (voxel ``N // 2``).

    Args:
        volumes: ``(B, Z, Y, X)`` or ``(B, 1, Z, Y, X)`` real volumes, any device.
        sigma_voxels: standard deviation of the Gaussian low-pass applied before the weights are taken,
            voxels; 0 for none. The output is made from the unfiltered volume.
        threshold_std: density threshold in standard deviations above the volume's mean.

    Returns:
        ``(normalised, rotation, shift_xyz)``: the normalised volumes in the input's shape, ``(B, 3, 3)``
        rotations (acting on (x, y, z) column vectors) and ``(B, 3)`` shifts ``c − m`` in voxels (x, y, z),
        applied before the rotation. Device and dtype of ``volumes``.

    Example:
        >>> volume = torch.zeros(1, 16, 16, 16)
        >>> volume[0, 5:7, 4:6, 3:12] = 1.0  # a bar along x, off centre
        >>> normalised, rotation, shift = pose_normalise(volume)
        >>> [round(v, 2) for v in shift[0].tolist()]
        [1.0, 3.5, 2.5]
    """
    if volumes.ndim == 5:
        if volumes.shape[1] != 1:
            raise ValueError(f"expected one channel in (B, 1, Z, Y, X), got {tuple(volumes.shape)}")
        normalised, rotation, shift_xyz = pose_normalise(
            volumes[:, 0], sigma_voxels=sigma_voxels, threshold_std=threshold_std
        )
        return normalised[:, None], rotation, shift_xyz
    if volumes.ndim != 4 or volumes.is_complex() or not volumes.is_floating_point():
        raise ValueError(f"volumes must be real (B, Z, Y, X) or (B, 1, Z, Y, X), got {tuple(volumes.shape)}")
    if sigma_voxels < 0:
        raise ValueError(f"sigma_voxels must not be negative, got {sigma_voxels}")
    dtype, device = volumes.dtype, volumes.device
    shape = volumes.shape[-3:]
    density = gaussian_filter3d(volumes, sigma_voxels) if sigma_voxels > 0 else volumes
    flat = density.flatten(1)
    level = flat.mean(1, keepdim=True) + threshold_std * flat.std(1, keepdim=True)
    weights = (flat - level).clamp(min=0)  # (B, V)
    total = weights.sum(1)  # (B,)
    empty = total <= 0
    weights = weights / torch.where(empty, torch.ones_like(total), total)[:, None]

    # positions relative to the box centre c, so the centre of mass is m - c and the shift c - m
    positions = voxel_coordinates_xyz(shape, dtype=dtype, device=device).reshape(-1, 3)  # (V, 3)
    centre_of_mass = weights @ positions  # (B, 3), zero where the weights are
    offsets = positions[None] - centre_of_mass[:, None]  # (B, V, 3)
    covariance = torch.einsum("bv,bvi,bvj->bij", weights, offsets, offsets)
    _, eigenvectors = torch.linalg.eigh(covariance)  # ascending eigenvalues, vectors in columns
    axes = eigenvectors.flip(-1).transpose(-1, -2)  # (B, 3, 3), rows by decreasing variance
    third_moment = torch.einsum("bv,bvk->bk", weights, (offsets @ axes[:, :2].transpose(-1, -2)) ** 3)
    signs = torch.where(third_moment < 0, -1.0, 1.0).to(dtype)
    first, second = axes[:, 0] * signs[:, :1], axes[:, 1] * signs[:, 1:]
    rotation = torch.stack([first, second, torch.linalg.cross(first, second)], dim=1)
    rotation = torch.where(empty[:, None, None], torch.eye(3, dtype=dtype, device=device), rotation)

    shift_xyz = -centre_of_mass
    normalised = rotate_volume(volumes, rotation, (rotation @ shift_xyz[..., None])[..., 0])
    return normalised, rotation, shift_xyz
