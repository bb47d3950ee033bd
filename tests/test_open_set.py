"""Open-set recognition: loss, AUROC and purity by hand; the open-set data splits; the task via the CLI."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch import seed_everything

from aitom.cli import main
from aitom.data.open_set import OpenSetDataModule
from aitom.errors import InputError
from aitom.models import DSRF3Dv2
from aitom.ops.open_set import (
    auroc,
    centralization_loss,
    cluster_purity,
    cosine_similarities,
    large_margin_cosine_logits,
    open_set_scores,
    soft_margin,
)
from aitom.tasks.open_set import ClassifierTrunk, OpenSetClassifier, open_set_evaluation

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "open_set.yaml"
SQRT2 = math.sqrt(2.0)


# ------------------------------------------------------------------------------------------------ the ops


def test_cosine_logits_by_hand(device):
    # unit features (1, 0), (0, 1); unit weights (1, 1)/√2, (0, -1)
    features = torch.tensor([[1.0, 0.0], [0.0, 2.0]], device=device)
    weights = torch.tensor([[1.0, 1.0], [0.0, -3.0]], device=device)
    labels = torch.tensor([0, 1], device=device)
    logits = large_margin_cosine_logits(features, weights, labels, scale=2.0, margin=0.5)
    expected = torch.tensor([[SQRT2 - 1.0, 0.0], [SQRT2, -3.0]], device=device)
    torch.testing.assert_close(logits, expected, atol=1e-6, rtol=0)
    no_margin = large_margin_cosine_logits(features, weights, None, scale=2.0, margin=0.5)
    torch.testing.assert_close(no_margin, torch.tensor([[SQRT2, 0.0], [SQRT2, -2.0]], device=device))
    assert logits.device == features.device


def test_centralization_loss_by_hand(device):
    features = torch.tensor([[1.0, 0.0], [1.0, 1.0]], device=device)
    centres = torch.tensor([[2.0, 0.0], [0.0, 1.0]], device=device)
    labels = torch.tensor([0, 1], device=device)
    # item 0 sits on its centre; item 1 is 45° off: ‖(1, 1)/√2 − (0, 1)‖² = 2 − √2
    loss = centralization_loss(features, labels, centres)
    assert math.isclose(loss.item(), (2.0 - SQRT2) / 2.0, rel_tol=1e-6)
    cosines = cosine_similarities(features, centres)
    assert math.isclose(loss.item(), float((2 - 2 * cosines[[0, 1], [0, 1]]).mean()), rel_tol=1e-6)


def test_gradients_in_float64():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(4, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    weights = torch.randn(2, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    centres = torch.randn(2, 3, dtype=torch.float64, generator=generator)
    labels = torch.tensor([0, 1, 1, 0])
    assert torch.autograd.gradcheck(
        lambda f, w: large_margin_cosine_logits(f, w, labels, 4.0, 0.3), (features, weights)
    )
    assert torch.autograd.gradcheck(lambda f: centralization_loss(f, labels, centres), (features,))


def test_open_set_scores_and_soft_margin(device):
    centres = torch.tensor([[1.0, 0.0], [0.0, 1.0]], device=device)
    features = torch.tensor([[3.0, 0.0], [1.0, 1.0], [-1.0, -1.0]], device=device)
    expected = torch.tensor([1.0, 1 / SQRT2, -1 / SQRT2], device=device)
    torch.testing.assert_close(open_set_scores(features, centres), expected, atol=1e-6, rtol=0)
    assert [soft_margin(step, 0.4, 10) for step in (0, 5, 10, 50)] == [0.0, 0.2, 0.4, 0.4]
    assert soft_margin(0, 0.4, 0) == 0.4


def test_auroc_by_hand_and_limits():
    scores = np.array([0.9, 0.8, 0.8, 0.3, 0.5])
    known = np.array([True, True, False, False, True])
    # known 0.9, 0.8, 0.5 against unknown 0.8, 0.3: wins 1+1, 0.5+1, 0+1 of 6 pairs
    assert auroc(scores, known) == pytest.approx(4.5 / 6, abs=1e-12)
    brute = np.mean(
        [
            1.0 if a > b else 0.5 if a == b else 0.0
            for a, b in itertools.product(scores[known], scores[~known])
        ]
    )
    assert auroc(torch.tensor(scores), torch.tensor(known)) == pytest.approx(brute, abs=1e-12)
    assert auroc([3.0, 2.0, 1.0, 0.0], [True, True, False, False]) == 1.0
    assert auroc([0.0, 1.0, 2.0, 3.0], [True, True, False, False]) == 0.0
    assert auroc([0.7] * 5, [True, False, True, False, False]) == 0.5
    with pytest.raises(ValueError, match="known and unknown"):
        auroc([0.1, 0.2], [True, True])


def test_cluster_purity_by_hand():
    # cluster 0 holds classes (0, 0, 1), cluster 1 holds (1, 2): majorities 2 + 1 of 5
    assert cluster_purity([0, 0, 1, 1, 2], [0, 0, 0, 1, 1]) == pytest.approx(3 / 5)
    assert cluster_purity([5, 5, 7], [1, 1, 0]) == 1.0


def test_bad_tensor_shapes_raise():
    with pytest.raises(ValueError, match="dimension"):
        large_margin_cosine_logits(torch.ones(2, 3), torch.ones(2, 4), torch.tensor([0, 1]), 1.0, 0.1)
    with pytest.raises(ValueError, match="labels must be in"):
        centralization_loss(torch.ones(2, 3), torch.tensor([0, 2]), torch.ones(2, 3))


def mean_cosines(features: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Mean cosine of pairs in the same class and in different classes."""
    cosines = cosine_similarities(features, features)
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~torch.eye(labels.shape[0], dtype=torch.bool)
    return float(cosines[same & off_diagonal].mean()), float(cosines[~same].mean())


def test_loss_compacts_classes_and_separates_them():
    """Free 2-D features of 3 overlapping classes, trained with the loss: classes tighten and move apart."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(30) % 3
    directions = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8]])
    start = directions[labels] + 0.4 * torch.randn(30, 2, generator=generator)
    features = torch.nn.Parameter(start.clone())
    weights = torch.nn.Parameter(torch.randn(3, 2, generator=generator))
    optimizer = torch.optim.SGD([features, weights], lr=0.5)
    for step in range(300):
        unit = torch.nn.functional.normalize(features.detach(), dim=1)
        centres = torch.stack([unit[labels == k].mean(0) for k in range(3)])
        logits = large_margin_cosine_logits(features, weights, labels, 8.0, soft_margin(step, 0.3, 50))
        loss = torch.nn.functional.cross_entropy(logits, labels) + 0.5 * centralization_loss(
            features, labels, centres
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    intra_before, inter_before = mean_cosines(start, labels)
    intra_after, inter_after = mean_cosines(features.detach(), labels)
    print(
        f"intra-class cosine {intra_before:.3f} -> {intra_after:.3f}, "
        f"inter-class {inter_before:.3f} -> {inter_after:.3f}"
    )
    assert intra_after > max(intra_before, 0.99)
    assert inter_after < inter_before - 0.5


# ------------------------------------------------------------------------------------------------ the data


def test_data_module_splits_known_and_unknown():
    data = OpenSetDataModule(
        known_classes=["proteasome_20s", "apoferritin"],
        unknown_classes=["nucleosome"],
        box_size_voxels=16,
        voxel_size_a=16.0,
        train_size=12,
        val_size=4,
        test_size=30,
    )
    data.setup()
    assert data.num_known_classes == 2 and data.num_unknown_classes == 1
    assert data.class_names == ["proteasome_20s", "apoferritin", "nucleosome"]
    train_labels = torch.stack(
        [item["label"] for item in data.datasets["train"].__getitems__(list(range(12)))]
    )
    test_labels = torch.stack([item["label"] for item in data.datasets["test"].__getitems__(list(range(30)))])
    assert int(train_labels.max()) < 2
    assert set(test_labels.tolist()) == {0, 1, 2}
    assert data.datasets["test"][0]["volume"].shape == (1, 16, 16, 16)


@pytest.mark.parametrize(
    ("known", "unknown", "message"),
    [
        (["proteasome_20s", "apoferritin"], ["apoferritin"], "in both"),
        (["proteasome_20s", "apoferritin"], ["no_such_complex"], "unknown structure"),
        (["proteasome_20s"], ["apoferritin"], "two or more"),
        (["proteasome_20s", "apoferritin"], [], "one or more"),
    ],
)
def test_data_module_refuses_bad_classes(known, unknown, message):
    with pytest.raises(InputError, match=message):
        OpenSetDataModule(known_classes=known, unknown_classes=unknown)


# ------------------------------------------------------------------------------------------------ the task


def test_evaluation_of_a_planted_open_set():
    """Known items score high; two unknown classes score low and sit in two tight, distant blobs."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 1] * 10 + [2] * 8 + [3] * 8)
    scores = torch.where(labels < 2, 0.9, 0.2) + 0.05 * torch.rand(36, generator=generator)
    blobs = torch.tensor([[0.0, 0.0], [0.0, 0.0], [5.0, 0.0], [-5.0, 0.0]])[labels]
    features = blobs + 0.1 * torch.randn(36, 2, generator=generator)
    predictions = labels.clamp(max=1)
    results = open_set_evaluation(
        labels, scores, predictions, features, num_known_classes=2, threshold=0.5, unknown_clusters=None
    )
    assert results["known_acc"] == 1.0 and results["auroc"] == 1.0
    assert results["unknown_recall"] == 1.0 and results["known_rejected"] == 0.0
    assert results["unknown_purity"] == 1.0 and results["unknown_ari"] == pytest.approx(1.0)
    assert results["unknown_clusters"] == 2


def test_task_refuses_bad_settings():
    net = ClassifierTrunk(DSRF3Dv2(num_classes=2), feature_dim=8)
    with pytest.raises(InputError, match="loss must be"):
        OpenSetClassifier(net, num_known_classes=2, loss="hinge")
    with pytest.raises(InputError, match="rejection_quantile"):
        OpenSetClassifier(net, num_known_classes=2, rejection_quantile=1.5)
    with pytest.raises(InputError, match="feature_dim"):
        OpenSetClassifier(torch.nn.Linear(3, 3), num_known_classes=2)


def test_centres_are_running_means_of_unit_features():
    seed_everything(0, verbose=False)
    model = OpenSetClassifier(ClassifierTrunk(DSRF3Dv2(num_classes=2), 2), num_known_classes=2)
    model._update_centres(torch.tensor([[2.0, 0.0], [0.0, 3.0]]), torch.tensor([0, 0]))
    torch.testing.assert_close(model.centres, torch.tensor([[0.5, 0.5], [0.0, 0.0]]))
    model._update_centres(torch.tensor([[0.0, 1.0]]), torch.tensor([0]))
    torch.testing.assert_close(model.centres, torch.tensor([[0.45, 0.55], [0.0, 0.0]]))
    assert model.centre_seen.tolist() == [True, False]


def write_config(directory: Path, num_known_classes: int = 2) -> Path:
    """configs/open_set.yaml with tiny data (16³ boxes, a few items) and a CSV logger."""
    config = yaml.safe_load(CONFIG.read_text())
    config["data"]["init_args"].update(
        known_classes=["proteasome_20s", "apoferritin"],
        unknown_classes=["nucleosome", "rubisco"],
        box_size_voxels=16,
        voxel_size_a=16.0,
        train_size=8,
        val_size=8,
        test_size=24,
        predict_size=6,
        batch_size=4,
    )
    model = config["model"]["init_args"]
    model["num_known_classes"] = num_known_classes
    model["net"]["init_args"]["backbone"]["init_args"]["num_classes"] = 2
    model["net"]["init_args"]["feature_dim"] = 8
    model["rejection_quantile"] = 0.5  # reject about half, so there is something to cluster
    config["trainer"]["callbacks"][0]["init_args"]["dirpath"] = str(directory / "checkpoints")
    config["trainer"]["callbacks"] = config["trainer"]["callbacks"][:1]
    config["trainer"]["logger"] = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(directory / "logs"), "name": "open_set", "version": 0},
    }
    config["trainer"]["accelerator"] = "cpu"
    config["trainer"]["enable_progress_bar"] = False
    path = directory / "open_set.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_config_fits_and_tests_through_the_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = str(write_config(tmp_path))
    assert (
        main(["fit", "--config", config, "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1"]) == 0
    )
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    assert main(["test", "--config", config, "--ckpt_path", "last"]) == 0
    metrics = (tmp_path / "logs" / "open_set" / "version_0" / "metrics.csv").read_text()
    for name in ("test/known_acc", "test/auroc", "test/unknown_purity", "test/unknown_ari"):
        assert name in metrics
    assert main(["predict", "--config", config, "--ckpt_path", "last"]) == 0


def test_cli_refuses_a_model_that_does_not_fit_the_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, num_known_classes=3)
    assert main(["fit", "--config", str(config), "--trainer.max_steps", "1"]) == 2


def test_predict_writes_known_classes_and_rejections_to_a_star_table(tmp_path, monkeypatch):
    """`aitom predict` with configs/open_set.yaml wrote nothing: the config had no PredictionWriter, and the
    writer knew only probabilities. Now each item gets its known class, or rlnClassNumber 0 / ``unknown``
    when its known score is below the rejection threshold, and that score."""
    from aitom.io import read_particles
    from tests.test_cli_awkward_inputs_fit_tasks import CLASSES, _tiny

    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.chdir(tmp_path)
    config = _tiny("open_set")
    config["data"]["init_args"]["predict_size"] = 8
    (tmp_path / "open_set.yaml").write_text(yaml.safe_dump(config))
    assert main(["fit", "--config", "open_set.yaml"]) == 0
    assert main(["predict", "--config", "open_set.yaml", "--ckpt_path", "last"]) == 0
    table = read_particles(tmp_path / "outputs/open_set/predictions.star", require=())
    assert len(table) == 8 and list(table["aitomParticleIndex"]) == list(range(8))
    numbers = table["rlnClassNumber"].astype(int)
    assert set(numbers) <= {0, 1, 2}
    assert list(table["aitomClassName"]) == [["unknown", *CLASSES][number] for number in numbers]
    scores = table["aitomKnownScore"].astype(float)
    if (numbers == 0).any() and (numbers > 0).any():  # one threshold on the written score separates them
        assert scores[numbers == 0].max() < scores[numbers > 0].min()
