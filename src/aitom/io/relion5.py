"""RELION 5 / WarpTools tomography STAR files: tomogram sets, particle sets, optimisation sets.

Tomogram set (``*_tomograms.star``): a ``data_global`` table with one row per tilt series (``rlnTomoName``,
``rlnTomoSizeX/Y/Z`` in tilt-series pixels, ``rlnTomoTiltSeriesPixelSize`` in Å, ``rlnVoltage`` kV,
``rlnSphericalAberration`` mm, ``rlnAmplitudeContrast``, ``rlnTomoHand``) and one ``data_<rlnTomoName>`` block
per tilt series with one row per tilt (frame): the projection matrix rows ``rlnTomoProjX/Y/Z/W`` (text
``[a,b,c,d]``), ``rlnDefocusU/V`` (Å), ``rlnDefocusAngle`` (degrees), ``rlnCtfScalefactor`` and
``rlnMicrographPreExposure`` (e⁻/Å² received before the tilt). The 4×4 projection matrix maps a tomogram
position (homogeneous, tilt-series pixels) to the tilt image: row 0 gives the image x, row 1 the image y,
row 2 the depth along the beam, so its 3×3 part is the rotation taking tomogram axes to (image x, image y,
beam). RELION 5's own layout keeps each series' tilts in a separate file named by
``rlnTomoTiltSeriesStarFile``, with the alignment as angles ``rlnTomoXTilt``, ``rlnTomoYTilt``,
``rlnTomoZRot`` (degrees) and shifts ``rlnTomoXShiftAngst``, ``rlnTomoYShiftAngst``; the matrix is then built
as RELION's ``Tomogram::setProjectionMatrix`` does, rotation ``Rz(zrot) Ry(ytilt) Rx(xtilt)`` (active,
right-handed) about the tomogram centre ``size // 2``, but with image coordinates relative to the tilt
image's centre (RELION adds ``image size // 2``, which only the tilt-series stack knows).

Particle set (``particles.star``): ``data_general`` (``rlnTomoSubTomosAre2DStacks``), ``data_optics``
(``rlnImagePixelSize`` and ``rlnImageSize`` of the extracted particles, ``rlnTomoTiltSeriesPixelSize``,
``rlnTomoSubtomogramBinning``, ``rlnCtfDataAreCtfPremultiplied``) and ``data_particles`` with
``rlnTomoName``, the position, ``rlnAngleRot/Tilt/Psi`` (degrees, the same ZYZ convention as aitom, see
:mod:`aitom.geometry`), ``rlnImageName`` (with 2-D stacks: the ``.mrcs`` stack of the particle's tilt images,
one per frame of its tilt series, in the order of the tomogram set's rows) and ``rlnTomoVisibleFrames``
(``[1,0,...]``: which frames show the particle). Positions are either

* ``rlnCenteredCoordinateX/Y/ZAngst`` (RELION 5): Å from the tomogram centre, or
* ``rlnCoordinateX/Y/Z`` (RELION 4 and exporters): pixels from the tomogram corner; RELION counts them in
  tilt-series pixels, but some exporters write them in the pixels of the extracted particles (WarpTools'
  2-D stacks of the tomodrgn test set: 12 Å), so the conversion takes the coordinate pixel size as a
  parameter (:func:`particle_positions_centered_a`).

Centred Å and corner voxels are related by ``voxel = centred_a / voxel_size_a + size_voxels / 2`` with
``size_voxels`` the tomogram size in those voxels (RELION's tomogram centre is ``size / 2``, which is the
project's ``N // 2`` for even sizes). Relative paths inside a STAR file (``rlnImageName``, the files of an
optimisation set) are resolved against the STAR file's folder when that file exists there, else against the
working directory (RELION resolves them against its project directory).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from aitom.errors import InputError
from aitom.io.atomic import atomic_output
from aitom.io.star import _exact_floats, read_star_blocks

CENTERED_COLUMNS = (
    "rlnCenteredCoordinateXAngst",
    "rlnCenteredCoordinateYAngst",
    "rlnCenteredCoordinateZAngst",
)
PIXEL_COLUMNS = ("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ")
ANGLE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
_PROJECTION_COLUMNS = ("rlnTomoProjX", "rlnTomoProjY", "rlnTomoProjZ", "rlnTomoProjW")
_GLOBAL_COLUMNS = (
    "rlnTomoName",
    "rlnTomoSizeX",
    "rlnTomoSizeY",
    "rlnTomoSizeZ",
    "rlnTomoTiltSeriesPixelSize",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
)
_TILT_COLUMNS = (*_PROJECTION_COLUMNS, "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle")
_ANGLE_TILT_COLUMNS = ("rlnTomoXTilt", "rlnTomoYTilt", "rlnTomoZRot")
#: numeric columns of data_global and of the per-tilt tables (checked to be finite numbers when present)
_GLOBAL_NUMBERS = (
    *_GLOBAL_COLUMNS[1:],
    "rlnTomoHand",
    "rlnTomoDefocusSlope",
    "rlnTomoFrameCount",
)
_TILT_NUMBERS = (
    "rlnDefocusU",
    "rlnDefocusV",
    "rlnDefocusAngle",
    "rlnCtfScalefactor",
    "rlnMicrographPreExposure",
    *_ANGLE_TILT_COLUMNS,
    "rlnTomoXShiftAngst",
    "rlnTomoYShiftAngst",
)
#: numeric columns of data_particles (checked to be finite numbers when present)
PARTICLE_NUMBER_COLUMNS = (
    *("rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst"),
    *("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"),
    *("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"),
    *("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"),
)
#: numeric columns of data_optics
_OPTICS_NUMBERS = (
    "rlnImagePixelSize",
    "rlnImageSize",
    "rlnTomoTiltSeriesPixelSize",
    "rlnTomoSubtomogramBinning",
    "rlnCtfDataAreCtfPremultiplied",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
)
#: largest deviation of a projection matrix's 3×3 part from a rotation (|R Rᵀ − I|, text rounding)
_ROTATION_TOLERANCE = 1e-3
#: relative tolerance when comparing pixel sizes written by different programs
PIXEL_SIZE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class TiltSeriesGeometry:
    """One tilt series of a RELION 5 tomogram set (arrays are NumPy float64, one entry per frame).

    Attributes:
        name: ``rlnTomoName``.
        projection_matrices: ``(T, 4, 4)`` rows ``rlnTomoProjX/Y/Z/W``; tomogram position (x, y, z, 1) in
            tilt-series pixels -> (image x, image y, depth, 1).
        defocus_u_a, defocus_v_a: ``(T,)`` defoci in Å (positive = underfocus).
        defocus_angle_deg: ``(T,)`` astigmatism angle (``rlnDefocusAngle``), degrees.
        pre_exposure_e_per_a2: ``(T,)`` dose received before each tilt (``rlnMicrographPreExposure``), e⁻/Å².
        ctf_scale_factor: ``(T,)`` ``rlnCtfScalefactor`` (1 when absent).
        voltage_kv, cs_mm, amplitude_contrast: microscope (``rlnVoltage``, ``rlnSphericalAberration``,
            ``rlnAmplitudeContrast``).
        pixel_size_a: tilt-series pixel size, Å (``rlnTomoTiltSeriesPixelSize``).
        hand: ``rlnTomoHand`` (+1 or −1; the sign of the defocus gradient with depth, 1 when absent).
        size_xyz: tomogram size (x, y, z) in tilt-series pixels (``rlnTomoSizeX/Y/Z``).
        optics_group_name: ``rlnOpticsGroupName`` ('' when absent).
        defocus_slope: ``rlnTomoDefocusSlope`` (1 when absent): RELION adds ``hand · slope · depth`` (Å) to
            the defocus of a particle at ``depth`` Å along the beam from the tomogram centre.
    """

    name: str
    projection_matrices: np.ndarray
    defocus_u_a: np.ndarray
    defocus_v_a: np.ndarray
    defocus_angle_deg: np.ndarray
    pre_exposure_e_per_a2: np.ndarray
    ctf_scale_factor: np.ndarray
    voltage_kv: float
    cs_mm: float
    amplitude_contrast: float
    pixel_size_a: float
    hand: float
    size_xyz: tuple[float, float, float]
    optics_group_name: str = ""
    defocus_slope: float = 1.0

    @property
    def n_tilts(self) -> int:
        """Number of frames (tilt images)."""
        return int(self.projection_matrices.shape[0])

    @property
    def rotations(self) -> np.ndarray:
        """``(T, 3, 3)`` rotations taking tomogram axes (x, y, z) to (image x, image y, beam)."""
        return self.projection_matrices[:, :3, :3]

    def defocus_offsets_a(self, centered_a: np.ndarray) -> np.ndarray:
        """Defocus change ``(N, T)`` in Å of particles at ``centered_a (N, 3)`` (Å from the tomogram centre).

        RELION 5's depth-dependent defocus (``Tomogram::getCtf``): ``hand · slope · depth``, with the depth
        the particle's offset from the tomogram centre along the beam of each tilt (row 2 of the rotation).
        """
        depth_a = np.asarray(centered_a, dtype=np.float64) @ self.rotations[:, 2, :].T
        return self.hand * self.defocus_slope * depth_a

    def size_voxels(self, voxel_size_a: float) -> np.ndarray:
        """Tomogram size ``(3,)`` (x, y, z) in voxels of ``voxel_size_a`` Å (not necessarily integers)."""
        return np.asarray(self.size_xyz, dtype=np.float64) * self.pixel_size_a / voxel_size_a


def _read_blocks(path: str | Path) -> tuple[Path, dict[str, object]]:
    path = Path(path)
    return path, read_star_blocks(path)


def _as_table(block: object) -> pd.DataFrame:
    return pd.DataFrame([block]) if isinstance(block, dict) else block


def _require(table: pd.DataFrame, columns: Sequence[str], path: Path, what: str) -> None:
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise InputError(f"{what} lacks column(s) {', '.join(missing)}", path)


def finite_number_columns(table: pd.DataFrame, columns: Sequence[str], path: Path, what: str) -> pd.DataFrame:
    """``table`` with ``columns`` (those present) checked to be finite numbers; text columns become float64.

    Raises:
        InputError: naming ``path``, ``what`` (the block), the column and the first value that is not a
            finite number (text, NaN, inf).
    """
    table = table.copy()
    for column in columns:
        if column not in table.columns:
            continue
        values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.argmax(bad))
            value = table[column].iloc[row]
            shown = repr(value) if isinstance(value, str) else str(value)
            raise InputError(f"{what} {column}: {shown} (row {row + 1}) is not a finite number", path)
        if not pd.api.types.is_numeric_dtype(table[column].dtype):
            table[column] = values
    return table


def _vector_column(values: pd.Series, path: Path, column: str) -> np.ndarray:
    """Rows of ``[a,b,c,d]`` text as an ``(n, 4)`` float64 array."""
    rows = []
    for text in values:
        try:
            row = [float(item) for item in str(text).strip().strip("[]").split(",")]
        except ValueError:
            raise InputError(f"{column}: cannot read {text!r} as [a,b,c,d]", path) from None
        if len(row) != 4 or not all(math.isfinite(value) for value in row):
            raise InputError(f"{column}: expected 4 finite numbers, got {text!r}", path)
        rows.append(row)
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)


def read_tomograms_star(path: str | Path) -> dict[str, TiltSeriesGeometry]:
    """Read a RELION 5 / WarpTools tomogram set.

    Args:
        path: the tomograms STAR file: ``data_global`` plus, per series, a ``data_<rlnTomoName>`` block of
            projection matrices (WarpTools) or a tilt-series STAR file named by ``rlnTomoTiltSeriesStarFile``
            (RELION 5), see the module docstring.

    Returns:
        ``rlnTomoName -> TiltSeriesGeometry``, in the order of ``data_global``.

    Raises:
        InputError: missing file or columns, a tilt series without its tilts, a frame count that
            disagrees with ``rlnTomoFrameCount``, unreadable matrices.
    """
    path, blocks = _read_blocks(path)
    if "global" not in blocks:
        raise InputError("no data_global block: not a RELION tomogram set", path)
    global_table = _as_table(blocks["global"])
    _require(global_table, _GLOBAL_COLUMNS, path, "data_global")
    global_table = finite_number_columns(global_table, _GLOBAL_NUMBERS, path, "data_global")
    _check_global(global_table, path)
    tilt_series = {}
    for _, row in global_table.iterrows():
        name = str(row["rlnTomoName"])
        size_xyz = (float(row["rlnTomoSizeX"]), float(row["rlnTomoSizeY"]), float(row["rlnTomoSizeZ"]))
        if name in blocks:
            tilts_path, tilts = path, _as_table(blocks[name])
            _require(tilts, _TILT_COLUMNS, path, f"data_{name}")
            tilts = finite_number_columns(tilts, _TILT_NUMBERS, path, f"data_{name}")
            matrices = np.stack(
                [_vector_column(tilts[column], path, column) for column in _PROJECTION_COLUMNS], axis=1
            )
        elif "rlnTomoTiltSeriesStarFile" in global_table.columns:
            tilts_path = resolve_relative(str(row["rlnTomoTiltSeriesStarFile"]), path)
            tilts = _tilt_series_table(tilts_path, name)
            matrices = _matrices_from_angles(tilts, size_xyz, float(row["rlnTomoTiltSeriesPixelSize"]))
        else:
            raise InputError(
                f"no data_{name} block (nor rlnTomoTiltSeriesStarFile) for tilt series {name}", path
            )
        _check_projections(matrices, name, tilts_path)
        if "rlnMicrographPreExposure" in tilts.columns and (tilts["rlnMicrographPreExposure"] < 0).any():
            raise InputError(f"data_{name} rlnMicrographPreExposure: negative dose (e⁻/Å²)", tilts_path)
        scale = _per_tilt(tilts, "rlnCtfScalefactor", 1.0)
        if (scale < 0).any():
            row = int(np.argmax(scale < 0))
            raise InputError(
                f"data_{name} rlnCtfScalefactor: {scale[row]:g} (row {row + 1}) is negative: it weights the "
                "tilt's CTF, 0 to 1",
                tilts_path,
            )
        if "rlnTomoFrameCount" in global_table.columns and int(row["rlnTomoFrameCount"]) != len(tilts):
            raise InputError(
                f"tilt series {name}: rlnTomoFrameCount {int(row['rlnTomoFrameCount'])} but data_{name} "
                f"has {len(tilts)} rows",
                tilts_path,
            )

        tilt_series[name] = TiltSeriesGeometry(
            name=name,
            projection_matrices=matrices,
            defocus_u_a=_per_tilt(tilts, "rlnDefocusU", 0.0),
            defocus_v_a=_per_tilt(tilts, "rlnDefocusV", 0.0),
            defocus_angle_deg=_per_tilt(tilts, "rlnDefocusAngle", 0.0),
            pre_exposure_e_per_a2=_per_tilt(tilts, "rlnMicrographPreExposure", 0.0),
            ctf_scale_factor=scale,
            voltage_kv=float(row["rlnVoltage"]),
            cs_mm=float(row["rlnSphericalAberration"]),
            amplitude_contrast=float(row["rlnAmplitudeContrast"]),
            pixel_size_a=float(row["rlnTomoTiltSeriesPixelSize"]),
            hand=float(row["rlnTomoHand"]) if "rlnTomoHand" in global_table.columns else 1.0,
            size_xyz=size_xyz,
            optics_group_name=str(row.get("rlnOpticsGroupName", "")),
            defocus_slope=float(row.get("rlnTomoDefocusSlope", 1.0)),
        )
    return tilt_series


def _tilt_series_table(path: Path, name: str) -> pd.DataFrame:
    """The per-tilt table of a RELION 5 tilt-series STAR file (block ``data_<name>`` or its only table)."""
    path, blocks = _read_blocks(path)
    tables = {key: block for key, block in blocks.items() if isinstance(block, pd.DataFrame)}
    table = tables.get(name, next(iter(tables.values())) if len(tables) == 1 else None)
    if table is None:
        raise InputError(f"no data_{name} table of tilts", path)
    _require(
        table, (*_ANGLE_TILT_COLUMNS, "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"), path, "tilt table"
    )
    return finite_number_columns(table, _TILT_NUMBERS, path, f"data_{name}")


def _matrices_from_angles(tilts: pd.DataFrame, size_xyz: tuple[float, float, float], pixel_size_a: float):
    """RELION 5 projection matrices ``(T, 4, 4)`` from tilt angles and shifts (see the module docstring).

    The specimen centre is ``floor(size / 2)``, as in RELION's ``Tomogram::setProjectionMatrix``, while RELION
    decentres particle coordinates about ``size / 2`` (:func:`centered_angstrom_to_voxels`); for an odd
    tomogram size the two differ by half a voxel in RELION itself, and both are kept so that positions agree
    with RELION's."""
    import torch

    from aitom.geometry import rotation_about_axis

    def about(axis: int, column: str) -> torch.Tensor:
        direction = torch.zeros(len(tilts), 3, dtype=torch.float64)
        direction[:, axis] = 1.0
        return rotation_about_axis(direction, torch.deg2rad(torch.tensor(tilts[column].to_numpy(np.float64))))

    rotations = (about(2, "rlnTomoZRot") @ about(1, "rlnTomoYTilt") @ about(0, "rlnTomoXTilt")).numpy()
    centre = np.floor(np.asarray(size_xyz) / 2.0)
    shifts = np.zeros((len(tilts), 3))
    for axis, column in enumerate(("rlnTomoXShiftAngst", "rlnTomoYShiftAngst")):
        if column in tilts.columns:
            shifts[:, axis] = tilts[column].to_numpy(np.float64) / pixel_size_a
    matrices = np.zeros((len(tilts), 4, 4))
    matrices[:, :3, :3] = rotations
    matrices[:, :3, 3] = shifts - rotations @ centre
    matrices[:, 3, 3] = 1.0
    return matrices


def _check_global(table: pd.DataFrame, path: Path) -> None:
    """Unique tilt-series names; positive sizes, pixel size and voltage; Cs >= 0; amplitude contrast in
    [0, 1); ``rlnTomoHand`` ±1."""
    names = [str(name) for name in table["rlnTomoName"]]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InputError(f"data_global lists tilt series {', '.join(repeated)} more than once", path)
    rules = {
        "rlnTomoSizeX": ("positive (tilt-series pixels)", lambda v: v > 0),
        "rlnTomoSizeY": ("positive (tilt-series pixels)", lambda v: v > 0),
        "rlnTomoSizeZ": ("positive (tilt-series pixels)", lambda v: v > 0),
        "rlnTomoTiltSeriesPixelSize": ("positive (Å)", lambda v: v > 0),
        "rlnVoltage": ("positive (kV)", lambda v: v > 0),
        "rlnSphericalAberration": (">= 0 (mm)", lambda v: v >= 0),
        "rlnAmplitudeContrast": ("in [0, 1)", lambda v: (v >= 0) & (v < 1)),
        "rlnTomoHand": ("+1 or -1", lambda v: np.abs(v) == 1),
    }
    for column, (rule, ok) in rules.items():
        if column not in table.columns:
            continue
        values = table[column].to_numpy(dtype=np.float64)
        bad = ~ok(values)
        if bad.any():
            row = int(np.argmax(bad))
            raise InputError(
                f"data_global {column} must be {rule}, got {values[row]:g} for {names[row]}", path
            )


def _check_projections(matrices: np.ndarray, name: str, path: Path) -> None:
    """Each ``(4, 4)`` projection matrix must be a rotation (orthonormal, determinant +1) plus a shift, with
    last row ``[0, 0, 0, 1]``."""
    rotations = matrices[:, :3, :3]
    deviation = np.abs(rotations @ rotations.transpose(0, 2, 1) - np.eye(3)).max(axis=(1, 2))
    improper = np.linalg.det(rotations) < 0
    last_row = np.abs(matrices[:, 3] - np.array([0.0, 0.0, 0.0, 1.0])).max(axis=1)
    bad = (deviation > _ROTATION_TOLERANCE) | improper | (last_row > _ROTATION_TOLERANCE)
    if bad.any():
        frame = int(np.argmax(bad))
        raise InputError(
            f"tilt series {name}, frame {frame + 1}: rlnTomoProjX/Y/Z/W is not a rotation plus a shift "
            f"(|R Rᵀ − I| = {deviation[frame]:.3g}, det R = {np.linalg.det(rotations[frame]):.3g})",
            path,
        )


def _per_tilt(tilts: pd.DataFrame, column: str, default: float) -> np.ndarray:
    if column not in tilts.columns:
        return np.full(len(tilts), default, dtype=np.float64)
    return tilts[column].to_numpy(dtype=np.float64)


def parse_visible_frames(text: object) -> np.ndarray:
    """``rlnTomoVisibleFrames`` text ``[1,0,1,...]`` (or a sequence) as a boolean ``(T,)`` array.

    Raises:
        ValueError: not a list of 0 and 1.
    """
    items = (
        list(text)
        if isinstance(text, np.ndarray | list | tuple)
        else str(text).strip().strip("[]").split(",")
    )
    problem = f"visible frames must be 0 or 1, got {text!r}"
    try:
        values = [int(item) for item in items if str(item).strip()]
    except ValueError:
        raise ValueError(problem) from None
    if any(value not in (0, 1) for value in values):
        raise ValueError(problem)
    return np.asarray(values, dtype=bool)


def format_visible_frames(mask: Sequence[bool] | np.ndarray) -> str:
    """Inverse of :func:`parse_visible_frames`: ``[1,0,1]``."""
    return "[" + ",".join(str(int(bool(value))) for value in mask) + "]"


def read_relion5_particles(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, object]]:
    """Read a RELION 5 tomography particle set.

    Args:
        path: particles STAR file.

    Returns:
        ``(particles, optics, general)``: the ``data_particles`` table with ``rlnTomoVisibleFrames`` (when
        present) turned into boolean NumPy arrays; the ``data_optics`` table (empty DataFrame when absent);
        the ``data_general`` key-value pairs (empty dict when absent).

    Raises:
        InputError: missing file, no particles table, no ``rlnTomoName``, no position columns (neither
            ``rlnCenteredCoordinate*Angst`` nor ``rlnCoordinate*``), a particle whose ``rlnOpticsGroup`` is
            not in ``data_optics``, unreadable visible frames.
    """
    path, blocks = _read_blocks(path)
    if "particles" in blocks:
        particles = _as_table(blocks["particles"]).copy()
    else:
        tables = [
            block
            for name, block in blocks.items()
            if isinstance(block, pd.DataFrame) and name not in ("optics", "general")
        ]
        if len(tables) != 1:
            raise InputError("no particles table (data_particles)", path)
        particles = tables[0].copy()
    _require(particles, ("rlnTomoName",), path, "data_particles")
    if not (set(CENTERED_COLUMNS) <= set(particles.columns) or set(PIXEL_COLUMNS) <= set(particles.columns)):
        raise InputError(
            "data_particles lacks positions: need rlnCenteredCoordinateX/Y/ZAngst or rlnCoordinateX/Y/Z", path
        )
    particles = finite_number_columns(particles, PARTICLE_NUMBER_COLUMNS, path, "data_particles")
    general_block = blocks.get("general", {})
    general = dict(general_block) if isinstance(general_block, dict) else {}
    optics = _as_table(blocks["optics"]).copy() if "optics" in blocks else pd.DataFrame()
    if len(optics):
        _require(optics, ("rlnOpticsGroup",), path, "data_optics")
        optics = finite_number_columns(optics, _OPTICS_NUMBERS, path, "data_optics")
        if "rlnOpticsGroup" in particles.columns:
            unknown = sorted(set(particles["rlnOpticsGroup"]) - set(optics["rlnOpticsGroup"]))
            if unknown:
                raise InputError(f"rlnOpticsGroup {unknown} of some particles is not in data_optics", path)
    if "rlnTomoVisibleFrames" in particles.columns:
        try:
            particles["rlnTomoVisibleFrames"] = [
                parse_visible_frames(text) for text in particles["rlnTomoVisibleFrames"]
            ]
        except ValueError as error:
            raise InputError(f"rlnTomoVisibleFrames: {error}", path) from None
    return particles, optics, general


def particle_optics(
    particles: pd.DataFrame, optics: pd.DataFrame, path: str | Path | None = None
) -> pd.DataFrame:
    """The optics row of every particle (joined on ``rlnOpticsGroup``; the only row when there is one group).

    Args:
        particles, optics: the tables of :func:`read_relion5_particles`.
        path: the particles file, named in error messages.

    Returns:
        DataFrame with one row per particle (index of ``particles``), the columns of ``optics``.

    Raises:
        InputError: no optics table, or several groups and no ``rlnOpticsGroup`` column.
    """
    if len(optics) == 0:
        raise InputError("the particle set has no data_optics table (pixel size unknown)", path)
    if "rlnOpticsGroup" in particles.columns:
        by_group = optics.set_index("rlnOpticsGroup", drop=False)
        rows = by_group.loc[particles["rlnOpticsGroup"].to_numpy()]
    elif len(optics) == 1:
        rows = pd.concat([optics] * len(particles))
    else:
        raise InputError("several optics groups but the particles have no rlnOpticsGroup column", path)
    return rows.set_axis(particles.index)


def check_particles_against_tomograms(
    particles: pd.DataFrame,
    optics: pd.DataFrame,
    tomograms: Mapping[str, TiltSeriesGeometry],
    *,
    particles_path: str | Path | None = None,
) -> None:
    """Check that a particle set fits a tomogram set.

    Every ``rlnTomoName`` must be a tilt series of ``tomograms``; the optics' ``rlnTomoTiltSeriesPixelSize``
    (when given) must equal the tilt series' pixel size, and ``rlnImagePixelSize`` must equal the tilt-series
    pixel size times ``rlnTomoSubtomogramBinning`` (when given); visible-frame masks must have one entry per
    frame of their tilt series (relative tolerance :data:`PIXEL_SIZE_TOLERANCE` on pixel sizes).

    Raises:
        InputError naming the particles file and the problem.
    """
    unknown = sorted(set(map(str, particles["rlnTomoName"])) - set(tomograms))
    if unknown:
        raise InputError(
            f"rlnTomoName {', '.join(unknown[:3])} not in the tomogram set "
            f"({', '.join(list(tomograms)[:4])})",
            particles_path,
        )
    rows = particle_optics(particles, optics, particles_path)
    for index, name in particles["rlnTomoName"].items():
        series = tomograms[str(name)]
        row = rows.loc[index]
        if "rlnTomoTiltSeriesPixelSize" in row and not _close(
            float(row["rlnTomoTiltSeriesPixelSize"]), series.pixel_size_a
        ):
            raise InputError(
                f"tilt-series pixel size {float(row['rlnTomoTiltSeriesPixelSize']):g} Å in data_optics but "
                f"{series.pixel_size_a:g} Å for {name} in the tomogram set",
                particles_path,
            )
        if "rlnTomoSubtomogramBinning" in row and "rlnImagePixelSize" in row:
            expected = series.pixel_size_a * float(row["rlnTomoSubtomogramBinning"])
            if not _close(float(row["rlnImagePixelSize"]), expected):
                raise InputError(
                    f"rlnImagePixelSize {float(row['rlnImagePixelSize']):g} Å is not the tilt-series "
                    f"pixel {series.pixel_size_a:g} Å × binning {float(row['rlnTomoSubtomogramBinning']):g} "
                    f"of {name}",
                    particles_path,
                )
        if "rlnTomoVisibleFrames" in particles.columns:
            n_visible = len(particles.at[index, "rlnTomoVisibleFrames"])
            if n_visible != series.n_tilts:
                raise InputError(
                    f"a particle of {name} lists {n_visible} rlnTomoVisibleFrames but the tilt series has "
                    f"{series.n_tilts} frames",
                    particles_path,
                )


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=PIXEL_SIZE_TOLERANCE)


def centered_angstrom_to_voxels(
    centered_a: np.ndarray, size_voxels_xyz: Sequence[float] | np.ndarray, voxel_size_a: float
) -> np.ndarray:
    """Positions in Å from the tomogram centre -> voxels from the tomogram corner.

    ``voxel = centered_a / voxel_size_a + size / 2`` (RELION 5's tomogram centre is ``size / 2``).

    Args:
        centered_a: ``(N, 3)`` (x, y, z) in Å from the centre.
        size_voxels_xyz: tomogram size (x, y, z) in voxels of ``voxel_size_a``.
        voxel_size_a: voxel size in Å.

    Returns:
        ``(N, 3)`` float64 voxel coordinates (x, y, z).

    >>> centered_angstrom_to_voxels(np.array([[100.0, 0.0, -50.0]]), (100, 100, 50), 10.0)
    array([[60., 50., 20.]])
    """
    centre = np.asarray(size_voxels_xyz, dtype=np.float64) / 2.0
    return np.asarray(centered_a, dtype=np.float64) / voxel_size_a + centre


def voxels_to_centered_angstrom(
    voxels: np.ndarray, size_voxels_xyz: Sequence[float] | np.ndarray, voxel_size_a: float
) -> np.ndarray:
    """Inverse of :func:`centered_angstrom_to_voxels`: ``(voxel − size / 2) · voxel_size_a``, ``(N, 3)``."""
    centre = np.asarray(size_voxels_xyz, dtype=np.float64) / 2.0
    return (np.asarray(voxels, dtype=np.float64) - centre) * voxel_size_a


def particle_origins_a(particles: pd.DataFrame) -> np.ndarray:
    """``rlnOriginX/Y/ZAngst`` ``(N, 3)`` (x, y, z), Å, along the tomogram's axes (turned from a RELION 4
    pseudo-subtomogram's axes when ``rlnTomoSubtomogramRot/Tilt/Psi`` are given); 0 where a column is
    absent."""
    from aitom.io.star import along_tomogram_axes

    origins = np.zeros((len(particles), 3))
    for axis, column in enumerate(("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")):
        if column in particles.columns:
            origins[:, axis] = particles[column].to_numpy(dtype=np.float64)
    return along_tomogram_axes(particles, origins)


def particle_positions_centered_a(
    particles: pd.DataFrame,
    tomograms: Mapping[str, TiltSeriesGeometry],
    *,
    coordinate_pixel_size_a: float | None = None,
) -> np.ndarray:
    """Particle positions ``(N, 3)`` (x, y, z) in Å from their tomogram's centre.

    Uses ``rlnCenteredCoordinate*Angst`` when present; else ``rlnCoordinate*`` (pixels from the corner) of
    ``coordinate_pixel_size_a`` Å (default: each tomogram's tilt-series pixel size, RELION's convention).
    ``rlnOriginX/Y/ZAngst`` shifts are subtracted when present (RELION: position = coordinate − origin, the
    origin along the pseudo-subtomogram's axes when the table gives them).
    """
    origins = particle_origins_a(particles)
    if set(CENTERED_COLUMNS) <= set(particles.columns):
        return particles[list(CENTERED_COLUMNS)].to_numpy(dtype=np.float64) - origins
    positions = np.empty((len(particles), 3))
    pixels = particles[list(PIXEL_COLUMNS)].to_numpy(dtype=np.float64)
    for row, name in enumerate(particles["rlnTomoName"]):
        series = tomograms[str(name)]
        pixel = series.pixel_size_a if coordinate_pixel_size_a is None else coordinate_pixel_size_a
        positions[row] = voxels_to_centered_angstrom(pixels[row], series.size_voxels(pixel), pixel)
    return positions - origins


def relion5_particles_table(
    centered_a: np.ndarray,
    tomo_names: Sequence[str],
    angles_deg: np.ndarray | None = None,
    *,
    optics_group: int = 1,
    extra: Mapping[str, Sequence[object]] | None = None,
) -> pd.DataFrame:
    """A RELION 5 particles table: ``rlnTomoName``, ``rlnCenteredCoordinate*Angst``, angles, optics group.

    Args:
        centered_a: ``(N, 3)`` positions (x, y, z) in Å from the tomogram centre.
        tomo_names: ``N`` tomogram names (``rlnTomoName``).
        angles_deg: ``(N, 3)`` ``rlnAngleRot/Tilt/Psi`` in degrees (aitom's convention = RELION's).
        optics_group: ``rlnOpticsGroup`` of every particle.
        extra: more columns, name -> ``N`` values.

    Raises:
        ValueError: wrong shapes.
    """
    centered = np.asarray(centered_a, dtype=np.float64)
    if centered.ndim != 2 or centered.shape[1] != 3 or len(tomo_names) != centered.shape[0]:
        raise ValueError(f"need centered_a (N, 3) and N tomo_names, got {centered.shape}, {len(tomo_names)}")
    columns: dict[str, object] = {"rlnTomoName": [str(name) for name in tomo_names]}
    columns.update(zip(CENTERED_COLUMNS, centered.T))
    if angles_deg is not None:
        angles = np.asarray(angles_deg, dtype=np.float64)
        if angles.shape != centered.shape:
            raise ValueError(f"angles_deg must be {centered.shape}, got {angles.shape}")
        columns.update(zip(ANGLE_COLUMNS, angles.T))
    columns["rlnOpticsGroup"] = np.full(centered.shape[0], optics_group, dtype=np.int64)
    for name, values in (extra or {}).items():
        columns[name] = list(values)
    return pd.DataFrame(columns)


def relion5_optics_table(
    *,
    image_pixel_size_a: float,
    tilt_series_pixel_size_a: float,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.07,
    image_size: int | None = None,
    ctf_premultiplied: bool = False,
    optics_group: int = 1,
) -> pd.DataFrame:
    """A one-group RELION 5 ``data_optics`` table (binning = image pixel / tilt-series pixel)."""
    table = {
        "rlnOpticsGroup": [optics_group],
        "rlnOpticsGroupName": [f"opticsGroup{optics_group}"],
        "rlnSphericalAberration": [float(cs_mm)],
        "rlnVoltage": [float(voltage_kv)],
        "rlnAmplitudeContrast": [float(amplitude_contrast)],
        "rlnTomoTiltSeriesPixelSize": [float(tilt_series_pixel_size_a)],
        "rlnTomoSubtomogramBinning": [float(image_pixel_size_a) / float(tilt_series_pixel_size_a)],
        "rlnImagePixelSize": [float(image_pixel_size_a)],
        "rlnCtfDataAreCtfPremultiplied": [int(ctf_premultiplied)],
    }
    if image_size is not None:
        table["rlnImageSize"] = [int(image_size)]
    return pd.DataFrame(table)


def write_relion5_particles(
    path: str | Path,
    particles: pd.DataFrame,
    *,
    optics: pd.DataFrame,
    general: Mapping[str, object] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a RELION 5 particle set (``data_general``, ``data_optics``, ``data_particles``) atomically.

    Boolean visible-frame arrays are written back as ``[1,0,...]``; floats with the shortest decimal that
    reads back exactly, so :func:`read_relion5_particles` returns the same tables.

    Raises:
        InputError: the file exists and ``overwrite`` is false, or the table lacks ``rlnTomoName`` or
            positions.
    """
    path = Path(path)
    if "rlnTomoName" not in particles.columns or not (
        set(CENTERED_COLUMNS) <= set(particles.columns) or set(PIXEL_COLUMNS) <= set(particles.columns)
    ):
        raise InputError("a RELION 5 particle table needs rlnTomoName and positions", path)
    table = particles.copy()
    if "rlnTomoVisibleFrames" in table.columns:
        table["rlnTomoVisibleFrames"] = [
            format_visible_frames(mask) for mask in table["rlnTomoVisibleFrames"]
        ]
    blocks: dict[str, object] = {}
    if general:
        blocks["general"] = dict(general)
    blocks["optics"] = _exact_floats(optics)
    blocks["particles"] = _exact_floats(table)
    with atomic_output(path, overwrite) as temporary:
        starfile.write(blocks, temporary)
    return path


def read_optimisation_set(path: str | Path) -> dict[str, Path]:
    """Read a RELION 5 optimisation set: ``{"particles": ..., "tomograms": ..., ...}`` paths.

    Keys are the ``rlnTomo<Key>File`` names in lower case without ``rlnTomo`` and ``File`` (``particles``,
    ``tomograms``, ``trajectories``, ``manifolds``, ``reference_map``...: ``rlnTomoReferenceMap1File`` becomes
    ``referencemap1``). Relative paths are resolved as described in the module docstring.

    Raises:
        InputError: missing file, or no ``rlnTomoParticlesFile`` / ``rlnTomoTomogramsFile``.
    """
    path, blocks = _read_blocks(path)
    values: dict[str, object] = {}
    for block in blocks.values():
        if isinstance(block, dict):
            values.update(block)
        elif isinstance(block, pd.DataFrame) and len(block) == 1:
            values.update(block.iloc[0].to_dict())
    files = {}
    for key, value in values.items():
        if key.startswith("rlnTomo") and key.endswith("File"):
            files[key[len("rlnTomo") : -len("File")].lower()] = resolve_relative(str(value), path)
    missing = [key for key in ("particles", "tomograms") if key not in files]
    if missing:
        raise InputError(f"optimisation set lacks rlnTomo{'/'.join(k.title() for k in missing)}File", path)
    return files


def resolve_relative(name: str, star_path: str | Path) -> Path:
    """A path named in a STAR file: absolute as is; relative: beside the STAR file if it exists there, else
    relative to the working directory."""
    candidate = Path(name)
    if candidate.is_absolute():
        return candidate
    beside = Path(star_path).parent / candidate
    return beside if beside.exists() or not candidate.exists() else candidate
