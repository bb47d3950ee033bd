"""``aitom fit|validate|test|predict``: LightningCLI with the project's defaults.

* Weights & Biases is the default logger and runs **offline** unless the user sets ``WANDB_MODE=online``
  (``WANDB_MODE=disabled`` turns it off); when wandb cannot be imported the CSV logger takes its place, so
  nothing ever needs the network.
* ``--seed N`` is accepted as a short form of LightningCLI's ``--seed_everything N``.
* Outputs (checkpoints, logs) go under ``outputs/`` unless the config says otherwise; ``fit`` saves the
  resolved config there as ``config.yaml`` (the other subcommands leave it as the fit wrote it).
* A config or option LightningCLI cannot parse, a value a model or DataModule refuses, Trainer options this
  machine cannot honour (``--trainer.accelerator gpu`` without a GPU) and a ``--ckpt_path`` that is missing,
  not a checkpoint or a checkpoint of another model are one line and exit code 2, like every other command;
  an input error found once the run has started (a bad STAR table at data setup, a model that does not fit
  its data) leaves no offline W&B run and no saved config (the previous fit's config stays as it was).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import os
import re
import shutil
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentError, Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from aitom.errors import InputError

OUTPUT_ROOT = "outputs"
#: ``--ckpt_path`` values that Lightning resolves itself instead of reading a file
CKPT_PATH_KEYWORDS = ("last", "best", "hpc", "registry")
#: jsonargparse's message for a bad init_arg of a class given by class_path: the Union of the class and
#: None, with the class's own complaint inside
_NESTED_OPTION_ERROR = re.compile(
    r'^Parser key "(?P<group>[\w.]+)": Does not validate against any of the Union subtypes .*? Errors: '
    r"- Problem with given class_path '(?P<class_path>[\w.]+)': "
    r"(?:Parser key \"(?P<key>[\w.]+)\": (?P<problem>.*?)|Option '(?P<unknown>[\w.]+)' is not accepted)"
    r"(?: - Expected a <class 'NoneType'>.*)?$"
)
#: jsonargparse's message for a value that fits none of an option's types (``--trainer.max_epochs x``)
_UNION_ERROR = re.compile(
    r'^Parser key "(?P<key>[\w.]+)": Does not validate against any of the Union subtypes .*? Errors: '
    r"(?P<expected>(?:- Expected a <class '\w+'> )+)Given value type: .*? Given value: (?P<value>.*)$"
)
#: jsonargparse's message for ``--data.init_args.target.class_path X`` (a class inside a class's init_args)
_NESTED_CLASS_PATH_ERROR = re.compile(
    r'^Parser key "(?P<group>[\w.]+)": .*? Given value: '
    r"NestedArg\(key='(?P<key>[\w.]+)\.class_path', val='(?P<class_path>[^']*)'\)$"
)
#: accelerators that need a CUDA device
CUDA_ACCELERATORS = ("gpu", "cuda")


class QuietWandbLogger(WandbLogger):
    """Lightning's WandbLogger without the two warnings wandb prints on every run it starts: the ``anonymous``
    argument (always passed, though wandb ignores it) is dropped, and the save folder is made when the run
    starts (wandb warns "git root ... does not exist" otherwise), not before, so that an input error found
    earlier leaves nothing behind."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            del self._wandb_init["anonymous"]

    @property
    def experiment(self) -> Any:
        if self._experiment is None and self.save_dir:
            Path(self.save_dir).mkdir(parents=True, exist_ok=True)
        return super().experiment


def default_logger_config() -> dict[str, Any]:
    """W&B in offline mode (online only when ``WANDB_MODE=online``; off with ``WANDB_MODE=disabled``), or a
    CSV logger without wandb."""
    if importlib.util.find_spec("wandb") is not None:
        mode = os.environ.get("WANDB_MODE", "offline")
        return {
            "class_path": "aitom.lightning_cli.QuietWandbLogger",
            "init_args": {
                "project": "aitom",
                "save_dir": OUTPUT_ROOT,
                # offline=True would set WANDB_MODE=dryrun, so "disabled" must reach wandb as it is
                "offline": mode not in ("online", "disabled"),
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


def input_error_in(error: BaseException) -> InputError | None:
    """``error`` itself when it is an :class:`InputError`, else the first one among its causes, else None.

    jsonargparse wraps the exception a model's or DataModule's constructor raises in its own ``ValueError``
    (once per level of nesting); the cause it keeps is the user's problem.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, InputError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def resolve_class(class_path: str) -> object:
    """The object ``class_path`` (``module.Name``) names, or ``class_path`` itself when it cannot be imported
    (so that two spellings of one class compare equal, and unknown ones compare as text)."""
    module_name, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        return class_path


def read_checkpoint_file(path: Path) -> dict[str, Any]:
    """The contents of a Lightning checkpoint file (tensors memory-mapped, not read).

    Raises:
        InputError: the file is missing, not a PyTorch archive (another kind of file, or truncated), or not a
            Lightning checkpoint (no ``state_dict``).
    """
    if not path.is_file():
        raise InputError("checkpoint file not found (--ckpt_path)", path)
    if not zipfile.is_zipfile(path):
        raise InputError(
            "not a checkpoint: not a PyTorch archive (another kind of file, or a truncated one)", path
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, ... on a damaged file
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"not a readable checkpoint: {first_line}", path) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise InputError(
            "not a Lightning checkpoint (no state_dict; a bare torch.save of weights?): use a .ckpt that "
            "aitom fit wrote",
            path,
        )
    return checkpoint


class FitConfigCallback(SaveConfigCallback):
    """Save the resolved config (``config.yaml`` in the log folder) for ``fit`` only, so that the config a
    checkpoint was trained with is not replaced by a later ``validate``, ``test`` or ``predict``.

    Lightning saves it after setting up the data but before the model's ``setup`` (where a model checks that
    it fits the data) and before the first batch; :meth:`undo` takes the file back (putting back the one it
    replaced) when the fit then stops on an input error.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._saved_path: Path | None = None
        self._replaced_bytes: bytes | None = None
        self._made_folders: list[Path] = []

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not self.already_saved and self.save_to_log_dir:
            path = Path(trainer.log_dir or ".").resolve() / self.config_filename
            self._saved_path = path
            self._replaced_bytes = path.read_bytes() if path.is_file() else None
            self._made_folders = [folder for folder in path.parents if not folder.exists()]
        super().setup(trainer, pl_module, stage)

    def undo(self) -> None:
        """Remove the config file this fit saved, or put back the one it replaced, and the folders it made."""
        path = self._saved_path
        if path is None:
            return
        if self._replaced_bytes is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(self._replaced_bytes)
        for folder in self._made_folders:  # deepest first
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        self._saved_path = None


class AitomLightningCLI(LightningCLI):
    """LightningCLI that turns the user's mistakes into :class:`InputError` before any work or output."""

    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` (a file: a Lightning checkpoint of the config's model) before LightningCLI
        reads the model's hyper-parameters from it; ``best`` is refused (it names a checkpoint of the same
        process only)."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path is None:
            return
        if ckpt_path == "best":
            raise InputError(
                "--ckpt_path best refers to the best checkpoint of a fit in the same run; name the "
                f"checkpoint file instead{_example_checkpoint(self.config[subcommand])}"
            )
        if ckpt_path not in CKPT_PATH_KEYWORDS:
            path = Path(ckpt_path)
            saved_class = read_checkpoint_file(path).get("hyper_parameters", {}).get("_class_path")
            model_class = self.config[subcommand].get("model", {}).get("class_path")
            if saved_class and model_class and resolve_class(saved_class) != resolve_class(model_class):
                raise InputError(
                    f"checkpoint of the model {saved_class}, but the config's model is {model_class}: use "
                    "the config it was trained with",
                    path,
                )
        try:
            super()._parse_ckpt_path()
        except (ArgumentError, SystemExit) as error:
            raise InputError(
                f"the model's hyper-parameters saved in the checkpoint do not fit the config: {error}",
                ckpt_path,
            ) from None

    def instantiate_classes(self) -> None:
        """Instantiate as LightningCLI does, raising the :class:`InputError` of a constructor as it is."""
        try:
            super().instantiate_classes()
        except Exception as error:
            cause = input_error_in(error)
            if cause is None:
                raise
            raise cause from None

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        """The Trainer, or :class:`InputError` for options this machine cannot honour. Without a logger
        (``--trainer.logger false``) the config's LearningRateMonitor callbacks are left out."""
        accelerator = config.get("accelerator")
        if (
            isinstance(accelerator, str)
            and accelerator in CUDA_ACCELERATORS
            and not torch.cuda.is_available()
        ):
            raise InputError(
                f"--trainer.accelerator {accelerator}: no GPU is available on this machine (use cpu or auto)"
            )
        if config.get("logger") is False:  # --trainer.logger false: no learning-rate log
            config["callbacks"] = [
                callback
                for callback in config.get("callbacks") or []
                if not isinstance(callback, LearningRateMonitor)
            ]
        try:
            return super()._instantiate_trainer(config, callbacks)
        except (MisconfigurationException, ValueError, TypeError) as error:
            raise InputError(f"trainer options: {' '.join(str(error).split())}") from None

    def _run_subcommand(self, subcommand: str) -> None:
        """Refuse ``--ckpt_path last`` outside ``fit`` when there is no last checkpoint (Lightning would run
        the untrained model), then run the subcommand."""
        if subcommand != "fit" and self.config_init[subcommand].get("ckpt_path") == "last":
            check_last_checkpoint(self.trainer)
        try:
            super()._run_subcommand(subcommand)
        except InputError:
            for callback in self.trainer.callbacks:
                if isinstance(callback, FitConfigCallback):
                    callback.undo()
            discard_offline_wandb_runs(self.trainer)
            raise


def _example_checkpoint(config: Namespace) -> str:
    """`` (e.g. DIR/best.ckpt)`` for the config's first ModelCheckpoint with a folder, else ``""``."""
    for callback in config.get("trainer", {}).get("callbacks") or []:
        init_args = callback.get("init_args") or {}
        if resolve_class(str(callback.get("class_path"))) is ModelCheckpoint and init_args.get("dirpath"):
            return f" (e.g. {Path(init_args['dirpath']) / 'best.ckpt'})"
    return ""


def discard_offline_wandb_runs(trainer: Trainer) -> None:
    """Close and delete the offline W&B runs ``trainer`` opened, with the links and folders W&B made for them.

    Lightning opens the run before it sets up the data, so an input error found there would otherwise leave a
    run folder of nothing behind (and, with ``WANDB_MODE=disabled``, an empty save folder). Online runs are
    left alone: they are on the server already.
    """
    for logger in trainer.loggers:
        run = getattr(logger, "_experiment", None) if isinstance(logger, WandbLogger) else None
        mode = None if run is None else getattr(run.settings, "mode", None)
        if run is None or mode == "online":
            continue
        save_dir = Path(logger.save_dir or OUTPUT_ROOT).resolve()
        folder = save_dir
        if mode in ("offline", "dryrun"):
            run_folder = Path(run.dir).parent
            with contextlib.redirect_stderr(io.StringIO()):  # no "wandb sync" advice for a run about to go
                run.finish(exit_code=2)
            shutil.rmtree(run_folder, ignore_errors=True)
            folder = run_folder.parent.resolve()
            for link in folder.glob("*"):
                if link.is_symlink() and not link.exists():  # latest-run, debug.log... pointing into the run
                    link.unlink()
        while (
            folder.is_dir()
            and (folder == save_dir or save_dir in folder.parents)
            and not any(folder.iterdir())
        ):
            folder.rmdir()  # wandb/ and the save folder, when the run was all they held
            folder = folder.parent


def check_last_checkpoint(trainer: Trainer) -> None:
    """Raise :class:`InputError` unless a ModelCheckpoint folder of ``trainer`` holds a ``last`` checkpoint.

    Only callbacks with a fixed ``dirpath`` are looked at: without one, every run logs to a new folder and
    ``last`` never finds the previous run's checkpoint.
    """
    folders = [
        Path(callback.dirpath)
        for callback in trainer.checkpoint_callbacks
        if isinstance(callback, ModelCheckpoint) and callback.dirpath is not None
    ]
    if not folders:
        raise InputError(
            "--ckpt_path last: the config has no ModelCheckpoint callback with a dirpath to look in; "
            "name the checkpoint file"
        )
    pattern = f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}*{ModelCheckpoint.FILE_EXTENSION}"
    if not any(path.is_file() for folder in folders for path in folder.glob(pattern)):
        raise InputError(
            f"--ckpt_path last: no last checkpoint in {', '.join(map(str, folders))}; train first "
            "(aitom fit with the same config) or name the checkpoint file"
        )


def run_lightning_cli(argv: Sequence[str]) -> int:
    """Run LightningCLI on ``argv`` (``["fit", "--config", ...]``); returns the exit code."""
    os.environ.setdefault("WANDB_MODE", "offline")
    # `aitom fit ...` passes its own argv on purpose; Lightning warns when args and sys.argv both exist
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    try:
        AitomLightningCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=translate_seed_flag(argv),
            trainer_defaults={"logger": default_logger_config(), "default_root_dir": OUTPUT_ROOT},
            seed_everything_default=0,
            save_config_callback=FitConfigCallback,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"exit_on_error": False},
        )
    except ArgumentError as error:
        pipeline_config = _pipeline_config_in(argv)
        if pipeline_config is not None:
            raise InputError(
                "an `aitom pipeline` configuration (sections such as pick, classify, average), not a "
                "training one (model, data, trainer): run `aitom pipeline --tomogram T.mrc --out DIR "
                f"--config {pipeline_config}`, or give `aitom {argv[0] if argv else 'fit'}` a training "
                "config such as configs/classify_rb3d.yaml",
                pipeline_config,
            ) from error
        raise InputError(argument_error_line(error)) from error
    return 0


def _pipeline_config_in(argv: Sequence[str]) -> Path | None:
    """The ``--config`` file of ``argv`` when it is an ``aitom pipeline`` configuration (only sections and
    keys of :class:`aitom.pipeline.config.PipelineConfig`, none of LightningCLI's), else None."""
    import dataclasses

    import yaml

    from aitom.pipeline.config import PipelineConfig

    names = [value.removeprefix("--config=") for value in argv if value.startswith("--config=")]
    names += [argv[index + 1] for index, value in enumerate(argv[:-1]) if value == "--config"]
    pipeline_keys = {field.name for field in dataclasses.fields(PipelineConfig)}
    for name in names:
        try:
            content = yaml.safe_load(Path(name).read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if isinstance(content, dict) and content and set(content) <= pipeline_keys:
            return Path(name)
    return None


def argument_error_line(error: ArgumentError) -> str:
    """jsonargparse's message on one line; for a bad init_arg of a ``class_path`` class (``--model.init_args.
    scale nan``) only the option and the class's complaint, without the Union alternatives around it."""
    message = " ".join(str(error).split())
    nested_class = _NESTED_CLASS_PATH_ERROR.match(message)
    if nested_class is not None:
        option = f"--{nested_class['group']}.init_args.{nested_class['key']}"
        return (
            f"{option}.class_path: a class inside init_args is replaced whole, as JSON: "
            f'{option} \'{{"class_path": "{nested_class["class_path"]}", "init_args": {{...}}}}\''
        )
    nested = _NESTED_OPTION_ERROR.match(message)
    if nested is not None and nested["unknown"] is not None:
        return f"--{nested['group']}.init_args.{nested['unknown']}: not an option of {nested['class_path']}"
    if nested is not None:
        problem = re.sub(
            r"^Expected a <class '(\w+)'>\. Got value: ", r"expected \1, got ", nested["problem"]
        )
        return f"--{nested['group']}.init_args.{nested['key']} ({nested['class_path']}): {problem}"
    union = _UNION_ERROR.match(message)
    if union is not None:
        types = [
            name.replace("NoneType", "null") for name in re.findall(r"<class '(\w+)'>", union["expected"])
        ]
        return f"--{union['key']}: expected {' or '.join(types)}, got {union['value']}"
    return message
