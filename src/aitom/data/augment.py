"""Augmentations of subtomograms that respect the imaging physics.

A single-axis tilt series leaves a missing wedge about the tilt axis Y: frequency ``k`` is observed iff
``atan(kz / kx)`` lies in the tilt range. A rotation of the subtomogram rotates its wedge too, so most
rotations produce a wedge the data could never have. The proper rotations that keep the wedge are:

* 180° about Y (``kx, kz -> -kx, -kz``): keeps ``kz / kx``, so any tilt range, symmetric or not;
* 180° about Z or about X (``kz / kx -> -kz / kx``): only for a symmetric range ``(-a, a)``.

Arbitrary rotations about the beam axis Z turn the tilt axis away from Y, and mirror flips change the
handedness of the structure, so neither is offered. Integer shifts keep the wedge; they are applied with
torchio's affine transform (zero rotation, zero scaling).
"""

from __future__ import annotations

import torch
import torchio as tio

#: torchio spatial axes of a (C, Z, Y, X) tensor: 0 -> Z, 1 -> Y, 2 -> X.
_AXIS = {"z": 0, "y": 1, "x": 2}


def wedge_preserving_rotations(tilt_min_deg: float, tilt_max_deg: float) -> list[tuple[int, int]]:
    """The 180° rotations that keep a missing wedge, each as the pair of torchio axes it flips.

    Returns pairs of spatial axes of a ``(C, Z, Y, X)`` tensor; flipping two axes together is a 180° rotation
    about the third (a proper rotation, determinant +1).
    """
    rotations = [(_AXIS["z"], _AXIS["x"])]  # 180° about Y
    if abs(tilt_min_deg + tilt_max_deg) < 1e-6:
        rotations += [(_AXIS["y"], _AXIS["x"]), (_AXIS["z"], _AXIS["y"])]  # about Z, about X
    return rotations


class RandomWedgePreservingRotation(tio.transforms.augmentation.RandomTransform, tio.SpatialTransform):
    """Apply, with equal probability, the identity or one of the 180° rotations that keep the wedge.

    Args:
        tilt_min_deg: lowest tilt angle of the data, degrees.
        tilt_max_deg: highest tilt angle of the data, degrees.
    """

    def __init__(self, tilt_min_deg: float = -60.0, tilt_max_deg: float = 60.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rotations = wedge_preserving_rotations(tilt_min_deg, tilt_max_deg)

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        choice = int(torch.randint(len(self.rotations) + 1, (1,)))
        if choice == 0:
            return subject
        return tio.Flip(axes=self.rotations[choice - 1], **self._get_base_args())(subject)


def subtomogram_augmentation(
    tilt_min_deg: float = -60.0, tilt_max_deg: float = 60.0, max_shift_voxels: float = 2.0
) -> tio.Compose:
    """Wedge-preserving 180° rotations, then random shifts of up to ``max_shift_voxels`` per axis."""
    transforms: list[tio.Transform] = [RandomWedgePreservingRotation(tilt_min_deg, tilt_max_deg)]
    if max_shift_voxels > 0:
        transforms.append(
            tio.RandomAffine(scales=0, degrees=0, translation=max_shift_voxels, default_pad_value="mean")
        )
    return tio.Compose(transforms)


def augment_volume(volume: torch.Tensor, transform: tio.Transform) -> torch.Tensor:
    """Apply a torchio transform to one ``(C, Z, Y, X)`` volume (voxel spacing 1) and return the tensor."""
    subject = tio.Subject(volume=tio.ScalarImage(tensor=volume))
    return transform(subject)["volume"].data
