"""rotate_volume and fourier_shift against scipy.ndimage, torch.rot90/roll and analytic blob positions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from aitom.geometry import (
    box_centre_xyz,
    fourier_shift,
    random_rotations,
    rotate_volume,
    rotation_about_axis,
    sphere_mask,
    voxel_coordinates_xyz,
)


def gaussian_blob(
    shape: tuple[int, int, int], position_xyz: list[float], sigma: float, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Gaussian of width ``sigma`` voxels centred at ``position_xyz`` relative to the box centre."""
    coordinates = voxel_coordinates_xyz(shape, dtype=torch.float64)
    squared = ((coordinates - torch.tensor(position_xyz, dtype=torch.float64)) ** 2).sum(-1)
    return torch.exp(-squared / (2 * sigma**2)).to(dtype)


def centroid_xyz(volume: torch.Tensor) -> torch.Tensor:
    """Intensity-weighted mean position relative to the box centre, (x, y, z) voxels."""
    coordinates = voxel_coordinates_xyz(volume.shape, dtype=volume.dtype, device=volume.device)
    return (coordinates * volume[..., None]).sum((0, 1, 2)) / volume.sum()


@pytest.fixture
def blobs() -> torch.Tensor:
    """(32, 32, 32) smooth asymmetric test volume: three Gaussian blobs off centre."""
    shape = (32, 32, 32)
    return (
        gaussian_blob(shape, [4.0, -2.0, 1.0], 2.5)
        + 0.7 * gaussian_blob(shape, [-5.0, 3.0, -2.0], 2.0)
        + 0.5 * gaussian_blob(shape, [0.0, 5.0, 6.0], 3.0)
    )


def test_rotate_then_inverse_recovers_volume(device, blobs):
    rotation = random_rotations(1, generator=torch.Generator().manual_seed(10))[0].to(device)
    volume = blobs.to(device)
    recovered = rotate_volume(rotate_volume(volume, rotation), rotation.T)
    inside = sphere_mask(volume.shape, 12, device=device).bool()
    correlation = np.corrcoef(volume[inside].cpu().numpy(), recovered[inside].cpu().numpy())[0, 1]
    assert correlation > 0.99


def test_centred_blob_keeps_centroid(device):
    volume = gaussian_blob((32, 32, 32), [0.0, 0.0, 0.0], 3.0).to(device)
    rotation = random_rotations(1, generator=torch.Generator().manual_seed(11))[0].to(device)
    torch.testing.assert_close(
        centroid_xyz(rotate_volume(volume, rotation)).cpu(), torch.zeros(3), atol=1e-3, rtol=0
    )


def test_quarter_turn_about_z_is_rot90(device):
    # Odd box: the centre N // 2 is also the array's geometric centre, about which rot90 turns.
    volume = torch.rand(17, 17, 17, generator=torch.Generator().manual_seed(12)).to(device)
    quarter_turn = rotation_about_axis(torch.tensor([0.0, 0.0, 1.0], device=device), torch.pi / 2)
    # output(x, y) = input(y, -x): rot90 turning from the X axis (-1) towards the Y axis (-2).
    torch.testing.assert_close(
        rotate_volume(volume, quarter_turn), torch.rot90(volume, 1, dims=(-1, -2)), atol=1e-5, rtol=0
    )
    # A blob at +x goes to +y under an active +90° rotation about z.
    blob = gaussian_blob((17, 17, 17), [3.0, 0.0, 0.0], 1.0).to(device)
    torch.testing.assert_close(
        centroid_xyz(rotate_volume(blob, quarter_turn)).cpu(),
        torch.tensor([0.0, 3.0, 0.0]),
        atol=1e-3,
        rtol=0,
    )


def test_blob_moves_to_rotated_position_plus_shift(device):
    position = torch.tensor([5.0, -3.0, 2.0])
    shift = torch.tensor([1.5, -2.25, 0.7])
    rotation = random_rotations(1, generator=torch.Generator().manual_seed(13))[0]
    volume = gaussian_blob((32, 32, 32), position.tolist(), 2.0).to(device)
    moved = rotate_volume(volume, rotation.to(device), shift.to(device))
    torch.testing.assert_close(centroid_xyz(moved).cpu(), rotation @ position + shift, atol=0.1, rtol=0)


def test_matches_scipy_affine_transform(device):
    shape = (24, 24, 24)
    volume = torch.rand(shape, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    rotation = random_rotations(1, generator=torch.Generator().manual_seed(15), dtype=torch.float64)[0]
    shift = torch.tensor([0.8, -1.3, 0.4], dtype=torch.float64)
    centre = box_centre_xyz(shape, dtype=torch.float64)
    # scipy works in array index order (z, y, x): reverse the axes of R.T and of the offset.
    matrix_zyx = rotation.T.flip(0, 1).numpy()
    offset_zyx = (centre - rotation.T @ (centre + shift)).flip(0).numpy()
    expected = ndimage.affine_transform(
        volume.numpy(), matrix_zyx, offset=offset_zyx, order=1, mode="grid-constant"
    )
    rotated = rotate_volume(volume.to(device), rotation.to(device), shift.to(device)).cpu().numpy()
    interior = sphere_mask(shape, 8).bool().numpy()
    np.testing.assert_allclose(rotated[interior], expected[interior], atol=1e-10)
    # Float32 on the whole box; outside the box both interpolate towards the zero padding.
    rotated32 = rotate_volume(
        volume.float().to(device), rotation.float().to(device), shift.float().to(device)
    )
    np.testing.assert_allclose(rotated32.cpu().numpy(), expected, atol=1e-4)


def test_batches_broadcast_and_match_single_calls(device, blobs):
    rotations = random_rotations(3, generator=torch.Generator().manual_seed(16)).to(device)
    shifts = torch.tensor([[0.0, 0.0, 0.0], [1.0, -0.5, 2.0], [-1.5, 0.25, 0.0]], device=device)
    volume = blobs.to(device)
    one_template_many_rotations = rotate_volume(volume, rotations, shifts)
    assert one_template_many_rotations.shape == (3, 32, 32, 32)
    stacked = torch.stack([rotate_volume(volume, r, t) for r, t in zip(rotations, shifts, strict=True)])
    torch.testing.assert_close(one_template_many_rotations, stacked)
    many_volumes_one_rotation = rotate_volume(volume.expand(2, 32, 32, 32), rotations[0])
    torch.testing.assert_close(many_volumes_one_rotation[1], rotate_volume(volume, rotations[0]))
    with pytest.raises(ValueError, match="batch sizes differ"):
        rotate_volume(volume.expand(2, 32, 32, 32), rotations)


def test_padding_value_and_nearest_mode(device):
    volume = torch.full((10, 10, 10), 3.0, device=device)
    rotation = rotation_about_axis(torch.tensor([1.0, 1.0, 0.0], device=device), 0.9)
    padded = rotate_volume(volume, rotation, torch.tensor([2.5, 0.0, 0.0], device=device), padding_value=3.0)
    torch.testing.assert_close(padded, volume)
    identity = torch.eye(3, device=device)
    random_volume = torch.rand(10, 10, 10, generator=torch.Generator().manual_seed(17)).to(device)
    shifted = rotate_volume(
        random_volume, identity, torch.tensor([1.0, 2.0, -1.0], device=device), mode="nearest"
    )
    # output(x) = input(x - t): out[z, y, x] = in[z + 1, y - 2, x - 1], zero where that is outside.
    torch.testing.assert_close(shifted[:-1, 2:, 1:], random_volume[1:, :-2, :-1])
    assert shifted[-1].abs().max() == 0 and shifted[:, :2].abs().max() == 0


def test_gradients_reach_rotation_and_shift():
    volume = gaussian_blob((8, 8, 8), [0.5, -0.7, 0.3], 1.5, dtype=torch.float64)
    rotation = random_rotations(1, generator=torch.Generator().manual_seed(18), dtype=torch.float64)[0]
    rotation.requires_grad_(True)
    shift = torch.tensor([0.31, -0.22, 0.17], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda r, t: rotate_volume(volume, r, t), (rotation, shift), fast_mode=True
    )


def test_rotate_volume_bad_input():
    with pytest.raises(ValueError, match="volume"):
        rotate_volume(torch.zeros(4, 4), torch.eye(3))
    with pytest.raises(ValueError, match="rotation"):
        rotate_volume(torch.zeros(4, 4, 4), torch.eye(4))
    with pytest.raises(ValueError, match="mode"):
        rotate_volume(torch.zeros(4, 4, 4), torch.eye(3), mode="bicubic")


@pytest.mark.parametrize("shape", [(16, 16, 16), (15, 14, 13)])
def test_integer_fourier_shift_equals_roll(device, shape):
    volume = torch.rand(shape, generator=torch.Generator().manual_seed(19), dtype=torch.float64).to(device)
    shift_xyz = torch.tensor([3.0, -2.0, 5.0], dtype=torch.float64, device=device)
    rolled = torch.roll(volume, shifts=(5, -2, 3), dims=(-3, -2, -1))
    torch.testing.assert_close(fourier_shift(volume, shift_xyz), rolled, atol=1e-12, rtol=0)
    float_volume = volume.float()
    torch.testing.assert_close(
        fourier_shift(float_volume, shift_xyz.float()), rolled.float(), atol=1e-5, rtol=0
    )


def test_fourier_shift_matches_scipy_on_odd_box(device):
    volume = torch.rand(15, 13, 11, generator=torch.Generator().manual_seed(20), dtype=torch.float64)
    shift_xyz = torch.tensor([0.3, -1.7, 2.45], dtype=torch.float64)
    expected = np.fft.ifftn(
        ndimage.fourier_shift(np.fft.fftn(volume.numpy()), shift_xyz.flip(0).numpy())
    ).real
    shifted = fourier_shift(volume.to(device), shift_xyz.to(device))
    assert not shifted.is_complex()
    np.testing.assert_allclose(shifted.cpu().numpy(), expected, atol=1e-12)


def test_half_voxel_shift_moves_centroid_and_inverts(device):
    # σ = 1.8 voxels: the blob is band-limited to ~1e-6 at Nyquist and its tails vanish at the box edge.
    volume = gaussian_blob((24, 24, 24), [1.0, -2.0, 0.5], 1.8, dtype=torch.float64).to(device)
    shift_xyz = torch.tensor([0.5, -0.5, 0.25], dtype=torch.float64, device=device)
    shifted = fourier_shift(volume, shift_xyz)
    movement = centroid_xyz(shifted) - centroid_xyz(volume)
    torch.testing.assert_close(movement, shift_xyz, atol=1e-5, rtol=0)
    torch.testing.assert_close(fourier_shift(shifted, -shift_xyz), volume, atol=1e-6, rtol=0)


def test_fourier_shift_batched_and_differentiable(device):
    volume = gaussian_blob((8, 8, 8), [0.0, 0.0, 0.0], 1.5, dtype=torch.float64).to(device)
    shifts = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -2.0]], dtype=torch.float64, device=device)
    batched = fourier_shift(volume, shifts)
    assert batched.shape == (2, 8, 8, 8)
    torch.testing.assert_close(batched[1], torch.roll(volume, -2, dims=0), atol=1e-12, rtol=0)
    shift = torch.tensor([0.3, -0.2, 0.45], dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: fourier_shift(volume, t), (shift,), fast_mode=True)
    with pytest.raises(ValueError, match="shift_xyz"):
        fourier_shift(volume, torch.zeros(2, device=device))


def _two_blobs(size: int, voxel_size_a: float) -> torch.Tensor:
    """Two Gaussian blobs (σ 25 Å and 15 Å, off centre) sampled on a box centred at voxel ``size // 2``."""
    axis = (torch.arange(size, dtype=torch.float64) - size // 2) * voxel_size_a
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    first = torch.exp(-((x - 30) ** 2 + (y + 20) ** 2 + (z - 10) ** 2) / (2 * 25.0**2))
    return first + 0.5 * torch.exp(-((x + 40) ** 2 + y**2 + (z + 30) ** 2) / (2 * 15.0**2))


def test_rescale_volume_matches_the_function_sampled_at_the_new_voxel_size():
    from aitom.geometry import rescale_volume

    coarse = rescale_volume(_two_blobs(100, 4.0), 4.0, 10.0)  # 400 Å box, 4 Å -> 10 Å
    assert coarse.shape == (40, 40, 40)
    assert (coarse - _two_blobs(40, 10.0)).abs().max() < 0.01  # measured 0.008
    fine = rescale_volume(_two_blobs(20, 10.0), 10.0, 4.0)  # trilinear upsampling
    assert fine.shape == (50, 50, 50)
    assert (fine - _two_blobs(50, 4.0)).abs().max() < 0.07  # measured 0.057
    same = _two_blobs(16, 8.0)
    torch.testing.assert_close(rescale_volume(same, 8.0, 8.0), same)
    batch = torch.stack([same, 2 * same])
    torch.testing.assert_close(rescale_volume(batch, 8.0, 4.0)[1], 2 * rescale_volume(same, 8.0, 4.0))
    assert rescale_volume(same, 8.0, 4.0, shape=(10, 12, 14)).shape == (10, 12, 14)


def test_rescale_volume_low_passes_before_coarsening():
    from aitom.geometry import rescale_volume

    index = torch.arange(32, dtype=torch.float64)
    checker = (-1.0) ** (
        index[:, None, None] + index[None, :, None] + index[None, None, :]
    )  # at fine Nyquist
    assert rescale_volume(checker, 5.0, 10.0).abs().max() < 1e-6  # trilinear alone would give ±1
    with pytest.raises(ValueError, match="positive"):
        rescale_volume(checker, 0.0, 10.0)


def test_resample_axis_reproduces_quadratics_and_keeps_the_centre_sample():
    """Cubic convolution (Keys, a = -0.5) is exact for quadratics; index N // 2 lands on M // 2."""
    from aitom.geometry import resample_axis

    x = torch.arange(21, dtype=torch.float64)
    line = 0.3 * x**2 - x + 2.0
    fine = resample_axis(line, 10.0, 4.0)  # 21 samples of 10 Å -> 52 of 4 Å
    assert fine.shape == (52,)
    position = (torch.arange(52, dtype=torch.float64) - 26) * 0.4 + 10
    inside = (position >= 1) & (position <= 18)  # all four taps inside the line
    torch.testing.assert_close(
        fine[inside], 0.3 * position[inside] ** 2 - position[inside] + 2, atol=1e-12, rtol=0
    )
    assert fine[26] == line[10]


def test_resample_axis_binning_equals_fourier_cropping_for_band_limited_lines():
    """Binning by 2 a line whose spectrum lies inside the new band: identical to cropping its spectrum
    (NumPy reference); the raised-cosine edge of the anti-alias filter is outside that band."""
    from aitom.geometry import resample_axis

    n = 64
    rng = np.random.default_rng(1)
    spectrum = np.zeros(n // 2 + 1, dtype=complex)
    spectrum[:14] = rng.normal(size=14) + 1j * rng.normal(size=14)  # below 0.22 cycles/voxel
    spectrum[0] = spectrum[0].real
    line = np.fft.irfft(spectrum, n)
    reference = np.fft.irfft(spectrum[: n // 4 + 1], n // 2) / 2  # every 2nd sample of the same function
    binned = resample_axis(torch.from_numpy(np.stack([line, -line])), 5.0, 10.0, dim=1)
    np.testing.assert_allclose(binned[0].numpy(), reference, atol=1e-10)
    np.testing.assert_allclose(binned[1].numpy(), -reference, atol=1e-10)


def test_resample_axis_removes_what_the_coarser_grid_cannot_hold():
    """A cosine at 26/64 cycles/voxel would alias to 0.19 after binning by 2: the filter removes it."""
    from aitom.geometry import resample_axis

    index = torch.arange(64, dtype=torch.float64)
    binned = resample_axis(torch.cos(2 * np.pi * 26 / 64 * index), 5.0, 10.0)
    assert binned.abs().max() < 1e-6
    with pytest.raises(ValueError, match="positive"):
        resample_axis(index, 5.0, float("nan"))


def test_resample_to_cubic_voxels_matches_the_function_at_the_new_spacing():
    """Anisotropic 8 x 8 x 16 Å voxels -> 8 Å cubic ones, slab by slab or whole: the blobs sampled on the
    finer grid (axis Z upsampled 2x), and a Gaussian stays where it was in Å."""
    from aitom.geometry import resample_to_cubic_voxels

    def blobs(shape_zyx: tuple[int, int, int], voxel_xyz: tuple[float, float, float]) -> torch.Tensor:
        axes = [
            (torch.arange(n, dtype=torch.float64) - n // 2) * v for n, v in zip(shape_zyx, voxel_xyz[::-1])
        ]
        z, y, x = torch.meshgrid(*axes, indexing="ij")
        return torch.exp(-((x - 40) ** 2 + (y + 24) ** 2 + (z - 48) ** 2) / (2 * 30.0**2))

    volume = blobs((20, 32, 24), (8.0, 8.0, 16.0))
    cubic = resample_to_cubic_voxels(volume, (8.0, 8.0, 16.0), 8.0)
    assert cubic.shape == (40, 32, 24)
    assert (cubic - blobs((40, 32, 24), (8.0, 8.0, 8.0))).abs().max() < 0.005
    sliced = resample_to_cubic_voxels(volume, (8.0, 8.0, 16.0), 8.0, chunk_elements=1000)
    torch.testing.assert_close(sliced, cubic)
    torch.testing.assert_close(resample_to_cubic_voxels(cubic, (8.0, 8.0, 8.0), 8.0), cubic)
