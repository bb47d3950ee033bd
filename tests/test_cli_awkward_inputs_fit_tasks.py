"""Awkward inputs to ``aitom fit|test|predict`` with the non-classifier task configs (autoencoder, open set,
domain adaptation, semi-supervised): each must either work or stop with exit code 2, one line on stderr
naming the option or file and the problem, and no output written or replaced."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from aitom.cli import main
from aitom.data.domains import build_domain
from aitom.io import write_particles, write_volume
from tests.test_cli_awkward_inputs import _one_error_line

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
BOX = 16
CLASSES = ["apoferritin", "rubisco"]
#: the tiny simulated splits every config here uses
SIZES = {"box_size_voxels": BOX, "voxel_size_a": 30.0, "train_size": 4, "val_size": 2, "test_size": 4}


@pytest.fixture(autouse=True)
def _quiet_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")


def _tiny(task: str) -> dict:
    """configs/<task>.yaml for 2 classes of BOX³ subtomograms, tiny networks and splits, no logger."""
    config = yaml.safe_load((CONFIGS / f"{task}.yaml").read_text())
    config["trainer"].update(
        {"logger": False, "accelerator": "cpu", "max_epochs": 1, "enable_progress_bar": False}
    )
    config["trainer"]["callbacks"] = [
        callback
        for callback in config["trainer"]["callbacks"]
        if callback["class_path"].rsplit(".", 1)[-1] not in ("TQDMProgressBar", "LearningRateMonitor")
    ]
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    if task == "autoencoder":
        model["net"]["init_args"].update(box_size_voxels=BOX, latent_dim=4, channels=[2, 2, 2])
        model["n_clusters"] = 2
        data.update(classes=CLASSES, predict_size=4, batch_size=2, **SIZES)
    elif task == "open_set":
        model["net"]["init_args"]["backbone"] = {"class_path": "aitom.models.RB3D", "init_args": {}}
        model["net"]["init_args"]["feature_dim"] = 4
        model["num_known_classes"] = 2
        data.update(known_classes=CLASSES, unknown_classes=["nucleosome"], batch_size=2, **SIZES)
    elif task == "domain_adaptation":
        config["trainer"]["max_epochs"] = 2
        model["net"]["init_args"].update(num_classes=2, widths=[2, 2])
        model.update(num_classes=2, box_size_voxels=BOX, source_epochs=1, discriminator_hidden=4)
        data["batch_size"] = 2
        for role in ("source", "target"):
            data[role]["init_args"].update(classes=CLASSES, **SIZES)
    else:  # semi_supervised
        model["net"]["init_args"].update(num_classes=2, widths=[2, 2])
        model["num_classes"] = 2
        data.update(classes=CLASSES, labelled_fraction=0.5, predict_size=2, batch_size=2, **SIZES)
    return config


def _config(directory: Path, task: str) -> Path:
    path = directory / f"{task}.yaml"
    path.write_text(yaml.safe_dump(_tiny(task)))
    return path


def _run(tmp_path: Path, monkeypatch, command: str, task: str, *options: str) -> int:
    monkeypatch.chdir(tmp_path)
    return main([command, "--config", str(_config(tmp_path, task)), *options])


def _no_outputs(directory: Path) -> bool:
    return not (directory / "outputs").exists()


# --- options a task or its data refuse ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "task, options, expected",
    [
        # a box the discriminator was not sized for: a shape-mismatch traceback after the source epochs
        (
            "domain_adaptation",
            ["--model.init_args.box_size_voxels", "24"],
            "the model's box_size_voxels is 24 but the source data's subtomograms are 16x16x16 voxels",
        ),
        # a traceback from the network's probe
        (
            "domain_adaptation",
            ["--model.init_args.box_size_voxels", "0"],
            "box_size_voxels must be a positive number of voxels, got 0",
        ),
        (
            "domain_adaptation",
            ["--model.init_args.box_size_voxels", "2"],
            "box_size_voxels 2: AutoencoderClassifier3D halves the box 2 times",
        ),
        # 0 built an empty discriminator and trained; a negative width was a traceback
        (
            "domain_adaptation",
            ["--model.init_args.discriminator_hidden", "0"],
            "discriminator_hidden must be at least 1, got 0",
        ),
        # the adaptation stage never ran and the fit exited 0
        (
            "domain_adaptation",
            ["--model.init_args.source_epochs", "2"],
            "source_epochs is 2 but trainer.max_epochs is 2: the adaptation stage would never run",
        ),
        # a traceback in BatchNorm1d (one item per training batch)
        ("open_set", ["--data.init_args.batch_size", "1"], "batch_size must be 2 or more"),
        ("open_set", ["--data.init_args.train_size", "1"], "train_size must be 0 or 2 or more"),
        # read as "no warm-up"
        (
            "open_set",
            ["--model.init_args.margin_warmup_steps", "-5"],
            "margin_warmup_steps must be 0 (no warm-up) or more, got -5",
        ),
        # trained without a single label (the classifier head learnt nothing) and exited 0
        (
            "semi_supervised",
            [
                *("--data.init_args.seed", "3", "--data.init_args.labelled_fraction", "0.1"),
                *("--data.init_args.labelled_batch_fraction", "null"),
            ],
            "labelled_fraction 0.1 leaves none of the 4 training items labelled (seed 3)",
        ),
        # a TypeError traceback at the first step ('NoneType' object is not callable)
        (
            "semi_supervised",
            [
                "--model.init_args.reconstruction_weight",
                "1",
                "--model.init_args.net.init_args.with_decoder",
                "false",
            ],
            "reconstruction_weight > 0 needs a network with a decoder",
        ),
        # views shifted out of the box, silently
        (
            "semi_supervised",
            ["--model.init_args.view_max_shift_voxels", "8"],
            "view_max_shift_voxels must be less than half the data's box (8 voxels), got 8.0",
        ),
        # names the predictions would have carried, silently
        (
            "semi_supervised",
            ["--model.init_args.class_names", "[a,b]"],
            "the data's classes ['apoferritin', 'rubisco'] differ from the model's ['a', 'b']",
        ),
    ],
)
def test_impossible_task_options_exit_2(tmp_path, monkeypatch, capsys, task, options, expected):
    assert _run(tmp_path, monkeypatch, "fit", task, *options) == 2
    assert _one_error_line(capsys).startswith(expected)
    assert _no_outputs(tmp_path)


@pytest.mark.parametrize(
    "task, option",
    [
        ("autoencoder", "--model.init_args.net.init_args.in_channels"),
        ("open_set", "--model.init_args.net.init_args.backbone.init_args.in_channels"),
        ("semi_supervised", "--model.init_args.net.init_args.in_channels"),
    ],
)
def test_a_network_for_other_channels_exits_2(tmp_path, monkeypatch, capsys, task, option):
    """A ValueError or a convolution's RuntimeError traceback at the first batch."""
    assert _run(tmp_path, monkeypatch, "fit", task, option, "2") == 2
    error = _one_error_line(capsys)
    assert "was built with in_channels 2 for volumes of shape (B, 2, " in error
    assert error.endswith("but got (2, 1, 16, 16, 16); set the network's in_channels to 1")
    assert _no_outputs(tmp_path)


@pytest.mark.parametrize(
    "task, command, options, expected",
    [
        # the test ran, rejected nothing and reported 0 clusters
        (
            "open_set",
            "test",
            ["--model.init_args.unknown_clusters", "50"],
            "unknown_clusters is 50 but the test split has only 4 items",
        ),
        # found only after every item had been encoded
        (
            "autoencoder",
            "predict",
            ["--model.init_args.n_clusters", "10"],
            "n_clusters is 10 but there are only 4 items to predict",
        ),
    ],
)
def test_more_clusters_than_items_exit_2_before_the_run(
    tmp_path, monkeypatch, capsys, task, command, options, expected
):
    assert _run(tmp_path, monkeypatch, command, task, *options) == 2
    assert _one_error_line(capsys) == expected
    assert _no_outputs(tmp_path)


# --- the domains of a domain pair ---------------------------------------------------------------------------


def test_a_domain_option_given_on_the_command_line_reaches_the_domain(tmp_path, monkeypatch, capsys):
    """`--data.init_args.source.init_args.snr -1` was refused with "the source domain takes class_path and
    init_args, not ['snr']": jsonargparse hands a dict option over as a key beside init_args, so no domain
    option could be changed on the command line."""
    assert (
        _run(tmp_path, monkeypatch, "fit", "domain_adaptation", "--data.init_args.source.init_args.snr", "-1")
        == 2
    )
    assert _one_error_line(capsys) == (
        "the source domain (SimulatedSubtomogramDataModule): snr must be positive, got -1"
    )
    target = ["--data.init_args.target.init_args.box_size_voxels", "24"]
    assert _run(tmp_path, monkeypatch, "fit", "domain_adaptation", *target) == 2
    assert "the target data's subtomograms are 24x24x24 voxels" in _one_error_line(capsys)
    assert _no_outputs(tmp_path)
    config = _tiny("domain_adaptation")["data"]["init_args"]["source"]
    assert build_domain({**config, "snr": 2.0}, "source").hparams.snr == 2.0
    with pytest.raises(ValueError, match="unexpected keyword argument 'sn'"):
        build_domain({**config, "sn": 2.0}, "source")


def test_a_domain_class_is_replaced_on_the_command_line_as_json(tmp_path, monkeypatch, capsys):
    """`--data.init_args.target.class_path X` gave jsonargparse's 300-character complaint about a NestedArg
    and a 'dict' without init_args; the line now says how to replace the class, and that form works."""
    option = "--data.init_args.target"
    star = "aitom.data.StarSubtomogramDataModule"
    assert _run(tmp_path, monkeypatch, "fit", "domain_adaptation", f"{option}.class_path", star) == 2
    assert _one_error_line(capsys) == (
        f"{option}.class_path: a class inside init_args is replaced whole, as JSON: "
        f"""{option} '{{"class_path": "{star}", "init_args": {{...}}}}'"""
    )
    as_json = f'{{"class_path": "{star}", "init_args": {{"train_star": "missing.star"}}}}'
    assert _run(tmp_path, monkeypatch, "fit", "domain_adaptation", option, as_json) == 2
    assert _one_error_line(capsys) == "missing.star: file not found"
    assert _no_outputs(tmp_path)


# --- STAR tables --------------------------------------------------------------------------------------------


def test_star_class_numbers_beyond_num_classes_exit_2(tmp_path, monkeypatch, capsys):
    """Class 3 of a table trained a 2-class semi-supervised model as class 2 (the labels were clamped)."""
    folder = tmp_path / "subtomograms"
    generator = torch.Generator().manual_seed(0)
    names = []
    for index in range(4):
        write_volume(folder / f"v{index}.mrc", torch.randn((BOX,) * 3, generator=generator), 10.0)
        names.append(f"v{index}.mrc")
    star = write_particles(
        folder / "particles.star", pd.DataFrame({"rlnImageName": names, "rlnClassNumber": [1, 2, 3, 2]})
    )
    config = _tiny("semi_supervised")
    config["data"] = {
        "class_path": "aitom.data.StarSubtomogramDataModule",
        "init_args": {"train_star": str(star), "val_star": str(star), "batch_size": 2},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", str(path)]) == 2
    assert _one_error_line(capsys).startswith(
        "the data have class number 3 (rlnClassNumber) but the model has num_classes 2"
    )
    assert _no_outputs(tmp_path)


# --- what a failed fit leaves behind and checkpoints --------------------------------------------------------


def test_a_fit_stopped_by_the_model_leaves_no_config_and_keeps_the_previous_one(
    tmp_path, monkeypatch, capsys
):
    """An error found in the model's setup or at the first batch left outputs/config.yaml (written by then),
    or replaced the config of the previous fit."""
    options = ["--model.init_args.num_known_classes", "3"]
    assert _run(tmp_path, monkeypatch, "fit", "open_set", *options) == 2
    assert _one_error_line(capsys) == "the data have 2 known classes but the model has num_known_classes 3"
    assert _no_outputs(tmp_path)
    previous = tmp_path / "outputs" / "config.yaml"
    previous.parent.mkdir()
    previous.write_text("the previous fit's config\n")
    assert _run(tmp_path, monkeypatch, "fit", "open_set", *options) == 2
    capsys.readouterr()
    assert [path.name for path in (tmp_path / "outputs").iterdir()] == ["config.yaml"]
    assert previous.read_text() == "the previous fit's config\n"


def test_a_checkpoint_of_other_network_options_exits_2(tmp_path, monkeypatch, capsys):
    """A checkpoint trained with other network options (latent_dim) was a RuntimeError traceback listing
    every mismatched weight."""
    one_batch = ["--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1"]
    assert _run(tmp_path, monkeypatch, "fit", "autoencoder", *one_batch) == 0
    checkpoint = tmp_path / "outputs" / "autoencoder" / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    options = ["--ckpt_path", str(checkpoint), "--model.init_args.net.init_args.latent_dim", "8"]
    assert _run(tmp_path, monkeypatch, "predict", "autoencoder", *options) == 2
    network = "aitom.models.autoencoder.SubtomogramAutoencoder"
    assert _one_error_line(capsys).startswith(
        f"{checkpoint}: checkpoint weights do not fit the model {network}"
    )
    assert not (tmp_path / "outputs" / "autoencoder" / "clusters").exists()
    assert [path.name for path in tmp_path.iterdir() if path.name != "autoencoder.yaml"] == ["outputs"]


@pytest.mark.parametrize("command", ["fit", "test"])
def test_a_pipeline_config_given_to_fit_says_which_command_takes_it(tmp_path, monkeypatch, capsys, command):
    """`aitom fit --config configs/pipeline.yaml` said "Subcommand 'fit' does not accept option
    'denoise.method'"; it names the file as a pipeline configuration and the command that takes it. A training
    config with a wrong key keeps jsonargparse's message."""
    monkeypatch.chdir(tmp_path)
    pipeline_config = Path(__file__).resolve().parent.parent / "configs" / "pipeline.yaml"
    assert main([command, "--config", str(pipeline_config)]) == 2
    error = _one_error_line(capsys)
    assert error.startswith(f"{pipeline_config}: an `aitom pipeline` configuration")
    assert f"`aitom pipeline --tomogram T.mrc --out DIR --config {pipeline_config}`" in error
    assert f"give `aitom {command}` a training config" in error
    assert _no_outputs(tmp_path)
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"pick": {"method": "dog"}, "trainer": {"max_epochs": 1}}))
    assert main([command, f"--config={other}"]) == 2
    assert "aitom pipeline" not in _one_error_line(capsys)
