"""Augmentations of subtomograms that respect the imaging physics.

A rotation of the subtomogram rotates its missing wedge too, so most rotations produce a wedge the data could
never have; :func:`aitom.ops.augmentation.wedge_preserving_rotations` lists the 180° rotations that keep it.
Arbitrary rotations about the beam axis Z turn the tilt axis away from Y, and mirror flips change the
handedness of the structure, so neither is offered. Integer shifts keep the wedge; they are applied with
torchio's affine transform (zero rotation, zero scaling).
"""

from __future__ import annotations

import torch
import torchio as tio

from aitom.ops.augmentation import wedge_preserving_rotations

__all__ = [
    "RandomWedgePreservingRotation",
    "augment_volume",
    "rotate_half_turn",
    "subtomogram_augmentation",
    "wedge_preserving_rotations",
]


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
        for image in subject.get_images(intensity_only=False):
            image.set_data(rotate_half_turn(image.data, self.rotations[choice - 1]))
        return subject


def rotate_half_turn(volume: torch.Tensor, axes: tuple[int, int]) -> torch.Tensor:
    """The 180° rotation of a ``(C, Z, Y, X)`` volume that flips the two spatial ``axes`` (0 = Z, 1 = Y,
    2 = X), about the box centre voxel ``N // 2`` of each axis (a plain flip turns about ``(N − 1) / 2``,
    which on an even axis would move the particle by one voxel): flipped, then rolled by one voxel along
    the even axes, so index ``i`` goes to ``(N − i) mod N``."""
    dims = [axis + 1 for axis in axes]
    flipped = torch.flip(volume, dims=dims)
    even = [dim for dim in dims if volume.shape[dim] % 2 == 0]
    return torch.roll(flipped, shifts=[1] * len(even), dims=even) if even else flipped


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
