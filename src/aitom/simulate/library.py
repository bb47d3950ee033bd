"""The class library: named macromolecular structures built from real atomic models.

Every class is made of atoms from a deposited model shipped in ``aitom/data/structures/`` (see the README
there for sources and trimming): ten complexes as deposited or as their biological assembly, plus two
symmetric assemblies of a real chain, a ring and a helical filament, for shapes that no shipped complex has.
A class may also be the user's own atomic model: wherever a class name is taken, a path to a ``.pdb``,
``.ent``, ``.cif`` or ``.mmcif`` file (optionally ``.gz``) names the deposited model in it (first model,
no hydrogens or waters, no symmetry assumed), called by its file name without the endings.
Maps are electrostatic potentials (volts, voxel averages; see
:func:`aitom.simulate.structures.atoms_to_potential`) in a cubic box with the centre of mass at voxel
``N // 2``.

Example:
    >>> "proteasome_20s" in available_classes()
    True
    >>> class_potential("hsp70_atpase", 10.0).shape  # default box: smallest even box + 2-voxel margin
    torch.Size([14, 14, 14])
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.resources
import math
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from scipy.spatial import ConvexHull, cKDTree
from scipy.spatial.transform import Rotation

from aitom.errors import InputError
from aitom.geometry.symmetry import find_symmetry_frame, point_group_rotations
from aitom.simulate.structures import atomic_masses_da, atoms_to_potential, load_atoms

__all__ = [
    "StructureClass",
    "available_classes",
    "class_atoms",
    "class_box_size",
    "class_potential",
    "class_radius_a",
    "class_symmetry_rotations",
    "default_cache_dir",
    "describe_classes",
    "get_class",
    "helical_filament",
    "is_atomic_model_path",
    "ring_of_subunits",
    "symmetry_frame",
]

#: Bump when the maps a builder produces change, so that stale disk caches are ignored.
_MAP_FORMAT_VERSION = 1
#: Voxels of empty space kept around the structure's bounding sphere in the default box.
BOX_MARGIN_VOXELS = 2

Atoms = tuple[np.ndarray, np.ndarray]


@dataclasses.dataclass(frozen=True)
class StructureClass:
    """One named class of the library.

    Attributes:
        name: registry key, e.g. ``"proteasome_20s"``.
        description: what the structure is and how it is built.
        source_files: file names in ``aitom/data/structures/`` that the builder reads (an absolute path for
            a user's model).
        builder: returns ``(coordinates_a (N, 3) float64 (x, y, z), atomic_numbers (N,) int64)``.
        symmetry: point-group (Schoenflies) or helical symmetry of the built structure.
    """

    name: str
    description: str
    source_files: tuple[str, ...]
    builder: Callable[[], Atoms]
    symmetry: str = "C1"


def _structure_path(file_name: str) -> Path:
    return Path(str(importlib.resources.files("aitom") / "data" / "structures" / file_name))


def _load_shipped(file_name: str, assembly: str | None = None) -> Atoms:
    coordinates, atomic_numbers, _ = load_atoms(_structure_path(file_name), assembly=assembly)
    return coordinates, atomic_numbers


def _centre_of_mass(coordinates_a: np.ndarray, atomic_numbers: np.ndarray) -> np.ndarray:
    masses = atomic_masses_da(atomic_numbers)
    return (coordinates_a * masses[:, None]).sum(0) / masses.sum()


def _principal_frame(coordinates_a: np.ndarray, atomic_numbers: np.ndarray) -> np.ndarray:
    """Coordinates about the centre of mass in the frame of the principal axes, longest spread along x.

    Axis signs are fixed by making the third moment along x and y positive (z completes a right-handed
    frame), so the result does not depend on the eigen-solver's sign choice.
    """
    masses = atomic_masses_da(atomic_numbers)
    centred = coordinates_a - _centre_of_mass(coordinates_a, atomic_numbers)
    _, vectors = np.linalg.eigh((centred * masses[:, None]).T @ centred)
    axes = vectors[:, ::-1].copy()
    for column in range(2):
        if (masses * (centred @ axes[:, column]) ** 3).sum() < 0:
            axes[:, column] *= -1
    axes[:, 2] = np.cross(axes[:, 0], axes[:, 1])
    return centred @ axes


def ring_of_subunits(
    coordinates_a: np.ndarray, atomic_numbers: np.ndarray, *, copies: int, radius_a: float
) -> Atoms:
    """A C``copies`` ring: a subunit repeated about the z axis.

    The subunit is put in its principal frame (longest spread radial along x, shortest along z), its
    centre of mass moved to ``(radius_a, 0, 0)``, and copy ``k`` rotated by ``360° k / copies`` about z.

    Args:
        coordinates_a: ``(N, 3)`` subunit atoms in Å, ``(x, y, z)``.
        atomic_numbers: ``(N,)``.
        copies: number of subunits ``n`` (symmetry Cn).
        radius_a: distance of each subunit's centre of mass from the axis, in Å.

    Returns:
        ``(copies * N, 3)`` coordinates (axis along z through the origin), ``(copies * N,)`` atomic numbers.
    """
    subunit = _principal_frame(coordinates_a, atomic_numbers) + np.array([radius_a, 0.0, 0.0])
    angles = 2 * math.pi * np.arange(copies) / copies
    rotations = Rotation.from_euler("z", angles[:, None]).as_matrix()  # (copies, 3, 3), active
    coordinates = np.einsum("kij,nj->kni", rotations, subunit).reshape(-1, 3)
    return coordinates, np.tile(atomic_numbers, copies)


def helical_filament(
    coordinates_a: np.ndarray,
    atomic_numbers: np.ndarray,
    *,
    copies: int,
    rise_a: float,
    twist_deg: float,
    radius_a: float,
) -> Atoms:
    """A helical filament along z: copy ``k`` is the subunit rotated by ``k·twist`` and raised by ``k·rise``.

    The subunit is put in its principal frame (longest spread radial along x, shortest along z) with its
    centre of mass at ``(radius_a, 0, 0)``; the filament is centred so that its middle copy sits at z = 0.

    Args:
        coordinates_a: ``(N, 3)`` subunit atoms in Å, ``(x, y, z)``.
        atomic_numbers: ``(N,)``.
        copies: number of subunits.
        rise_a: axial rise per subunit, Å.
        twist_deg: rotation per subunit about the axis, degrees (negative: left-handed 1-start helix).
        radius_a: distance of each subunit's centre of mass from the axis, Å.

    Returns:
        ``(copies * N, 3)`` coordinates and ``(copies * N,)`` atomic numbers.
    """
    subunit = _principal_frame(coordinates_a, atomic_numbers) + np.array([radius_a, 0.0, 0.0])
    steps = np.arange(copies) - (copies - 1) / 2
    rotations = Rotation.from_euler("z", np.deg2rad(twist_deg) * steps[:, None]).as_matrix()
    coordinates = np.einsum("kij,nj->kni", rotations, subunit)
    coordinates[..., 2] += rise_a * steps[:, None]
    return coordinates.reshape(-1, 3), np.tile(atomic_numbers, copies)


#: Ring of Hsp70 ATPase domains: 7 copies with centres of mass 65 Å from the axis (closest atoms of
#: neighbouring copies 3.7 Å apart).
RING_COPIES, RING_RADIUS_A = 7, 65.0
#: Actin-like filament of Hsp70 ATPase domains (the Hsp70 nucleotide-binding domain has the actin fold):
#: F-actin's rise and twist, 9 copies, centres of mass 28 Å from the axis (closest atoms 4.2 Å apart).
FILAMENT_COPIES, FILAMENT_RISE_A, FILAMENT_TWIST_DEG, FILAMENT_RADIUS_A = 9, 27.6, -166.6, 28.0


def _ring() -> Atoms:
    return ring_of_subunits(*_load_shipped("1s3x.pdb.gz"), copies=RING_COPIES, radius_a=RING_RADIUS_A)


def _filament() -> Atoms:
    return helical_filament(
        *_load_shipped("1s3x.pdb.gz"),
        copies=FILAMENT_COPIES,
        rise_a=FILAMENT_RISE_A,
        twist_deg=FILAMENT_TWIST_DEG,
        radius_a=FILAMENT_RADIUS_A,
    )


def _shipped(file_name: str, assembly: str | None = None) -> Callable[[], Atoms]:
    return functools.partial(_load_shipped, file_name, assembly)


_REGISTRY: dict[str, StructureClass] = {
    item.name: item
    for item in (
        StructureClass(
            "proteasome_20s",
            "T. acidophilum 20S proteasome, α7β7β7α7 barrel (cryo-EM, PDB 3J9I, 28 chains)",
            ("3j9i.pdb.gz",),
            _shipped("3j9i.pdb.gz"),
            "D7",
        ),
        StructureClass(
            "ribosome_30s",
            "T. thermophilus 30S ribosomal subunit, 16S rRNA + 20 proteins (cut from PDB 4V4R)",
            ("4v4r_30S.pdb.gz",),
            _shipped("4v4r_30S.pdb.gz"),
        ),
        StructureClass(
            "apoferritin",
            "human apoferritin 24-mer, hollow octahedral cage (PDB 6Z6U)",
            ("6z6u.pdb.gz",),
            _shipped("6z6u.pdb.gz"),
            "O",
        ),
        StructureClass(
            "rubisco",
            "RuBisCO L8S8 from A. eutrophus (PDB 1BXN, biological assembly 1)",
            ("1bxn.pdb.gz",),
            _shipped("1bxn.pdb.gz", "1"),
            "D4",
        ),
        StructureClass(
            "p97",
            "p97/VCP hexamer with ADP, stacked D1/D2 rings (PDB 3CF3, biological assembly 1)",
            ("3cf3.pdb.gz",),
            _shipped("3cf3.pdb.gz", "1"),
            "C6",
        ),
        StructureClass(
            "hsp90",
            "closed Hsp90 dimer with two Sba1 co-chaperones and ATP, elongated (PDB 2CG9)",
            ("2cg9.pdb.gz",),
            _shipped("2cg9.pdb.gz"),
            "C2",
        ),
        StructureClass(
            "nucleosome",
            "nucleosome core particle, histone octamer wrapped by 147 bp DNA, disc (PDB 1KX5)",
            ("1kx5.pdb.gz",),
            _shipped("1kx5.pdb.gz"),
            "C2",
        ),
        StructureClass(
            "cand1_cul1_roc1",
            "CAND1–CUL1–ROC1 complex, CAND1 HEAT-repeat superhelix clamped around the cullin (PDB 1U6G)",
            ("1u6g.pdb.gz",),
            _shipped("1u6g.pdb.gz"),
        ),
        StructureClass(
            "esterase",
            "L. johnsonii cinnamoyl esterase dimer with ethyl ferulate (PDB 3QM1, biological assembly 1)",
            ("3qm1.pdb.gz",),
            _shipped("3qm1.pdb.gz", "1"),
            "C2",
        ),
        StructureClass(
            "hsp70_atpase",
            "human Hsp70 ATPase (nucleotide-binding) domain with ADP, small globular (PDB 1S3X)",
            ("1s3x.pdb.gz",),
            _shipped("1s3x.pdb.gz"),
        ),
        StructureClass(
            "ring",
            f"ring of {RING_COPIES} Hsp70 ATPase domains (PDB 1S3X chain A + ligands) about z, "
            f"centres of mass {RING_RADIUS_A:g} Å from the axis",
            ("1s3x.pdb.gz",),
            _ring,
            f"C{RING_COPIES}",
        ),
        StructureClass(
            "filament",
            f"actin-like helical filament along z of {FILAMENT_COPIES} Hsp70 ATPase domains (PDB 1S3X), "
            f"rise {FILAMENT_RISE_A:g} Å, twist {FILAMENT_TWIST_DEG:g}°, radius {FILAMENT_RADIUS_A:g} Å",
            ("1s3x.pdb.gz",),
            _filament,
            f"helical, rise {FILAMENT_RISE_A:g} Å, twist {FILAMENT_TWIST_DEG:g}°",
        ),
    )
}


def available_classes() -> list[str]:
    """Names of the library's classes, in registry order."""
    return list(_REGISTRY)


#: File name endings of atomic models accepted as a class (each also with ``.gz``).
ATOMIC_MODEL_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif")


def is_atomic_model_path(name: str) -> bool:
    """Whether a class name is a path to an atomic model file (by its ending: ``ATOMIC_MODEL_SUFFIXES``)."""
    return name.lower().removesuffix(".gz").endswith(ATOMIC_MODEL_SUFFIXES)


def _model_stem(path: Path) -> str:
    name = path.name
    if name.lower().endswith(".gz"):
        name = name[:-3]
    return name[: name.rindex(".")]


@functools.cache
def _user_class(path_text: str) -> StructureClass:
    path = Path(path_text).resolve()
    coordinates, atomic_numbers, _ = load_atoms(path)  # a missing or unreadable model fails here
    return StructureClass(
        _model_stem(path),
        f"atomic model {path.name} ({len(atomic_numbers)} atoms; deposited model, no hydrogens or waters)",
        (str(path),),
        lambda: (coordinates, atomic_numbers),
    )


def get_class(name: str) -> StructureClass:
    """The :class:`StructureClass` called ``name``: a library class or a path to an atomic model file.

    A path (see :func:`is_atomic_model_path`; relative to the working directory) gives a C1 class named by
    its file name without the endings (``"models/7k00.cif.gz"`` → ``"7k00"``), built from its first model.

    Raises:
        InputError: an unknown name, or a model file that is missing or unreadable.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    if is_atomic_model_path(name):
        return _user_class(str(Path(name).resolve()))
    raise InputError(
        f"unknown structure class {name!r}; available: {', '.join(_REGISTRY)}, "
        f"or a path to an atomic model ({', '.join(ATOMIC_MODEL_SUFFIXES)}, optionally .gz)"
    )


@functools.cache
def _class_atoms(name: str) -> Atoms:
    coordinates, atomic_numbers = get_class(name).builder()
    coordinates = np.ascontiguousarray(coordinates, dtype=np.float64)
    atomic_numbers = np.ascontiguousarray(atomic_numbers, dtype=np.int64)
    coordinates.setflags(write=False)
    atomic_numbers.setflags(write=False)
    return coordinates, atomic_numbers


def class_atoms(name: str) -> Atoms:
    """Atoms of a class: ``(coordinates_a (N, 3) float64, (x, y, z) Å; atomic_numbers (N,) int64)``.

    Built once per process and returned read-only.
    """
    return _class_atoms(name)


def class_radius_a(name: str, *, kind: Literal["max", "gyration"] = "max") -> float:
    """Size of a class about its centre of mass, in Å.

    Args:
        name: class name.
        kind: ``"max"``: largest distance of an atom centre from the centre of mass (the bounding sphere
            used for boxes and packing); ``"gyration"``: mass-weighted radius of gyration.
    """
    coordinates, atomic_numbers = class_atoms(name)
    distances = np.linalg.norm(coordinates - _centre_of_mass(coordinates, atomic_numbers), axis=1)
    if kind == "max":
        return float(distances.max())
    if kind == "gyration":
        masses = atomic_masses_da(atomic_numbers)
        return float(np.sqrt((masses * distances**2).sum() / masses.sum()))
    raise ValueError(f"kind must be 'max' or 'gyration', got {kind!r}")


#: Largest nearest-atom distance counted by the symmetry misfit, Å (an atom with no partner costs this much).
_SYMMETRY_MISFIT_CAP_A = 3.0
#: Atoms in the symmetry misfit.
_MISFIT_ATOMS = 800


def symmetry_frame(coordinates_a: np.ndarray, symbol: str) -> tuple[np.ndarray, float]:
    """Rotation ``Q`` that takes the standard frame of point group ``symbol`` to the frame of a structure.

    The structure's symmetry rotations are then ``Q G Q^T`` with ``G`` =
    :func:`aitom.geometry.symmetry.point_group_rotations`. Found by
    :func:`aitom.geometry.symmetry.find_symmetry_frame` from the atoms: the misfit of a rotation ``S`` is
    the mean distance from each rotated atom ``S x`` (800 atoms drawn with a fixed seed) to its nearest atom,
    capped at 3 Å.

    Args:
        coordinates_a: ``(N, 3)`` atom positions ``(x, y, z)`` in Å, about the centre of the symmetry.
        symbol: point group (``"C6"``, ``"D7"``, ``"O"``...).

    Returns:
        ``(Q (3, 3), misfit_a)``: the frame and the largest misfit of the generators in it, Å (about 0 for an
        exactly symmetric model, below 1.5 Å for the library's approximately symmetric ones; about 2 Å for a
        rotation that is no symmetry).
    """
    tree = cKDTree(coordinates_a)
    count = min(_MISFIT_ATOMS, len(coordinates_a))
    sample = coordinates_a[np.random.default_rng(0).choice(len(coordinates_a), count, False)]

    def misfit(rotations: np.ndarray) -> np.ndarray:
        distances = [tree.query(sample @ rotation.T)[0] for rotation in rotations]
        return np.minimum(np.stack(distances), _SYMMETRY_MISFIT_CAP_A).mean(1)

    return find_symmetry_frame(misfit, symbol)


@functools.cache
def _class_symmetry_rotations(name: str) -> torch.Tensor:
    symbol = get_class(name).symmetry
    if symbol == "C1" or symbol.startswith("helical"):
        return torch.eye(3, dtype=torch.float64)[None]
    coordinates, atomic_numbers = class_atoms(name)
    frame, _ = symmetry_frame(coordinates - _centre_of_mass(coordinates, atomic_numbers), symbol)
    return point_group_rotations(symbol, frame=frame)


def class_symmetry_rotations(name: str) -> torch.Tensor:
    """``(K, 3, 3)`` float64 symmetry rotations ``S`` of a class's map, identity first:
    ``rotate_volume(class_potential(name, ...), S)`` equals the map (about its centre of mass, the box
    centre). Found from the atoms with :func:`symmetry_frame` for the class's point group; a class without
    point-group symmetry (C1, the helical filament) gives the identity alone. Computed once per process.
    """
    return _class_symmetry_rotations(name).clone()


def class_box_size(name: str, voxel_size_a: float) -> int:
    """Default cubic box edge (voxels): the smallest even ``N`` whose voxels ``N//2 ± (N/2 − 1)`` hold the
    class's bounding sphere plus ``BOX_MARGIN_VOXELS``, so that any rotation about the centre stays inside."""
    return 2 * math.ceil(class_radius_a(name) / voxel_size_a + BOX_MARGIN_VOXELS + 1)


def default_cache_dir() -> Path:
    """Directory of the on-disk map cache: ``$AITOM_CACHE`` if set, else ``~/.cache/aitom``."""
    return Path(os.environ.get("AITOM_CACHE") or Path.home() / ".cache" / "aitom")


def _cache_file(name: str, voxel_size_a: float, box_size: int, b_factor_a2: float, cache_dir: Path) -> Path:
    item = get_class(name)
    digest = hashlib.sha256(f"{_MAP_FORMAT_VERSION}|{item.description}|{item.symmetry}".encode())
    for file_name in item.source_files:
        source = Path(file_name) if Path(file_name).is_absolute() else _structure_path(file_name)
        digest.update(source.read_bytes())
    key = f"{item.name}_{voxel_size_a:.6g}A_{box_size}_B{b_factor_a2:.6g}_{digest.hexdigest()[:16]}.npy"
    return cache_dir / "structures" / key


def _write_atomically(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            np.save(stream, array)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@functools.lru_cache(maxsize=32)
def _cached_potential(
    name: str, voxel_size_a: float, box_size: int, b_factor_a2: float, cache_dir: Path
) -> torch.Tensor:
    path = _cache_file(name, voxel_size_a, box_size, b_factor_a2, cache_dir)
    if path.is_file():
        try:
            return torch.from_numpy(np.load(path))
        except (OSError, ValueError) as error:
            warnings.warn(f"ignoring unreadable cached map {path}: {error}", stacklevel=3)
    coordinates, atomic_numbers = class_atoms(name)
    potential = atoms_to_potential(
        coordinates,
        atomic_numbers,
        voxel_size_a=voxel_size_a,
        shape=(box_size,) * 3,
        centre="mass",
        b_factor_a2=b_factor_a2,
    )
    try:
        _write_atomically(path, potential.numpy())
    except OSError as error:
        warnings.warn(f"could not cache map in {path.parent}: {error}", stacklevel=3)
    return potential


def class_potential(
    name: str,
    voxel_size_a: float,
    *,
    box_size: int | None = None,
    b_factor_a2: float = 0.0,
    cache_dir: str | Path | None = None,
) -> torch.Tensor:
    """Electrostatic potential map of a library class (volts, voxel averages), centre of mass at ``N // 2``.

    Maps are cached in memory (per process) and on disk (``cache_dir``, default
    :func:`default_cache_dir`; written atomically, keyed by class, voxel size, box, B-factor and the
    source files' contents). The returned tensor is a fresh copy.

    Args:
        name: class name (see :func:`available_classes`).
        voxel_size_a: voxel edge in Å.
        box_size: cubic box edge in voxels; ``None`` gives :func:`class_box_size`.
        b_factor_a2: global B-factor (Å²) added to every atom.
        cache_dir: on-disk cache directory.

    Returns:
        ``(N, N, N)`` float32 CPU tensor.

    Raises:
        InputError: unknown class, non-positive voxel size or B < 0, or a box too small to hold the class's
            bounding sphere (``radius / voxel_size_a > N/2 − 1``).
    """
    if voxel_size_a <= 0:
        raise InputError(f"voxel size must be positive, got {voxel_size_a} Å")
    if b_factor_a2 < 0:
        raise InputError(f"B-factor must be non-negative, got {b_factor_a2} Å²")
    radius_a = class_radius_a(name)
    if box_size is None:
        box_size = class_box_size(name, voxel_size_a)
    elif box_size < 2 or radius_a / voxel_size_a > box_size / 2 - 1:
        raise InputError(
            f"structure class {name!r} (radius {radius_a:.0f} Å = {radius_a / voxel_size_a:.1f} voxels of "
            f"{voxel_size_a:g} Å) does not fit in a {box_size}³ box; use at least "
            f"{class_box_size(name, voxel_size_a) - 2 * BOX_MARGIN_VOXELS} voxels"
        )
    cache_path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return _cached_potential(name, float(voxel_size_a), int(box_size), float(b_factor_a2), cache_path).clone()


def _max_diameter_a(coordinates_a: np.ndarray) -> float:
    hull_points = coordinates_a[ConvexHull(coordinates_a).vertices]
    differences = hull_points[:, None, :] - hull_points[None, :, :]
    return float(np.sqrt((differences**2).sum(-1)).max())


def describe_classes(voxel_size_a: float = 10.0) -> str:
    """Markdown table of the library: class, description, source, symmetry, atoms, mass, size, default box.

    Masses are sums of standard atomic weights of the modelled (non-hydrogen) atoms, so they fall ~8 %
    below the true molecular mass; the maximum diameter is the largest atom–atom distance.
    """
    lines = [
        f"| class | description | source | symmetry | atoms | mass (kDa) | max diameter (Å) "
        f"| R_g (Å) | default box at {voxel_size_a:g} Å |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, item in _REGISTRY.items():
        coordinates, atomic_numbers = class_atoms(name)
        mass_kda = atomic_masses_da(atomic_numbers).sum() / 1000
        lines.append(
            f"| {name} | {item.description} | {', '.join(item.source_files)} | {item.symmetry} "
            f"| {len(atomic_numbers)} | {mass_kda:.1f} | {_max_diameter_a(coordinates):.0f} "
            f"| {class_radius_a(name, kind='gyration'):.0f} | {class_box_size(name, voxel_size_a)}³ |"
        )
    return "\n".join(lines)
