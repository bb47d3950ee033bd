"""``aitom.ops.extraction``: boxes against plain NumPy slicing of a zero-padded volume, borders included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aitom.io import open_volume_mmap, write_volume
from aitom.ops.extraction import box_bounds, extract_subvolumes

SHAPE_ZYX = (20, 24, 28)
# (x, y, z): inside, on every face, beyond a corner, float centres that round both ways, fully outside
CENTRES_XYZ = [
    (14.0, 12.0, 10.0),
    (0.0, 12.0, 10.0),
    (27.0, 23.0, 19.0),
    (-3.0, -2.0, -1.0),
    (13.4, 11.6, 9.5),
    (10.5, 11.5, 4.5),  # half-way: every axis rounds up, whatever the parity
    (100.0, 5.0, 5.0),
]


def numpy_reference(volume: np.ndarray, centres_xyz, size: int, padding: str) -> np.ndarray:
    """Fancy-index every box voxel by voxel (clipped indices), then blank those outside the volume."""
    boxes = []
    for centre in centres_xyz:
        indices = [int(np.floor(c + 0.5)) - size // 2 + np.arange(size) for c in centre[::-1]]  # z, y, x
        valid = [(i >= 0) & (i < n) for i, n in zip(indices, volume.shape)]
        clipped = [np.clip(i, 0, n - 1) for i, n in zip(indices, volume.shape)]
        box = volume[np.ix_(*clipped)].astype(np.float64)
        inside = valid[0][:, None, None] & valid[1][None, :, None] & valid[2][None, None, :]
        fill = box[inside].mean() if padding == "mean" and inside.any() else 0.0
        boxes.append(np.where(inside, box, fill))
    return np.stack(boxes)


@pytest.fixture
def volume() -> np.ndarray:
    return np.random.default_rng(0).normal(size=SHAPE_ZYX).astype(np.float32)


@pytest.mark.parametrize("padding", ["zero", "mean"])
@pytest.mark.parametrize("size", [7, 8])
def test_matches_numpy_slicing(volume, device, padding, size):
    boxes = extract_subvolumes(torch.from_numpy(volume).to(device), CENTRES_XYZ, size, padding=padding)
    assert boxes.shape == (len(CENTRES_XYZ), size, size, size)
    assert boxes.device.type == device.type and boxes.dtype == torch.float32
    expected = numpy_reference(volume, CENTRES_XYZ, size, padding)
    np.testing.assert_allclose(boxes.cpu().numpy(), expected, rtol=0, atol=1e-6)


def test_centre_lands_on_box_centre(device):
    volume = torch.zeros(16, 16, 16, device=device)
    volume[5, 9, 3] = 1.0  # (z, y, x)
    box = extract_subvolumes(volume, torch.tensor([[3, 9, 5]]), 6)[0]
    assert box[3, 3, 3] == 1.0 and box.sum() == 1.0


def test_memory_map_equals_tensor(volume, tmp_path):
    path = write_volume(tmp_path / "tomogram.mrc", volume, 10.0)
    array, _ = open_volume_mmap(path)
    assert isinstance(array, np.ndarray) and not array.flags.owndata
    from_map = extract_subvolumes(array, np.array(CENTRES_XYZ), 8, padding="mean")
    from_tensor = extract_subvolumes(torch.from_numpy(volume), CENTRES_XYZ, 8, padding="mean")
    torch.testing.assert_close(from_map, from_tensor, rtol=0, atol=1e-6)  # the mean: float32 round-off


def test_float64_and_integer_volumes():
    volume = torch.arange(8 * 8 * 8).reshape(8, 8, 8)
    boxes = extract_subvolumes(volume, [[4, 4, 4]], 4)
    assert boxes.dtype == torch.float32 and boxes[0, 2, 2, 2] == 4 * 64 + 4 * 8 + 4
    assert extract_subvolumes(volume.double(), [[4, 4, 4]], 4).dtype == torch.float64


def test_box_bounds_order_and_rounding():
    np.testing.assert_array_equal(box_bounds([[1.0, 2.0, 3.6]], 4), [[2, 0, -1]])


def test_empty_centres():
    assert extract_subvolumes(torch.zeros(8, 8, 8), torch.zeros(0, 3), 4).shape == (0, 4, 4, 4)


@pytest.mark.parametrize(
    ("shape", "centres", "size", "padding"),
    [
        ((8, 8), [[1, 1, 1]], 4, "zero"),
        ((8, 8, 8), [[1, 1]], 4, "zero"),
        ((8, 8, 8), [[1, 1, 1]], 0, "zero"),
        ((8, 8, 8), [[1, 1, 1]], 4, "reflect"),
    ],
)
def test_bad_input(shape, centres, size, padding):
    with pytest.raises(ValueError):
        extract_subvolumes(torch.zeros(shape), centres, size, padding=padding)
