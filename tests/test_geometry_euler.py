"""Euler angles, quaternions and rotation matrices against RELION's formulas and scipy's Rotation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from aitom.geometry import (
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


def relion_euler_angles2matrix(rot: float, tilt: float, psi: float) -> np.ndarray:
    """Hand transcription of RELION src/euler.cpp Euler_angles2matrix (angles in radians here)."""
    ca, cb, cg = math.cos(rot), math.cos(tilt), math.cos(psi)
    sa, sb, sg = math.sin(rot), math.sin(tilt), math.sin(psi)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.array(
        [
            [cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
            [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
            [sc, ss, cb],
        ]
    )


def relion_euler_matrix2angles(A: np.ndarray) -> tuple[float, float, float]:
    """Hand transcription of RELION src/euler.cpp Euler_matrix2angles (radians)."""
    flt_epsilon = float(np.finfo(np.float32).eps)
    abs_sb = math.sqrt(A[0, 2] ** 2 + A[1, 2] ** 2)
    if abs_sb > 16 * flt_epsilon:
        gamma = math.atan2(A[1, 2], -A[0, 2])
        alpha = math.atan2(A[2, 1], A[2, 0])
        if abs(math.sin(gamma)) < flt_epsilon:
            sign_sb = np.sign(-A[0, 2] / math.cos(gamma))
        else:
            sign_sb = np.sign(A[1, 2]) if math.sin(gamma) > 0 else -np.sign(A[1, 2])
        beta = math.atan2(sign_sb * abs_sb, A[2, 2])
    elif A[2, 2] > 0:
        alpha, beta, gamma = 0.0, 0.0, math.atan2(-A[1, 0], A[0, 0])
    else:
        alpha, beta, gamma = 0.0, math.pi, math.atan2(A[1, 0], -A[0, 0])
    return alpha, beta, gamma


@pytest.fixture
def random_angles() -> torch.Tensor:
    """(1000, 3) radians: rot, psi uniform in (-π, π), tilt uniform in (0, π)."""
    generator = torch.Generator().manual_seed(1)
    unit = torch.rand(1000, 3, generator=generator, dtype=torch.float64)
    return torch.stack((unit[:, 0] * 2 - 1, unit[:, 1], unit[:, 2] * 2 - 1), dim=-1) * math.pi


def test_matrix_equals_relion_transcription(device, random_angles):
    angles = random_angles[:200]
    matrices = euler_zyz_to_matrix(angles.to(device))
    expected = np.stack([relion_euler_angles2matrix(*row) for row in angles.tolist()])
    assert matrices.device.type == device.type and matrices.dtype == torch.float64
    np.testing.assert_allclose(matrices.cpu().numpy(), expected, atol=1e-12)


def test_matrix_is_transpose_of_scipy_intrinsic_zyz(random_angles):
    matrices = euler_zyz_to_matrix(random_angles).numpy()
    intrinsic = Rotation.from_euler("ZYZ", random_angles.numpy()).as_matrix()
    np.testing.assert_allclose(matrices, intrinsic.transpose(0, 2, 1), atol=1e-12)
    # The extrinsic sequence is a different convention: make sure the test can tell them apart.
    extrinsic = Rotation.from_euler("zyz", random_angles.numpy()).as_matrix()
    assert np.abs(matrices - extrinsic.transpose(0, 2, 1)).max() > 0.1


def test_matrices_are_rotations(device, random_angles):
    for dtype, tolerance in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
        matrices = euler_zyz_to_matrix(random_angles.to(device=device, dtype=dtype))
        identity = torch.eye(3, dtype=dtype, device=device).expand_as(matrices)
        assert matrices.dtype == dtype
        torch.testing.assert_close(matrices @ matrices.transpose(-1, -2), identity, atol=tolerance, rtol=0)
        torch.testing.assert_close(
            torch.linalg.det(matrices),
            torch.ones(len(matrices), dtype=dtype, device=device),
            atol=tolerance,
            rtol=0,
        )


def test_round_trip_angles_matrix_angles(device, random_angles):
    angles = random_angles.to(device=device, dtype=torch.float32)
    matrices = euler_zyz_to_matrix(angles)
    recovered = matrix_to_euler_zyz(matrices)
    torch.testing.assert_close(euler_zyz_to_matrix(recovered), matrices, atol=1e-5, rtol=0)
    # Away from gimbal lock the angles themselves come back (tilt in [0, π], rot/psi in (-π, π]).
    regular = torch.sin(angles[:, 1]) > 1e-2
    difference = torch.remainder(recovered - angles + math.pi, 2 * math.pi) - math.pi
    assert difference[regular].abs().max() < 1e-3


def test_inverse_equals_relion_transcription(random_angles):
    matrices = euler_zyz_to_matrix(random_angles)
    recovered = matrix_to_euler_zyz(matrices).numpy()
    expected = np.array([relion_euler_matrix2angles(matrix) for matrix in matrices.numpy()])
    np.testing.assert_allclose(recovered, expected, atol=1e-9)


def test_composition_and_inverse(device):
    generator = torch.Generator().manual_seed(2)
    first, second = random_rotations(2 * 500, generator=generator, dtype=torch.float64).to(device).split(500)
    identity = torch.eye(3, dtype=torch.float64, device=device).expand(500, 3, 3)
    torch.testing.assert_close(first @ first.transpose(-1, -2), identity, atol=1e-12, rtol=0)
    product = first @ second
    torch.testing.assert_close(euler_zyz_to_matrix(matrix_to_euler_zyz(product)), product, atol=1e-10, rtol=0)


@pytest.mark.parametrize("tilt", [0.0, math.pi])
def test_gimbal_lock(device, tilt):
    angles = torch.tensor([[0.7, tilt, -0.4], [-2.9, tilt, 2.8], [0.0, tilt, 0.0]], dtype=torch.float64)
    matrices = euler_zyz_to_matrix(angles.to(device))
    recovered = matrix_to_euler_zyz(matrices)
    torch.testing.assert_close(euler_zyz_to_matrix(recovered), matrices, atol=1e-12, rtol=0)
    # As in RELION: rot = 0 and the whole in-plane angle goes to psi (rot + psi at tilt 0, psi − rot at π).
    in_plane = angles[:, 2] + angles[:, 0] if tilt == 0 else angles[:, 2] - angles[:, 0]
    expected_psi = torch.remainder(in_plane + math.pi, 2 * math.pi) - math.pi
    torch.testing.assert_close(recovered[:, 0].cpu(), torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(recovered[:, 1].cpu(), torch.full((3,), tilt, dtype=torch.float64))
    torch.testing.assert_close(recovered[:, 2].cpu(), expected_psi, atol=1e-12, rtol=0)
    for matrix, row in zip(matrices.cpu().numpy(), recovered.cpu().tolist(), strict=True):
        np.testing.assert_allclose(row, relion_euler_matrix2angles(matrix), atol=1e-12)


def test_angle_ranges(random_angles):
    recovered = matrix_to_euler_zyz(euler_zyz_to_matrix(random_angles * 3))
    assert recovered[:, 1].min() >= 0 and recovered[:, 1].max() <= math.pi
    assert recovered[:, [0, 2]].min() > -math.pi and recovered[:, [0, 2]].max() <= math.pi
    # A half turn about z: atan2 returns -π for psi, which must be reported as +π.
    half_turn = torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(matrix_to_euler_zyz(half_turn), torch.tensor([0.0, 0.0, math.pi]).double())


def test_relion_degree_wrappers(device):
    angles_deg = torch.tensor(
        [[137.7, 1.1777, -47.3], [-10.0, 95.0, 170.0]], dtype=torch.float64, device=device
    )
    matrices = relion_angles_to_matrix(angles_deg)
    torch.testing.assert_close(matrices, euler_zyz_to_matrix(torch.deg2rad(angles_deg)))
    torch.testing.assert_close(matrix_to_relion_angles(matrices), angles_deg, atol=1e-9, rtol=0)


def test_quaternions_match_scipy(device):
    generator = torch.Generator().manual_seed(3)
    matrices = random_rotations(300, generator=generator, dtype=torch.float64)
    # Include the angle-π rotations, where w = 0 and naive formulas divide by zero.
    half_turns = rotation_about_axis(
        torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]]).double(), math.pi
    )
    matrices = torch.cat((matrices, half_turns, torch.eye(3, dtype=torch.float64)[None])).to(device)
    quaternions = matrix_to_quaternion(matrices)
    scipy_xyzw = Rotation.from_matrix(matrices.cpu().numpy()).as_quat()
    scipy_wxyz = np.concatenate((scipy_xyzw[:, 3:], scipy_xyzw[:, :3]), axis=1)
    sign = np.sign(np.sum(scipy_wxyz * quaternions.cpu().numpy(), axis=1, keepdims=True))
    np.testing.assert_allclose(quaternions.cpu().numpy(), sign * scipy_wxyz, atol=1e-12)
    assert (quaternions[:, 0] >= 0).all()
    torch.testing.assert_close(quaternion_to_matrix(quaternions), matrices, atol=1e-12, rtol=0)


def test_rotation_about_axis_matches_scipy_and_direction(device):
    axis = torch.tensor([[0.3, -1.2, 0.5], [0.0, 0.0, 2.0]], dtype=torch.float64, device=device)
    angle = torch.tensor([0.8, math.pi / 2], dtype=torch.float64, device=device)
    matrices = rotation_about_axis(axis, angle)
    unit = axis / axis.norm(dim=-1, keepdim=True)
    expected = Rotation.from_rotvec((unit * angle[:, None]).cpu().numpy()).as_matrix()
    np.testing.assert_allclose(matrices.cpu().numpy(), expected, atol=1e-12)
    # Active, right-handed: +90° about z takes +x to +y.
    x_axis = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64, device=device)
    torch.testing.assert_close(matrices[1] @ x_axis, x_axis.roll(1), atol=1e-12, rtol=0)


def test_rotation_angle_between(device):
    generator = torch.Generator().manual_seed(4)
    first, second = random_rotations(400, generator=generator, dtype=torch.float64).to(device).split(200)
    angles = rotation_angle_between(first, second)
    expected = Rotation.from_matrix((first.transpose(-1, -2) @ second).cpu().numpy()).magnitude()
    np.testing.assert_allclose(angles.cpu().numpy(), expected, atol=1e-10)
    # Accurate for tiny angles in float32, where acos of the trace would return 0 or ~3e-4.
    tiny = rotation_about_axis(torch.tensor([1.0, 2.0, 3.0], device=device), 1e-5)
    identity = torch.eye(3, device=device)
    assert abs(rotation_angle_between(identity, tiny).item() - 1e-5) < 1e-7


def test_gradients_float64():
    angles = torch.tensor([[0.3, 1.1, -2.0], [2.5, 0.4, 0.9]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(euler_zyz_to_matrix, (angles,))
    matrices = euler_zyz_to_matrix(angles.detach()).requires_grad_(True)
    assert torch.autograd.gradcheck(matrix_to_euler_zyz, (matrices,))
    # Gimbal-locked matrices give finite gradients.
    locked = euler_zyz_to_matrix(torch.tensor([0.5, 0.0, 0.2], dtype=torch.float64)).requires_grad_(True)
    matrix_to_euler_zyz(locked).sum().backward()
    assert torch.isfinite(locked.grad).all()


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="angles"):
        euler_zyz_to_matrix(torch.zeros(4))
    with pytest.raises(ValueError, match="matrix"):
        matrix_to_euler_zyz(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="quaternion"):
        quaternion_to_matrix(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="n must be"):
        random_rotations(-1)
