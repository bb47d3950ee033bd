"""Rotation matrices, ZYZ Euler angles (RELION convention), quaternions, random and axis-angle rotations.

Conventions (binding for the whole project):

* A 3×3 rotation matrix acts on column vectors ``(x, y, z)``.
* ZYZ Euler angles ``(rot, tilt, psi)`` are numerically identical to RELION's ``rlnAngleRot``,
  ``rlnAngleTilt`` and ``rlnAnglePsi`` (radians in code, degrees in files). :func:`euler_zyz_to_matrix`
  returns RELION's matrix ``A`` (``Euler_angles2matrix`` in RELION's ``src/euler.cpp``)::

      A = (Rz(rot) @ Ry(tilt) @ Rz(psi)).T

  with ``Rz``, ``Ry`` the usual active right-handed rotations. In SciPy terms,
  ``A == Rotation.from_euler("ZYZ", [rot, tilt, psi]).as_matrix().T`` (upper case: intrinsic axes).
* A particle with angles ``(rot, tilt, psi)`` is the reference rotated actively by ``A``:
  ``particle(x) = reference(A.T @ x)`` with ``x`` relative to the box centre, so
  ``rotate_volume(reference, A)`` makes the particle and ``rotate_volume(particle, A.T)`` aligns it back.
* Quaternions are scalar-first ``(w, x, y, z)``, unit norm; ``q`` and ``-q`` are the same rotation and
  functions here return the representative with ``w >= 0``.
"""

from __future__ import annotations

import math

import torch


def _check_last_dims(tensor: torch.Tensor, shape: tuple[int, ...], name: str) -> None:
    if tensor.ndim < len(shape) or tuple(tensor.shape[tensor.ndim - len(shape) :]) != shape:
        expected = ", ".join(str(size) for size in shape)
        raise ValueError(f"{name} must have shape (..., {expected}), got {tuple(tensor.shape)}")


def _wrap_to_pi(angle: torch.Tensor) -> torch.Tensor:
    """Map angles from ``[-π, π]`` (as returned by atan2) to ``(-π, π]``."""
    return torch.where(angle <= -math.pi, angle + 2 * math.pi, angle)


def euler_zyz_to_matrix(angles: torch.Tensor) -> torch.Tensor:
    """RELION's rotation matrix ``A`` from ZYZ Euler angles.

    Args:
        angles: ``(..., 3)`` radians, ``(rot, tilt, psi)`` == RELION's ``(rlnAngleRot, rlnAngleTilt,
            rlnAnglePsi)``.

    Returns:
        ``(..., 3, 3)`` rotation matrices on ``(x, y, z)`` column vectors, same device and dtype as
        ``angles``; ``A = (Rz(rot) Ry(tilt) Rz(psi)).T`` exactly as RELION's ``Euler_angles2matrix``.
        Differentiable.
    """
    _check_last_dims(angles, (3,), "angles")
    ca, cb, cg = torch.cos(angles).unbind(-1)
    sa, sb, sg = torch.sin(angles).unbind(-1)
    cc = cb * ca
    cs = cb * sa
    sc = sb * ca
    ss = sb * sa
    rows = (
        torch.stack((cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb), dim=-1),
        torch.stack((-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb), dim=-1),
        torch.stack((sc, ss, cb), dim=-1),
    )
    return torch.stack(rows, dim=-2)


def matrix_to_euler_zyz(matrix: torch.Tensor) -> torch.Tensor:
    """ZYZ Euler angles (RELION convention) of rotation matrices; inverse of :func:`euler_zyz_to_matrix`.

    Follows RELION's ``Euler_matrix2angles``: ``psi = atan2(A12, -A02)``, ``rot = atan2(A21, A20)``,
    ``tilt = atan2(|sin tilt|, A22)``; when ``|sin tilt| <= 16·FLT_EPSILON`` (gimbal lock, tilt 0 or π)
    only ``rot ± psi`` is defined and, as in RELION, ``rot = 0`` and ``psi`` carries the whole in-plane angle.

    Args:
        matrix: ``(..., 3, 3)`` rotation matrices.

    Returns:
        ``(..., 3)`` radians ``(rot, tilt, psi)``, tilt in ``[0, π]``, rot and psi in ``(-π, π]``.
    """
    _check_last_dims(matrix, (3, 3), "matrix")
    a02, a12, a22 = matrix[..., 0, 2], matrix[..., 1, 2], matrix[..., 2, 2]
    a20, a21 = matrix[..., 2, 0], matrix[..., 2, 1]
    a00, a10 = matrix[..., 0, 0], matrix[..., 1, 0]
    sin_tilt_squared = a02 * a02 + a12 * a12
    regular = sin_tilt_squared > (16 * torch.finfo(torch.float32).eps) ** 2
    # Substitute harmless values where a branch is not selected, so that gradients stay finite.
    one = torch.ones_like(a02)
    abs_sin_tilt = torch.sqrt(torch.where(regular, sin_tilt_squared, one))
    psi_regular = torch.atan2(torch.where(regular, a12, one), torch.where(regular, -a02, one))
    rot_regular = torch.atan2(torch.where(regular, a21, one), torch.where(regular, a20, one))
    tilt_regular = torch.atan2(abs_sin_tilt, a22)

    tilt_up = a22 > 0
    psi_locked = torch.where(tilt_up, torch.atan2(-a10, a00), torch.atan2(a10, -a00))
    tilt_locked = torch.where(tilt_up, torch.zeros_like(a22), torch.full_like(a22, math.pi))

    rot = torch.where(regular, rot_regular, torch.zeros_like(a02))
    tilt = torch.where(regular, tilt_regular, tilt_locked)
    psi = torch.where(regular, psi_regular, psi_locked)
    return torch.stack((_wrap_to_pi(rot), tilt, _wrap_to_pi(psi)), dim=-1)


def relion_angles_to_matrix(angles_deg: torch.Tensor) -> torch.Tensor:
    """RELION's matrix ``A`` from ``(rlnAngleRot, rlnAngleTilt, rlnAnglePsi)`` in degrees.

    Same as :func:`euler_zyz_to_matrix` on ``deg2rad(angles_deg)``: our ZYZ angles equal RELION's numerically
    and the matrix is RELION's ``A`` (rotates the reference onto the particle, acting on ``(x, y, z)``).

    Args:
        angles_deg: ``(..., 3)`` degrees.

    Returns:
        ``(..., 3, 3)`` rotation matrices.
    """
    return euler_zyz_to_matrix(torch.deg2rad(angles_deg))


def matrix_to_relion_angles(matrix: torch.Tensor) -> torch.Tensor:
    """``(rlnAngleRot, rlnAngleTilt, rlnAnglePsi)`` in degrees from RELION's matrix ``A``.

    Same as :func:`matrix_to_euler_zyz` converted to degrees (tilt in ``[0, 180]``, rot and psi in
    ``(-180, 180]``).

    Args:
        matrix: ``(..., 3, 3)`` rotation matrices.

    Returns:
        ``(..., 3)`` degrees.
    """
    return torch.rad2deg(matrix_to_euler_zyz(matrix))


def rotation_about_axis(axis: torch.Tensor, angle: torch.Tensor | float) -> torch.Tensor:
    """Active right-handed rotation by ``angle`` about ``axis`` (Rodrigues' formula).

    Args:
        axis: ``(..., 3)`` direction ``(x, y, z)``, any non-zero length (normalised here).
        angle: ``(...)`` radians, or a float; broadcast against ``axis[..., 0]``.

    Returns:
        ``(..., 3, 3)`` rotation matrices, device and dtype of ``axis``. Differentiable.
    """
    _check_last_dims(axis, (3,), "axis")
    angle = torch.as_tensor(angle, dtype=axis.dtype, device=axis.device)
    unit = axis / torch.linalg.vector_norm(axis, dim=-1, keepdim=True)
    x, y, z = unit.unbind(-1)
    zero = torch.zeros_like(x)
    cross = torch.stack(
        (
            torch.stack((zero, -z, y), dim=-1),
            torch.stack((z, zero, -x), dim=-1),
            torch.stack((-y, x, zero), dim=-1),
        ),
        dim=-2,
    )
    outer = unit[..., :, None] * unit[..., None, :]
    cos = torch.cos(angle)[..., None, None]
    sin = torch.sin(angle)[..., None, None]
    identity = torch.eye(3, dtype=axis.dtype, device=axis.device)
    return cos * identity + sin * cross + (1 - cos) * outer


def quaternion_to_matrix(quaternion: torch.Tensor) -> torch.Tensor:
    """Rotation matrices from quaternions.

    Args:
        quaternion: ``(..., 4)`` scalar-first ``(w, x, y, z)``; normalised here (any non-zero length).

    Returns:
        ``(..., 3, 3)`` rotation matrices acting on ``(x, y, z)`` column vectors. Differentiable.
    """
    _check_last_dims(quaternion, (4,), "quaternion")
    w, x, y, z = (quaternion / torch.linalg.vector_norm(quaternion, dim=-1, keepdim=True)).unbind(-1)
    rows = (
        torch.stack((1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)), dim=-1),
        torch.stack((2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)), dim=-1),
        torch.stack((2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)), dim=-1),
    )
    return torch.stack(rows, dim=-2)


def matrix_to_quaternion(matrix: torch.Tensor) -> torch.Tensor:
    """Unit quaternions of rotation matrices (numerically stable for every rotation angle).

    Each of the four components ``|w|, |x|, |y|, |z|`` is recoverable from the diagonal; the largest one is
    computed from the diagonal and the other three from off-diagonal sums/differences divided by it
    (Shepperd's method), which keeps every division well conditioned.

    Args:
        matrix: ``(..., 3, 3)`` rotation matrices.

    Returns:
        ``(..., 4)`` scalar-first ``(w, x, y, z)``, unit norm, with ``w >= 0``.
    """
    _check_last_dims(matrix, (3, 3), "matrix")
    m00, m11, m22 = matrix[..., 0, 0], matrix[..., 1, 1], matrix[..., 2, 2]
    m01, m02, m10 = matrix[..., 0, 1], matrix[..., 0, 2], matrix[..., 1, 0]
    m12, m20, m21 = matrix[..., 1, 2], matrix[..., 2, 0], matrix[..., 2, 1]
    # 4·w², 4·x², 4·y², 4·z² from the diagonal.
    four_squares = torch.stack(
        (1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22), dim=-1
    )
    # Row k: 4·q_k·q, i.e. the quaternion scaled by 4·q_k, computed without dividing.
    candidates = torch.stack(
        (
            torch.stack((four_squares[..., 0], m21 - m12, m02 - m20, m10 - m01), dim=-1),
            torch.stack((m21 - m12, four_squares[..., 1], m01 + m10, m02 + m20), dim=-1),
            torch.stack((m02 - m20, m01 + m10, four_squares[..., 2], m12 + m21), dim=-1),
            torch.stack((m10 - m01, m02 + m20, m12 + m21, four_squares[..., 3]), dim=-1),
        ),
        dim=-2,
    )
    best = four_squares.argmax(dim=-1)
    index = best[..., None, None].expand(*best.shape, 1, 4)
    chosen = torch.gather(candidates, -2, index).squeeze(-2)
    quaternion = chosen / torch.linalg.vector_norm(chosen, dim=-1, keepdim=True)
    return torch.where(quaternion[..., :1] < 0, -quaternion, quaternion)


def random_rotations(
    n: int,
    generator: torch.Generator | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Rotations drawn uniformly (Haar measure) from SO(3).

    Normalised 4-D standard normal vectors are uniform on the unit 3-sphere, and uniform unit quaternions
    give Haar-uniform rotations.

    Args:
        n: number of rotations.
        generator: random generator; numbers are drawn on its device and moved to ``device``.
        dtype: dtype of the result.
        device: device of the result.

    Returns:
        ``(n, 3, 3)`` rotation matrices.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    generator_device = generator.device if generator is not None else torch.device("cpu")
    gaussian = torch.randn(n, 4, generator=generator, dtype=torch.float64, device=generator_device)
    return quaternion_to_matrix(gaussian).to(dtype=dtype, device=device)


def rotation_angle_between(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Geodesic distance on SO(3): the rotation angle of ``first.T @ second``.

    Computed as ``atan2(|v|, trace − 1)`` with ``v`` the axial vector of the skew part (``|v| = 2 sin θ``,
    ``trace − 1 = 2 cos θ``), which is accurate for small angles and near π (unlike ``acos`` of the trace).

    Args:
        first: ``(..., 3, 3)`` rotation matrices.
        second: ``(..., 3, 3)`` rotation matrices, broadcast against ``first``.

    Returns:
        ``(...)`` angles in radians, in ``[0, π]``.
    """
    _check_last_dims(first, (3, 3), "first")
    _check_last_dims(second, (3, 3), "second")
    relative = first.transpose(-1, -2) @ second
    axial = torch.stack(
        (
            relative[..., 2, 1] - relative[..., 1, 2],
            relative[..., 0, 2] - relative[..., 2, 0],
            relative[..., 1, 0] - relative[..., 0, 1],
        ),
        dim=-1,
    )
    trace = relative.diagonal(dim1=-2, dim2=-1).sum(-1)
    return torch.atan2(torch.linalg.vector_norm(axial, dim=-1), trace - 1)
