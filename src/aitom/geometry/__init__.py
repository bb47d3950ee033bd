"""Geometry: ZYZ Euler angles (RELION's convention) and matrices, SO(3) sampling, rotating and shifting
volumes, real-space masks and point-group symmetry.

A rotation matrix acts on ``(x, y, z)`` column vectors; ``euler_zyz_to_matrix`` returns RELION's matrix
``A`` of ``(rlnAngleRot, rlnAngleTilt, rlnAnglePsi)`` and ``rotate_volume(reference, A)`` is the particle.
"""

from __future__ import annotations

from aitom.geometry.coordinates import box_centre_xyz, voxel_coordinates_xyz
from aitom.geometry.euler import (
    euler_zyz_to_matrix,
    matrix_to_euler_zyz,
    matrix_to_quaternion,
    matrix_to_relion_angles,
    quaternion_to_matrix,
    random_rotations,
    relion_angles_to_matrix,
    rotation_about_axis,
    rotation_angle_between,
)
from aitom.geometry.masks import soft_sphere_mask, sphere_mask
from aitom.geometry.so3 import so3_covering_radius_deg, so3_grid, so3_grid_size
from aitom.geometry.symmetry import (
    point_group_generators,
    point_group_order,
    point_group_rotations,
    symmetric_angle_between,
)
from aitom.geometry.transform import (
    fourier_shift,
    resample_axis,
    resample_to_cubic_voxels,
    rescale_volume,
    rotate_volume,
)

__all__ = [
    "box_centre_xyz",
    "euler_zyz_to_matrix",
    "fourier_shift",
    "matrix_to_euler_zyz",
    "matrix_to_quaternion",
    "matrix_to_relion_angles",
    "point_group_generators",
    "point_group_order",
    "point_group_rotations",
    "quaternion_to_matrix",
    "random_rotations",
    "relion_angles_to_matrix",
    "resample_axis",
    "resample_to_cubic_voxels",
    "rescale_volume",
    "rotate_volume",
    "rotation_about_axis",
    "rotation_angle_between",
    "so3_covering_radius_deg",
    "so3_grid",
    "so3_grid_size",
    "soft_sphere_mask",
    "sphere_mask",
    "symmetric_angle_between",
    "voxel_coordinates_xyz",
]
