"""Every YAML config instantiates and passes a one-batch fit (training and validation step) as written."""

from __future__ import annotations

from pathlib import Path

import pytest

from aitom.cli import main

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


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
