"""The ``aitom`` command: tool subcommands plus the LightningCLI entry (``aitom fit|validate|test|predict``).

Heavy modules (torch, lightning) are imported late, inside the subcommands, so ``aitom --help`` is quick.
Every :class:`aitom.errors.InputError` becomes one line on stderr and exit code 2; a standard output closed by
its reader (``aitom estimate ... | head``) ends the command quietly with exit code 141, as SIGPIPE would.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys
import warnings
from collections.abc import Sequence

from aitom.errors import InputError

#: subcommand name -> module under ``aitom.commands`` that implements it
TOOL_COMMANDS: dict[str, str] = {
    "simulate": "aitom.commands.simulate",
    "show": "aitom.commands.show",
    "filter": "aitom.commands.filter",
    "estimate": "aitom.commands.estimate",
    "pick": "aitom.commands.pick",
    "extract": "aitom.commands.extract",
    "align": "aitom.commands.align",
    "average": "aitom.commands.average",
    "reconstruct": "aitom.commands.reconstruct",
    "convert": "aitom.commands.convert",
    "hand": "aitom.commands.hand",
    "pipeline": "aitom.commands.pipeline",
}
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")

#: an option value that is a comma-separated list starting with a negative number, e.g. a tilt range
#: ``-67,58``: argparse would take it for an option name
_NEGATIVE_LIST = re.compile(r"-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?,")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aitom",
        description="Cryo-electron tomography on PyTorch Lightning. "
        f"Lightning subcommands: {', '.join(LIGHTNING_COMMANDS)} (see `aitom fit --help`).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in TOOL_COMMANDS.values():
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


class _DropAdvertisement(logging.Filter):
    """Drops Lightning's "💡 Tip: ... litlogger" lines (printed for every Trainer, even logger-less)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet_library_chatter() -> None:
    """Silence library messages that say nothing about the user's data: Lightning's cloud-logging tip and
    its use of a torch pytree class torch has deprecated. Warnings about the data and the run stay."""
    rank_zero_logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropAdvertisement) for f in rank_zero_logger.filters):
        rank_zero_logger.addFilter(_DropAdvertisement())
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


class WarningFormatter:
    """``warnings.formatwarning`` of one command: warnings about the user's data (aitom's own, e.g. an unset
    voxel size in a header) as one line ``aitom: warning: FILE: problem``, each distinct line once (``aitom
    hand A.mrc A.mrc`` reads the same header twice); other libraries' warnings keep Python's format (file and
    line). Recorded warnings (``catch_warnings(record=True)``) are not formatted, so all are kept."""

    def __init__(self) -> None:
        self.shown: set[str] = set()

    def __call__(
        self,
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        line: str | None = None,
    ) -> str:
        if not category.__module__.startswith("aitom."):
            return _python_format_warning(message, category, filename, lineno, line)
        text = f"aitom: warning: {message}\n"
        if text in self.shown:
            return ""
        self.shown.add(text)
        return text


_python_format_warning = warnings.formatwarning


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_library_chatter()
    warnings.formatwarning = WarningFormatter()
    if argv and argv[0] in LIGHTNING_COMMANDS:
        from aitom.lightning_cli import run_lightning_cli

        return _guarded(lambda: run_lightning_cli(argv))
    parser = build_parser()
    args = parser.parse_args(attach_negative_lists(argv))
    module = importlib.import_module(TOOL_COMMANDS[args.command])
    return _guarded(lambda: module.run(args))


def attach_negative_lists(argv: list[str]) -> list[str]:
    """``argv`` with each ``--option -67,58`` written as ``--option=-67,58``.

    argparse reads a value that starts with ``-`` as an option name unless it is a plain negative number, so
    ``--wedge -67,58`` (an asymmetric tilt range, MIN,MAX) stopped with "expected one argument"; no option
    name is a comma-separated list of numbers, so joining it to the option before is safe.
    """
    joined: list[str] = []
    for token in argv:
        previous = joined[-1] if joined else ""
        is_option = previous.startswith("--") and previous != "--" and "=" not in previous
        if is_option and _NEGATIVE_LIST.match(token):
            joined[-1] = f"{previous}={token}"
        else:
            joined.append(token)
    return joined


#: exit status of a command whose standard output was closed by its reader (``aitom estimate ... | head``):
#: that of a Unix tool ended by SIGPIPE, 128 + 13
EXIT_BROKEN_PIPE = 141


def _guarded(action) -> int:
    try:
        return int(action() or 0)
    except InputError as error:
        print(f"aitom: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader of stdout has gone (e.g. `| head`): stop quietly, as other Unix tools do; stdout is
        # pointed at /dev/null so that the flush at exit does not fail again with a traceback
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (AttributeError, OSError, ValueError):
            pass
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
