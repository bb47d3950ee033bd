"""Simulated subtomograms: ground-truth conventions, SNR as AITom defines it, missing wedge, CTF sign.

References: :func:`aitom.geometry.rotate_volume` with the RELION matrix of the truth angles (pose
convention), the correlation of paired noise realisations ``cc / (1 − cc)`` (SNR), the analytic wedge
geometry (:func:`aitom.fourier.missing_wedge_mask`).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aitom.fourier import missing_wedge_mask
from aitom.geometry import euler_zyz_to_matrix, random_rotations, rotate_volume
from aitom.simulate import (
    ORIGIN_COLUMNS,
    CtfConfig,
    TiltSeriesConfig,
    class_potential,
    load_recipe,
    random_shifts,
    simulate_subtomogram_batch,
    simulate_subtomogram_batch_tiltseries,
    simulate_subtomograms,
)

CLASSES = ["proteasome_20s", "apoferritin", "hsp90"]


@pytest.fixture(scope="module")
def maps_24() -> torch.Tensor:
    return torch.stack([class_potential(name, 12.0, box_size=24) for name in CLASSES])


def random_poses(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    class_ids = torch.randint(0, len(CLASSES), (n,), generator=generator)
    rotations = random_rotations(n, generator=generator)
    shifts = random_shifts(n, 1.5, generator=generator, dtype=torch.float32)
    return class_ids, rotations, shifts


def paired_snr(pair: torch.Tensor) -> float:
    """AITom's estimator: pooled correlation of two noise realisations, SNR = cc / (1 − cc)."""
    first = pair[0] - pair[0].mean(dim=(-3, -2, -1), keepdim=True)
    second = pair[1] - pair[1].mean(dim=(-3, -2, -1), keepdim=True)
    cc = float((first * second).sum() / (first.norm() * second.norm()))
    return cc / (1 - cc)


def test_truth_table_describes_the_pose():
    """Noise-free, no CTF, no wedge: each is its template rotated by A(angles) and shifted by −origin."""
    recipe = load_recipe(
        None,
        [
            "voxel_size_a=12",
            "box_size_voxels=24",
            f"classes=[{','.join(CLASSES)}]",
            "particles_per_class=3",
            "snr=null",
            "normalize=false",
            "ctf.enabled=false",
            "tilt.tilt_min_deg=-90",
            "tilt.tilt_max_deg=90",
        ],
        kind="subtomograms",
    )
    simulation = simulate_subtomograms(recipe)
    truth = simulation.truth
    assert len(truth) == 9 and (truth["rlnClassNumber"].value_counts() == 3).all()
    angles = torch.deg2rad(
        torch.as_tensor(truth[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy().copy())
    )
    shifts = -torch.as_tensor(truth[list(ORIGIN_COLUMNS)].to_numpy().copy())
    assert float(shifts.norm(dim=1).max()) <= recipe.max_shift_voxels
    for index, (name, volume) in enumerate(zip(truth["aitomClassName"], simulation.volumes)):
        expected = rotate_volume(
            simulation.templates[name], euler_zyz_to_matrix(angles[index]).float(), shifts[index].float()
        )
        # the ±90° wedge mask drops only the kx = 0, kz ≠ 0 plane: compare through it
        mask = missing_wedge_mask((24,) * 3, tilt_min_deg=-90, tilt_max_deg=90, rfft=True, centered=False)
        expected = torch.fft.irfftn(torch.fft.rfftn(expected) * mask, s=(24,) * 3)
        torch.testing.assert_close(volume, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("snr", "n_pairs"), [(1.0, 64), (0.1, 128), (0.01, 512)])
def test_fourier_model_snr_from_paired_copies(device, maps_24, snr, n_pairs):
    class_ids, rotations, shifts = random_poses(n_pairs, seed=int(100 * snr))
    generator = torch.Generator(device=device).manual_seed(1)
    pair = simulate_subtomogram_batch(
        maps_24.to(device),
        class_ids,
        rotations,
        shifts,
        snr=snr,
        generator=generator,
        voxel_size_a=12.0,
        ctf=CtfConfig(defocus_um=3.0),
        paired=True,
    )
    assert pair.shape == (2, n_pairs, 24, 24, 24) and pair.device.type == device.type
    assert paired_snr(pair.cpu()) == pytest.approx(snr, rel=0.2)
    torch.testing.assert_close(pair.mean(dim=(-3, -2, -1)).cpu(), torch.zeros(2, n_pairs), atol=1e-5, rtol=0)
    torch.testing.assert_close(pair.std(dim=(-3, -2, -1)).cpu(), torch.ones(2, n_pairs), atol=1e-3, rtol=0)


@pytest.mark.parametrize("snr", [1.0, 0.1])
def test_tiltseries_model_snr_from_paired_copies(device, maps_24, snr):
    class_ids, rotations, shifts = random_poses(48, seed=3)
    pair = simulate_subtomogram_batch_tiltseries(
        maps_24.to(device),
        class_ids,
        rotations,
        shifts,
        snr=snr,
        generator=torch.Generator(device=device).manual_seed(2),
        voxel_size_a=12.0,
        tilt=TiltSeriesConfig(tilt_step_deg=4.0),
        ctf=CtfConfig(defocus_um=3.0),
        paired=True,
    )
    assert paired_snr(pair.cpu()) == pytest.approx(snr, rel=0.2)


def test_fourier_model_has_the_missing_wedge_and_protein_bright_contrast(device, maps_24):
    class_ids, rotations, shifts = random_poses(8, seed=5)
    volumes = simulate_subtomogram_batch(
        maps_24.to(device),
        class_ids,
        rotations,
        shifts,
        snr=None,
        voxel_size_a=12.0,
        tilt_range_deg=(-50.0, 60.0),
        ctf=CtfConfig(defocus_um=3.0),
        normalize=False,
    ).cpu()
    spectrum = torch.fft.rfftn(volumes).abs() ** 2
    mask = missing_wedge_mask((24,) * 3, tilt_min_deg=-50, tilt_max_deg=60, rfft=True, centered=False)
    assert float(spectrum[:, mask == 0].sum() / spectrum.sum()) < 1e-10
    particles = rotate_volume(maps_24[class_ids], rotations, shifts)
    for volume, particle in zip(volumes, particles):
        # the first CTF lobe dominates at 12 Å/voxel and 3 µm: the particle stays positive (bright)
        centred = volume - volume.mean()
        reference = particle - particle.mean()
        assert float((centred * reference).sum() / (centred.norm() * reference.norm())) > 0.3


def test_simulate_subtomograms_is_reproducible_and_balanced():
    overrides = [
        "voxel_size_a=12",
        "box_size_voxels=24",
        f"classes=[{','.join(CLASSES)}]",
        "particles_per_class=5",
    ]
    recipe = load_recipe(None, overrides, kind="subtomograms")
    first = simulate_subtomograms(recipe)
    second = simulate_subtomograms(recipe)
    assert first.volumes.shape == (15, 24, 24, 24) and first.paired_volumes is None
    torch.testing.assert_close(first.volumes, second.volumes, rtol=0, atol=0)
    assert first.truth.equals(second.truth)
    assert np.bincount(first.truth["rlnClassNumber"].to_numpy()).tolist() == [0, 5, 5, 5]
    other = simulate_subtomograms(load_recipe(None, [*overrides, "seed=3"], kind="subtomograms"))
    assert not torch.equal(other.volumes, first.volumes)
    paired = simulate_subtomograms(
        load_recipe(None, [*overrides, "paired=true", "method=tiltseries"], kind="subtomograms")
    )
    assert paired.paired_volumes is not None and paired.paired_volumes.shape == paired.volumes.shape
    assert not torch.equal(paired.volumes, paired.paired_volumes)


def test_bad_batch_shapes_raise(maps_24):
    with pytest.raises(ValueError, match="rotations"):
        simulate_subtomogram_batch(
            maps_24, torch.zeros(2, dtype=torch.int64), torch.eye(3), torch.zeros(2, 3), snr=1.0
        )
