"""Atomic output files: write to a temporary file beside the target, then rename it into place.

Every writer in aitom (MRC, STAR, PNG, text) goes through :func:`atomic_output`, so an interrupted or failed
write never leaves a partial file behind, and an existing file is never replaced without ``overwrite``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aitom.errors import InputError


def check_output_path(path: str | Path, overwrite: bool) -> Path:
    """Refuse an output path that exists (unless ``overwrite``) or is a folder; return it as a Path.

    Raises:
        InputError: ``<path>: exists; pass --overwrite to replace it`` or ``<path>: is a folder``.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError("is a folder, not a file name", path)
    if path.exists() and not overwrite:
        raise InputError("exists; pass --overwrite to replace it", path)
    return path


@contextmanager
def atomic_output(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it is renamed to ``path``.

    The temporary file is hidden (``.<name>.<random>.part<suffix>``) and keeps the target's suffix, so
    writers that choose a format by extension (matplotlib) behave as for the real name. Parent folders are
    created. On any exception inside the block the temporary file is deleted and the target is untouched.
    Without ``overwrite`` the final step links the file into place, so a file that appeared meanwhile is
    not replaced either.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "notes.txt"
        >>> with atomic_output(target) as temporary:
        ...     _ = temporary.write_text("done")
        >>> target.read_text()
        'done'

    Raises:
        InputError: the target exists and ``overwrite`` is false, the target is a folder, or its folder
            cannot be created.
    """
    path = check_output_path(path, overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create the output folder ({error.strerror})", path.parent) from error
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part{path.suffix}")
    try:
        yield temporary
        _move_into_place(temporary, path, overwrite)
    finally:
        temporary.unlink(missing_ok=True)


def _move_into_place(temporary: Path, path: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(temporary, path)
        return
    try:
        os.link(temporary, path)
    except FileExistsError as error:
        raise InputError("exists; pass --overwrite to replace it", path) from error
    except OSError:
        # file systems without hard links: the existence check at the start is the protection left
        if path.exists():
            raise InputError("exists; pass --overwrite to replace it", path) from None
        os.replace(temporary, path)
