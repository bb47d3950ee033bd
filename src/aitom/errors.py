"""The one exception that the command line turns into a one-line message and exit code 2."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad input from the user: a file that cannot be used, or an impossible parameter.

    The message names the file (when there is one) and the problem, in one line; the command line prints
    it as ``aitom: error: <message>`` and exits with code 2, without a traceback and without writing output.
    """

    def __init__(self, problem: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")
