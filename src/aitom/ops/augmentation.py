"""Random views of subtomograms that respect their missing wedge (augmentation, consistency training).

A single-axis tilt series leaves a missing wedge about the tilt axis Y: frequency ``k`` is observed iff
``atan(kz / kx)`` lies in the tilt range. The proper rotations that keep the wedge are:

* 180° about Y (``kx, kz -> -kx, -kz``): keeps ``kz / kx``, so any tilt range, symmetric or not;
* 180° about Z or about X (``kz / kx -> -kz / kx``): only for a symmetric range ``(-a, a)``.

Each is a flip of two spatial axes together (determinant +1, so the hand of the structure is kept). Any other
rotation needs the wedge removed again afterwards (:func:`random_rotated_views`).
"""

from __future__ import annotations

import torch

from aitom.errors import InputError
from aitom.fourier.wedge import apply_missing_wedge
from aitom.geometry.euler import random_rotations
from aitom.geometry.transform import rotate_volume

__all__ = ["random_rotated_views", "wedge_preserving_rotations"]

#: spatial axes of a (C, Z, Y, X) tensor: 0 -> Z, 1 -> Y, 2 -> X.
_AXIS = {"z": 0, "y": 1, "x": 2}


def wedge_preserving_rotations(tilt_min_deg: float, tilt_max_deg: float) -> list[tuple[int, int]]:
    """The 180° rotations that keep a missing wedge, each as the pair of spatial axes it flips.

    Args:
        tilt_min_deg: lowest tilt angle of the data, degrees.
        tilt_max_deg: highest tilt angle of the data, degrees.

    Returns:
        Pairs of spatial axes of a ``(C, Z, Y, X)`` tensor (0 = Z, 1 = Y, 2 = X); flipping both axes of a
        pair is a 180° rotation about the third axis.
    """
    rotations = [(_AXIS["z"], _AXIS["x"])]  # 180° about Y
    if abs(tilt_min_deg + tilt_max_deg) < 1e-6:
        rotations += [(_AXIS["y"], _AXIS["x"]), (_AXIS["z"], _AXIS["y"])]  # about Z, about X
    return rotations


def random_rotated_views(
    volumes: torch.Tensor,
    tilt_min_deg: float = -60.0,
    tilt_max_deg: float = 60.0,
    max_shift_voxels: float = 2.0,
    noise_std: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A random view of every subtomogram: a uniform rotation and a shift, then the missing wedge again.

    Each item is rotated about its box centre by a rotation drawn uniformly from SO(3) and shifted by up to
    ``max_shift_voxels`` along each axis (trilinear interpolation, the item's mean outside the box); the
    frequencies its tilt range cannot observe are then removed again, so the view has the wedge a tilt
    series over the same range would leave (its own, rotated, wedge is missing as well). Unlike
    :func:`wedge_preserving_rotations`, every orientation can be reached, which is what a classifier
    trained on few subtomograms needs to learn that orientation does not matter.

    Args:
        volumes: ``(B, C, Z, Y, X)`` subtomograms (any units), every spatial size at least 2.
        tilt_min_deg: lowest tilt angle of the data, degrees.
        tilt_max_deg: highest tilt angle of the data, degrees.
        max_shift_voxels: largest shift along each axis, voxels (drawn uniformly, sub-voxel).
        noise_std: standard deviation of the white Gaussian noise added, in units of each item's own
            voxel standard deviation (0: none).
        generator: random generator (on the volumes' device); ``None`` uses torch's global one.

    Returns:
        ``(B, C, Z, Y, X)`` views, same dtype and device; every item's rotation, shift and noise drawn
        independently, all channels of an item moved together.
    """
    if volumes.ndim != 5:
        raise InputError(f"volumes must be (B, C, Z, Y, X), got shape {tuple(volumes.shape)}")
    if max_shift_voxels < 0 or noise_std < 0:
        raise InputError(
            f"max_shift_voxels and noise_std must be 0 or more, got {max_shift_voxels} and {noise_std}"
        )
    batch, channels = volumes.shape[:2]
    device, dtype = volumes.device, volumes.dtype
    rotations = random_rotations(batch, generator, dtype=dtype, device=device)
    shifts = (
        torch.rand(batch, 3, generator=generator, device=device, dtype=dtype) * 2 - 1
    ) * max_shift_voxels
    means = volumes.mean(dim=(-3, -2, -1), keepdim=True)
    flat = (volumes - means).flatten(0, 1)
    moved = rotate_volume(
        flat, rotations.repeat_interleave(channels, 0), shifts.repeat_interleave(channels, 0)
    )
    views = apply_missing_wedge(moved, tilt_min_deg, tilt_max_deg).view_as(volumes) + means
    if noise_std > 0:
        scale = views.flatten(1).std(dim=1).view(-1, 1, 1, 1, 1)
        noise = torch.randn(views.shape, generator=generator, device=device, dtype=dtype)
        views = views + noise_std * scale * noise
    return views
