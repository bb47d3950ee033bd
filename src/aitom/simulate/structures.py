"""Atomic models → electrostatic potential maps (the simulator's particles).

The potential of a neutral atom is built from its elastic electron scattering factor in the five-Gaussian
parameterisation of Peng et al. (1996, Acta Cryst. A52, 257), the one tabulated in International Tables
for Crystallography Vol. C, Table 4.3.2.2 (fit valid for s = sinθ/λ ≤ 2 Å⁻¹; gemmi ships it as
``gemmi.Element(...).c4322``)::

    f_e(s) = Σ_i a_i exp(−b_i s²),    s = |k| / 2,  k in Å⁻¹,  a_i in Å,  b_i in Å².

A B-factor (Debye–Waller factor exp(−B s²)) is added to every b_i. The first Born approximation relates
f_e to the projected potential, f_e(k) = (2π m₀ e / h²) ∫ V(r) exp(2πi k·r) d³r, and the inverse Fourier
transform of each Gaussian gives, with β_i = b_i + B,

    V(r) = (h² / (2π m₀ e)) Σ_i a_i (4π/β_i)^{3/2} exp(−4π² r² / β_i)            [volts],

with h²/(2π m₀ e) = 47.878 V·Å². Each term is a normalised 3-D Gaussian of variance σ_i² = β_i / (8π²)
per axis, so one atom integrates to ∫V d³r = 47.878 V·Å² · Σ_i a_i (V·Å³).

Maps store the potential AVERAGED over each voxel (volts): the Gaussians are separable, so the average is
a product of three differences of error functions. This stays exact at coarse sampling (a 10 Å voxel is
much wider than an atom), and ``map.sum() * voxel_size_a**3`` equals the sum of the atoms' integrals.
Hydrogens are not in most deposited models and are skipped by default, so maps are heavy-atom potentials.
"""

from __future__ import annotations

import functools
import gzip
import math
import zlib
from pathlib import Path
from typing import Literal

import gemmi
import numpy as np
import scipy.constants
import torch

from aitom.errors import InputError

__all__ = [
    "ELECTRON_POTENTIAL_CONSTANT_V_A2",
    "atom_potential_integrals",
    "atomic_masses_da",
    "atoms_to_potential",
    "load_atoms",
    "peng_coefficients",
    "potential_from_file",
]

#: h² / (2π m₀ e) in V·Å²: converts an electron scattering amplitude (Å) into a potential integral (V·Å³).
ELECTRON_POTENTIAL_CONSTANT_V_A2: float = (
    scipy.constants.h**2 / (2 * math.pi * scipy.constants.m_e * scipy.constants.e) * 1e20
)

_MAX_ATOMIC_NUMBER = 98
_CUTOFF_SIGMAS = 4.0
_CHUNK_ELEMENTS = 1 << 22

Centre = Literal["mass", "box"] | None


@functools.lru_cache(maxsize=1)
def _peng_table() -> np.ndarray:
    table = np.zeros((_MAX_ATOMIC_NUMBER + 1, 2, 5), dtype=np.float64)
    for z in range(1, _MAX_ATOMIC_NUMBER + 1):
        coefs = gemmi.Element(z).c4322.get_coefs()
        table[z, 0] = coefs[:5]
        table[z, 1] = coefs[5:]
    return table


def peng_coefficients(atomic_numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Peng (1996) five-Gaussian electron scattering coefficients.

    Args:
        atomic_numbers: ``(N,)`` integers in 1..98.

    Returns:
        ``(a, b)``: two ``(N, 5)`` float64 arrays, ``a`` in Å and ``b`` in Å², such that
        ``f_e(s) = Σ a_i exp(−b_i s²)`` with ``s = sinθ/λ`` in Å⁻¹.
    """
    atomic_numbers = np.asarray(atomic_numbers)
    if atomic_numbers.size and (atomic_numbers.min() < 1 or atomic_numbers.max() > _MAX_ATOMIC_NUMBER):
        raise ValueError(f"atomic numbers must lie in 1..{_MAX_ATOMIC_NUMBER}")
    table = _peng_table()[atomic_numbers.astype(np.int64)]
    return table[..., 0, :], table[..., 1, :]


def atom_potential_integrals(atomic_numbers: np.ndarray) -> np.ndarray:
    """Integral of each atom's potential over all space, ``47.878 V·Å² · f_e(0)``.

    Args:
        atomic_numbers: ``(N,)`` integers in 1..98.

    Returns:
        ``(N,)`` float64, in V·Å³ (independent of the B-factor).
    """
    a, _ = peng_coefficients(atomic_numbers)
    return ELECTRON_POTENTIAL_CONSTANT_V_A2 * a.sum(axis=-1)


def atomic_masses_da(atomic_numbers: np.ndarray) -> np.ndarray:
    """Standard atomic weights (Da) of ``(N,)`` atomic numbers, as ``(N,)`` float64."""
    weights = np.array([0.0] + [gemmi.Element(z).weight for z in range(1, _MAX_ATOMIC_NUMBER + 1)])
    return weights[np.asarray(atomic_numbers, dtype=np.int64)]


def load_atoms(
    path: str | Path,
    *,
    assembly: str | None = None,
    keep_hydrogens: bool = False,
    keep_waters: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read the atoms of the first model of a PDB or mmCIF file (optionally gzipped), via gemmi.

    Alternate locations keep the first conformer. Waters and hydrogens (and deuterium) are skipped unless
    asked for.

    Args:
        path: ``.pdb``, ``.ent``, ``.cif``, with or without ``.gz``.
        assembly: name of a biological assembly recorded in the file (PDB ``REMARK 350`` or mmCIF
            ``_pdbx_struct_assembly``, e.g. ``"1"``) to build instead of the deposited model.
        keep_hydrogens: keep H and D atoms.
        keep_waters: keep water molecules.

    Returns:
        ``(coordinates_a, atomic_numbers, b_factors_a2)``: ``(N, 3)`` float64 Å in ``(x, y, z)`` order,
        ``(N,)`` int64, ``(N,)`` float64 Å².

    Raises:
        InputError: the file is missing, unreadable or (gzip) truncated, the assembly does not exist, an atom
            has an unknown element or coordinates that are not finite, or no atoms are left.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("no such atomic model file", path=path)
    if path.name.lower().endswith(".gz"):
        _check_gzip(path)
    try:
        structure = gemmi.read_structure(str(path))
    except (RuntimeError, ValueError, OSError) as error:
        raise InputError(f"cannot read atomic model: {' '.join(str(error).split())}", path=path) from error
    if len(structure) == 0:
        raise InputError("the file contains no atoms", path=path)
    for index in range(len(structure) - 1, 0, -1):
        del structure[index]
    structure.remove_alternative_conformations()
    if not keep_hydrogens:
        structure.remove_hydrogens()
    if not keep_waters:
        structure.remove_waters()
    if assembly is not None:
        names = [item.name for item in structure.assemblies]
        if assembly not in names:
            raise InputError(f"no biological assembly {assembly!r} (the file has {names})", path=path)
        structure.transform_to_assembly(assembly, gemmi.HowToNameCopiedChain.AddNumber, merge_dist=0.0)

    coordinates, atomic_numbers, b_factors = [], [], []
    for chain in structure[0]:
        for residue in chain:
            for atom in residue:
                coordinates.append((atom.pos.x, atom.pos.y, atom.pos.z))
                atomic_numbers.append(atom.element.atomic_number)
                b_factors.append(atom.b_iso)
    if not coordinates:
        raise InputError("the file contains no atoms after removing waters and hydrogens", path=path)
    atomic_numbers_array = np.asarray(atomic_numbers, dtype=np.int64)
    unknown = (atomic_numbers_array < 1) | (atomic_numbers_array > _MAX_ATOMIC_NUMBER)
    if unknown.any():
        raise InputError(f"{int(unknown.sum())} atoms have an unknown element", path=path)
    coordinates_array = np.asarray(coordinates, dtype=np.float64)
    not_finite = ~np.isfinite(coordinates_array).all(axis=1)
    if not_finite.any():
        raise InputError(
            f"{int(not_finite.sum())} atoms have coordinates that are not finite numbers", path=path
        )
    return (
        coordinates_array,
        atomic_numbers_array,
        np.asarray(b_factors, dtype=np.float64),
    )


def _check_gzip(path: Path) -> None:
    """Read a gzipped model to its end: a truncated or damaged stream raises InputError (a reader that stops
    at the damage would build the atoms before it as if they were the whole model). A file without the gzip
    magic number is left to the model reader, which reads it as plain text."""
    with path.open("rb") as stream:
        if stream.read(2) != b"\x1f\x8b":
            return
    try:
        with gzip.open(path) as stream:
            while stream.read(1 << 22):
                pass
    except (OSError, EOFError, zlib.error) as error:
        raise InputError(f"cannot read atomic model: damaged gzip file ({error})", path=path) from None


def _as_tensor(values: np.ndarray | torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.to(device=device, dtype=dtype)
    return torch.tensor(np.asarray(values), device=device, dtype=dtype)


def atoms_to_potential(
    coordinates_a: np.ndarray | torch.Tensor,
    atomic_numbers: np.ndarray | torch.Tensor,
    *,
    voxel_size_a: float,
    shape: tuple[int, int, int] | None = None,
    centre: Centre = "mass",
    b_factor_a2: float | np.ndarray | torch.Tensor = 0.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Electrostatic potential of a set of atoms, averaged over each voxel (volts).

    Each atom contributes ``47.878 V·Å² Σ_i a_i (4π/β_i)^{3/2} exp(−4π² r²/β_i)``, β_i = b_i + B (Peng 1996
    coefficients, see the module docstring), integrated exactly over each voxel with error functions
    within ±4σ of the widest Gaussian and divided by the voxel volume. Atoms are processed in chunks so
    memory stays bounded. Differentiable with respect to ``coordinates_a`` (and ``b_factor_a2``) when they
    are tensors that require grad.

    Args:
        coordinates_a: ``(N, 3)`` atom positions in Å, ``(x, y, z)`` order.
        atomic_numbers: ``(N,)`` integers in 1..98.
        voxel_size_a: voxel edge in Å.
        shape: output ``(Z, Y, X)``; ``None`` gives, per axis, the smallest even size holding every
            atom (with the Gaussians' 4σ reach) around the chosen centre (``centre`` must not be None).
        centre: ``"mass"`` puts the centre of mass (standard atomic weights) at voxel ``N // 2`` of each
            axis, ``"box"`` puts the middle of the atoms' bounding box there, ``None`` uses the coordinates
            as they are, with the centre of voxel ``i`` at ``i * voxel_size_a`` Å. Atoms outside the box
            are clipped.
        b_factor_a2: global B-factor (Å²) or ``(N,)`` per-atom B-factors, added to every b_i; ≥ 0.
        device: output device (default: that of ``coordinates_a`` when a tensor, else CPU).
        dtype: output floating dtype.

    Returns:
        ``(Z, Y, X)`` tensor of voxel-averaged potential in volts; ``sum * voxel_size_a**3`` is the total
        potential integral in V·Å³.

    Example:
        >>> import numpy as np
        >>> volume = atoms_to_potential(np.zeros((1, 3)), np.array([6]), voxel_size_a=1.0, shape=(8, 8, 8))
        >>> volume.shape
        torch.Size([8, 8, 8])
        >>> round(float(volume.sum()), 1)  # one carbon atom: 47.878 V·Å² × Σa_i = 120.1 V·Å³
        120.1
    """
    if voxel_size_a <= 0:
        raise ValueError(f"voxel_size_a must be positive, got {voxel_size_a}")
    if device is None:
        device = coordinates_a.device if isinstance(coordinates_a, torch.Tensor) else torch.device("cpu")
    device = torch.device(device)
    atomic_numbers_np = (
        atomic_numbers.detach().cpu().numpy() if isinstance(atomic_numbers, torch.Tensor) else atomic_numbers
    )
    atomic_numbers_np = np.asarray(atomic_numbers_np, dtype=np.int64).reshape(-1)
    coordinates = _as_tensor(coordinates_a, device, dtype)
    if coordinates.ndim != 2 or coordinates.shape[1] != 3:
        raise ValueError(f"coordinates_a must have shape (N, 3), got {tuple(coordinates.shape)}")
    n_atoms = coordinates.shape[0]
    if atomic_numbers_np.shape[0] != n_atoms:
        raise ValueError(f"{n_atoms} coordinates but {atomic_numbers_np.shape[0]} atomic numbers")
    if n_atoms == 0:
        raise ValueError("no atoms")
    if centre not in ("mass", "box", None):
        raise ValueError(f"centre must be 'mass', 'box' or None, got {centre!r}")
    if shape is None and centre is None:
        raise ValueError("shape=None needs a centre ('mass' or 'box')")

    a_np, b_np = peng_coefficients(atomic_numbers_np)
    b_factors = _as_tensor(b_factor_a2, device, dtype)
    if b_factors.ndim not in (0, 1) or (b_factors.ndim == 1 and b_factors.shape[0] != n_atoms):
        raise ValueError(f"b_factor_a2 must be a scalar or have shape ({n_atoms},)")
    if bool((b_factors < 0).any()):
        raise ValueError("b_factor_a2 must be non-negative")
    weights = torch.as_tensor(ELECTRON_POTENTIAL_CONSTANT_V_A2 * a_np, device=device, dtype=dtype)  # (N, 5)
    widths = torch.as_tensor(b_np, device=device, dtype=dtype) + b_factors.reshape(-1, 1)  # β_i, Å²
    sigmas_voxels = torch.sqrt(widths / (8 * math.pi**2)) / voxel_size_a  # (N, 5)
    reach = math.ceil(_CUTOFF_SIGMAS * float(sigmas_voxels.max()))

    if centre == "mass":
        masses = torch.as_tensor(atomic_masses_da(atomic_numbers_np), device=device, dtype=dtype)
        origin = (coordinates * masses[:, None]).sum(0) / masses.sum()
    elif centre == "box":
        origin = (coordinates.amin(0) + coordinates.amax(0)) / 2
    else:
        origin = torch.zeros(3, device=device, dtype=dtype)
    if shape is None:
        relative = (coordinates - origin).detach() / voxel_size_a
        lower = (-relative.amin(0)).clamp(min=0) + reach + 0.5
        upper = relative.amax(0).clamp(min=0) + reach + 1.5
        half = torch.ceil(torch.maximum(lower, upper)).to(torch.int64).tolist()  # (x, y, z)
        shape = (2 * half[2], 2 * half[1], 2 * half[0])
    shape = tuple(int(size) for size in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be three positive sizes (Z, Y, X), got {shape}")
    box_centre = torch.tensor(
        [shape[2] // 2, shape[1] // 2, shape[0] // 2] if centre is not None else [0, 0, 0],
        device=device,
        dtype=dtype,
    )
    positions = (coordinates - origin) / voxel_size_a + box_centre  # (N, 3) voxel units, (x, y, z)
    return _splat_gaussians(positions, weights, sigmas_voxels, reach, shape, voxel_size_a)


def _splat_gaussians(
    positions: torch.Tensor,
    weights: torch.Tensor,
    sigmas_voxels: torch.Tensor,
    reach: int,
    shape: tuple[int, int, int],
    voxel_size_a: float,
) -> torch.Tensor:
    """Add voxel averages of weighted normalised 3-D Gaussians (``(N, G)`` each) into a ``shape`` grid."""
    device, dtype = positions.device, positions.dtype
    size_z, size_y, size_x = shape
    window = 2 * reach + 1
    offsets = torch.arange(-reach, reach + 1, device=device, dtype=dtype)
    edges = torch.cat([offsets - 0.5, offsets[-1:] + 0.5])  # (W + 1,)
    sizes_xyz = torch.tensor([size_x, size_y, size_z], device=device)
    flat = torch.zeros(size_z * size_y * size_x, device=device, dtype=dtype)
    n_gaussians = weights.shape[1]
    chunk = max(1, _CHUNK_ELEMENTS // (n_gaussians * window**3))
    for start in range(0, positions.shape[0], chunk):
        position = positions[start : start + chunk]
        nearest = torch.round(position.detach())
        # Per-axis voxel averages of each Gaussian: (n, G, 3, W); erf of edge offsets over σ√2.
        scaled_edges = (nearest - position)[:, None, :, None] + edges
        scaled_edges = scaled_edges / (sigmas_voxels[start : start + chunk, :, None, None] * math.sqrt(2))
        profile = torch.diff(torch.erf(scaled_edges), dim=-1) / (2 * voxel_size_a)
        values = torch.einsum(
            "ng,ngz,ngy,ngx->nzyx",
            weights[start : start + chunk],
            profile[:, :, 2],
            profile[:, :, 1],
            profile[:, :, 0],
        )
        index = nearest.to(torch.int64)[:, :, None] + offsets.to(torch.int64)  # (n, 3, W), (x, y, z)
        inside = (index >= 0) & (index < sizes_xyz[:, None])
        index = torch.minimum(index.clamp(min=0), (sizes_xyz - 1)[:, None])
        flat_index = (
            index[:, 2, :, None, None] * (size_y * size_x) + index[:, 1, None, :, None] * size_x
        ) + index[:, 0, None, None, :]
        mask = inside[:, 2, :, None, None] & inside[:, 1, None, :, None] & inside[:, 0, None, None, :]
        values = torch.where(mask, values, torch.zeros((), device=device, dtype=dtype))
        flat = flat.index_add(0, flat_index.reshape(-1), values.reshape(-1))
    return flat.reshape(shape)


def potential_from_file(
    path: str | Path,
    voxel_size_a: float,
    *,
    shape: tuple[int, int, int] | None = None,
    centre: Centre = "mass",
    assembly: str | None = None,
    b_factor_a2: float = 0.0,
    use_file_b_factors: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Voxel-averaged electrostatic potential (volts) of the atoms in a PDB/mmCIF file.

    Args:
        path: atomic model (see :func:`load_atoms`).
        voxel_size_a: voxel edge in Å.
        shape: output ``(Z, Y, X)`` or ``None`` (see :func:`atoms_to_potential`).
        centre: ``"mass"``, ``"box"`` or ``None`` (see :func:`atoms_to_potential`).
        assembly: biological assembly to build (see :func:`load_atoms`).
        b_factor_a2: global B-factor in Å², added to every atom.
        use_file_b_factors: also add each atom's B-factor from the file.
        device: output device (default CPU).
        dtype: output floating dtype.

    Returns:
        ``(Z, Y, X)`` potential in volts.
    """
    if voxel_size_a <= 0:
        raise InputError(f"voxel size must be positive, got {voxel_size_a} Å", path=path)
    coordinates, atomic_numbers, b_factors = load_atoms(path, assembly=assembly)
    total_b = b_factors + b_factor_a2 if use_file_b_factors else b_factor_a2
    if np.any(np.asarray(total_b) < 0):
        raise InputError("B-factors must be non-negative", path=path)
    return atoms_to_potential(
        coordinates,
        atomic_numbers,
        voxel_size_a=voxel_size_a,
        shape=shape,
        centre=centre,
        b_factor_a2=total_b,
        device=device,
        dtype=dtype,
    )
