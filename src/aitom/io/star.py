"""Particle tables as RELION STAR files (RELION 3.1+ column names), read and written with ``starfile``.

Columns aitom writes and reads: ``rlnCoordinateX/Y/Z`` (voxels of the tomogram), ``rlnAngleRot/Tilt/Psi``
(ZYZ Euler angles in degrees, RELION's convention, see :mod:`aitom.geometry`), ``rlnClassNumber`` (1-based),
``rlnAutopickFigureOfMerit`` (detection score), ``rlnTomoName`` and ``rlnMicrographName`` (tomogram name).

Tables written by other programs are read with RELION's meaning of their columns:

* the particle centre is the coordinate minus the origin shift: ``rlnOriginX/Y/ZAngst`` (Å, RELION 3.1+) or
  ``rlnOriginX/Y/Z`` (pixels of the particle images, RELION 3.0; voxels in aitom's own tables);
* RELION 4/5 pseudo-subtomograms have an orientation of their own, ``rlnTomoSubtomogramRot/Tilt/Psi``
  (degrees): the particle's rotation in the tomogram is ``A(subtomogram) · A(rlnAngle*)`` and its origin shift
  is along the subtomogram's axes (centre = coordinate − ``A(subtomogram)`` · origin), as RELION's
  ``ParticleSet::getPosition`` and ``getMatrix3x3`` compute them;
* the unit of ``rlnCoordinateX/Y/Z`` is decided by :func:`particle_voxel_positions`, which refuses a table
  whose unit cannot be known rather than guess it.
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
#: origin shifts in pixels of the particle images (RELION 3.0; aitom writes them in voxels)
ORIGIN_COLUMNS = ("rlnOriginX", "rlnOriginY", "rlnOriginZ")
#: origin shifts in Å (RELION 3.1+)
ORIGIN_ANGST_COLUMNS = ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")
#: orientation of a RELION 4/5 pseudo-subtomogram, degrees (ZYZ, RELION's convention)
SUBTOMOGRAM_ANGLE_COLUMNS = ("rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt", "rlnTomoSubtomogramPsi")
#: the ``rlnAngle*Prior`` columns: relative to the pseudo-subtomogram's axes in RELION 4/5 tables
ANGLE_PRIOR_COLUMNS = ("rlnAngleRotPrior", "rlnAngleTiltPrior", "rlnAnglePsiPrior")
_CENTERED_COLUMNS = tuple(f"rlnCenteredCoordinate{axis}Angst" for axis in "XYZ")
#: columns :func:`read_particles` checks to be finite numbers when present
NUMBER_COLUMNS = (
    *COORDINATE_COLUMNS,
    *_CENTERED_COLUMNS,
    *ANGLE_COLUMNS,
    *ORIGIN_COLUMNS,
    *ORIGIN_ANGST_COLUMNS,
    *SUBTOMOGRAM_ANGLE_COLUMNS,
)
#: pixel sizes (Å) a table may state besides the unit of its coordinates: of the particle images, of the
#: movies, or of unknown meaning (Warp's ``rlnPixelSize``)
PIXEL_SIZE_COLUMNS = ("rlnImagePixelSize", "rlnMicrographOriginalPixelSize", "rlnPixelSize")
#: relative tolerance when comparing pixel sizes written by different programs
_PIXEL_SIZE_TOLERANCE = 1e-3
#: end of the message refusing a conversion that needs a voxel size the header leaves unset
_PASS_VOXEL_SIZE = " (its header leaves it unset): pass --voxel-size"

ArrayLike = np.ndarray | torch.Tensor | Sequence[float]


def read_particles(path: str | Path, *, require: Sequence[str] = COORDINATE_COLUMNS) -> pd.DataFrame:
    """Read the particles table of a STAR file.

    The table is the ``data_particles`` block when there is one (RELION 3.1+ files with ``data_optics``,
    RELION 5 tomography files with ``data_general``), otherwise the file's only table, or of several tables
    the only one with the ``require`` columns (with positions when ``require`` is empty). An empty table is
    returned as an empty DataFrame with its columns. The file's path is kept in ``table.attrs["path"]``, so
    that :func:`table_coordinates` and :func:`table_angles_deg` name it in their errors.

    Args:
        path: STAR file.
        require: columns that must be present (default: the coordinates; ``()`` accepts any table).

    Raises:
        InputError: missing file, not a STAR file, a row with more or fewer values than its table has
            columns, a column or block named twice, no particles table, required columns missing (named in
            the message), or a value of :data:`NUMBER_COLUMNS` (positions, origins, angles) that is not a
            finite number (named with its row).
    """
    from aitom.io.relion5 import finite_number_columns

    path = Path(path)
    table = _particles_block(read_star_blocks(path), path, require)
    missing = [column for column in require if column not in table.columns]
    if missing:
        hint = ""
        if set(missing) & set(COORDINATE_COLUMNS) and set(_CENTERED_COLUMNS) <= set(table.columns):
            hint = " (it has RELION 5 rlnCenteredCoordinate*Angst: convert them with the tomogram size)"
        raise InputError(f"particle table lacks column(s) {', '.join(missing)}{hint}", path)
    table = finite_number_columns(table, NUMBER_COLUMNS, path, "particles")
    table.attrs["path"] = str(path)
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


def table_coordinates(table: pd.DataFrame, voxel_size_a: float | None = None) -> np.ndarray:
    """Particle centres ``(N, 3)`` (x, y, z) in voxels, float64: ``rlnCoordinateX/Y/Z`` minus the origins.

    The coordinates are taken as voxels (aitom's tables; a table in other units needs the tomogram:
    :func:`particle_voxel_positions`). The centre is ``coordinate − A(subtomogram) · origin`` (RELION's
    convention, see the module docstring), the origin in voxels: ``rlnOriginX/Y/ZAngst`` divided by
    ``voxel_size_a``, else ``rlnOriginX/Y/Z``. Without ``voxel_size_a``, a table with ``rlnOrigin*Angst``
    shifts uses its ``rlnOriginX/Y/Z`` when it has them too (``aitom average`` writes both), and is refused
    otherwise. ``rlnOriginX/Y/Z`` count pixels of the particle images: of the size the table states
    (``rlnImagePixelSize``, or ``rlnDetectorPixelSize`` and ``rlnMagnification``), converted with
    ``voxel_size_a`` (refused without it), else voxels.

    Args:
        table: particles table (:func:`read_particles`).
        voxel_size_a: voxel size of the tomogram the coordinates count, Å (for shifts in Å or in pixels of
            another size).

    Raises:
        InputError: the table lacks the coordinate columns, a value is not a finite number, or shifts that
            need ``voxel_size_a`` without it (named in the message, with the file the table was read from).
    """
    path = table.attrs.get("path")
    missing = [column for column in COORDINATE_COLUMNS if column not in table.columns]
    if missing:
        raise InputError(f"particle table lacks column(s) {', '.join(missing)}", path)
    try:
        coordinates = _numbers(table, COORDINATE_COLUMNS)
        shifts, _ = _origin_shifts_voxels(table, None, voxel_size_a, None, advice="")
    except InputError as error:
        raise InputError(error.problem, path) from None
    return coordinates - shifts


def table_angles_deg(table: pd.DataFrame) -> np.ndarray:
    """ZYZ Euler angles ``(N, 3)`` (rot, tilt, psi), degrees, float64: the rotations in the tomogram.

    ``rlnAngleRot/Tilt/Psi`` (absent columns read as 0), composed with the pseudo-subtomogram's orientation
    where a RELION 4/5 table gives one (``rlnTomoSubtomogramRot/Tilt/Psi``):
    ``A = A(subtomogram) · A(rlnAngle*)`` (RELION's ``ParticleSet::getMatrix3x3``). Rows whose subtomogram
    angles are all 0 keep their values.

    Raises:
        InputError: an angle that is not a finite number, or some of the three angle columns without the
            others (named with the file the table was read from).
    """
    for columns in (ANGLE_COLUMNS, SUBTOMOGRAM_ANGLE_COLUMNS):
        missing = [column for column in columns if column not in table.columns]
        if 0 < len(missing) < len(columns):
            raise InputError(
                f"has {', '.join(column for column in columns if column not in missing)} but no "
                f"{', '.join(missing)}: give all three Euler angles or none",
                table.attrs.get("path"),
            )
    try:
        angles = _numbers(table, ANGLE_COLUMNS, absent=0.0)
        rotated = _subtomogram_rows(table)
    except InputError as error:
        raise InputError(error.problem, table.attrs.get("path")) from None
    if rotated.any():
        from aitom.geometry import euler_zyz_to_matrix, matrix_to_euler_zyz

        subtomogram = _numbers(table, SUBTOMOGRAM_ANGLE_COLUMNS, absent=0.0)[rotated]
        matrices = euler_zyz_to_matrix(torch.deg2rad(torch.from_numpy(subtomogram))) @ euler_zyz_to_matrix(
            torch.deg2rad(torch.from_numpy(angles[rotated]))
        )
        angles[rotated] = torch.rad2deg(matrix_to_euler_zyz(matrices)).numpy()
    return angles


def particle_voxel_positions(
    table: pd.DataFrame,
    optics: pd.DataFrame | None,
    size_voxels_xyz: Sequence[float] | np.ndarray,
    voxel_size_a: float | None,
    *,
    coordinate_pixel_size_a: float | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Particle centres ``(N, 3)`` (x, y, z) in voxels of one tomogram, from a table written by any program.

    Positions:

    * ``rlnCenteredCoordinateX/Y/ZAngst`` (RELION 5): Å from the tomogram centre, ``size / 2`` voxels
      (:func:`aitom.io.relion5.centered_angstrom_to_voxels`).
    * ``rlnCoordinateX/Y/Z`` otherwise, from the corner, in pixels of the first size that applies:
      ``coordinate_pixel_size_a`` (the user's word); ``rlnTomoTiltSeriesPixelSize`` (RELION 4/5: tilt-series
      pixels); ``rlnMicrographPixelSize`` (RELION 3.1: the pixels of the micrograph, here the tomogram, they
      were picked in); else voxels of this tomogram (DESIGN), provided that no pixel size the table states
      (:data:`PIXEL_SIZE_COLUMNS`, ``rlnDetectorPixelSize`` · 10⁴ / ``rlnMagnification``) differs from
      ``voxel_size_a``: with one that differs (Warp exports count unbinned pixels and state the binned or the
      movies' size) the unit cannot be known, and the table is refused.

    Origin shifts are then subtracted along the pseudo-subtomogram's axes (module docstring):
    ``rlnOriginX/Y/ZAngst`` in Å, else ``rlnOriginX/Y/Z`` in pixels of the particle images
    (``rlnImagePixelSize``, or ``rlnDetectorPixelSize`` · 10⁴ / ``rlnMagnification``; when the table states
    neither, in the unit of its coordinates, as in aitom's tables).

    Args:
        table: particles table (the rows of one tomogram).
        optics: its ``data_optics`` table (None or empty when it has none); joined on ``rlnOpticsGroup``.
        size_voxels_xyz: tomogram size (x, y, z), voxels.
        voxel_size_a: tomogram voxel size, Å; None when unknown (a header that leaves it unset): the tables
            that need it are then refused.
        coordinate_pixel_size_a: Å per unit of ``rlnCoordinateX/Y/Z``, overriding the table's.

    Returns:
        The positions, and one phrase per conversion made (empty when the coordinates are used as they are).

    Raises:
        InputError: no positions, values that are not positive finite numbers, a coordinate unit that cannot
            be known, or a conversion that needs the unknown voxel size (the message says which; the caller
            names the file).
    """
    optics = pd.DataFrame() if optics is None else optics
    notes: list[str] = []
    unit_a = None  # Å per coordinate unit, None: voxels of the tomogram
    if set(_CENTERED_COLUMNS) <= set(table.columns):
        from aitom.io.relion5 import centered_angstrom_to_voxels

        if coordinate_pixel_size_a is not None:
            raise InputError(
                "--coordinate-pixel-size given, but the positions are rlnCenteredCoordinate*Angst (in Å)"
            )
        voxel_size_a = _need_voxel_size(voxel_size_a, "RELION 5 positions in Å (rlnCenteredCoordinate*Angst)")
        centred_a = _numbers(table, _CENTERED_COLUMNS)
        positions = centered_angstrom_to_voxels(centred_a, size_voxels_xyz, voxel_size_a)
        size = tuple(int(n) for n in size_voxels_xyz)
        notes.append(
            f"RELION 5 centred Å converted with the tomogram's size {size} and voxel size {voxel_size_a:g} Å"
        )
    elif set(COORDINATE_COLUMNS) <= set(table.columns):
        positions = _numbers(table, COORDINATE_COLUMNS)
        unit_a, source = _coordinate_unit(table, optics, voxel_size_a, coordinate_pixel_size_a)
        if unit_a is not None:
            voxel_size_a = _need_voxel_size(voxel_size_a, f"rlnCoordinate* in {_sizes(unit_a)} Å pixels")
            if not np.allclose(unit_a, voxel_size_a, rtol=_PIXEL_SIZE_TOLERANCE):
                positions = positions * (unit_a / voxel_size_a)[:, None]
                notes.append(
                    f"{source} pixels of {_sizes(unit_a)} Å scaled to the tomogram's "
                    f"{voxel_size_a:g} Å voxels"
                )
    else:
        raise InputError(
            "particle table lacks positions: need rlnCoordinateX/Y/Z (voxels) or "
            "rlnCenteredCoordinateX/Y/ZAngst"
        )
    shifts, note = _origin_shifts_voxels(table, optics, voxel_size_a, unit_a)
    if note is not None:
        notes.append(note)
    return positions - shifts, notes


def _coordinate_unit(
    table: pd.DataFrame, optics: pd.DataFrame, voxel_size_a: float | None, given_a: float | None
) -> tuple[np.ndarray | None, str]:
    """Å per unit of ``rlnCoordinate*`` for each particle, and where it comes from; None: voxels of the
    tomogram (see :func:`particle_voxel_positions`)."""
    if given_a is not None:
        return np.full(len(table), float(given_a)), "--coordinate-pixel-size"
    for column, source in (
        ("rlnTomoTiltSeriesPixelSize", "tilt-series"),
        ("rlnMicrographPixelSize", "rlnMicrographPixelSize"),
    ):
        stated = _stated_pixel_size(table, optics, column)
        if stated is not None:
            return stated, source
    others = {column: _stated_pixel_size(table, optics, column) for column in PIXEL_SIZE_COLUMNS}
    others["rlnDetectorPixelSize × 10⁴ / rlnMagnification"] = _detector_pixel_size(table, optics)
    differing = {
        column: values
        for column, values in others.items()
        if values is not None
        and (voxel_size_a is None or not np.allclose(values, voxel_size_a, rtol=_PIXEL_SIZE_TOLERANCE))
    }
    if differing:
        named = ", ".join(f"{column} {_sizes(values)} Å" for column, values in differing.items())
        voxels = "unknown (pass --voxel-size)" if voxel_size_a is None else f"{voxel_size_a:g} Å"
        raise InputError(
            f"the unit of rlnCoordinateX/Y/Z is not stated and the table's pixel sizes ({named}) are not the "
            f"tomogram's voxel size, {voxels}: unbinned pixels or voxels? Pass --coordinate-pixel-size "
            "(Å per coordinate unit)"
        )
    return None, ""


def _origin_shifts_voxels(
    table: pd.DataFrame,
    optics: pd.DataFrame | None,
    voxel_size_a: float | None,
    unit_a: np.ndarray | None,
    advice: str = _PASS_VOXEL_SIZE,
) -> tuple[np.ndarray, str | None]:
    """Origin shifts ``(N, 3)`` in voxels along the tomogram's axes, and a note (None when they are all 0).

    ``rlnOriginX/Y/ZAngst`` are used when present and ``voxel_size_a`` is known (or there are no pixel
    shifts); ``rlnOriginX/Y/Z`` otherwise, in pixels of the stated image pixel size, else of ``unit_a`` (Å per
    coordinate unit; None: voxels). ``advice`` ends the message of a conversion refused for want of
    ``voxel_size_a``.
    """
    optics = pd.DataFrame() if optics is None else optics
    columns = set(table.columns)
    angstrom = bool(columns & set(ORIGIN_ANGST_COLUMNS)) and (
        voxel_size_a is not None or not columns & set(ORIGIN_COLUMNS)
    )
    shifts = _numbers(table, ORIGIN_ANGST_COLUMNS if angstrom else ORIGIN_COLUMNS, absent=0.0)
    if not shifts.any():
        return shifts, None
    if angstrom:
        voxel_size_a = _need_voxel_size(voxel_size_a, "rlnOriginX/Y/ZAngst shifts (Å)", advice)
        shifts = shifts / voxel_size_a
        note = f"rlnOrigin*Angst subtracted in {voxel_size_a:g} Å voxels"
    else:
        pixel_a = _stated_pixel_size(table, optics, "rlnImagePixelSize")
        pixel_a = _detector_pixel_size(table, optics) if pixel_a is None else pixel_a
        pixel_a = unit_a if pixel_a is None else pixel_a
        if pixel_a is None:
            note = "rlnOriginX/Y/Z subtracted as voxels"
        else:
            voxel_size_a = _need_voxel_size(
                voxel_size_a, f"rlnOriginX/Y/Z shifts in {_sizes(pixel_a)} Å pixels", advice
            )
            shifts = shifts * (pixel_a / voxel_size_a)[:, None]
            note = f"rlnOriginX/Y/Z in {_sizes(pixel_a)} Å pixels subtracted in {voxel_size_a:g} Å voxels"
    if _subtomogram_rows(table).any():
        shifts = along_tomogram_axes(table, shifts)
        note += " along the axes of rlnTomoSubtomogramRot/Tilt/Psi"
    return shifts, note


def along_tomogram_axes(table: pd.DataFrame, vectors: np.ndarray) -> np.ndarray:
    """Vectors ``(N, 3)`` (x, y, z) given along each particle's pseudo-subtomogram axes (RELION 4/5 origin
    shifts), turned to the tomogram's axes: ``A(rlnTomoSubtomogramRot/Tilt/Psi) · v``; rows without a
    subtomogram orientation (or tables without the columns) are returned as they are."""
    vectors = np.array(vectors, dtype=np.float64)
    rotated = _subtomogram_rows(table)
    if rotated.any():
        from aitom.geometry import euler_zyz_to_matrix

        angles = _numbers(table, SUBTOMOGRAM_ANGLE_COLUMNS, absent=0.0)[rotated]
        matrices = euler_zyz_to_matrix(torch.deg2rad(torch.from_numpy(angles))).numpy()
        vectors[rotated] = np.einsum("nij,nj->ni", matrices, vectors[rotated])
    return vectors


def _subtomogram_rows(table: pd.DataFrame) -> np.ndarray:
    """``(N,)`` bool: the rows with a pseudo-subtomogram orientation other than (0, 0, 0)."""
    return (_numbers(table, SUBTOMOGRAM_ANGLE_COLUMNS, absent=0.0) != 0).any(axis=1)


def _numbers(
    table: pd.DataFrame, columns: Sequence[str], absent: float | None = None, what: str = "particles"
) -> np.ndarray:
    """``(N, len(columns))`` float64 values; a column not in the table reads as ``absent``.

    Raises:
        InputError: a value that is not a finite number (``what``, column and row named).
    """
    values = np.full((len(table), len(columns)), np.nan if absent is None else absent)
    for axis, column in enumerate(columns):
        if column not in table.columns:
            continue
        values[:, axis] = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values[:, axis])
        if bad.any():
            row = int(np.argmax(bad))
            value = table[column].iloc[row]
            shown = repr(value) if isinstance(value, str) else str(value)
            raise InputError(f"{what} {column}: {shown} (row {row + 1}) is not a finite number")
    return values


def _stated_pixel_size(table: pd.DataFrame, optics: pd.DataFrame, column: str) -> np.ndarray | None:
    """``(N,)`` values of a positive column (a pixel size, Å), from the particles table or from each
    particle's optics group; None when neither has it.

    Raises:
        InputError: a value that is not a positive finite number, or optics groups that cannot be joined.
    """
    if column in table.columns:
        values = _numbers(table, (column,))[:, 0]
    elif column in optics.columns and len(optics):
        by_row = _numbers(optics, (column,), what="data_optics")[:, 0]
        if len(set(by_row.tolist())) == 1:
            values = np.full(len(table), by_row[0])
        elif "rlnOpticsGroup" in table.columns and "rlnOpticsGroup" in optics.columns:
            by_group = dict(zip(optics["rlnOpticsGroup"].astype(str), by_row))
            groups = table["rlnOpticsGroup"].astype(str)
            unknown = sorted(set(groups) - set(by_group))
            if unknown:
                raise InputError(
                    f"rlnOpticsGroup {', '.join(unknown[:3])} of some particles is not in data_optics"
                )
            values = groups.map(by_group).to_numpy(dtype=np.float64)
        else:
            raise InputError(f"data_optics gives several {column} but the particles have no rlnOpticsGroup")
    else:
        return None
    if not (values > 0).all():
        raise InputError(f"{column} {values[np.argmax(~(values > 0))]:g} is not positive")
    return values


def _detector_pixel_size(table: pd.DataFrame, optics: pd.DataFrame) -> np.ndarray | None:
    """RELION 3.0's image pixel size, Å: ``rlnDetectorPixelSize`` (µm) · 10⁴ / ``rlnMagnification``; or
    None."""
    detector = _stated_pixel_size(table, optics, "rlnDetectorPixelSize")
    magnification = _stated_pixel_size(table, optics, "rlnMagnification")
    if detector is None or magnification is None:
        return None
    return detector * 1e4 / magnification


def _need_voxel_size(voxel_size_a: float | None, what: str, advice: str = _PASS_VOXEL_SIZE) -> float:
    """``voxel_size_a``, or InputError saying that ``what`` needs the tomogram's voxel size (+ ``advice``)."""
    if voxel_size_a is None:
        raise InputError(f"{what} need the tomogram's voxel size, which is unknown{advice}")
    return voxel_size_a


def _sizes(values: np.ndarray) -> str:
    """Distinct pixel sizes, Å, as text: '2.5' or '2.5, 5'."""
    return ", ".join(f"{value:g}" for value in sorted(set(np.round(values, 4).tolist())))


def read_star_blocks(path: Path) -> dict[str, object]:
    """Every ``data_`` block of a STAR file (``starfile.read``: loops as DataFrames, key-value pairs as dict).

    Raises:
        InputError: missing file or folder, not a STAR file (no ``data_`` block or unparsable), a loop row
            whose number of values differs from its table's number of columns (named by block and row; such a
            row would otherwise be read with NaN for its missing values), a column label given twice in a loop
            or a block name given twice (``starfile`` would keep one of them).
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
    """Refuse what ``starfile`` would read wrong: a loop row with another number of values than its loop has
    column labels (a quoted value, "..." or '...', counts as one), a ``#`` in a row outside quotes (the row is
    cut there), a column label given twice in a loop (its values would be read as two columns of one name),
    and a block name given twice (the later block would replace the earlier)."""
    import re

    value = re.compile(r"\"[^\"]*\"|'[^']*'|\S+")
    blocks: set[str] = set()
    block, labels, in_loop, row = "", [], False, 0
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("data_"):
            block, in_loop = stripped.split()[0], False
            if block in blocks:
                raise InputError(f"the file has more than one {block} block", path)
            blocks.add(block)
        elif stripped == "loop_":
            labels, in_loop, row = [], True, 0
        elif in_loop and stripped.startswith("_"):
            label = stripped.split()[0]
            if label in labels:
                raise InputError(f"the {block} table names column {label[1:]} twice", path)
            labels.append(label)
        elif in_loop and labels:
            row += 1
            tokens = value.findall(stripped) if '"' in stripped or "'" in stripped else stripped.split()
            if any("#" in token for token in tokens if token[0] not in "\"'"):
                raise InputError(
                    f"row {row} of the {block} table holds a '#' (a comment after the values, or a value "
                    "with a '#', which STAR readers cut there): remove it or quote the value",
                    path,
                )
            values = len(tokens)
            if values != len(labels):
                raise InputError(
                    f"row {row} of the {block} table has {values} values for its {len(labels)} columns "
                    "(a truncated or hand-edited table?)",
                    path,
                )


def _particles_block(blocks: dict[str, object], path: Path, require: Sequence[str]) -> pd.DataFrame:
    """``data_particles``; else the file's only table (``data_optics`` aside); else, among several, the only
    one with the ``require`` columns, or with positions when ``require`` is empty (a table followed by
    another block of other columns)."""
    block = blocks.get("particles")
    if isinstance(block, dict):  # a one-particle table written as key-value pairs
        return pd.DataFrame([block])
    if isinstance(block, pd.DataFrame):
        return block
    tables = [block for name, block in blocks.items() if isinstance(block, pd.DataFrame) and name != "optics"]
    if len(tables) > 1:
        needed = [set(require)] if require else [set(COORDINATE_COLUMNS), set(_CENTERED_COLUMNS)]
        tables = [table for table in tables if any(columns <= set(table.columns) for columns in needed)]
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
