"""``aitom fit|validate|test|predict``: LightningCLI with the project's defaults.

* Weights & Biases is the default logger and runs **offline** unless the user sets ``WANDB_MODE=online``;
  when wandb cannot be imported the CSV logger takes its place, so nothing ever needs the network.
* ``--seed N`` is accepted as a short form of LightningCLI's ``--seed_everything N``.
* Outputs (checkpoints, logs) go under ``outputs/`` unless the config says otherwise.
* A config or option LightningCLI cannot parse is one line and exit code 2, like every other command.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Sequence
from typing import Any

OUTPUT_ROOT = "outputs"


def default_logger_config() -> dict[str, Any]:
    """W&B in offline mode (online only when ``WANDB_MODE=online``), or a CSV logger without wandb."""
    if importlib.util.find_spec("wandb") is not None:
        return {
            "class_path": "lightning.pytorch.loggers.WandbLogger",
            "init_args": {
                "project": "aitom",
                "save_dir": OUTPUT_ROOT,
                "offline": os.environ.get("WANDB_MODE", "offline") != "online",
            },
        }
    return {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": OUTPUT_ROOT}}


def translate_seed_flag(argv: Sequence[str]) -> list[str]:
    """Map ``--seed N`` / ``--seed=N`` onto LightningCLI's ``--seed_everything``."""
    translated = []
    for argument in argv:
        if argument == "--seed":
            translated.append("--seed_everything")
        elif argument.startswith("--seed="):
            translated.append("--seed_everything=" + argument.split("=", 1)[1])
        else:
            translated.append(argument)
    return translated


def run_lightning_cli(argv: Sequence[str]) -> int:
    """Run LightningCLI on ``argv`` (``["fit", "--config", ...]``); returns the exit code."""
    os.environ.setdefault("WANDB_MODE", "offline")
    from jsonargparse import ArgumentError
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    from aitom.errors import InputError

    # `aitom fit ...` passes its own argv on purpose; Lightning warns when args and sys.argv both exist
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    try:
        LightningCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=translate_seed_flag(argv),
            trainer_defaults={"logger": default_logger_config(), "default_root_dir": OUTPUT_ROOT},
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"exit_on_error": False},
        )
    except ArgumentError as error:
        raise InputError(" ".join(str(error).split())) from error
    return 0
