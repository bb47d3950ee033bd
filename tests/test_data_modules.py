"""DataModules: simulated subtomograms (determinism, splits, truth), STAR subtomograms, wedge-preserving
augmentation, tomogram tiles."""

from __future__ import annotations

import math

import mrcfile
import numpy as np
import pytest
import torch

from aitom import cli
from aitom.data import (
    RandomWedgePreservingRotation,
    SimulatedSubtomogramDataModule,
    SimulatedSubtomogramDataset,
    StarSubtomogramDataModule,
    TomogramDataModule,
    tile_origins,
    wedge_preserving_rotations,
)
from aitom.data.augment import augment_volume, rotate_half_turn
from aitom.errors import InputError
from aitom.fourier import missing_wedge_mask
from aitom.geometry import random_rotations, rotate_volume, rotation_about_axis
from aitom.io import read_particles, write_volume
from aitom.simulate import CtfConfig, available_classes, simulate_subtomogram_batch

CLASSES = ["ribosome_30s", "apoferritin", "hsp90"]
VOXEL_SIZE_A = 20.0
BOX = 16


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two volumes."""
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / (a.norm() * b.norm()))


@pytest.fixture(scope="module")
def simulated() -> SimulatedSubtomogramDataModule:
    module = SimulatedSubtomogramDataModule(
        CLASSES,
        box_size_voxels=BOX,
        voxel_size_a=VOXEL_SIZE_A,
        snr=1.0,
        train_size=300,
        val_size=8,
        test_size=8,
        batch_size=4,
        seed=3,
    )
    module.setup("fit")
    return module


# --- SimulatedSubtomogramDataModule -----------------------------------------------------------------------


def test_item_is_independent_of_batch_composition(simulated):
    dataset = simulated.datasets["train"]
    alone = dataset[9]
    in_batch = dataset.__getitems__([5, 9, 3])[1]
    via_loader = next(iter(simulated.train_dataloader()))  # a shuffled batch
    for key in ("volume", "label", "rotation", "shift_xyz"):  # float32 batching: last-bit differences
        torch.testing.assert_close(in_batch[key], alone[key], rtol=0, atol=1e-5)
    for position, index in enumerate(via_loader["index"].tolist()):  # float32 batching: last-bit differences
        torch.testing.assert_close(
            via_loader["volume"][position], dataset[index]["volume"], rtol=0, atol=1e-5
        )
    # a fresh module with the same seed gives the same items
    again = SimulatedSubtomogramDataModule(
        CLASSES, box_size_voxels=BOX, voxel_size_a=VOXEL_SIZE_A, snr=1.0, train_size=300, seed=3
    )
    again.setup("fit")
    torch.testing.assert_close(again.datasets["train"][9]["volume"], alone["volume"], rtol=0, atol=0)


def test_splits_and_seeds_differ(simulated):
    val = torch.stack([simulated.datasets["val"][i]["volume"] for i in range(4)])
    test = torch.stack([simulated.datasets["test"][i]["volume"] for i in range(4)])
    train = torch.stack([simulated.datasets["train"][i]["volume"] for i in range(4)])
    assert not torch.allclose(val, test)
    assert not torch.allclose(val, train)
    rotations_val = torch.stack([simulated.datasets["val"][i]["rotation"] for i in range(4)])
    rotations_test = torch.stack([simulated.datasets["test"][i]["rotation"] for i in range(4)])
    assert (rotations_val - rotations_test).abs().max() > 0.1


def test_labels_in_range_and_balanced(simulated):
    dataset = simulated.datasets["train"]
    labels = torch.cat([batch["label"] for batch in simulated.train_dataloader()])
    assert labels.shape == (len(dataset),) and labels.dtype == torch.int64
    assert labels.min() >= 0 and labels.max() < len(CLASSES)
    counts = torch.bincount(labels, minlength=len(CLASSES)).double()
    expected = len(dataset) / len(CLASSES)  # 100 each; binomial std ≈ 8.2
    assert ((counts - expected).abs() < 4 * (expected * (1 - 1 / len(CLASSES))) ** 0.5).all(), counts


@pytest.mark.parametrize(("snr", "minimum"), [(1e6, 0.999), (1.0, 0.5)])
def test_truth_pose_reproduces_the_noise_free_volume(simulated, snr, minimum, device):
    """Re-simulating an item's class, rotation and shift without noise matches it.

    The expected correlation is √(snr / (1 + snr)): 0.71 at SNR 1.
    """
    maps = simulated.class_maps()
    ctf = CtfConfig(defocus_um=simulated.hparams.defocus_um)
    dataset = SimulatedSubtomogramDataset(
        maps, 8, "test", 1, snr, VOXEL_SIZE_A, (-60.0, 60.0), ctf, max_shift_voxels=2.0
    )
    items = dataset.__getitems__(list(range(8)))
    labels = torch.stack([item["label"] for item in items])
    rotations = torch.stack([item["rotation"] for item in items])
    shifts = torch.stack([item["shift_xyz"] for item in items])
    options = {"snr": None, "voxel_size_a": VOXEL_SIZE_A, "tilt_range_deg": (-60.0, 60.0), "ctf": ctf}
    maps = maps.to(device)  # items made on the CPU, truth re-simulated on the device under test
    clean = simulate_subtomogram_batch(maps, labels, rotations, shifts, **options).cpu()
    wrong_poses = random_rotations(8, torch.Generator().manual_seed(7))
    wrong = simulate_subtomogram_batch(maps, labels, wrong_poses, shifts, **options).cpu()
    for item, truth, other in zip(items, clean, wrong):
        assert correlation(item["volume"], truth) > minimum
        assert correlation(item["volume"], truth) > correlation(item["volume"], other) + 0.05


def test_unknown_class_lists_the_available_ones():
    with pytest.raises(InputError, match="unknown structure class") as error:
        SimulatedSubtomogramDataModule(["apoferritin", "unicorn"])
    assert "unicorn" in str(error.value)
    assert all(name in str(error.value) for name in available_classes())


# --- StarSubtomogramDataModule ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def simulated_on_disk(tmp_path_factory):
    out = tmp_path_factory.mktemp("star") / "sub"
    argv = [
        "simulate",
        "subtomograms",
        "--out",
        str(out),
        f"voxel_size_a={VOXEL_SIZE_A:g}",
        f"box_size_voxels={BOX}",
        f"classes=[{','.join(CLASSES)}]",
        "particles_per_class=2",
    ]
    assert cli.main(argv) == 0
    return out


def test_star_items_load_with_labels_from_class_numbers(simulated_on_disk):
    star = simulated_on_disk / "particles.star"
    table = read_particles(star, require=("rlnImageName", "rlnClassNumber"))
    module = StarSubtomogramDataModule(train_star=str(star), test_star=str(star), batch_size=4)
    module.setup("fit")
    assert "test" not in module.datasets  # each stage reads only its own splits
    module.setup("test")
    dataset = module.datasets["test"]
    assert len(dataset) == len(table) == 2 * len(CLASSES)
    for index in range(len(dataset)):
        item = dataset[index]
        assert item["volume"].shape == (1, BOX, BOX, BOX)
        assert int(item["label"]) == int(table["rlnClassNumber"].iloc[index]) - 1
        assert CLASSES[int(item["label"])] == table["aitomClassName"].iloc[index]
        mean, std = float(item["volume"].mean()), float(item["volume"].std())
        assert abs(mean) < 1e-5 and std == pytest.approx(1, abs=1e-4)
    batch = next(iter(module.train_dataloader()))  # augmented split
    assert batch["volume"].shape == (4, 1, BOX, BOX, BOX) and torch.isfinite(batch["volume"]).all()


def test_star_box_mismatch_raises(simulated_on_disk, tmp_path):
    star = simulated_on_disk / "particles.star"
    table = read_particles(star, require=("rlnImageName",))
    folder = tmp_path / "mixed"
    for index, name in enumerate(table["rlnImageName"]):
        size = BOX + 4 if index == 2 else BOX
        write_volume(folder / name, torch.randn(size, size, size), VOXEL_SIZE_A)
    (folder / "particles.star").write_text(star.read_text())
    module = StarSubtomogramDataModule(test_star=str(folder / "particles.star"))
    with pytest.raises(InputError, match="subtomogram of row 3 is 20x20x20 voxels, the first"):
        module.setup("test")  # every header is read before any batch


# --- wedge-preserving rotations ---------------------------------------------------------------------------


def wedge_masked_noise(size: int, tilt_range_deg: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """A real ``(1, S, S, S)`` noise volume with its spectrum in the observed region, and the full mask."""
    mask = missing_wedge_mask((size,) * 3, tilt_min_deg=tilt_range_deg[0], tilt_max_deg=tilt_range_deg[1])
    mask = torch.fft.ifftshift(mask)
    noise = torch.randn((size,) * 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    volume = torch.fft.ifftn(torch.fft.fftn(noise) * mask).real
    return volume.unsqueeze(0), mask


def missing_power_fraction(volume: torch.Tensor, mask: torch.Tensor) -> float:
    """Fraction of the spectral power of ``(1, S, S, S)`` ``volume`` that falls in the missing wedge."""
    power = torch.fft.fftn(volume[0]).abs() ** 2
    return float(power[mask == 0].sum() / power.sum())


@pytest.mark.parametrize("size", [15, 16])
@pytest.mark.parametrize("tilt_range_deg", [(-60.0, 60.0), (-40.0, 60.0)])
def test_wedge_preserving_rotations_keep_the_wedge(size, tilt_range_deg):
    volume, mask = wedge_masked_noise(size, tilt_range_deg)
    assert missing_power_fraction(volume, mask) < 1e-20
    rotations = wedge_preserving_rotations(*tilt_range_deg)
    for axes in rotations:
        assert len(set(axes)) == 2  # two flipped axes: a 180° rotation (determinant +1)
        rotated = torch.flip(volume, dims=[axis + 1 for axis in axes])
        assert missing_power_fraction(rotated, mask) < 1e-8
    transform = RandomWedgePreservingRotation(*tilt_range_deg)
    torch.manual_seed(0)
    for _ in range(6):
        assert missing_power_fraction(augment_volume(volume.float(), transform).double(), mask) < 1e-8


@pytest.mark.parametrize("shape", [(16, 16, 16), (15, 16, 17)])
def test_wedge_preserving_rotations_turn_about_the_box_centre_voxel(shape):
    """A particle centred on voxel N // 2 stays there (a plain flip turned even axes about (N − 1) / 2,
    moving it by one voxel), and the turn equals the 180° rotation of :func:`rotate_volume`."""
    centre = tuple(n // 2 for n in shape)
    volume = torch.zeros(1, *shape)
    volume[(0, *centre)] = 1.0
    off_centre = torch.zeros(1, *shape)
    off_centre[0, centre[0] + 2, centre[1] - 1, centre[2] + 3] = 1.0
    transform = RandomWedgePreservingRotation(-60.0, 60.0)
    torch.manual_seed(0)
    for _ in range(12):
        assert augment_volume(volume, transform)[(0, *centre)] == 1.0
    for axes, about in zip(wedge_preserving_rotations(-60.0, 60.0), ("y", "z", "x")):
        turn = rotation_about_axis(
            torch.tensor([float(about == "x"), float(about == "y"), float(about == "z")]),
            torch.tensor(math.pi),
        )
        expected = rotate_volume(off_centre[0], turn)
        assert torch.allclose(rotate_half_turn(off_centre, axes)[0], expected, atol=1e-5), about


def test_asymmetric_range_allows_only_the_y_rotation():
    assert wedge_preserving_rotations(-40.0, 60.0) == [(0, 2)]
    assert len(wedge_preserving_rotations(-60.0, 60.0)) == 3
    # the 180° rotation about Z would move the wedge of an asymmetric range: power leaks into it
    volume, mask = wedge_masked_noise(16, (-40.0, 60.0))
    assert missing_power_fraction(torch.flip(volume, dims=[2, 3]), mask) > 0.01


# --- TomogramDataModule -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "tile", "overlap"), [((20, 37, 45), (16, 16, 16), 4), ((9, 30, 30), (9, 30, 8), 3)]
)
def test_tile_origins_cover_the_volume_with_overlap(shape, tile, overlap):
    origins = tile_origins(shape, tile, overlap)
    covered = np.zeros(shape, dtype=int)
    for z, y, x in origins:
        covered[z : z + tile[0], y : y + tile[1], x : x + tile[2]] += 1
        assert z + tile[0] <= shape[0] and y + tile[1] <= shape[1] and x + tile[2] <= shape[2]
    assert covered.min() >= 1
    for axis in range(3):
        starts = sorted({origin[axis] for origin in origins})
        if tile[axis] >= shape[axis]:
            assert starts == [0]
            continue
        steps = np.diff(starts)
        assert (steps <= tile[axis] - overlap).all() and (steps[:-1] == tile[axis] - overlap).all()
        assert starts[0] == 0 and starts[-1] + tile[axis] == shape[axis]
    with pytest.raises(InputError, match="overlap"):
        tile_origins(shape, (8, 8, 8), 8)


def test_tomogram_tiles_cover_every_voxel(tmp_path):
    tomogram = torch.randn(20, 37, 45, generator=torch.Generator().manual_seed(0))
    path = write_volume(tmp_path / "tomogram.mrc", tomogram, 10.0)
    module = TomogramDataModule([str(path)], tile_voxels=16, overlap_voxels=4, batch_size=2)
    module.setup("predict")
    covered = torch.zeros_like(tomogram, dtype=torch.int64)
    for batch in module.predict_dataloader():
        for tile, (z, y, x) in zip(batch["volume"], batch["origin_zyx"].tolist()):
            assert tile.shape == (1, 16, 16, 16)
            torch.testing.assert_close(tile[0], tomogram[z : z + 16, y : y + 16, x : x + 16], rtol=0, atol=0)
            covered[z : z + 16, y : y + 16, x : x + 16] += 1
    assert covered.min() >= 1


def test_nan_tomogram_raises(tmp_path):
    data = np.zeros((8, 20, 20), dtype=np.float32)
    data[3, 15, 15] = np.nan
    path = tmp_path / "nan.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = 10.0
    module = TomogramDataModule([str(path)], tile_voxels=16, overlap_voxels=4)
    module.setup("predict")
    with pytest.raises(InputError, match="NaN"):
        [batch for batch in module.predict_dataloader()]
