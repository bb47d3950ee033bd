"""The Classifier task: loss, learning, resuming, prediction to STAR, the YAML configs through `aitom fit`."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from torch import nn

from aitom.cli import main
from aitom.errors import InputError
from aitom.io import read_particles
from aitom.models import RB3D, DSRF3Dv2
from aitom.ops.augmentation import random_rotated_views
from aitom.tasks import Classifier, PredictionWriter, confusion_matrix_image
from tests.classify_fixtures import TinyBlobDataModule

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def quiet_trainer(**kwargs) -> Trainer:
    options = {
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "accelerator": "cpu",
        "deterministic": True,
    }
    return Trainer(**{**options, **kwargs})


class LinearNet(nn.Module):
    """A network with known weights: logits = flattened volume @ weight."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.num_classes = weight.shape[1]
        self.weight = nn.Parameter(weight)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        return volume.flatten(1) @ self.weight


def test_loss_is_cross_entropy_of_the_logits():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(8, 3, generator=generator)
    volumes = torch.randn(4, 1, 2, 2, 2, generator=generator)
    labels = torch.tensor([0, 2, 1, 2])
    model = Classifier(LinearNet(weight), num_classes=3)
    loss = model.training_step({"volume": volumes, "label": labels}, 0)
    logits = (volumes.flatten(1) @ weight).double().numpy()
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    by_hand = -log_softmax[np.arange(4), labels.numpy()].mean()
    assert math.isclose(loss.item(), by_hand, rel_tol=1e-6)
    assert torch.allclose(loss, nn.CrossEntropyLoss()(volumes.flatten(1) @ weight, labels))


def test_augmented_training_step_scores_a_rotated_view_and_evaluation_the_volume_itself():
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(512, 3, generator=generator)
    volumes = torch.randn(4, 1, 8, 8, 8, generator=generator)
    batch = {"volume": volumes, "label": torch.tensor([0, 2, 1, 2])}
    model = Classifier(LinearNet(weight), num_classes=3, rotated_views=True, tilt_range_deg=(-50.0, 40.0))
    torch.manual_seed(3)
    loss = model.training_step(batch, 0)
    torch.manual_seed(3)  # the same random view
    views = random_rotated_views(volumes, -50.0, 40.0)
    torch.testing.assert_close(loss, nn.functional.cross_entropy(views.flatten(1) @ weight, batch["label"]))
    assert not torch.allclose(views, volumes)
    model.validation_step(batch, 0)  # validation scores the volumes as they are
    plain_accuracy = ((volumes.flatten(1) @ weight).argmax(1) == batch["label"]).float().mean()
    torch.testing.assert_close(model.metrics["val_metrics"]["acc"].compute(), plain_accuracy)


@pytest.mark.parametrize("tilt_range_deg", [(60.0, -60.0), (-95.0, 60.0), (0.0,)])
def test_impossible_tilt_range_is_refused(tilt_range_deg):
    with pytest.raises(InputError, match="tilt_range_deg"):
        Classifier(
            LinearNet(torch.zeros(8, 3)), num_classes=3, rotated_views=True, tilt_range_deg=tilt_range_deg
        )


def test_overfits_a_tiny_batch():
    seed_everything(0, verbose=False)
    data = TinyBlobDataModule(num_classes=3, box_size_voxels=12, train_size=6, batch_size=6, noise=0.5)
    data.setup()
    batch = next(iter(data.train_dataloader()))
    model = Classifier(DSRF3Dv2(num_classes=3), num_classes=3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    step, perfect_steps = 0, 0
    while step < 60 and perfect_steps < 3:
        step += 1
        logits = model(batch["volume"])
        loss = nn.functional.cross_entropy(logits, batch["label"])
        perfect_steps = perfect_steps + 1 if bool((logits.argmax(dim=1) == batch["label"]).all()) else 0
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"DSRF3D-v2 (dropout 0.7) fits a batch of 6 after {step} steps, loss {loss.item():.3f}")
    assert perfect_steps == 3 and loss.item() < 0.3


class StopAfterFirstEpoch(Callback):
    """Stands in for a killed run: stops once the first epoch's checkpoint is written."""

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


def fit_two_epochs(
    checkpoint_dir: Path, resume_from: Path | None = None, stop_early: bool = False
) -> Classifier:
    seed_everything(0, verbose=False)
    model = Classifier(DSRF3Dv2(num_classes=3), num_classes=3, lr=3e-4)
    data = TinyBlobDataModule(box_size_voxels=8, train_size=12, val_size=4, batch_size=4)
    checkpoint = ModelCheckpoint(dirpath=checkpoint_dir, monitor="val/acc", mode="max", save_last=True)
    callbacks = [checkpoint, StopAfterFirstEpoch()] if stop_early else [checkpoint]
    quiet_trainer(max_epochs=2, callbacks=callbacks).fit(model, data, ckpt_path=resume_from)
    return model


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    uninterrupted = fit_two_epochs(tmp_path / "a")
    fit_two_epochs(tmp_path / "b", stop_early=True)
    resumed = fit_two_epochs(tmp_path / "b", resume_from=tmp_path / "b" / "last.ckpt")
    expected = uninterrupted.state_dict()
    for name, value in resumed.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6, msg=name)
    assert resumed.trainer.global_step == uninterrupted.trainer.global_step == 6


def test_predict_writes_a_star_table(tmp_path):
    seed_everything(0, verbose=False)
    output = tmp_path / "predictions.star"
    data = TinyBlobDataModule(box_size_voxels=8, predict_size=7, batch_size=3)
    model = Classifier(DSRF3Dv2(num_classes=3), num_classes=3)
    quiet_trainer(callbacks=[PredictionWriter(str(output))]).predict(model, data, return_predictions=False)
    table = read_particles(output, require=("rlnClassNumber",))
    assert len(table) == 7
    probabilities = table[[f"aitomClassProbability_{k}" for k in (1, 2, 3)]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(table["rlnClassNumber"], probabilities.argmax(axis=1) + 1)
    np.testing.assert_allclose(table["rlnMaxValueProbDistribution"], probabilities.max(axis=1), atol=1e-6)
    np.testing.assert_array_equal(table["aitomParticleIndex"], np.arange(7))
    assert list(table["aitomClassName"]) == [f"blob{k - 1}" for k in table["rlnClassNumber"]]
    coordinates = data.datasets["predict"].coordinates_xyz.numpy()
    np.testing.assert_allclose(
        table[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]], coordinates, atol=1e-5
    )
    with torch.no_grad():
        expected = torch.softmax(model.eval()(data.datasets["predict"].volumes), dim=1).numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)


def test_predict_refuses_an_existing_output_before_predicting(tmp_path):
    output = tmp_path / "predictions.star"
    output.write_text("keep me")
    model = Classifier(DSRF3Dv2(num_classes=3), num_classes=3)
    with pytest.raises(InputError, match="exists"):
        quiet_trainer(callbacks=[PredictionWriter(str(output))]).predict(
            model, TinyBlobDataModule(box_size_voxels=8)
        )
    assert output.read_text() == "keep me"


def test_confusion_matrix_is_logged_as_an_image_to_wandb():
    class RecordingWandbLogger(WandbLogger):
        def __init__(self) -> None:
            self.images: list[tuple[str, list[np.ndarray]]] = []

        def log_image(self, key, images, step=None, **kwargs):
            self.images.append((key, images))

    logger = RecordingWandbLogger()
    model = Classifier(DSRF3Dv2(num_classes=3), num_classes=3, class_names=["a", "b", "c"])
    model._trainer = SimpleNamespace(loggers=[logger], global_rank=0, current_epoch=0)
    model._log_confusion_matrix(torch.tensor([[3, 1, 0], [0, 4, 0], [1, 0, 2]]), "val")
    (key, (image,)) = logger.images[0]
    assert key == "val/confusion_matrix"
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8 and image.std() > 10


def test_confusion_matrix_image_shades_rows_by_fraction():
    image = confusion_matrix_image(torch.tensor([[5, 0], [0, 5]]), ["a", "b"])
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8


def test_class_count_mismatches_are_refused():
    with pytest.raises(InputError, match="num_classes 4"):
        Classifier(DSRF3Dv2(num_classes=4), num_classes=3)
    with pytest.raises(InputError, match="class_names"):
        Classifier(DSRF3Dv2(num_classes=3), num_classes=3, class_names=["a", "b"])
    model = Classifier(DSRF3Dv2(num_classes=4), num_classes=4)
    with pytest.raises(InputError, match="the data has 3 classes"):
        quiet_trainer(max_steps=1).fit(model, TinyBlobDataModule(box_size_voxels=8))


def test_star_labels_beyond_the_model_classes_are_refused(tmp_path):
    """A STAR table with rlnClassNumber 3 cannot train a 2-class model (it would fail inside the loss)."""
    from aitom.data import StarSubtomogramDataModule
    from aitom.io import write_particles, write_volume

    names = [f"p{index}.mrc" for index in range(4)]
    for name in names:
        write_volume(tmp_path / name, torch.randn(8, 8, 8), 10.0)
    write_particles(
        tmp_path / "p.star", pd.DataFrame({"rlnImageName": names, "rlnClassNumber": [1, 2, 3, 1]})
    )
    data = StarSubtomogramDataModule(train_star=str(tmp_path / "p.star"), batch_size=2, augment=False)
    model = Classifier(LinearNet(torch.zeros(512, 2)), num_classes=2)
    with pytest.raises(InputError, match=r"class number 3 .* num_classes 2"):
        quiet_trainer(max_steps=1).fit(model, data)
    model = Classifier(LinearNet(torch.zeros(512, 3)), num_classes=3)
    quiet_trainer(max_steps=1, limit_val_batches=0, enable_checkpointing=False).fit(model, data)
    assert model.trainer.global_step == 1


def test_checkpoint_of_another_network_is_refused(tmp_path):
    data = TinyBlobDataModule(box_size_voxels=8, train_size=4, batch_size=4)
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0, enable_checkpointing=False)
    trainer.fit(Classifier(RB3D(num_classes=3), num_classes=3), data)
    checkpoint = tmp_path / "rb3d.ckpt"
    trainer.save_checkpoint(checkpoint)
    with pytest.raises(
        InputError, match=r"rb3d\.ckpt: checkpoint holds network aitom\.models\.classifiers\.RB3D"
    ) as error:
        quiet_trainer().test(Classifier(DSRF3Dv2(num_classes=3), num_classes=3), data, ckpt_path=checkpoint)
    assert "DSRF3Dv2" in str(error.value)
    with pytest.raises(InputError, match=r"do not fit the model .*shape: net\.head"):
        four_classes = TinyBlobDataModule(num_classes=4, box_size_voxels=8)
        quiet_trainer().test(
            Classifier(RB3D(num_classes=4), num_classes=4), four_classes, ckpt_path=checkpoint
        )


# ------------------------------------------------------------------------------------------ the command line


def write_config(model_name: str, directory: Path, box_size_voxels: int = 32) -> Path:
    """configs/classify_<model>.yaml with the tiny blob data (5 classes) and a CSV logger, in directory."""
    config = yaml.safe_load((CONFIGS / f"classify_{model_name}.yaml").read_text())
    config["data"] = {
        "class_path": "tests.classify_fixtures.TinyBlobDataModule",
        "init_args": {
            "num_classes": 5,
            "box_size_voxels": box_size_voxels,
            "train_size": 4,
            "val_size": 2,
            "test_size": 2,
            "predict_size": 3,
            "batch_size": 2,
        },
    }
    config["trainer"]["logger"] = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(directory / "logs")},
    }
    path = directory / f"{model_name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("model_name", ["dsrf3d", "rb3d", "cb3d"])
def test_config_fits_two_steps_through_the_cli(model_name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_config(model_name, tmp_path)
    assert (
        main(["fit", "--config", str(config), "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1"])
        == 0
    )
    last = tmp_path / "outputs" / f"classify_{model_name}" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["global_step"] == 2
    assert saved["aitom_classifier"]["class_names"] == [f"blob{k}" for k in range(5)]


def test_evaluate_and_predict_from_the_last_checkpoint_through_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = str(write_config("rb3d", tmp_path))
    assert (
        main(["fit", "--config", config, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0"]) == 0
    )
    assert main(["test", "--config", config, "--ckpt_path", "last"]) == 0
    assert "test/acc" in capsys.readouterr().out
    assert main(["predict", "--config", config, "--ckpt_path", "last"]) == 0
    table = read_particles(
        tmp_path / "outputs" / "classify_rb3d" / "predictions.star", require=("rlnClassNumber",)
    )
    assert len(table) == 3 and table["rlnClassNumber"].between(1, 5).all()
    assert main(["predict", "--config", config, "--ckpt_path", "last"]) == 2
    assert "exists" in capsys.readouterr().err


def test_unknown_network_class_path_is_a_parse_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = write_config("dsrf3d", tmp_path)
    config.write_text(config.read_text().replace("aitom.models.DSRF3Dv2", "aitom.models.NoSuchNet"))
    assert main(["fit", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "NoSuchNet" in err and err.startswith("aitom: error:") and err.count("\n") == 1


def test_box_too_small_for_the_network_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = write_config("cb3d", tmp_path, box_size_voxels=16)
    assert main(["fit", "--config", str(config), "--trainer.max_steps", "1"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("aitom: error: CB3D needs a box of at least 32 voxels")


def test_rotated_views_for_another_tilt_range_than_the_data_is_one_line_and_exit_2(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    config = yaml.safe_load(write_config("rb3d", tmp_path).read_text())
    config["data"] = {
        "class_path": "aitom.data.SimulatedSubtomogramDataModule",
        "init_args": {
            "classes": ["apoferritin", "rubisco"],
            "box_size_voxels": 16,
            "voxel_size_a": 30.0,
            "tilt_min_deg": -45.0,
            "tilt_max_deg": 45.0,
            "train_size": 4,
            "val_size": 2,
            "test_size": 2,
            "batch_size": 2,
        },
    }
    config["model"]["init_args"]["num_classes"] = 2
    config["model"]["init_args"]["net"]["init_args"]["num_classes"] = 2
    config["model"]["init_args"]["rotated_views"] = True  # the default tilt_range_deg is (-60, 60)
    path = tmp_path / "mismatch.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["fit", "--config", str(path), "--trainer.max_steps", "1"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("aitom: error: the model's tilt_range_deg [-60.0, 60.0] differs from the data's")
    assert not (tmp_path / "outputs" / "classify_rb3d" / "checkpoints").exists()
    config["model"]["init_args"]["tilt_range_deg"] = [-45.0, 45.0]  # matching: it trains
    path.write_text(yaml.safe_dump(config))
    assert (
        main(["fit", "--config", str(path), "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1"])
        == 0
    )
