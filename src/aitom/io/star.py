"""Particle tables as RELION STAR files (RELION 3.1+ column names), read and written with ``starfile``.

Columns aitom writes and reads: ``rlnCoordinateX/Y/Z`` (voxels of the tomogram), ``rlnAngleRot/Tilt/Psi``
(ZYZ Euler angles in degrees, RELION's convention, see :mod:`aitom.geometry`), ``rlnClassNumber`` (1-based),
``rlnAutopickFigureOfMerit`` (detection score), ``rlnTomoName`` and ``rlnMicrographName`` (tomogram name).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import starfile
import torch

from aitom.errors import InputError
from aitom.io.atomic import atomic_output

COORDINATE_COLUMNS = ("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ")
ANGLE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
_CENTERED_COLUMNS = tuple(f"rlnCenteredCoordinate{axis}Angst" for axis in "XYZ")

ArrayLike = np.ndarray | torch.Tensor | Sequence[float]


def read_particles(path: str | Path, *, require: Sequence[str] = COORDINATE_COLUMNS) -> pd.DataFrame:
    """Read the particles table of a STAR file.

    The table is the ``data_particles`` block when there is one (RELION 3.1+ files with ``data_optics``,
    RELION 5 tomography files with ``data_general``), otherwise the file's only table. An empty table is
    returned as an empty DataFrame with its columns.

    Args:
        path: STAR file.
        require: columns that must be present (default: the coordinates; ``()`` accepts any table).

    Raises:
        InputError: missing file, not a STAR file, a row with more or fewer values than its table has
            columns, no particles table, or required columns missing (named in the message).
    """
    path = Path(path)
    table = _particles_block(read_star_blocks(path), path)
    missing = [column for column in require if column not in table.columns]
    if missing:
        hint = ""
        if set(missing) & set(COORDINATE_COLUMNS) and set(_CENTERED_COLUMNS) <= set(table.columns):
            hint = " (it has RELION 5 rlnCenteredCoordinate*Angst: convert them with the tomogram size)"
        raise InputError(f"particle table lacks column(s) {', '.join(missing)}{hint}", path)
    return table


def read_optics(path: str | Path) -> pd.DataFrame | None:
    """The ``data_optics`` table of a RELION 3.1+ STAR file, or None when it has none (or is not readable:
    :func:`read_particles` reports that).

    Commands that write a particle table derived from an input table pass it on to :func:`write_particles`,
    so that the optics groups named in ``rlnOpticsGroup`` stay defined.
    """
    try:
        blocks = starfile.read(Path(path), always_dict=True)
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    block = blocks.get("optics")
    if isinstance(block, dict):
        return pd.DataFrame([block])
    return block if isinstance(block, pd.DataFrame) and len(block) else None


def write_particles(
    path: str | Path, table: pd.DataFrame, *, overwrite: bool = False, optics: pd.DataFrame | None = None
) -> Path:
    """Write a particles table (``data_particles``, after ``data_optics`` when given) atomically.

    Float columns are written with the shortest decimal that reads back to the same value (so a round
    trip is exact and a float column stays float); strings with spaces are quoted.

    Returns:
        The path written.

    Raises:
        InputError: the file exists and ``overwrite`` is false.
    """
    blocks = {} if optics is None else {"optics": _exact_floats(optics)}
    blocks["particles"] = _exact_floats(table)
    path = Path(path)
    with atomic_output(path, overwrite) as temporary:
        starfile.write(blocks, temporary)
    return path


def particles_table(
    coordinates_xyz: ArrayLike,
    angles_deg: ArrayLike | None = None,
    class_number: ArrayLike | None = None,
    score: ArrayLike | None = None,
    tomo_name: str | None = None,
    extra: Mapping[str, ArrayLike] | None = None,
) -> pd.DataFrame:
    """Build a RELION particles table.

    Args:
        coordinates_xyz: ``(N, 3)`` particle centres (x, y, z) in voxels of the tomogram.
        angles_deg: ``(N, 3)`` ZYZ Euler angles (rot, tilt, psi) in degrees, RELION's convention.
        class_number: ``(N,)`` class of each particle, 1-based (RELION's ``rlnClassNumber``).
        score: ``(N,)`` detection score (``rlnAutopickFigureOfMerit``).
        tomo_name: tomogram name, written to ``rlnTomoName`` and ``rlnMicrographName``.
        extra: more columns, name -> ``(N,)`` values.

    Example:
        >>> table = particles_table([[1.0, 2.0, 3.0]], class_number=[2])
        >>> list(table.columns), table["rlnClassNumber"].tolist()
        (['rlnCoordinateX', 'rlnCoordinateY', 'rlnCoordinateZ', 'rlnClassNumber'], [2])

    Raises:
        ValueError: wrong shapes, or class numbers below 1.
    """
    coordinates = _as_array(coordinates_xyz, np.float64)
    if coordinates.ndim != 2 or coordinates.shape[1] != 3:
        raise ValueError(f"coordinates_xyz must be (N, 3), got {coordinates.shape}")
    n = coordinates.shape[0]
    columns: dict[str, object] = dict(zip(COORDINATE_COLUMNS, coordinates.T))
    if angles_deg is not None:
        angles = _as_array(angles_deg, np.float64)
        if angles.shape != (n, 3):
            raise ValueError(f"angles_deg must be ({n}, 3), got {angles.shape}")
        columns.update(zip(ANGLE_COLUMNS, angles.T))
    if class_number is not None:
        classes = _per_particle(class_number, n, "class_number").astype(np.int64)
        if n and classes.min() < 1:
            raise ValueError("class_number is 1-based (RELION's rlnClassNumber): add 1 to 0-based labels")
        columns["rlnClassNumber"] = classes
    if score is not None:
        columns["rlnAutopickFigureOfMerit"] = _per_particle(score, n, "score").astype(np.float64)
    if tomo_name is not None:
        columns["rlnTomoName"] = [tomo_name] * n
        columns["rlnMicrographName"] = [tomo_name] * n
    for name, values in (extra or {}).items():
        columns[name] = _per_particle(values, n, name)
    return pd.DataFrame(columns)


def table_coordinates(table: pd.DataFrame) -> np.ndarray:
    """Particle centres ``(N, 3)`` (x, y, z) in voxels, float64, from ``rlnCoordinateX/Y/Z``.

    Raises:
        InputError: the table lacks the coordinate columns.
    """
    missing = [column for column in COORDINATE_COLUMNS if column not in table.columns]
    if missing:
        raise InputError(f"particle table lacks column(s) {', '.join(missing)}")
    return table[list(COORDINATE_COLUMNS)].to_numpy(dtype=np.float64)


def table_angles_deg(table: pd.DataFrame) -> np.ndarray:
    """ZYZ Euler angles ``(N, 3)`` (rot, tilt, psi) in degrees, float64; absent columns read as 0."""
    angles = np.zeros((len(table), 3), dtype=np.float64)
    for axis, column in enumerate(ANGLE_COLUMNS):
        if column in table.columns:
            angles[:, axis] = table[column].to_numpy(dtype=np.float64)
    return angles


def read_star_blocks(path: Path) -> dict[str, object]:
    """Every ``data_`` block of a STAR file (``starfile.read``: loops as DataFrames, key-value pairs as dict).

    Raises:
        InputError: missing file or folder, not a STAR file (no ``data_`` block or unparsable), or a loop row
            whose number of values differs from its table's number of columns (named by block and row; such a
            row would otherwise be read with NaN for its missing values).
    """
    if not path.is_file():
        raise InputError("is a folder, not a STAR file" if path.is_dir() else "file not found", path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"not a readable STAR file ({type(error).__name__}: {error})", path) from error
    _check_loop_rows(text, path)
    try:
        blocks = starfile.read(path, always_dict=True)
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise InputError(f"not a readable STAR file ({type(error).__name__}: {error})", path) from error
    if not blocks:
        raise InputError("not a STAR file (no data_ blocks found)", path)
    return blocks


def _check_loop_rows(text: str, path: Path) -> None:
    """Refuse a loop row with another number of values than its loop has column labels (a quoted value,
    "..." or '...', counts as one)."""
    import re

    value = re.compile(r"\"[^\"]*\"|'[^']*'|\S+")
    block, columns, in_loop, row = "", 0, False, 0
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("data_"):
            block, in_loop = stripped, False
        elif stripped == "loop_":
            columns, in_loop, row = 0, True, 0
        elif in_loop and stripped.startswith("_"):
            columns += 1
        elif in_loop and columns:
            row += 1
            values = (
                len(value.findall(stripped)) if '"' in stripped or "'" in stripped else len(stripped.split())
            )
            if values != columns:
                raise InputError(
                    f"row {row} of the {block} table has {values} values for its {columns} columns "
                    "(a truncated or hand-edited table?)",
                    path,
                )


def _particles_block(blocks: dict[str, object], path: Path) -> pd.DataFrame:
    block = blocks.get("particles")
    if isinstance(block, dict):  # a one-particle table written as key-value pairs
        return pd.DataFrame([block])
    if isinstance(block, pd.DataFrame):
        return block
    tables = [block for name, block in blocks.items() if isinstance(block, pd.DataFrame) and name != "optics"]
    if len(tables) != 1:
        names = ", ".join(f"data_{name}" for name in blocks)
        raise InputError(f"no particles table (data_particles) among the blocks {names}", path)
    return tables[0]


def _exact_floats(table: pd.DataFrame) -> pd.DataFrame:
    """Float columns as text that parses back to the same value and keeps a decimal point ('3.0')."""
    formatted = table.copy()
    for name in table.columns:
        if pd.api.types.is_float_dtype(table[name].dtype):
            formatted[name] = [str(value) for value in table[name].to_numpy()]
    return formatted


def _as_array(values: ArrayLike, dtype: type) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=dtype)


def _per_particle(values: ArrayLike, n: int, name: str) -> np.ndarray:
    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if array.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {array.shape}")
    return array
