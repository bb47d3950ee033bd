"""DoG and saliency pickers on planted bright blobs; SLIC and Robust PCA on known answers."""

from __future__ import annotations

import pytest
import torch

from aitom.errors import InputError
from aitom.io import particles_table
from aitom.ops.dog_picking import dog_pick
from aitom.ops.pick_evaluation import evaluate_picks
from aitom.ops.saliency import robust_pca, saliency_pick, singular_value_threshold, slic_supervoxels

CENTRES_ZYX = [(10, 10, 10), (10, 30, 34), (24, 12, 30), (36, 36, 12), (30, 24, 22), (38, 10, 38)]
RADIUS = 4.0


@pytest.fixture(scope="module")
def blobs():
    """A 48³ volume with six bright balls (radius 4 voxels), Gaussian noise of std 0.3 (high SNR)."""
    generator = torch.Generator().manual_seed(0)
    volume = 0.3 * torch.randn(48, 48, 48, generator=generator)
    z, y, x = torch.meshgrid(*[torch.arange(48.0)] * 3, indexing="ij")
    for cz, cy, cx in CENTRES_ZYX:
        volume += (((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) <= RADIUS**2).float()
    truth = particles_table([(cx, cy, cz) for cz, cy, cx in CENTRES_ZYX])
    return volume, truth


def as_table(coordinates_zyx: torch.Tensor):
    return particles_table(coordinates_zyx.flip(-1).cpu().double().numpy())


def test_dog_recall_and_precision(blobs, device):
    volume, truth = blobs
    coordinates, _ = dog_pick(
        volume.to(device), sigma1_voxels=RADIUS / 3**0.5, false_alarm_rate=1e-4, exclude_border=4
    )
    result = evaluate_picks(as_table(coordinates), truth, tolerance_voxels=RADIUS / 2)
    assert result["recall"] >= 0.9 and result["precision"] >= 0.9
    assert coordinates.device.type == device.type


def test_dog_dark_polarity_finds_inverted_blobs(blobs):
    volume, truth = blobs
    coordinates, _ = dog_pick(-volume, RADIUS / 3**0.5, polarity="dark", num_peaks=6, exclude_border=4)
    assert evaluate_picks(as_table(coordinates), truth, tolerance_voxels=RADIUS / 2)["recall"] >= 0.9
    with pytest.raises(InputError):
        dog_pick(volume, RADIUS, polarity="grey")
    with pytest.raises(InputError, match="constant"):
        dog_pick(torch.ones(16, 16, 16), 2.0)


def test_saliency_recall(blobs):
    volume, truth = blobs
    coordinates, scores = saliency_pick(volume, RADIUS, iterations=3, threshold_abs=0.0)
    result = evaluate_picks(as_table(coordinates[:6]), truth, tolerance_voxels=RADIUS / 2)
    assert result["recall"] >= 0.9
    # The planted blobs stand far above everything else in saliency.
    assert len(scores) > 6 and float(scores[5]) > 3 * float(scores[6])


def test_saliency_default_threshold_keeps_only_the_blobs(blobs):
    """Without a threshold, Otsu's split of the peaks' log-saliency keeps the six blobs and drops the rest."""
    volume, truth = blobs
    everything, _ = saliency_pick(volume, RADIUS, iterations=3, threshold_abs=0.0)
    coordinates, _ = saliency_pick(volume, RADIUS, iterations=3)
    result = evaluate_picks(as_table(coordinates), truth, tolerance_voxels=RADIUS / 2)
    assert result["recall"] >= 0.9 and result["precision"] >= 0.9
    assert len(everything) > 2 * len(coordinates)
    assert len(saliency_pick(volume, RADIUS, iterations=3, num_peaks=3)[0]) == 3


def test_slic_recovers_two_halves(device):
    volume = torch.zeros(16, 16, 16, device=device)
    volume[:, :, 8:] = 10.0
    labels = slic_supervoxels(volume, 4, compactness=0.1, iterations=3)
    # With a tiny compactness no supervoxel straddles the intensity edge.
    for label in labels.unique():
        inside = volume[labels == label]
        assert float(inside.min()) == float(inside.max())


def test_robust_pca_separates_low_rank_and_sparse():
    generator = torch.Generator().manual_seed(0)
    # Candès et al. 2011: rank 3 and 5 % gross errors in a 100 x 100 matrix are recovered exactly.
    low_rank = torch.randn(100, 3, generator=generator, dtype=torch.float64) @ torch.randn(
        3, 100, generator=generator, dtype=torch.float64
    )
    sparse = torch.zeros(100, 100, dtype=torch.float64)
    support = torch.rand(100, 100, generator=generator) < 0.05
    sparse[support] = 10.0 * torch.sign(
        torch.randn(int(support.sum()), generator=generator, dtype=torch.float64)
    )
    estimated_low, estimated_sparse = robust_pca(low_rank + sparse)
    assert torch.linalg.matrix_norm(estimated_low - low_rank) / torch.linalg.matrix_norm(low_rank) < 1e-6
    assert torch.linalg.matrix_norm(estimated_sparse - sparse) / torch.linalg.matrix_norm(sparse) < 1e-6


def test_singular_value_threshold_matches_svd():
    generator = torch.Generator().manual_seed(1)
    matrix = torch.randn(30, 6, generator=generator, dtype=torch.float64)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    expected = (u * torch.clamp(s - 1.5, min=0)) @ vh
    torch.testing.assert_close(singular_value_threshold(matrix, 1.5), expected)
    torch.testing.assert_close(singular_value_threshold(matrix.T, 1.5), expected.T)
