"""The semi-supervised autoencoding classifier: losses by hand, the labelled flags, `aitom fit|predict`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from aitom.cli import main
from aitom.data.simulated import (
    LabelledShareBatchSampler,
    SimulatedSubtomogramDataModule,
    labelled_flags,
)
from aitom.errors import InputError
from aitom.io import read_particles
from aitom.ops.augmentation import random_rotated_views
from aitom.tasks.autoencoder import contrastive_loss
from aitom.tasks.semi_supervised import (
    AutoencoderClassifier3D,
    SemiSupervisedClassifier,
    masked_cross_entropy,
    pseudo_label_consistency_loss,
    semi_supervised_loss,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CLASSES = ["proteasome_20s", "ribosome_30s", "apoferritin"]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


# ------------------------------------------------------------------------------------------------- losses


def test_cross_entropy_uses_the_labelled_items_only(device):
    logits = torch.tensor(
        [[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-3.0, 4.0, 0.0], [1.0, 1.0, 1.0]], device=device
    )
    labels = torch.tensor([0, 2, 1, 1], device=device)
    labelled = torch.tensor([True, False, True, False], device=device)
    by_hand = -np.mean([log_softmax(logits.cpu().numpy())[i, labels[i].item()] for i in (0, 2)])
    assert math.isclose(masked_cross_entropy(logits, labels, labelled).item(), by_hand, rel_tol=1e-6)
    # an unlabelled item's label (even out of range) changes nothing
    other_labels = torch.tensor([0, 7, 1, -1], device=device)
    assert math.isclose(masked_cross_entropy(logits, other_labels, labelled).item(), by_hand, rel_tol=1e-6)


def test_cross_entropy_of_a_batch_without_labels_is_zero_and_differentiable(device):
    logits = torch.randn(3, 4, device=device, requires_grad=True)
    loss = masked_cross_entropy(
        logits,
        torch.zeros(3, dtype=torch.int64, device=device),
        torch.zeros(3, dtype=torch.bool, device=device),
    )
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


def test_loss_is_cross_entropy_plus_weighted_reconstruction_mse(device):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, generator=generator).to(device)
    labels = torch.tensor([1, 0, 2, 2], device=device)
    labelled = torch.tensor([False, True, True, False], device=device)
    volume = torch.randn(4, 1, 2, 2, 2, generator=generator).to(device)
    reconstruction = torch.randn(4, 1, 2, 2, 2, generator=generator).to(device)
    loss, cross_entropy, mse = semi_supervised_loss(logits, labels, labelled, reconstruction, volume, 0.25)
    mse_by_hand = float(((reconstruction - volume).cpu().double().numpy() ** 2).mean())  # over ALL items
    ce_by_hand = -np.mean([log_softmax(logits.cpu().numpy())[i, labels[i].item()] for i in (1, 2)])
    assert math.isclose(mse.item(), mse_by_hand, rel_tol=1e-6)
    assert math.isclose(cross_entropy.item(), ce_by_hand, rel_tol=1e-6)
    assert math.isclose(loss.item(), ce_by_hand + 0.25 * mse_by_hand, rel_tol=1e-6)


def test_consistency_loss_is_cross_entropy_of_the_views_on_confident_items_only(device):
    target_logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, 5.0], [0.2, 0.0, 0.0]])
    view_logits = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 1.0], [0.5, 0.5, 0.5], [0.0, 0.0, 9.0]])
    target_logits, view_logits = target_logits.to(device), view_logits.to(device).requires_grad_()
    loss, used = pseudo_label_consistency_loss(view_logits, target_logits, confidence_threshold=0.9)
    probabilities = np.exp(log_softmax(target_logits.cpu().numpy()))
    confident = probabilities.max(axis=1) >= 0.9
    assert confident.tolist() == [
        True,
        False,
        True,
        False,
    ]  # e^4 / (e^4 + 2) = 0.965, e^5 / (e^5 + 2) = 0.987
    view_log_probabilities = log_softmax(view_logits.detach().cpu().numpy())
    by_hand = -(view_log_probabilities[0, 0] + view_log_probabilities[2, 2]) / 4
    assert math.isclose(loss.item(), by_hand, rel_tol=1e-6)
    assert math.isclose(used.item(), 0.5)
    loss.backward()
    assert view_logits.grad[1].abs().sum() == 0 and view_logits.grad[0].abs().sum() > 0


def test_training_step_adds_the_consistency_of_a_rotated_view_of_the_unlabelled_items():
    torch.manual_seed(0)
    net = AutoencoderClassifier3D(num_classes=3, widths=(4, 8), dropout=0.0).eval()
    model = SemiSupervisedClassifier(
        net,
        num_classes=3,
        rotated_views=False,
        contrastive_weight=0.0,
        consistency_weight=0.5,
        confidence_threshold=0.34,
    )
    volume = torch.randn(4, 1, 8, 8, 8)
    labelled = torch.tensor([1, 0, 0, 1]).bool()
    batch = {"volume": volume, "label": torch.tensor([0, 1, 2, 0]), "labelled": labelled}
    torch.manual_seed(7)
    loss = model.training_step(batch, 0)
    torch.manual_seed(7)  # the same view
    views = random_rotated_views(volume[~labelled], -60.0, 60.0, 2.0, 0.5)
    logits, reconstruction = net.classify_and_reconstruct(volume)
    base, _, _ = semi_supervised_loss(logits, batch["label"], labelled, reconstruction, volume, 1.0)
    consistency, used = pseudo_label_consistency_loss(net(views), logits[~labelled], 0.34)
    assert used > 0
    torch.testing.assert_close(loss, base + 0.5 * consistency)


def test_training_step_adds_the_contrastive_loss_of_two_rotated_views():
    torch.manual_seed(0)
    net = AutoencoderClassifier3D(num_classes=3, widths=(4, 8), dropout=0.0).eval()
    model = SemiSupervisedClassifier(
        net, num_classes=3, reconstruction_weight=0.5, contrastive_weight=2.0
    ).eval()
    volume = torch.randn(4, 1, 8, 8, 8)
    labelled = torch.tensor([1, 0, 0, 1]).bool()
    batch = {"volume": volume, "label": torch.tensor([0, 1, 2, 0]), "labelled": labelled}
    torch.manual_seed(5)
    loss = model.training_step(batch, 0)
    torch.manual_seed(5)  # the same two views
    first = random_rotated_views(volume, -60.0, 60.0, 2.0)
    second = random_rotated_views(volume, -60.0, 60.0, 2.0)
    logits, reconstruction = net.classify_and_reconstruct(first)
    base, _, _ = semi_supervised_loss(logits, batch["label"], labelled, reconstruction, first, 0.5)
    contrastive = contrastive_loss(
        model.projection(net.embed(first)), model.projection(net.embed(second)), 0.2
    )
    torch.testing.assert_close(loss, base + 2.0 * contrastive)
    assert net.embed(first).shape == (4, net.embedding_size) == (4, 8 * 8)


def test_contrastive_settings_are_checked():
    net = AutoencoderClassifier3D(num_classes=3, widths=(4, 8))
    with pytest.raises(InputError, match="contrastive_temperature"):
        SemiSupervisedClassifier(net, num_classes=3, contrastive_temperature=0.0)
    with pytest.raises(InputError, match="classify_and_embed"):
        SemiSupervisedClassifier(torch.nn.Linear(2, 3), num_classes=3)


def test_training_step_returns_the_loss_of_the_network_outputs():
    torch.manual_seed(0)
    net = AutoencoderClassifier3D(num_classes=3, widths=(4, 8), dropout=0.0).eval()
    model = SemiSupervisedClassifier(
        net, num_classes=3, reconstruction_weight=2.0, rotated_views=False, contrastive_weight=0.0
    )
    volume = torch.randn(4, 1, 8, 8, 8)
    batch = {
        "volume": volume,
        "label": torch.tensor([0, 1, 2, 0]),
        "labelled": torch.tensor([1, 0, 0, 1]).bool(),
    }
    logits, reconstruction = net.classify_and_reconstruct(volume)
    expected, _, _ = semi_supervised_loss(
        logits, batch["label"], batch["labelled"], reconstruction, volume, 2.0
    )
    torch.testing.assert_close(model.training_step(batch, 0), expected)


# ------------------------------------------------------------------------------------------------ network


def test_network_reconstructs_the_input_shape_and_refuses_an_odd_box():
    net = AutoencoderClassifier3D(num_classes=4, widths=(4, 8, 16))
    logits, reconstruction = net.classify_and_reconstruct(torch.randn(2, 1, 16, 16, 24))
    assert logits.shape == (2, 4) and reconstruction.shape == (2, 1, 16, 16, 24)
    with pytest.raises(InputError, match="multiples of 8 voxels"):
        net(torch.randn(2, 1, 12, 16, 16))
    with pytest.raises(InputError, match="with_decoder"):
        AutoencoderClassifier3D(num_classes=4, with_decoder=False).classify_and_reconstruct(
            torch.randn(1, 1, 8, 8, 8)
        )


# ------------------------------------------------------------------------------------------ labelled flags


@pytest.mark.parametrize("fraction", [0.1, 0.5])
def test_labelled_flags_are_reproducible_and_near_the_requested_fraction(fraction):
    indices = list(range(2000))
    flags = labelled_flags(7, indices, fraction)
    assert flags.dtype == torch.bool and flags.shape == (2000,)
    assert abs(flags.double().mean().item() - fraction) < 0.05
    assert torch.equal(flags, labelled_flags(7, indices, fraction))
    assert torch.equal(flags[[5, 1999, 3]], labelled_flags(7, [5, 1999, 3], fraction))  # any order, any batch
    assert not torch.equal(flags, labelled_flags(8, indices, fraction))  # the seed matters
    # a smaller fraction labels a subset of a larger one's items (same uniform numbers)
    assert not (labelled_flags(7, indices, 0.05) & ~labelled_flags(7, indices, 0.2)).any()


def test_module_flags_train_items_only():
    module = SimulatedSubtomogramDataModule(
        CLASSES,
        box_size_voxels=12,
        voxel_size_a=40.0,
        train_size=40,
        val_size=4,
        test_size=4,
        labelled_fraction=0.3,
        seed=2,
    )
    module.setup("fit")
    train = module.datasets["train"].__getitems__(list(range(40)))
    assert [bool(item["labelled"]) for item in train] == labelled_flags(2, list(range(40)), 0.3).tolist()
    assert bool(module.datasets["train"][11]["labelled"]) == bool(train[11]["labelled"])
    assert all(bool(item["labelled"]) for split in ("val", "test") for item in module.datasets[split])
    fully = SimulatedSubtomogramDataModule(
        CLASSES, box_size_voxels=12, voxel_size_a=40.0, train_size=5, seed=2
    )
    fully.setup("fit")
    assert all(bool(item["labelled"]) for item in fully.datasets["train"])
    torch.testing.assert_close(fully.datasets["train"][3]["volume"], module.datasets["train"][3]["volume"])


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_labelled_fraction_outside_zero_one_is_refused(fraction):
    with pytest.raises(InputError, match=r"labelled_fraction must be in \(0, 1\]"):
        SimulatedSubtomogramDataModule(CLASSES, labelled_fraction=fraction)
    with pytest.raises(InputError, match="labelled_fraction"):
        labelled_flags(0, [1, 2], fraction)


def labelled_share_module(
    seed: int = 4, batch_size: int = 10, **kwargs: object
) -> SimulatedSubtomogramDataModule:
    module = SimulatedSubtomogramDataModule(
        CLASSES,
        box_size_voxels=12,
        voxel_size_a=40.0,
        train_size=200,
        val_size=2,
        test_size=2,
        batch_size=batch_size,
        labelled_fraction=0.1,
        labelled_batch_fraction=0.5,
        seed=seed,
        **kwargs,
    )
    module.setup("fit")
    return module


def epochs_of_batches(sampler: LabelledShareBatchSampler, epochs: int) -> list[list[list[int]]]:
    return [list(sampler) for _ in range(epochs)]


@pytest.mark.parametrize(("batch_size", "labelled_per_batch"), [(10, 5), (7, 4)])
def test_every_training_batch_is_half_labelled_and_deterministic(batch_size, labelled_per_batch):
    module = labelled_share_module(batch_size=batch_size)
    sampler = module.train_dataloader().batch_sampler
    assert isinstance(sampler, LabelledShareBatchSampler)
    assert sampler.labelled_per_batch == labelled_per_batch  # round(0.5 * 7) = 4: half, +-1 for odd sizes
    flags = labelled_flags(4, list(range(200)), 0.1)
    labelled = set(torch.nonzero(flags).flatten().tolist())
    epochs = epochs_of_batches(sampler, 3)
    for batches in epochs:
        assert len(batches) == math.ceil(200 / batch_size)
        rest = []
        for batch in batches:
            assert len(batch) == batch_size and all(0 <= index < 200 for index in batch)
            # the first half: labelled draws; the other half from all items, so labelled ones may add more
            assert set(batch[:labelled_per_batch]) <= labelled
            assert labelled_per_batch <= sum(index in labelled for index in batch) <= batch_size
            rest += batch[labelled_per_batch:]
        assert len(set(rest)) == len(rest)  # the other half: a permutation of all items, no repeats
    # labelled share of all batches: half + 10 % of the other half (the labelled flags are ~10 %)
    shares = [sum(index in labelled for index in b) / batch_size for batches in epochs for b in batches]
    expected = labelled_per_batch / batch_size + (1 - labelled_per_batch / batch_size) * len(labelled) / 200
    assert abs(np.mean(shares) - expected) < 0.05
    assert epochs[0] != epochs[1]  # each pass is the next epoch
    # deterministic for a seed: a fresh module replays the same epochs; another seed does not
    assert (
        epochs_of_batches(labelled_share_module(batch_size=batch_size).train_dataloader().batch_sampler, 3)
        == epochs
    )
    assert (
        epochs_of_batches(
            labelled_share_module(seed=5, batch_size=batch_size).train_dataloader().batch_sampler, 1
        )[0]
        != epochs[0]
    )
    sampler.set_epoch(1)
    assert list(sampler) == epochs[1]


def test_labelled_share_loader_serves_the_sampler_batches():
    batch = next(iter(labelled_share_module(batch_size=6).train_dataloader()))
    (expected, *_) = labelled_share_module(batch_size=6).train_dataloader().batch_sampler
    assert batch["index"].tolist() == expected and batch["volume"].shape == (6, 1, 12, 12, 12)
    assert batch["labelled"][:3].all()


def test_plain_shuffled_batches_without_labelled_batch_fraction_or_with_all_labels():
    sizes = {"box_size_voxels": 12, "voxel_size_a": 40.0, "train_size": 20}
    plain = SimulatedSubtomogramDataModule(CLASSES, labelled_fraction=0.1, **sizes)
    all_labelled = SimulatedSubtomogramDataModule(CLASSES, labelled_batch_fraction=0.5, **sizes)
    for module in (plain, all_labelled):
        module.setup("fit")
        assert not isinstance(module.train_dataloader().batch_sampler, LabelledShareBatchSampler)


@pytest.mark.parametrize("fraction", [0.0, 1.5])
def test_labelled_batch_fraction_outside_zero_one_is_refused(fraction):
    with pytest.raises(InputError, match=r"labelled_batch_fraction must be in \(0, 1\]"):
        SimulatedSubtomogramDataModule(CLASSES, labelled_fraction=0.1, labelled_batch_fraction=fraction)
    with pytest.raises(InputError, match="no labelled training item"):
        LabelledShareBatchSampler([], 10, 4, 2, seed=0)


def test_class_count_mismatch_is_refused():
    with pytest.raises(InputError, match="num_classes 4"):
        SemiSupervisedClassifier(AutoencoderClassifier3D(num_classes=4), num_classes=3)


# ------------------------------------------------------------------------------------------ command line


def write_config(directory: Path) -> Path:
    """configs/semi_supervised.yaml with tiny simulated data (16³, 3 classes) and a CSV logger."""
    config = yaml.safe_load((CONFIGS / "semi_supervised.yaml").read_text())
    config["model"]["init_args"]["num_classes"] = 3
    config["model"]["init_args"]["net"]["init_args"]["num_classes"] = 3
    config["data"]["init_args"].update(
        classes=CLASSES,
        box_size_voxels=16,
        voxel_size_a=20.0,
        train_size=8,
        val_size=2,
        test_size=2,
        predict_size=3,
        batch_size=4,
        labelled_fraction=0.5,
    )
    config["trainer"]["logger"] = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(directory / "logs")},
    }
    path = directory / "semi_supervised.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_config_fits_two_steps_and_predicts_through_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = str(write_config(tmp_path))
    assert (
        main(["fit", "--config", config, "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1"]) == 0
    )
    last = tmp_path / "outputs" / "semi_supervised" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 2
    metrics = (next((tmp_path / "logs").rglob("metrics.csv"))).read_text().splitlines()[0].split(",")
    assert {
        "train/loss_epoch",
        "train/ce_epoch",
        "train/reconstruction_epoch",
        "train/acc",
        "val/acc",
    } <= set(metrics)
    assert main(["test", "--config", config, "--ckpt_path", "last"]) == 0
    assert "test/acc" in capsys.readouterr().out
    assert main(["predict", "--config", config, "--ckpt_path", "last"]) == 0
    table = read_particles(
        tmp_path / "outputs" / "semi_supervised" / "predictions.star", require=("rlnClassNumber",)
    )
    assert len(table) == 3 and table["rlnClassNumber"].between(1, 3).all()
    assert set(table["aitomClassName"]) <= set(CLASSES)
