"""Awkward inputs to ``aitom fit|validate|test|predict`` (LightningCLI with the YAML configs) and to
``aitom show``: each must either work or stop with exit code 2, one line on stderr naming the file or option
and the problem, and no output written or replaced."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from aitom.cli import main
from aitom.commands.show import PicksOutsideWarning
from aitom.io import write_particles, write_volume
from aitom.lightning_cli import default_logger_config
from tests.test_cli_awkward_inputs import _one_error_line

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
BOX = 16


def _config(directory: Path, data: dict) -> Path:
    """configs/classify_rb3d.yaml for 2 classes of BOX³ subtomograms from ``data``, without a logger."""
    config = yaml.safe_load((CONFIGS / "classify_rb3d.yaml").read_text())
    config["trainer"].update({"logger": False, "accelerator": "cpu", "max_epochs": 1})
    config["model"]["init_args"]["num_classes"] = 2
    config["model"]["init_args"]["net"]["init_args"]["num_classes"] = 2
    config["data"] = data
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _simulated(**init_args) -> dict:
    base = {"classes": ["apoferritin", "rubisco"], "box_size_voxels": BOX, "voxel_size_a": 30.0}
    base |= {"train_size": 2, "val_size": 2, "test_size": 2, "predict_size": 2, "batch_size": 2}
    return {"class_path": "aitom.data.SimulatedSubtomogramDataModule", "init_args": base | init_args}


def _star(**init_args) -> dict:
    base = {"train_star": None, "val_star": None, "test_star": None, "predict_star": None, "batch_size": 2}
    return {"class_path": "aitom.data.StarSubtomogramDataModule", "init_args": base | init_args}


@pytest.fixture
def star_data(tmp_path, monkeypatch) -> Path:
    """tmp_path (the working directory) with subtomograms/: v0, v1 (BOX³, 10 Å), big (20³), fine (5 Å), a
    stack of 2 and particles.star naming v0 (class 1) and v1 (class 2)."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "subtomograms"
    generator = torch.Generator().manual_seed(0)
    for name in ("v0", "v1"):
        write_volume(folder / f"{name}.mrc", torch.randn((BOX,) * 3, generator=generator), 10.0)
    write_volume(folder / "big.mrc", torch.randn((20,) * 3, generator=generator), 10.0)
    write_volume(folder / "fine.mrc", torch.randn((BOX,) * 3, generator=generator), 5.0)
    with mrcfile.new(folder / "stack.mrcs") as stack:
        stack.set_data(np.random.default_rng(0).normal(size=(2, BOX, BOX, BOX)).astype(np.float32))
        stack.voxel_size = 10.0
    _table(folder / "particles.star", ["v0.mrc", "v1.mrc"], [1, 2])
    return folder / "particles.star"


def _table(path: Path, names: list[str], classes: list) -> Path:
    return write_particles(path, pd.DataFrame({"rlnImageName": names, "rlnClassNumber": classes}))


def _no_outputs(directory: Path) -> bool:
    return not (directory / "outputs").exists()


# --- errors raised while the config's classes are built -----------------------------------------------------


@pytest.mark.parametrize(
    "init_args, expected",
    [
        ({"snr": -1.0}, "snr must be positive, got -1.0"),
        ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
        ({"num_workers": -1}, "num_workers must be 0 or more, got -1"),
        ({"train_size": -5}, "train_size must be 0 or more, got -5"),
        ({"voxel_size_a": 0.0}, "voxel_size_a must be a positive number of Å, got 0.0"),
        ({"defocus_um": -2.0}, "defocus_um must be 0 (no CTF) or a positive underfocus in µm, got -2.0"),
        ({"max_shift_voxels": -1.0}, "max_shift_voxels must be 0 or more and less than half the box"),
        ({"tilt_min_deg": 70.0}, "tilt_min_deg and tilt_max_deg must satisfy -90 <= tilt_min_deg < tilt_max"),
    ],
)
def test_impossible_simulated_data_options_exit_2(tmp_path, monkeypatch, capsys, init_args, expected):
    """A constructor's InputError came out as jsonargparse's multi-line ValueError with a traceback (exit 1);
    batch_size 0, a negative train_size or num_workers failed in torch's DataLoader; a negative defocus or
    shift trained silently (no CTF, a negative radius)."""
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path, _simulated(**init_args))
    assert main(["fit", "--config", str(config)]) == 2
    assert _one_error_line(capsys).startswith(expected)
    assert _no_outputs(tmp_path)


@pytest.mark.parametrize(
    "option, expected",
    [
        (["--model.init_args.lr", "0"], "lr (learning rate) must be positive, got 0.0"),
        (["--model.init_args.lr", "-1"], "lr (learning rate) must be positive, got -1.0"),
        (["--model.init_args.weight_decay", "-1"], "weight_decay must be 0 or more, got -1.0"),
        (["--model.init_args.net.init_args.num_classes", "1"], "num_classes must be 2 or more, got 1"),
    ],
)
def test_impossible_model_options_exit_2(tmp_path, monkeypatch, capsys, option, expected):
    """lr 0 trained a model that never changed (exit 0); a negative lr and a network's own refusal were
    tracebacks."""
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path, _simulated())
    assert main(["fit", "--config", str(config), *option]) == 2
    assert _one_error_line(capsys) == expected
    assert _no_outputs(tmp_path)


@pytest.mark.parametrize(
    "option, expected",
    [
        (
            ["--model.init_args.lr", "nan"],
            "--model.init_args.lr (aitom.tasks.Classifier): expected float, got nan",
        ),
        (
            ["--data.init_args.batch_size", "two"],
            "--data.init_args.batch_size (aitom.data.SimulatedSubtomogramDataModule): expected int, got two",
        ),
        (
            ["--model.init_args.nonsense", "3"],
            "--model.init_args.nonsense: not an option of aitom.tasks.Classifier",
        ),
        (["--trainer.max_epochs", "x"], "--trainer.max_epochs: expected int or null, got x"),
    ],
)
def test_unparsable_options_are_named_in_a_short_line(tmp_path, monkeypatch, capsys, option, expected):
    """jsonargparse's message listed every alternative of the Union (the class or None) around the
    complaint, over 400 characters, without the option's full name."""
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path, _simulated())
    assert main(["fit", "--config", str(config), *option]) == 2
    assert _one_error_line(capsys) == expected
    assert _no_outputs(tmp_path)


def test_empty_training_split_exits_2(tmp_path, monkeypatch, capsys):
    """train_size 0 failed in torch's RandomSampler with a traceback."""
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path, _simulated(train_size=0))
    assert main(["fit", "--config", str(config)]) == 2
    assert _one_error_line(capsys) == "the train split has no items (train_size: 0)"
    assert not (tmp_path / "outputs" / "classify_rb3d").exists()


# --- Trainer options and checkpoints -----------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_accelerator_without_a_gpu_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path, _simulated())
    assert main(["fit", "--config", str(config), "--trainer.accelerator", "gpu"]) == 2
    assert _one_error_line(capsys).startswith("--trainer.accelerator gpu: no GPU is available")
    assert _no_outputs(tmp_path)


def test_impossible_devices_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path, _simulated())
    assert main(["fit", "--config", str(config), "--trainer.devices", "-2"]) == 2
    assert _one_error_line(capsys).startswith("trainer options: `devices`")
    assert _no_outputs(tmp_path)


def test_ckpt_path_last_without_a_checkpoint_exits_2(tmp_path, monkeypatch, capsys):
    """`aitom test --ckpt_path last` before any fit tested the untrained network and exited 0."""
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path, _simulated())
    for command in ("test", "validate", "predict"):
        assert main([command, "--config", str(config), "--ckpt_path", "last"]) == 2
        error = _one_error_line(capsys)
        assert error.startswith("--ckpt_path last: no last checkpoint in ")
        assert "outputs/classify_rb3d/checkpoints" in error
    assert _no_outputs(tmp_path)


def test_ckpt_path_best_in_a_new_process_exits_2(tmp_path, monkeypatch, capsys):
    """Lightning's ValueError traceback: "best" only names a checkpoint of a fit in the same process."""
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path, _simulated())
    assert main(["test", "--config", str(config), "--ckpt_path", "best"]) == 2
    error = _one_error_line(capsys)
    assert error.startswith("--ckpt_path best refers to the best checkpoint of a fit in the same run")
    assert "outputs/classify_rb3d/checkpoints/best.ckpt" in error


def _bad_checkpoint(path: Path, kind: str) -> None:
    if kind == "missing":
        return
    if kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "truncated":
        torch.save({"state_dict": {"w": torch.zeros(10_000)}}, path)
        path.write_bytes(path.read_bytes()[:20_000])
    elif kind == "weights only":
        torch.save({"net.weight": torch.zeros(3)}, path)
    else:  # a checkpoint of another task
        hyper_parameters = {"_class_path": "aitom.tasks.autoencoder.AutoencoderClustering", "n_clusters": 5}
        torch.save({"state_dict": {}, "hyper_parameters": hyper_parameters}, path)


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("missing", "checkpoint file not found (--ckpt_path)"),
        ("text", "not a checkpoint: not a PyTorch archive (another kind of file, or a truncated one)"),
        ("truncated", "not a checkpoint: not a PyTorch archive (another kind of file, or a truncated one)"),
        ("weights only", "not a Lightning checkpoint (no state_dict"),
        ("other model", "checkpoint of the model aitom.tasks.autoencoder.AutoencoderClustering, but the "),
    ],
)
def test_ckpt_path_that_is_not_a_checkpoint_of_the_model_exits_2(
    tmp_path, monkeypatch, capsys, kind, expected
):
    """A missing file, a text file and a truncated one were tracebacks (FileNotFoundError, EOFError); a
    checkpoint of another task built that task with the config's network and failed on it."""
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path, _simulated())
    checkpoint = tmp_path / "model.ckpt"
    _bad_checkpoint(checkpoint, kind)
    assert main(["test", "--config", str(config), "--ckpt_path", str(checkpoint)]) == 2
    assert _one_error_line(capsys).startswith(f"{checkpoint}: {expected}")
    assert _no_outputs(tmp_path)


def test_wandb_is_offline_by_default_and_off_when_disabled(monkeypatch):
    """WANDB_MODE=disabled still wrote an offline run: WandbLogger(offline=True) sets WANDB_MODE=dryrun."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert default_logger_config()["init_args"]["offline"] is True
    monkeypatch.setenv("WANDB_MODE", "online")
    assert default_logger_config()["init_args"]["offline"] is False
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert default_logger_config()["init_args"]["offline"] is False


# --- STAR particle tables ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "names, classes, expected",
    [
        (
            ["v0.mrc", "v1.mrc"],
            [1.5, 2],
            "{star}: rlnClassNumber must be a whole number, 1 or more; row 1 has 1.5",
        ),
        (
            ["v0.mrc", "v1.mrc"],
            ["a", "b"],
            "{star}: particles rlnClassNumber: 'a' (row 1) is not a finite number",
        ),
        (
            ["v0.mrc", "v1.mrc"],
            [1, None],
            "{star}: particles rlnClassNumber: nan (row 2) is not a finite number",
        ),
        (
            ["1@stack.mrcs", "0@stack.mrcs"],
            [1, 2],
            "{star}: rlnImageName of row 2 is 0@stack.mrcs: the number",
        ),
        (
            ["1@stack.mrcs", "x@stack.mrcs"],
            [1, 2],
            "{star}: rlnImageName of row 2 is x@stack.mrcs: the number",
        ),
        (
            ["1@stack.mrcs", "3@stack.mrcs"],
            [1, 2],
            "{folder}/stack.mrcs: rlnImageName of row 2 names volume 3",
        ),
        (
            ["1@v0.mrc", "1@v1.mrc"],
            [1, 2],
            "{folder}/v0.mrc: rlnImageName of row 1 names volume 1 of it, but",
        ),
        (
            ["v0.mrc", "big.mrc"],
            [1, 2],
            "{folder}/big.mrc: subtomogram of row 2 is 20x20x20 voxels, the first",
        ),
        (
            ["v0.mrc", "fine.mrc"],
            [1, 2],
            "{folder}/fine.mrc: voxel size 5 Å differs from the first subtomogram",
        ),
    ],
)
def test_bad_particle_tables_exit_2(star_data, capsys, names, classes, expected):
    """Class numbers 1.5 were truncated to class 1 and a missing one became label 2**63 - 1; text was a
    ValueError traceback; 0@stack read the LAST volume, 3@ a 2-volume stack was an IndexError traceback,
    1@volume read one section as a 2-D "subtomogram"; a 20³ particle failed only when its batch was loaded,
    and a particle at another voxel size was used as it was."""
    folder = star_data.parent
    star = _table(folder / "bad.star", names, classes)
    config = _config(folder.parent, _star(train_star=str(star), val_star=str(star_data)))
    assert main(["fit", "--config", str(config)]) == 2
    assert _one_error_line(capsys).startswith(expected.format(star=star, folder=folder))
    assert not (folder.parent / "outputs" / "classify_rb3d").exists()


def _bad_table_config_with_the_default_logger(star_data: Path) -> Path:
    """A config training on a table with class number 1.5 (found bad at data setup), logging with the CLI's
    default logger (W&B as ``WANDB_MODE`` says)."""
    folder = star_data.parent
    star = _table(folder / "bad.star", ["v0.mrc", "v1.mrc"], [1.5, 2])
    config = _config(folder.parent, _star(train_star=str(star), val_star=str(star_data)))
    default_logger = yaml.safe_load(config.read_text())
    del default_logger["trainer"]["logger"]
    config.write_text(yaml.safe_dump(default_logger))
    return config


def test_an_input_error_found_at_data_setup_leaves_no_offline_wandb_run(star_data, monkeypatch, capsys):
    """Lightning opens the W&B run before it sets up the data, so a STAR table found bad there left
    outputs/wandb/offline-run-*/ (and its links) behind, though the command exited 2. The run also started
    with two wandb warnings (the anonymous argument Lightning passes, a git root that did not exist yet)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    config = _bad_table_config_with_the_default_logger(star_data)
    assert main(["fit", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "aitom: error:" in err and "rlnClassNumber must be a whole number" in err, err
    assert "Run data is saved locally" in err and "wandb: WARNING" not in err, err
    assert not (star_data.parent.parent / "outputs").exists()


def test_an_input_error_with_wandb_disabled_leaves_no_output_folder(star_data):
    """With WANDB_MODE=disabled the same error left an empty outputs/ (in a new process: wandb reads the mode
    once per process)."""
    folder = star_data.parent
    config = _bad_table_config_with_the_default_logger(star_data)
    environment = {**os.environ, "WANDB_MODE": "disabled"}
    command = [sys.executable, "-m", "aitom", "fit", "--config", str(config)]
    finished = subprocess.run(command, cwd=folder.parent, env=environment, capture_output=True, text=True)
    assert finished.returncode == 2, finished.stderr
    assert "rlnClassNumber must be a whole number" in finished.stderr
    assert not (folder.parent / "outputs").exists()


def test_a_stage_reads_only_its_own_star_files(star_data, capsys):
    """`aitom validate` with the datamodule's default train_star (absent) stopped on the missing training
    table; it needs only val_star."""
    config = _config(star_data.parent.parent, _star(train_star="train.star", val_star=str(star_data)))
    assert main(["validate", "--config", str(config)]) == 0
    assert "val/acc" in capsys.readouterr().out


def test_prediction_writer_refuses_to_replace_its_input_table(star_data, capsys):
    """output_path = the predict_star with overwrite: true replaced the particle table with predictions."""
    before = star_data.read_text()
    config = _config(star_data.parent.parent, _star(predict_star=str(star_data)))
    writer = ["--trainer.callbacks+=aitom.tasks.PredictionWriter", "--trainer.callbacks.output_path"]
    overwrite = ["--trainer.callbacks.overwrite", "true"]
    assert main(["predict", "--config", str(config), *writer, str(star_data), *overwrite]) == 2
    assert _one_error_line(capsys) == (
        f"{star_data}: is also an input of the data: set the PredictionWriter's output_path to another file"
    )
    assert star_data.read_text() == before


def test_prediction_writer_refuses_an_output_that_is_not_a_star_file(star_data, capsys):
    config = _config(star_data.parent.parent, _star(predict_star=str(star_data)))
    out = star_data.parent / "predictions.png"
    writer = ["--trainer.callbacks+=aitom.tasks.PredictionWriter", "--trainer.callbacks.output_path"]
    assert main(["predict", "--config", str(config), *writer, str(out)]) == 2
    assert _one_error_line(capsys) == (
        f"{out}: the PredictionWriter's output_path is written as a STAR table: name it .star"
    )
    assert not out.exists() and _no_outputs(star_data.parent.parent)


# --- aitom show -------------------------------------------------------------------------------------------


@pytest.fixture
def volume(tmp_path) -> Path:
    return write_volume(tmp_path / "vol.mrc", torch.randn(20, 24, 28, generator=torch.Generator()), 10.0)


def _picks(path: Path, **columns) -> Path:
    base = {"rlnCoordinateX": [5.0, 10.0], "rlnCoordinateY": [5.0, 12.0], "rlnCoordinateZ": [5.0, 10.0]}
    return write_particles(path, pd.DataFrame(base | columns))


@pytest.mark.parametrize(
    "columns, expected",
    [
        ({"rlnCoordinateX": ["a", "b"]}, "particles rlnCoordinateX: 'a' (row 1) is not a finite number"),
        ({"rlnCoordinateX": [np.nan, 3.0]}, "particles rlnCoordinateX: nan (row 1) is not a finite number"),
        ({"rlnClassNumber": ["a", "b"]}, "picks rlnClassNumber: 'a' (row 1) is not a finite number"),
        ({"rlnClassNumber": [1.0, np.nan]}, "picks rlnClassNumber: nan (row 2) is not a finite number"),
        ({"rlnClassNumber": [1.0, 2.5]}, "rlnClassNumber must be whole numbers; row 2 has 2.5"),
    ],
)
def test_show_bad_picks_exit_2(tmp_path, volume, capsys, columns, expected):
    """Text was a ValueError traceback; a NaN position or class was drawn (or cast) silently."""
    picks = _picks(tmp_path / "picks.star", **columns)
    out = tmp_path / "out.png"
    assert main(["show", str(volume), "--out", str(out), "--picks", str(picks)]) == 2
    assert _one_error_line(capsys) == f"{picks}: {expected}"
    assert not out.exists()


def test_show_warns_about_picks_outside_the_volume(tmp_path, volume):
    """Picks in another binning were drawn nowhere without a word."""
    picks = _picks(tmp_path / "picks.star", rlnCoordinateX=[5.0, 500.0])
    out = tmp_path / "out.png"
    expected = f"{picks}: 1 of 2 picks lie outside the volume's 28x24x20 voxels (x, y, z): positions for"
    with pytest.warns(PicksOutsideWarning, match=re.escape(expected)):
        assert main(["show", str(volume), "--out", str(out), "--picks", str(picks)]) == 0
    assert out.is_file()


def test_show_refuses_to_replace_its_input(tmp_path, volume, capsys):
    """An MRC named .png shown with --out that same file and --overwrite was replaced by its picture."""
    named_png = tmp_path / "vol.png"
    named_png.write_bytes(volume.read_bytes())
    assert main(["show", str(named_png), "--out", str(named_png), "--overwrite"]) == 2
    assert (
        _one_error_line(capsys)
        == f"{named_png}: is also an input ({named_png}): write the output to another file"
    )
    assert named_png.read_bytes() == volume.read_bytes()


@pytest.mark.parametrize(
    "options, expected",
    [
        (["--out", "{folder}"], "{folder}: is a folder; --out names the image file to write"),
        (
            ["--out", "{folder}/o.png", "--pick-radius", "nan"],
            "--pick-radius must be a positive number of voxels",
        ),
        (
            ["--out", "{folder}/o.png", "--pick-radius", "inf"],
            "--pick-radius must be a positive number of voxels",
        ),
        (["--out", "{folder}/o.png", "--voxel-size", "inf"], "--voxel-size must be a positive number of Å"),
    ],
)
def test_show_impossible_options_exit_2(tmp_path, volume, capsys, options, expected):
    """A folder as --out was told "exists; pass --overwrite" (which then said "is a folder"); a NaN or
    infinite pick radius drew nothing or everything, and exited 0."""
    folder = tmp_path / "pictures"
    folder.mkdir()
    argv = [option.format(folder=folder) for option in options]
    assert main(["show", str(volume), *argv]) == 2
    assert _one_error_line(capsys).startswith(expected.format(folder=folder))
    assert list(folder.iterdir()) == []


def test_test_and_predict_keep_the_config_the_fit_saved(tmp_path, monkeypatch):
    """The resolved config saved by `aitom fit` stays the fit's after `aitom test` with other options."""
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path, _simulated())
    logger = ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger"]
    logger += ["--trainer.logger.save_dir", "outputs"]
    assert main(["fit", "--config", str(config), *logger, "--trainer.limit_train_batches", "1"]) == 0
    saved = sorted(tmp_path.glob("outputs/**/config.yaml"))
    assert len(saved) == 1
    fitted = saved[0].read_text()
    options = ["--ckpt_path", "last", "--data.init_args.batch_size", "1"]
    assert main(["test", "--config", str(config), *logger, *options]) == 0
    assert sorted(tmp_path.glob("outputs/**/config.yaml")) == saved and saved[0].read_text() == fitted
    assert "batch_size: 2" in fitted


def test_fit_without_a_logger_drops_the_learning_rate_monitor(tmp_path, monkeypatch):
    """configs/classify_rb3d.yaml has a LearningRateMonitor; with logger false fit raised Lightning's
    MisconfigurationException ("Cannot use LearningRateMonitor callback with Trainer that has no logger")."""
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path, _simulated())
    assert "LearningRateMonitor" in config.read_text() and "logger: false" in config.read_text()
    assert main(["fit", "--config", str(config), "--trainer.limit_train_batches", "1"]) == 0
    assert list(tmp_path.glob("outputs/**/last.ckpt"))
