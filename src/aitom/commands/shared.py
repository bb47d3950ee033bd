"""Helpers shared by the commands: the ``--device`` option, output folders written atomically and reference
maps brought onto the grid of the data they are compared with."""

from __future__ import annotations

import argparse
import math
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    import torch


def torch_device(name: str):
    """The torch device named on the command line (``--device``), or InputError if it is not there."""
    import torch

    from aitom.errors import InputError

    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise InputError(f"--device: {error}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"--device {name}: no CUDA device is available")
        if device.index is not None and device.index >= count:
            raise InputError(f"--device {name}: there are {count} CUDA device(s), numbered from 0")
    elif device.type != "cpu":
        raise InputError(f"--device {name}: aitom runs on cpu or cuda (cuda:N)")
    return device


def _positive_angstrom(text: str) -> float:
    """``--voxel-size`` value: a positive number of Å."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of Å, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of Å, got {text}")
    return value


#: largest ``--seed``: numpy's limit, which Lightning's ``seed_everything`` and NumPy generators impose
MAX_SEED = 2**32 - 1


def seed_number(text: str) -> int:
    """``--seed`` value: a whole number from 0 to :data:`MAX_SEED`."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must lie in [0, {MAX_SEED}], got {text}")
    return value


def add_voxel_size_option(parser: argparse.ArgumentParser, what: str = "the input volumes") -> None:
    """``--voxel-size Å``: replaces the header's voxel size of ``what`` (for headers that leave it unset)."""
    parser.add_argument(
        "--voxel-size",
        type=_positive_angstrom,
        metavar="Å",
        help=f"voxel size of {what} in Å, replacing the header's; needed when a header leaves it unset "
        "(0 or 1 Å), which is warned about",
    )


@contextmanager
def warnings_dropped_on_refusal() -> Iterator[None]:
    """Hold the warnings raised in the block: re-issue them when it ends normally, drop them when it raises
    :class:`aitom.errors.InputError`.

    A refused input gets one line: a warning before the error line repeats it or contradicts its advice
    (a template whose header voxel size looks unset was warned "pass --voxel-size", then refused with "write
    the template's into its header": ``--voxel-size`` of ``aitom pick`` sets the tomogram's).
    """
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        yield
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def check_output_folder(out: Path, overwrite: bool) -> None:
    """Refuse an output folder that is a file, lies under a file, or is not empty without ``--overwrite``."""
    from aitom.errors import InputError

    if out.exists() and not out.is_dir():
        raise InputError("exists and is not a folder", out)
    refuse_path_under_a_file(out)
    working = Path.cwd().resolve()
    if out.resolve() == working or out.resolve() in working.parents:
        raise InputError("is the working directory or holds it: name a new folder for the output", out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError("exists and is not empty; pass --overwrite to replace it", out)


def refuse_path_under_a_file(out: Path) -> None:
    """Refuse an output path one of whose parent folders is a file (it could never be created)."""
    from aitom.errors import InputError

    blocking = next((parent for parent in out.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise InputError(f"cannot be created: {blocking} is a file, not a folder", out)


@contextmanager
def output_folder(out: Path) -> Iterator[Path]:
    """Yield a hidden temporary folder beside ``out``: replaces ``out`` on success, removed on failure."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent))
    try:
        yield temporary
        if out.exists():
            retired = out.with_name(f".{out.name}.{secrets.token_hex(4)}.old")
            os.replace(out, retired)
            os.replace(temporary, out)
            shutil.rmtree(retired)
        else:
            os.replace(temporary, out)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary)


def json_ready(value: object) -> object:
    """``value`` (nested dicts, lists, numbers) with every NaN or ±inf float replaced by None: strict JSON.

    >>> json_ready({"fsc_0.5_a": float("inf"), "fsc": [1.0, float("nan")]})
    {'fsc_0.5_a': None, 'fsc': [1.0, None]}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(item) for item in value]
    return value


def refuse_inputs_inside(out: Path, inputs: list[Path]) -> None:
    """Refuse an output folder that holds one of the inputs: ``--overwrite`` replaces the whole folder.

    Raises:
        InputError: naming ``out`` and the first input found in it.
    """
    from aitom.errors import InputError

    if not out.exists():
        return
    root = out.resolve()
    for path in inputs:
        resolved = Path(path).resolve()
        if resolved == root or root in resolved.parents:
            raise InputError(
                f"holds the input {path}: --overwrite would delete it (choose another --out)", out
            )


def select_tomogram(table, name: str | None, star: Path):
    """The rows of ``table`` whose ``rlnTomoName`` (or ``rlnMicrographName``) is ``name``; with ``name`` None,
    the whole table, which must then list one tomogram."""
    from aitom.errors import InputError

    columns = [column for column in ("rlnTomoName", "rlnMicrographName") if column in table.columns]
    if name is None:
        for column in columns:
            names = sorted(set(map(str, table[column])))
            if len(names) > 1:
                raise InputError(
                    f"the table lists {len(names)} tomograms in {column} ({', '.join(names[:4])}"
                    f"{', ...' if len(names) > 4 else ''}); choose one with --tomo-name",
                    star,
                )
        return table
    if not columns:
        raise InputError("--tomo-name given but the table has no rlnTomoName or rlnMicrographName", star)
    selected = table[table[columns[0]].astype(str) == name]
    if len(selected) == 0:
        raise InputError(f"no particle has {columns[0]} {name!r}", star)
    return selected.reset_index(drop=True)


def read_particle_table(star: Path):
    """The particle table (any positions) and its ``data_optics`` (empty when absent or not RELION's).

    Positions, origins and angles present are checked to be finite numbers (InputError naming the row).
    """
    import pandas as pd

    from aitom.io import read_particles
    from aitom.io.relion5 import PARTICLE_NUMBER_COLUMNS, finite_number_columns, read_relion5_particles

    table = read_particles(star, require=())
    if "rlnTomoName" not in table.columns:
        return finite_number_columns(table, PARTICLE_NUMBER_COLUMNS, star, "particles"), pd.DataFrame()
    particles, optics, _ = read_relion5_particles(star)
    return particles, optics


#: suffixes of the MRC volumes the commands write (optionally followed by ``.gz``: gzip-compressed)
MRC_OUTPUT_SUFFIXES = (".mrc", ".map", ".rec")


def refuse_outputs_over_inputs(outputs: list[Path], inputs: list[Path | None]) -> None:
    """Refuse an output file that is one of the inputs: ``--overwrite`` would replace the input with results.

    Raises:
        InputError: naming the output and the input it is.
    """
    from aitom.errors import InputError

    for output in outputs:
        for path in inputs:
            if path is not None and output.exists() and path.exists() and output.samefile(path):
                raise InputError(f"is also an input ({path}): write the output to another file", output)


def check_volume_output(output: Path, source: Path, overwrite: bool) -> None:
    """Refuse an output volume path before any work: one that exists (without ``overwrite``), one under a
    file, a name that is not an MRC file's (``OUT.tif`` would hold MRC data), or the input ``source`` itself
    (``--overwrite`` would replace the data with its filtered or converted copy).

    Raises:
        InputError: naming ``output`` and the problem.
    """
    from aitom.errors import InputError
    from aitom.io import check_output_path

    check_output_path(output, overwrite)
    refuse_path_under_a_file(output)
    name = output.name.lower().removesuffix(".gz")
    if not name.endswith(MRC_OUTPUT_SUFFIXES):
        raise InputError(
            f"the output is written as an MRC volume: name it {', '.join(MRC_OUTPUT_SUFFIXES)} "
            "(optionally + .gz)",
            output,
        )
    refuse_outputs_over_inputs([output], [source])


class ReferenceResampledWarning(UserWarning):
    """A reference map was resampled to the voxel size and box of the data it is compared with."""


def read_reference(
    path: Path,
    voxel_size_a: float,
    box: int,
    *,
    voxel_size_override: float | None = None,
    data_voxel_size_unset: bool = False,
) -> torch.Tensor:
    """A reference on a ``box``³ grid of ``voxel_size_a`` Å voxels (an average's, or the subtomograms').

    A map (MRC) is read with ``voxel_size_override`` replacing its header's voxel size when given and brought
    onto the grid by :func:`reference_on_grid`. An atomic model (``.pdb``/``.cif``, optionally ``.gz``;
    :func:`aitom.simulate.library.is_atomic_model_path`) becomes its potential map at ``voxel_size_a`` in
    the ``box``³ box (protein bright, centre of mass at voxel ``box // 2``). ``data_voxel_size_unset``: the
    data's ``voxel_size_a`` is a header's 0 or 1 Å that nobody confirmed (see :func:`reference_on_grid`).

    Raises:
        InputError: an unreadable file, a model without atoms or too large for the box, or a map that
            :func:`reference_on_grid` refuses.
    """
    from aitom.errors import InputError
    from aitom.io import read_volume
    from aitom.simulate.library import class_potential, is_atomic_model_path

    if is_atomic_model_path(str(path)):
        try:
            return class_potential(str(path), voxel_size_a, box_size=box)
        except InputError as error:
            if error.path is not None:
                raise
            raise InputError(error.problem, path) from None
    with warnings_dropped_on_refusal():  # a header quirk that makes the reference unusable: the error alone
        reference, header = read_volume(path, voxel_size_a=voxel_size_override)
        return reference_on_grid(
            reference,
            header.voxel_size_a[0],
            voxel_size_a,
            box,
            path,
            data_voxel_size_unset=data_voxel_size_unset,
        )


def match_reference_contrast(
    reference: torch.Tensor, data: torch.Tensor, mode: str | None
) -> tuple[torch.Tensor, bool, float]:
    """A reference in the data's contrast (protein bright or dark), for ``--invert-reference``.

    Args:
        reference: ``(S, S, S)`` map on the data's grid.
        data: ``(S, S, S)`` the data it is compared with (an average, or the mean subtomogram).
        mode: ``"auto"`` or None (invert when the centre-minus-surroundings contrasts,
            :func:`aitom.ops.reconstruction.centre_contrast`, have opposite signs), ``"yes"`` or ``"no"``.

    Returns:
        ``(reference, inverted, data_contrast)``: the reference (times -1 when inverted), whether it was, and
        the data's centre-minus-surroundings contrast (positive: protein brighter than solvent).
    """
    from aitom.ops.reconstruction import centre_contrast

    data_contrast = float(centre_contrast(data))
    if mode in (None, "auto"):
        invert = float(centre_contrast(reference.to(data))) * data_contrast < 0
    else:
        invert = mode == "yes"
    return (-reference if invert else reference), invert, data_contrast


def read_real_space_mask(
    path: Path, shape: tuple[int, ...], voxel_size_a: float, whose: str = "the maps'"
) -> torch.Tensor:
    """A real-space mask ``(Z, Y, X)`` for maps of ``shape`` with ``voxel_size_a`` Å voxels.

    A mask has to lie on the maps' grid: the same box and, where its header says (not 0 or 1 Å, which look
    unset and are not warned about), the same voxel size within 1 %; a mask drawn on another grid covers
    another region of the particle. ``whose`` names the maps in the messages ("the average's"). The weights
    are left to the caller to check.

    Raises:
        InputError: the box or a set voxel size differs from the maps' (naming ``path``).
    """
    import warnings

    from aitom.errors import InputError
    from aitom.io import HeaderWarning, read_volume

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HeaderWarning)  # an unset voxel size is taken as the maps'
        mask, header = read_volume(path)
    if tuple(mask.shape) != tuple(shape):
        raise InputError(f"mask shape {tuple(mask.shape)} differs from {whose} {tuple(shape)}", path)
    set_sizes = [size for size in header.voxel_size_a if size not in (0.0, 1.0)]
    if any(abs(size - voxel_size_a) > 1e-2 * voxel_size_a for size in set_sizes):
        raise InputError(
            f"mask voxel size {max(set_sizes, key=lambda size: abs(size - voxel_size_a)):g} Å differs from "
            f"{whose} {voxel_size_a:g} Å: a mask on another grid covers another region (aitom convert "
            "MASK.mrc OUT.mrc --resample Å, or --voxel-size of aitom convert if its header is wrong)",
            path,
        )
    return mask


def reference_on_grid(
    reference: torch.Tensor,
    reference_voxel_a: float,
    voxel_size_a: float,
    box: int,
    path: Path,
    *,
    data_voxel_size_unset: bool = False,
) -> torch.Tensor:
    """``reference`` ``(Z, Y, X)`` resampled to ``voxel_size_a`` Å and the ``box``³ box about its centre
    (:func:`aitom.geometry.rescale_volume`), padded with its edge mean; unchanged when both agree. A
    :class:`ReferenceResampledWarning` says when it was resampled.

    Raises:
        InputError: the reference's header voxel size looks unset (0 or 1 Å) and differs from
            ``voxel_size_a``; ``data_voxel_size_unset`` (the data's size is an unconfirmed 0 or 1 Å) and the
            reference's header gives another; or its box spans less than a quarter of the target's.
    """
    import warnings

    import torch

    from aitom.errors import InputError
    from aitom.geometry import rescale_volume

    same_voxel = abs(reference_voxel_a - voxel_size_a) <= 1e-3 * voxel_size_a
    if same_voxel and reference.shape == (box,) * 3:
        return reference
    if not same_voxel and reference_voxel_a in (0.0, 1.0):
        raise InputError(
            f"voxel size {reference_voxel_a:g} Å in the header looks unset, and the data's is "
            f"{voxel_size_a:g} Å: write the reference's into its header "
            "(aitom convert R.mrc R_fixed.mrc --voxel-size Å)",
            path,
        )
    if not same_voxel and data_voxel_size_unset:
        raise InputError(
            f"this reference's header gives {reference_voxel_a:g} Å voxels, while the data's "
            f"{voxel_size_a:g} Å looks unset: pass the data's --voxel-size (Å)",
            path,
        )
    if max(reference.shape) * reference_voxel_a < box * voxel_size_a / 4:
        raise InputError(
            f"the reference's box spans {max(reference.shape) * reference_voxel_a:.0f} Å, less than a "
            f"quarter of the data's {box * voxel_size_a:.0f} Å: not a map of the same structure at "
            "this scale (check both voxel sizes)",
            path,
        )
    edge = torch.ones_like(reference, dtype=torch.bool)
    edge[1:-1, 1:-1, 1:-1] = False
    resampled = rescale_volume(
        reference,
        reference_voxel_a,
        voxel_size_a,
        shape=(box,) * 3,
        padding_value=float(reference[edge].mean()),
    )
    warnings.warn(
        ReferenceResampledWarning(
            f"{path}: reference resampled from {'×'.join(map(str, reference.shape))} voxels of "
            f"{reference_voxel_a:g} Å to the data's {box}³ of {voxel_size_a:g} Å"
        ),
        stacklevel=2,
    )
    return resampled


def image_reference(name: object, star: Path) -> tuple[Path, int | None, str]:
    """Where a table's ``rlnImageName`` (or ``rlnCtfImage``) points: ``(path, index, label)``.

    ``N@FILE`` names volume ``N`` (1-based) of a stack of volumes: ``index = N − 1``; a plain name gives
    ``index = None``. Relative paths are resolved with :func:`aitom.io.relion5.resolve_relative` (beside the
    STAR file when the file is there, else against the working directory). ``label`` is the name to quote
    in messages (``N@path`` or ``path``).

    Raises:
        InputError: ``0@FILE`` (RELION's stack numbers start at 1).
    """
    from aitom.errors import InputError
    from aitom.io.relion5 import resolve_relative

    text = str(name).strip()
    number, at, rest = text.partition("@")
    index = None
    if at and number.strip().isdigit():
        index, text = int(number) - 1, rest.strip()
        if index < 0:
            raise InputError(f"{name!r}: stack positions N@FILE start at 1", star)
    path = resolve_relative(text, star)
    return path, index, str(path) if index is None else f"{index + 1}@{path}"


def relocated_names(
    table: pd.DataFrame, star: Path, out: Path, columns: tuple[str, ...] = ("rlnImageName", "rlnCtfImage")
) -> pd.DataFrame:
    """A copy of ``table`` whose ``columns`` (file names) name the same files from the output folder ``out``
    (where the new particles.star goes) as they did from the input ``star``: relative to ``out``, keeping an
    ``N@`` stack prefix."""
    import os

    table = table.copy()
    folder = out.resolve()
    for column in columns:
        if column not in table.columns:
            continue
        names = []
        for name in table[column]:
            path, index, _ = image_reference(name, star)
            relative = os.path.relpath(path.resolve(), folder)
            names.append(relative if index is None else f"{index + 1}@{relative}")
        table[column] = names
    return table
