"""Every YAML config instantiates and passes a one-batch fit (training and validation step) as written."""

from __future__ import annotations

from pathlib import Path

import pytest

from aitom.cli import main

CONFIG_FOLDER = Path(__file__).resolve().parent.parent / "configs"
#: LightningCLI configs (``aitom fit --config``); configs/pipeline.yaml belongs to ``aitom pipeline``
CONFIGS = sorted(path for path in CONFIG_FOLDER.glob("*.yaml") if "\nmodel:" in path.read_text())


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: path.stem)
def test_config_runs_one_batch(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "fit",
            "--config",
            str(config),
            "--trainer.fast_dev_run",
            "1",
            "--trainer.accelerator",
            "cpu",
            "--data.init_args.batch_size",
            "2",
        ]
    )
    assert code == 0


DATA_CONFIGS = Path(__file__).resolve().parent.parent / "datamodules"
CLASSIFIER_CONFIG = CONFIG_FOLDER / "classify_rb3d.yaml"


def test_simulated_data_config_swaps_in(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "fit",
            "--config",
            str(CLASSIFIER_CONFIG),
            "--data",
            str(DATA_CONFIGS / "simulated_snr003.yaml"),
            "--trainer.fast_dev_run",
            "1",
            "--trainer.accelerator",
            "cpu",
            "--data.init_args.batch_size",
            "2",
        ]
    )
    assert code == 0


def test_star_data_config_trains_on_simulated_subtomograms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (
        main(
            [
                "simulate",
                "subtomograms",
                "--out",
                "sub",
                "particles_per_class=2",
                "box_size_voxels=32",
                "classes=[proteasome_20s,ribosome_30s,apoferritin,rubisco,nucleosome]",
            ]
        )
        == 0
    )
    code = main(
        [
            "fit",
            "--config",
            str(CLASSIFIER_CONFIG),
            "--data",
            str(DATA_CONFIGS / "star_subtomograms.yaml"),
            "--data.init_args.train_star",
            "sub/particles.star",
            "--data.init_args.val_star",
            "sub/particles.star",
            "--data.init_args.batch_size",
            "2",
            "--trainer.fast_dev_run",
            "1",
            "--trainer.accelerator",
            "cpu",
        ]
    )
    assert code == 0
