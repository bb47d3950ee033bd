"""Adversarial domain adaptation: GAN losses by hand, the two stages, the domain pair data, `aitom fit`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch import Callback, Trainer, seed_everything

from aitom.cli import main
from aitom.data.domains import DomainPairDataModule
from aitom.errors import InputError
from aitom.ops.augmentation import random_rotated_views
from aitom.tasks.domain_adaptation import (
    AdversarialDomainAdaptation,
    DomainDiscriminator,
    discriminator_loss,
    feature_extractor,
    generator_loss,
)
from aitom.tasks.semi_supervised import AutoencoderClassifier3D

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CLASSES = ["apoferritin", "rubisco"]


def log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.log1p(np.exp(-x))


def tiny_domain(snr: float, tilt_deg: float, seed: int, classes: list[str] = CLASSES) -> dict:
    """The configuration of a tiny simulated domain (8³ at 30 Å per voxel)."""
    init_args = {
        "classes": classes,
        "box_size_voxels": 8,
        "voxel_size_a": 30.0,
        "snr": snr,
        "tilt_min_deg": -tilt_deg,
        "tilt_max_deg": tilt_deg,
        "train_size": 8,
        "val_size": 4,
        "test_size": 4,
        "seed": seed,
    }
    return {"class_path": "aitom.data.simulated.SimulatedSubtomogramDataModule", "init_args": init_args}


# ------------------------------------------------------------------------------------------------- losses


def test_discriminator_loss_is_the_binary_cross_entropy_of_source_one_target_zero(device):
    source = torch.tensor([2.0, -0.5, 0.3], device=device)
    target = torch.tensor([-1.0, 0.7], device=device)
    s, t = source.cpu().double().numpy(), target.cpu().double().numpy()
    by_hand = -log_sigmoid(s).mean() - np.log(1 - 1 / (1 + np.exp(-t))).mean()
    assert math.isclose(discriminator_loss(source, target).item(), by_hand, rel_tol=1e-6)


def test_generator_loss_labels_target_features_as_source(device):
    target = torch.tensor([-1.0, 0.7, 3.0, -2.5], device=device)
    by_hand = -log_sigmoid(target.cpu().double().numpy()).mean()
    assert math.isclose(generator_loss(target).item(), by_hand, rel_tol=1e-6)
    # the inverted label: the generator loss falls as the discriminator calls the target "source"
    assert generator_loss(target + 1) < generator_loss(target)


def test_discriminator_gives_one_logit_per_item():
    features = torch.randn(5, 4, 2, 2, 2)
    assert DomainDiscriminator(32, 16)(features).shape == (5,)


def test_feature_extractor_needs_features_and_head():
    with pytest.raises(InputError, match="'features' and 'head'"):
        feature_extractor(torch.nn.Linear(3, 2))
    net = AutoencoderClassifier3D(num_classes=3, widths=(4, 8), with_decoder=False).eval()
    volume = torch.randn(2, 1, 8, 8, 8)
    torch.testing.assert_close(net.head(feature_extractor(net)(volume)), net(volume))


# ------------------------------------------------------------------------------------------ the domain pair


def test_pair_yields_source_and_target_batches_and_target_evaluation_batches():
    pair = DomainPairDataModule(tiny_domain(1.0, 60, 0), tiny_domain(0.1, 40, 1), batch_size=4)
    pair.setup("fit")
    batch = next(iter(pair.train_dataloader()))
    if isinstance(batch, tuple):  # iterating a CombinedLoader yields (batch, batch_idx, dataloader_idx)
        batch = batch[0]
    assert set(batch) == {"source", "target"}
    assert batch["source"]["volume"].shape == batch["target"]["volume"].shape == (4, 1, 8, 8, 8)
    val = next(iter(pair.val_dataloader()))
    torch.testing.assert_close(val["volume"][0], pair.target.datasets["val"][0]["volume"])
    assert pair.class_names == CLASSES and pair.num_classes == 2


def test_domains_with_different_classes_are_refused():
    with pytest.raises(InputError, match="same classes"):
        DomainPairDataModule(tiny_domain(1.0, 60, 0), tiny_domain(1.0, 60, 0, ["rubisco", "apoferritin"]))


def test_bad_domain_configurations_are_refused():
    with pytest.raises(InputError, match="not a split DataModule"):
        DomainPairDataModule({"class_path": "torch.nn.Linear"}, tiny_domain(1.0, 60, 0))
    with pytest.raises(InputError, match="cannot be imported"):
        DomainPairDataModule({"class_path": "aitom.data.NoSuchModule"}, tiny_domain(1.0, 60, 0))
    with pytest.raises(InputError, match=r"target domain .*snr_db"):
        DomainPairDataModule(tiny_domain(1.0, 60, 0), {"init_args": {"classes": CLASSES, "snr_db": 3}})


def test_each_domain_keeps_its_own_settings():
    pair = DomainPairDataModule(tiny_domain(1.0, 60, 0), tiny_domain(0.1, 40, 1), batch_size=4)
    assert pair.source.hparams.snr == 1.0 and pair.target.hparams.snr == 0.1
    assert pair.target.hparams.tilt_min_deg == -40 and pair.hparams.source["init_args"]["seed"] == 0


# -------------------------------------------------------------------------------------------- the stages


class Snapshots(Callback):
    """The module's weights at the end of every training epoch."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_end(self, trainer: Trainer, pl_module: AdversarialDomainAdaptation) -> None:
        self.states.append({key: value.clone() for key, value in pl_module.state_dict().items()})


def test_adaptation_starts_from_the_source_extractor_and_trains_only_the_target_side():
    seed_everything(0, verbose=False)
    net = AutoencoderClassifier3D(num_classes=2, widths=(4, 8), with_decoder=False)
    model = AdversarialDomainAdaptation(
        net, num_classes=2, box_size_voxels=8, source_epochs=1, discriminator_hidden=8
    )
    snapshots = Snapshots()
    trainer = Trainer(
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[snapshots],
    )
    pair = DomainPairDataModule(tiny_domain(1.0, 60, 0), tiny_domain(0.1, 40, 1), batch_size=4)
    trainer.fit(model, pair)
    after_source, after_adaptation = snapshots.states
    assert not bool(after_source["adaptation_started"]) and bool(after_adaptation["adaptation_started"])
    assert trainer.global_step == 2 + 2 * 2  # one optimiser step per source batch, two per adaptation batch
    for key, value in after_adaptation.items():
        before = after_source[key]
        if key.startswith(("source_extractor.", "classifier.")):  # frozen, batch-norm statistics included
            torch.testing.assert_close(value, before, rtol=0, atol=0, msg=key)
        elif key.startswith("discriminator.") and value.is_floating_point():
            assert not torch.equal(value, before), key
    # the target extractor started from the source extractor and moved away from it
    moved = [
        not torch.equal(after_adaptation[f"target_extractor.{key}"], after_source[f"source_extractor.{key}"])
        for key in model.source_extractor.state_dict()
        if after_source[f"source_extractor.{key}"].is_floating_point()
    ]
    assert any(moved)
    volume = pair.target.datasets["test"][0]["volume"][None]
    model.eval()
    torch.testing.assert_close(model(volume), model.classifier(model.target_extractor(volume)))
    assert not torch.allclose(model(volume), model.source_only_logits(volume))


def test_rotated_views_feed_the_source_stage_only(monkeypatch):
    import aitom.tasks.domain_adaptation as domain_adaptation

    seen: list[tuple[tuple[int, ...], float, float]] = []

    def recording_views(volumes: torch.Tensor, tilt_min_deg: float, tilt_max_deg: float) -> torch.Tensor:
        seen.append((tuple(volumes.shape), tilt_min_deg, tilt_max_deg))
        return random_rotated_views(volumes, tilt_min_deg, tilt_max_deg)

    monkeypatch.setattr(domain_adaptation, "random_rotated_views", recording_views)
    seed_everything(0, verbose=False)
    net = AutoencoderClassifier3D(num_classes=2, widths=(4, 8), with_decoder=False)
    model = AdversarialDomainAdaptation(
        net,
        num_classes=2,
        box_size_voxels=8,
        source_epochs=1,
        discriminator_hidden=8,
        rotated_views=True,
        source_tilt_range_deg=(-50.0, 50.0),
    )
    trainer = Trainer(
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, DomainPairDataModule(tiny_domain(1.0, 50, 0), tiny_domain(0.1, 40, 1), batch_size=4))
    assert seen == [((4, 1, 8, 8, 8), -50.0, 50.0)] * 2  # the two source-stage batches, none in adaptation


def test_source_views_for_another_tilt_range_than_the_source_data_are_refused():
    net = AutoencoderClassifier3D(num_classes=2, widths=(4, 8), with_decoder=False)
    model = AdversarialDomainAdaptation(
        net, num_classes=2, box_size_voxels=8, source_tilt_range_deg=(-50.0, 50.0)
    )
    pair = DomainPairDataModule(tiny_domain(1.0, 60, 0), tiny_domain(0.1, 40, 1), batch_size=4)
    trainer = Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False)
    with pytest.raises(
        InputError, match=r"tilt_range_deg \[-50.0, 50.0\] differs from the data's tilt range"
    ):
        trainer.fit(model, pair)


def test_bad_settings_are_refused():
    net = AutoencoderClassifier3D(num_classes=3, widths=(4, 8), with_decoder=False)
    with pytest.raises(InputError, match="num_classes 3"):
        AdversarialDomainAdaptation(net, num_classes=2, box_size_voxels=8)
    with pytest.raises(InputError, match="source_epochs"):
        AdversarialDomainAdaptation(net, num_classes=3, box_size_voxels=8, source_epochs=0)
    with pytest.raises(InputError, match="tilt_range_deg"):
        AdversarialDomainAdaptation(
            net, num_classes=3, box_size_voxels=8, source_tilt_range_deg=(50.0, -50.0)
        )


# ------------------------------------------------------------------------------------------ command line


def write_config(directory: Path) -> Path:
    """configs/domain_adaptation.yaml with tiny simulated domains (8³, 2 classes) and a CSV logger."""
    config = yaml.safe_load((CONFIGS / "domain_adaptation.yaml").read_text())
    model = config["model"]["init_args"]
    model.update(num_classes=2, box_size_voxels=8, source_epochs=1)
    model["net"]["init_args"].update(num_classes=2, widths=[4, 8])
    config["data"]["init_args"]["batch_size"] = 4
    for name, seed in (("source", 0), ("target", 1)):
        config["data"]["init_args"][name]["init_args"].update(
            classes=CLASSES,
            box_size_voxels=8,
            voxel_size_a=30.0,
            train_size=8,
            val_size=4,
            test_size=4,
            seed=seed,
        )
    config["trainer"]["logger"] = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(directory / "logs")},
    }
    path = directory / "domain_adaptation.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_config_fits_through_both_stages_and_tests_through_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = str(write_config(tmp_path))
    arguments = [
        "--trainer.max_steps",
        "2",
        "--trainer.limit_train_batches",
        "1",
        "--trainer.limit_val_batches",
        "1",
    ]
    assert main(["fit", "--config", config, *arguments]) == 0
    saved = torch.load(
        tmp_path / "outputs" / "domain_adaptation" / "checkpoints" / "last.ckpt",
        map_location="cpu",
        weights_only=True,
    )
    assert bool(saved["state_dict"]["adaptation_started"])  # step 1: source; step 2 (and 3): adaptation
    header = next((tmp_path / "logs").rglob("metrics.csv")).read_text().splitlines()[0].split(",")
    assert {
        "train/source_ce_epoch",
        "train/discriminator_loss_epoch",
        "val/acc",
        "val/source_only_acc",
    } <= set(header)
    assert main(["test", "--config", config, "--ckpt_path", "last"]) == 0
    out = capsys.readouterr().out
    assert "test/acc" in out and "test/source_only_acc" in out
