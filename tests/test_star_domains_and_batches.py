"""STAR tables of subtomograms as a domain of domain adaptation, and training batches of a single item.

A STAR table (``StarSubtomogramDataModule``) names no classes, so a domain pair with one was always refused;
the usual case is a labelled simulated source and the user's unlabelled real subtomograms as the target. And
a STAR training split of N items with N % batch_size == 1 ended every open-set epoch on a batch of one item,
which batch-normalised features cannot train on (a ValueError traceback).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import yaml

from aitom.cli import main
from aitom.data import StarSubtomogramDataModule
from aitom.data.domains import DomainPairDataModule
from aitom.errors import InputError
from aitom.io import read_particles, write_particles, write_volume
from aitom.tasks.open_set import OpenSetClassifier
from tests.test_cli_awkward_inputs import _one_error_line
from tests.test_cli_awkward_inputs_fit_tasks import BOX, CLASSES, _tiny

STAR_MODULE = "aitom.data.StarSubtomogramDataModule"


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")


def _star(folder: str, size: int, labels: list[int] | None = None, box: int = BOX) -> str:
    """``size`` noise subtomograms of ``box``³ voxels in ``folder``, listed in ``folder/particles.star``
    (with ``rlnClassNumber`` when ``labels`` are given)."""
    generator = torch.Generator().manual_seed(len(folder) + size)
    names = []
    for index in range(size):
        write_volume(Path(folder) / f"v{index}.mrc", torch.randn((box,) * 3, generator=generator), 10.0)
        names.append(f"v{index}.mrc")
    columns: dict[str, list] = {"rlnImageName": names}
    if labels is not None:
        columns["rlnClassNumber"] = labels
    return str(write_particles(Path(folder) / "particles.star", pd.DataFrame(columns)))


def _star_domain(**stars: str) -> dict:
    return {"class_path": STAR_MODULE, "init_args": stars}


def _write(config: dict) -> str:
    Path("config.yaml").write_text(yaml.safe_dump(config))
    return "config.yaml"


def _domain_adaptation_config(**target_stars: str) -> str:
    """The tiny domain-adaptation config (simulated source of 2 classes) with a STAR-table target."""
    config = _tiny("domain_adaptation")
    config["data"]["init_args"]["target"] = _star_domain(**target_stars)
    return _write(config)


def _simulated_source() -> dict:
    return _tiny("domain_adaptation")["data"]["init_args"]["source"]


def _batch_sizes(loader) -> list[int]:
    return [len(batch["volume"]) for batch in loader]


# --- a STAR table as the target domain ----------------------------------------------------------------------


def test_an_unlabelled_star_target_fits_predicts_and_tests_on_labelled_tables(capsys):
    """The target takes the source's classes; no val_star: no validation; test scores the labelled table."""
    unlabelled = _star("real", 5)
    config = _domain_adaptation_config(
        train_star=unlabelled, predict_star=unlabelled, test_star=_star("labelled", 3, [1, 2, 2])
    )
    assert main(["fit", "--config", config]) == 0
    checkpoint = Path("outputs/domain_adaptation/checkpoints/last.ckpt")
    assert checkpoint.is_file()
    capsys.readouterr()
    assert main(["test", "--config", config, "--ckpt_path", str(checkpoint)]) == 0
    out = capsys.readouterr().out
    assert "test/acc" in out and "test/source_only_acc" in out
    assert main(["predict", "--config", config, "--ckpt_path", str(checkpoint)]) == 0
    predictions = read_particles(Path("outputs/domain_adaptation/predictions.star"), require=())
    assert len(predictions) == 5
    assert set(predictions["aitomClassName"]) <= set(CLASSES)
    assert predictions["aitomParticleIndex"].tolist() == list(range(5))


def test_testing_on_an_unlabelled_star_target_exits_2_before_the_run(capsys):
    config = _domain_adaptation_config(train_star=_star("real", 4), test_star=_star("unlabelled", 3))
    assert main(["test", "--config", config]) == 2
    assert _one_error_line(capsys) == (
        "unlabelled/particles.star: the target domain's test_star has no rlnClassNumber column: testing "
        "scores the adapted classifier against the target's labels; label the table, or use predict for "
        "unlabelled data"
    )
    assert not Path("outputs").exists()


def test_the_box_of_a_star_target_is_checked_against_the_model(capsys):
    config = _domain_adaptation_config(train_star=_star("real", 4, box=8))
    assert main(["fit", "--config", config]) == 2
    assert _one_error_line(capsys).startswith(
        "the model's box_size_voxels is 16 but the target data's subtomograms are 8x8x8 voxels"
    )
    assert not Path("outputs").exists()


def test_a_star_target_takes_the_source_classes_and_its_labels_must_lie_within_them():
    """Two STAR tables name no classes: the model's num_classes decides, checked against largest_label."""
    both = DomainPairDataModule(
        _star_domain(train_star=_star("source", 3, [1, 2, 2])), _star_domain(train_star=_star("target", 2))
    )
    both.setup("fit")
    assert both.class_names is None and both.num_classes is None and both.largest_label == 1
    pair = DomainPairDataModule(_simulated_source(), _star_domain(train_star=_star("real", 3, [2, 1, 2])))
    assert pair.class_names == CLASSES and pair.num_classes == 2
    pair.setup("fit")
    assert _batch_sizes(pair.val_dataloader()) == []  # no val_star: a fit without validation
    beyond = DomainPairDataModule(_simulated_source(), _star_domain(train_star=_star("beyond", 3, [1, 3, 2])))
    with pytest.raises(InputError) as error:
        beyond.setup("fit")
    assert str(error.value) == (
        "beyond/particles.star: the target domain's train_star has rlnClassNumber 3 (row 2) but the classes "
        "are ['apoferritin', 'rubisco']; class numbers run from 1 to 2"
    )


@pytest.mark.parametrize(
    "role, split, expected",
    [
        ("target", "val", "the target domain's val_star has no rlnClassNumber column: validation scores"),
        ("source", "train", "the source domain's train_star has no rlnClassNumber column: the source domain"),
    ],
)
def test_star_tables_without_labels_where_they_are_needed_are_refused(role, split, expected):
    labelled, unlabelled = _star("labelled", 3, [1, 2, 1]), _star("unlabelled", 3)
    stars = {"train_star": labelled, "val_star": labelled, split + "_star": unlabelled}
    target = _star_domain(**stars) if role == "target" else _star_domain(train_star=labelled)
    source = _star_domain(**stars) if role == "source" else _simulated_source()
    pair = DomainPairDataModule(source, target)
    with pytest.raises(InputError, match=expected):
        pair.setup("fit")


# --- training batches of a single item ----------------------------------------------------------------------


def test_only_a_last_training_batch_of_a_single_item_is_dropped():
    star = _star("real", 5, [1, 2, 1, 2, 1])
    data = StarSubtomogramDataModule(star, star, star, star, batch_size=2)
    data.setup()
    assert _batch_sizes(data.train_dataloader()) == [2, 2]
    for loader in (data.val_dataloader(), data.test_dataloader(), data.predict_dataloader()):
        assert _batch_sizes(loader) == [2, 2, 1]
    data = StarSubtomogramDataModule(star, batch_size=3)
    data.setup("fit")
    assert _batch_sizes(data.train_dataloader()) == [3, 2]
    pair = DomainPairDataModule(_simulated_source(), _star_domain(train_star=star), batch_size=2)
    pair.setup("fit")
    target_sizes = [len(batch["target"]["volume"]) for batch, *_ in pair.train_dataloader()]
    assert target_sizes == [2, 2]  # the simulated source's 4 items: 2 batches


def _open_set_config(batch_size: int = 2, train_size: int = 5) -> str:
    """The tiny open-set config on STAR tables: 2 known classes for train/val, a third unknown in test."""
    config = _tiny("open_set")
    known = _star("known", train_size, [1, 2, 1, 2, 1][:train_size])
    mixed = _star("mixed", 4, [1, 2, 3, 3])
    stars = {"train_star": known, "val_star": known, "test_star": mixed, "predict_star": mixed}
    config["data"] = {"class_path": STAR_MODULE, "init_args": {**stars, "batch_size": batch_size}}
    return _write(config)


def test_open_set_fits_tests_and_predicts_on_star_tables_of_5_items_in_batches_of_2(capsys):
    """The third training batch held one item: a BatchNorm1d ValueError traceback. Test and predict then
    stopped at "no data given for the val split" (the threshold is set on it)."""
    config = _open_set_config()
    assert main(["fit", "--config", config]) == 0
    capsys.readouterr()
    assert main(["test", "--config", config, "--ckpt_path", "last"]) == 0
    assert "test/known_acc" in capsys.readouterr().out
    assert main(["predict", "--config", config, "--ckpt_path", "last"]) == 0
    assert len(read_particles(Path("outputs/open_set/predictions.star"), require=())) == 4


@pytest.mark.parametrize(
    "batch_size, train_size, expected",
    [
        (1, 5, "batch_size must be 2 or more (the features are batch-normalised in training), got 1"),
        (2, 1, "the training split has 1 item: the features are batch-normalised in training"),
    ],
)
def test_open_set_on_star_tables_refuses_training_batches_of_one_item(
    capsys, batch_size, train_size, expected
):
    config = _open_set_config(batch_size, train_size)
    assert main(["fit", "--config", config]) == 2
    assert _one_error_line(capsys).startswith(expected)
    assert not Path("outputs").exists()


def test_open_set_refuses_a_training_split_that_gives_each_ddp_process_one_item():
    """Two items over two processes are one item per process: BatchNorm1d cannot train on it."""
    datamodule = SimpleNamespace(hparams={"batch_size": 2}, datasets={"train": [0, 1]})
    OpenSetClassifier._check_training_batches(datamodule, world_size=1)  # one process: a batch of two
    with pytest.raises(InputError, match="the training split has 2 items shared by 2 processes"):
        OpenSetClassifier._check_training_batches(datamodule, world_size=2)
    OpenSetClassifier._check_training_batches(SimpleNamespace(hparams={}, datasets={"train": [0, 1, 2]}), 2)
