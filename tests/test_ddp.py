"""Multi-process runs (Lightning DDP, gloo on CPU) give the results of a single process.

* ``aitom fit`` with ``--trainer.devices 2 --trainer.strategy ddp``: each of the 2 ranks takes half of every
  global batch (per-device batch 4 = single-process batch 8 / 2) and the gradients are averaged, so with plain
  SGD (no momentum), no batch norm, no dropout and an unshuffled order the final weights equal the
  single-process ones up to float rounding (tolerance 1e-5), and so do the validation loss and accuracy.
* ``aitom predict`` (Classifier + PredictionWriter) on 2 ranks writes the STAR table of a single process
  (the writer gathers the ranks' rows; the odd number of items checks that no row is duplicated or lost).
* ``aitom pick dog --devices 2`` writes the picks of a single process (tiles split over the ranks).

The DDP runs are subprocesses (``python -m aitom ...``; Lightning starts the second rank itself) with
``OMP_NUM_THREADS=1`` and a free ``MASTER_PORT``; the single-process references run in this process.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from aitom.cli import main
from aitom.commands import pick
from aitom.io import particles_table, read_particles, write_particles, write_volume
from tests.classify_fixtures import TinyBlobDataModule

ROOT = Path(__file__).resolve().parents[1]
SINGLE_BATCH = 8
DEVICES = 2
WEIGHT_TOLERANCE = 1e-5


class OrderedBlobDataModule(TinyBlobDataModule):
    """:class:`TinyBlobDataModule` with the training items in a fixed order (no shuffling).

    Lightning's own distributed sampler always shuffles the training data, so the runs set
    ``trainer.use_distributed_sampler: false`` and this module shards the items itself with
    ``DistributedSampler(shuffle=False)``: rank r takes items r, r + 2, ..., and every global batch holds the
    items of the single process's batch, which makes the two runs comparable step by step.
    """

    def train_dataloader(self) -> DataLoader:
        dataset = self.datasets["train"]
        sampler = None
        if self.trainer is not None and self.trainer.world_size > 1:
            sampler = DistributedSampler(
                dataset, num_replicas=self.trainer.world_size, rank=self.trainer.global_rank, shuffle=False
            )
        return DataLoader(dataset, batch_size=self.hparams.batch_size, shuffle=False, sampler=sampler)


class TinyNet(nn.Module):
    """Conv3d → GroupNorm → ReLU → global average → linear: small, no dropout, no batch statistics.

    Batch norm would make the ranks differ from a single process: each rank normalises by its own half of
    the batch, and ``sync_batchnorm`` (global statistics) works only on GPUs.
    """

    def __init__(self, num_classes: int = 3, channels: int = 4) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.features = nn.Sequential(
            nn.Conv3d(1, channels, 3, padding=1, bias=False),
            nn.GroupNorm(1, channels),
            nn.ReLU(),
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(channels, num_classes)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(volume))


class TinyTrunk(nn.Module):
    """Open-set features without batch statistics (Conv3d → GroupNorm → ReLU → global average → linear), so
    an item's features do not depend on which other items share its batch."""

    def __init__(self, feature_dim: int = 8, channels: int = 4) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.net = nn.Sequential(*TinyNet(channels=channels).features, nn.Linear(channels, feature_dim))

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        return self.net(volume)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_ddp(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python -m aitom ARGV`` in a fresh process (rank 0, which starts rank 1), one thread per rank."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WANDB_MODE": "offline",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    for name in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK"):
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, "-m", "aitom", *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, (
        f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


def write_config(folder: Path) -> Path:
    """A fit/predict config: TinyNet classifier, plain SGD, ordered blob data, CSV logger, last.ckpt."""
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": 2,
            "use_distributed_sampler": False,
            "deterministic": True,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": "logs", "name": "run", "version": 0},
            },
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": "checkpoints", "save_last": True, "save_top_k": 0},
                },
                {
                    "class_path": "aitom.tasks.PredictionWriter",
                    "init_args": {"output_path": "predictions.star"},
                },
            ],
        },
        "model": {
            "class_path": "aitom.tasks.Classifier",
            "init_args": {
                "net": {"class_path": "tests.test_ddp.TinyNet", "init_args": {"num_classes": 3}},
                "num_classes": 3,
                "optimizer": "sgd",
                "lr": 0.5,
                "momentum": 0.0,
                "weight_decay": 0.0,
                "scheduler": "none",
            },
        },
        "data": {
            "class_path": "tests.test_ddp.OrderedBlobDataModule",
            "init_args": {
                "num_classes": 3,
                "box_size_voxels": 8,
                "train_size": 16,
                "val_size": 8,
                "predict_size": 7,
                "batch_size": SINGLE_BATCH,
            },
        },
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The same 2-epoch fit (4 steps of 8 items) in one process and on 2 DDP ranks (4 items per rank)."""
    folders = {}
    for name in ("single", "ddp"):
        folders[name] = tmp_path_factory.mktemp(name)
        write_config(folders[name])
    run_ddp(
        [
            "fit",
            "--config",
            "config.yaml",
            "--trainer.devices",
            str(DEVICES),
            "--trainer.strategy",
            "ddp",
            "--data.init_args.batch_size",
            str(SINGLE_BATCH // DEVICES),
        ],
        folders["ddp"],
    )
    with contextlib.chdir(folders["single"]):
        assert main(["fit", "--config", "config.yaml"]) == 0
    return folders


def test_ddp_fit_ends_with_the_single_process_weights(runs):
    single = torch.load(runs["single"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    ddp = torch.load(runs["ddp"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert single["global_step"] == ddp["global_step"] == 4
    for name, value in single["state_dict"].items():
        difference = float((ddp["state_dict"][name] - value).abs().max())
        assert difference <= WEIGHT_TOLERANCE, (
            f"{name}: DDP and single-process weights differ by {difference}"
        )
    # training moved the weights far more than the tolerance: the comparison is not trivially true
    torch.manual_seed(0)
    initial = TinyNet().head.weight.detach()
    assert (single["state_dict"]["net.head.weight"] - initial).abs().max() > 100 * WEIGHT_TOLERANCE


def test_ddp_fit_logs_the_single_process_validation_metrics(runs):
    def validation(folder: Path) -> pd.DataFrame:
        metrics = pd.read_csv(folder / "logs" / "run" / "version_0" / "metrics.csv")
        return metrics.dropna(subset=["val/loss"])[["epoch", "val/loss", "val/acc"]].reset_index(drop=True)

    single, ddp = validation(runs["single"]), validation(runs["ddp"])
    assert len(single) == len(ddp) == 2
    np.testing.assert_allclose(ddp.to_numpy(), single.to_numpy(), rtol=0, atol=1e-4)


def test_ddp_predict_writes_the_single_process_table(runs):
    checkpoint = str(runs["single"] / "checkpoints" / "last.ckpt")
    command = ["predict", "--config", "config.yaml", "--ckpt_path", checkpoint, "--trainer.logger", "false"]
    # DDP with Lightning's sampler, which splits the items over the ranks without repeating any
    distributed = ["--trainer.devices", str(DEVICES), "--trainer.use_distributed_sampler", "true"]
    run_ddp([*command, *distributed], runs["ddp"])
    with contextlib.chdir(runs["single"]):
        assert main(command) == 0
    single = read_particles(runs["single"] / "predictions.star", require=("rlnClassNumber",))
    ddp = read_particles(runs["ddp"] / "predictions.star", require=("rlnClassNumber",))
    assert not list(runs["ddp"].glob("predictions.rank*"))
    assert len(single) == len(ddp) == 7
    assert list(ddp["aitomParticleIndex"]) == list(range(7))
    pd.testing.assert_frame_equal(
        ddp.sort_values("aitomParticleIndex", ignore_index=True),
        single.sort_values("aitomParticleIndex", ignore_index=True),
        check_exact=False,
        atol=1e-5,
    )


def test_ddp_test_counts_each_item_once(tmp_path):
    """``aitom test`` of a classifier on 2 ranks: Lightning's sampler repeats one of the 7 test items so
    that both ranks get 4, and the accuracy, macro-F1 and recall counted it twice. The ranks' updates are now
    gathered and every item counted once: the figures are the single process's. The untrained network
    (the same seed in both runs) gets some items wrong, so a repeated item would change them."""
    config = write_config(tmp_path)
    settings = yaml.safe_load(config.read_text())
    settings["data"]["init_args"]["test_size"] = 7
    config.write_text(yaml.safe_dump(settings))
    test = ["test", "--config", "config.yaml", "--trainer.use_distributed_sampler", "true"]
    with contextlib.chdir(tmp_path):
        assert main([*test, "--trainer.logger.init_args.save_dir", "single_logs"]) == 0
    run_ddp(
        [
            *test,
            "--trainer.devices",
            str(DEVICES),
            "--trainer.strategy",
            "ddp",
            "--trainer.logger.init_args.save_dir",
            "ddp_logs",
        ],
        tmp_path,
    )

    def test_figures(folder: Path) -> pd.Series:
        metrics = pd.read_csv(folder / "run" / "version_0" / "metrics.csv")
        figures = metrics[[name for name in metrics.columns if name.startswith("test/")]]
        return figures.dropna(how="all").iloc[-1].sort_index()

    single, ddp = test_figures(tmp_path / "single_logs"), test_figures(tmp_path / "ddp_logs")
    assert {"test/acc", "test/f1_macro", "test/recall/blob0"} <= set(single.index)
    assert 0 < single["test/acc"] < 1
    pd.testing.assert_series_equal(ddp, single, check_exact=False, atol=1e-6)


@pytest.fixture(scope="module")
def tomogram(tmp_path_factory) -> Path:
    """A 40³ tomogram (10 Å voxels) with 6 Gaussian blobs (σ 2 voxels) in white noise."""
    folder = tmp_path_factory.mktemp("tomogram")
    generator = torch.Generator().manual_seed(0)
    volume = 0.1 * torch.randn(40, 40, 40, generator=generator)
    z, y, x = torch.meshgrid(*[torch.arange(40.0)] * 3, indexing="ij")
    centres_zyx = [(8, 8, 8), (8, 30, 20), (20, 20, 20), (30, 10, 31), (31, 31, 9), (15, 33, 33)]
    for cz, cy, cx in centres_zyx:
        volume += torch.exp(-((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) / (2 * 2.0**2))
    path = folder / "tomogram.mrc"
    write_volume(path, volume, 10.0)
    write_particles(folder / "truth.star", particles_table([(x, y, z) for z, y, x in centres_zyx]))
    return path


def test_ddp_pick_writes_the_single_process_picks(tomogram, tmp_path):
    options = ["--sigma-voxels", "2", "--tile-voxels", "24", "--overlap-voxels", "8", "--accelerator", "cpu"]
    ddp_out = tmp_path / "ddp.star"
    truth = tomogram.with_name("truth.star")
    command = ["pick", "dog", "--tomogram", str(tomogram), "--out", str(ddp_out), "--truth", str(truth)]
    result = run_ddp([*command, "--devices", str(DEVICES), *options], tmp_path)
    assert result.stdout.count('"method"') == 1  # the scores are printed by rank 0 only
    single_out = tmp_path / "single.star"
    parser = argparse.ArgumentParser(prog="aitom")
    pick.add_parser(parser.add_subparsers(dest="command"))
    argv = ["pick", "dog", "--tomogram", str(tomogram), "--out", str(single_out), *options]
    assert pick.run(parser.parse_args(argv)) == 0
    single, ddp = read_particles(single_out), read_particles(ddp_out)
    assert len(single) >= 6 and not list(tmp_path.glob("ddp.rank*"))
    columns = ["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ", "rlnAutopickFigureOfMerit"]
    pd.testing.assert_frame_equal(
        ddp.sort_values(columns, ignore_index=True), single.sort_values(columns, ignore_index=True)
    )


def test_ddp_pick_with_two_templates_writes_the_single_process_picks_and_maps(tomogram, tmp_path):
    """Two templates over 2 ranks: each rank's tiles carry every template's raw maxima, cube maxima and
    samples; rank 0 calibrates them once gathered. Picks and the stitched best-score map equal one
    process's."""
    from aitom.io import read_volume

    z, y, x = torch.meshgrid(*[torch.arange(8.0) - 4] * 3, indexing="ij")
    templates = [tmp_path / "round.mrc", tmp_path / "oblong.mrc"]
    write_volume(templates[0], torch.exp(-(x**2 + y**2 + z**2) / 8), 10.0)
    write_volume(templates[1], torch.exp(-(x**2 / 2 + y**2 + z**2) / 3), 10.0)
    options = ["--template", *map(str, templates), "--angular-step", "90", "--no-wedge"]
    options += ["--tile-voxels", "28", "--maps", "--accelerator", "cpu"]
    command = ["pick", "template", "--tomogram", str(tomogram), "--out", str(tmp_path / "ddp.star"), *options]
    run_ddp([*command, "--devices", str(DEVICES)], tmp_path)
    parser = argparse.ArgumentParser(prog="aitom")
    pick.add_parser(parser.add_subparsers(dest="command"))
    argv = ["pick", "template", "--tomogram", str(tomogram), "--out", str(tmp_path / "single.star"), *options]
    assert pick.run(parser.parse_args(argv)) == 0
    single, ddp = read_particles(tmp_path / "single.star"), read_particles(tmp_path / "ddp.star")
    assert len(single) >= 6 and set(single["rlnClassNumber"]) <= {1, 2}
    pd.testing.assert_frame_equal(ddp, single)
    for name in ("scores", "rotation_index"):
        maps = [read_volume(tmp_path / f"{run}_tomogram_{name}.mrc")[0] for run in ("ddp", "single")]
        assert torch.equal(*maps)


def test_pick_with_more_devices_than_tiles_runs_one_process_per_tile(tomogram, tmp_path):
    """``--devices 2`` on a tomogram of one tile stopped both processes with a traceback (a process without
    a tile fails Lightning's distributed sampler); it now runs one process, says so once, and picks as one."""
    options = ["--sigma-voxels", "2", "--accelerator", "cpu"]
    out = tmp_path / "picks.star"
    command = ["pick", "dog", "--tomogram", str(tomogram), "--out", str(out), *options]
    result = run_ddp([*command, "--devices", str(DEVICES)], tmp_path)
    warnings = [line for line in result.stderr.splitlines() if "aitom: warning:" in line]
    assert warnings == [
        f"aitom: warning: {tomogram}: --devices {DEVICES} but the tomogram makes 1 tile(s) of "
        "--tile-voxels 256: running 1 process(es)"
    ]
    single_out = tmp_path / "single.star"
    parser = argparse.ArgumentParser(prog="aitom")
    pick.add_parser(parser.add_subparsers(dest="command"))
    argv = ["pick", "dog", "--tomogram", str(tomogram), "--out", str(single_out), *options]
    assert pick.run(parser.parse_args(argv)) == 0
    pd.testing.assert_frame_equal(read_particles(out), read_particles(single_out))


def test_ddp_open_set_test_gives_the_single_process_figures(tmp_path):
    """``aitom test`` of the open-set task on 2 ranks evaluated each rank's half of the test split alone (the
    AUROC, the rejection accuracy and the clustering of the rejected items need the whole split); the
    ranks' outputs are now gathered, the item the distributed sampler repeats (23 items on 2 ranks) counted
    once."""
    from tests.test_open_set import write_config as write_open_set_config

    config = write_open_set_config(tmp_path)
    settings = yaml.safe_load(config.read_text())
    settings["data"]["init_args"]["test_size"] = 23
    config.write_text(yaml.safe_dump(settings))
    with contextlib.chdir(tmp_path):
        fit = ["fit", "--config", str(config), "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1"]
        assert main(fit) == 0
        assert main(["test", "--config", str(config), "--ckpt_path", "last"]) == 0
    logs = tmp_path / "logs"
    ddp_logs = tmp_path / "ddp_logs"
    run_ddp(
        [
            "test",
            "--config",
            str(config),
            "--ckpt_path",
            "last",
            "--trainer.devices",
            str(DEVICES),
            "--trainer.strategy",
            "ddp",
            "--trainer.logger.init_args.save_dir",
            str(ddp_logs),
        ],
        tmp_path,
    )

    def test_figures(folder: Path) -> pd.Series:
        metrics = pd.read_csv(folder / "open_set" / "version_0" / "metrics.csv")
        figures = metrics[[name for name in metrics.columns if name.startswith("test/")]]
        return figures.dropna(how="all").iloc[-1].sort_index()

    single, ddp = test_figures(logs), test_figures(ddp_logs)
    assert {"test/known_acc", "test/auroc", "test/unknown_purity"} <= set(single.index)
    pd.testing.assert_series_equal(ddp, single, check_exact=False, atol=1e-5)


def test_ddp_open_set_fit_keeps_the_single_process_class_centres(tmp_path):
    """The running class centres of the open-set loss were updated from each rank's share of the batch, and
    DDP then broadcast rank 0's: the centres of half the data. They are now the means of the global batch.
    One step over all 8 training items (one batch of 8, or 4 on each of 2 ranks) gives the single process's
    centres."""
    from tests.test_open_set import write_config as write_open_set_config

    folders = {name: tmp_path / name for name in ("single", "ddp")}
    for name, folder in folders.items():
        folder.mkdir()
        config = write_open_set_config(folder)
        settings = yaml.safe_load(config.read_text())
        settings["model"]["init_args"]["net"] = {"class_path": "tests.test_ddp.TinyTrunk"}
        settings["data"]["init_args"].update(train_size=8, batch_size=8 // (DEVICES if name == "ddp" else 1))
        settings["trainer"].update(max_steps=1, limit_val_batches=1, num_sanity_val_steps=0)
        config.write_text(yaml.safe_dump(settings))
    run_ddp(["fit", "--config", "open_set.yaml", "--trainer.devices", str(DEVICES)], folders["ddp"])
    with contextlib.chdir(folders["single"]):
        assert main(["fit", "--config", "open_set.yaml"]) == 0
    single, ddp = (
        torch.load(folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
        for folder in folders.values()
    )
    assert single["centre_seen"].all() and ddp["centre_seen"].all()
    torch.testing.assert_close(ddp["centres"], single["centres"], rtol=0, atol=1e-5)
