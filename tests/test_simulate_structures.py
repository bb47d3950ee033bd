"""aitom.simulate.structures and aitom.simulate.library: atoms → potential, checked against gemmi's
DensityCalculatorE, the analytic five-Gaussian potential, Gauss–Legendre quadrature and symmetry."""

from __future__ import annotations

import importlib.resources
import math
import os
from pathlib import Path

import gemmi
import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.transform import Rotation
from scipy.special import roots_legendre

from aitom.errors import InputError
from aitom.simulate import library
from aitom.simulate.library import (
    available_classes,
    class_atoms,
    class_box_size,
    class_potential,
    class_radius_a,
    describe_classes,
)
from aitom.simulate.structures import (
    ELECTRON_POTENTIAL_CONSTANT_V_A2,
    atom_potential_integrals,
    atoms_to_potential,
    load_atoms,
    peng_coefficients,
    potential_from_file,
)

# Peng et al. (1996) / International Tables C, Table 4.3.2.2, typed from the table: a_i (Å), b_i (Å²).
PENG_1996 = {
    6: ([0.0893, 0.2563, 0.7570, 1.0487, 0.3575], [0.2465, 1.7100, 6.4094, 18.6113, 50.2523]),
    7: ([0.1022, 0.3219, 0.7982, 0.8197, 0.1715], [0.2451, 1.7481, 6.1925, 17.3894, 48.1431]),
    8: ([0.0974, 0.2921, 0.6910, 0.6990, 0.2039], [0.2067, 1.3815, 4.6943, 12.7105, 32.4726]),
}
# h² / (2π m₀ e), e.g. Kirkland, Advanced Computing in Electron Microscopy (2010), eq. 5.9.
KIRKLAND_CONSTANT_V_A2 = 47.878


def analytic_potential(r2_a2: np.ndarray, atomic_number: int, b_factor_a2: float) -> np.ndarray:
    """V(r) = 47.878 Σ a_i (4π/β_i)^{3/2} exp(−4π² r²/β_i), β_i = b_i + B, from the typed table."""
    a, b = (np.asarray(values)[:, None] for values in PENG_1996[atomic_number])
    beta = b + b_factor_a2
    terms = a * (4 * np.pi / beta) ** 1.5 * np.exp(-4 * np.pi**2 * np.ravel(r2_a2)[None] / beta)
    return KIRKLAND_CONSTANT_V_A2 * terms.sum(0).reshape(np.shape(r2_a2))


def shipped(file_name: str) -> Path:
    return Path(str(importlib.resources.files("aitom") / "data" / "structures" / file_name))


def rotate_about_centre(volume: np.ndarray, matrix_xyz: np.ndarray, shift_xyz=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Trilinear ``out(x) = in(Rᵀ(x − c − t) + c)`` with c the voxel N//2 (x, y, z order), via scipy."""
    flip = np.eye(3)[::-1]  # (x, y, z) <-> (z, y, x)
    inverse_zyx = flip @ matrix_xyz.T @ flip
    centre = np.array(volume.shape) // 2
    shift = flip @ np.asarray(shift_xyz)
    offset = centre - inverse_zyx @ (centre + shift)
    return ndimage.affine_transform(volume, inverse_zyx, offset=offset, order=1)


def correlation(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Pearson correlation over the last three axes (broadcast over leading ones)."""
    first = first - first.mean(axis=(-3, -2, -1), keepdims=True)
    second = second - second.mean(axis=(-3, -2, -1), keepdims=True)
    numerator = (first * second).sum(axis=(-3, -2, -1))
    return numerator / np.sqrt((first**2).sum(axis=(-3, -2, -1)) * (second**2).sum(axis=(-3, -2, -1)))


def unit_vectors(volumes: np.ndarray) -> np.ndarray:
    """Flatten the last three axes, subtract the mean and scale to unit norm (dot product = correlation)."""
    flat = volumes.reshape(*volumes.shape[:-3], -1)
    flat = flat - flat.mean(axis=-1, keepdims=True)
    return flat / np.linalg.norm(flat, axis=-1, keepdims=True)


@pytest.fixture(scope="module", autouse=True)
def map_cache(tmp_path_factory) -> Path:
    """Keep the on-disk map cache of these tests out of the user's home."""
    directory = tmp_path_factory.mktemp("aitom_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AITOM_CACHE", str(directory))
        yield directory


@pytest.fixture(scope="module")
def hsp70_structure() -> gemmi.Structure:
    structure = gemmi.read_structure(str(shipped("1s3x.pdb.gz")))
    structure.remove_alternative_conformations()
    structure.remove_hydrogens()
    structure.remove_waters()
    return structure


# ---------------------------------------------------------------- scattering factors and constants


def test_peng_coefficients_match_the_published_table():
    a, b = peng_coefficients(np.array([6, 7, 8]))
    expected_a = np.array([PENG_1996[z][0] for z in (6, 7, 8)])
    expected_b = np.array([PENG_1996[z][1] for z in (6, 7, 8)])
    np.testing.assert_allclose(a, expected_a, atol=1e-4)
    np.testing.assert_allclose(b, expected_b, atol=1e-4)
    assert pytest.approx(KIRKLAND_CONSTANT_V_A2, rel=1e-4) == ELECTRON_POTENTIAL_CONSTANT_V_A2
    with pytest.raises(ValueError, match="atomic numbers"):
        peng_coefficients(np.array([0]))


# ---------------------------------------------------------------- one atom: analytic profile, quadrature


def test_single_carbon_profile_matches_the_analytic_five_gaussian_sum(device):
    voxel_size_a, size = 0.1, 64
    volume = atoms_to_potential(
        torch.zeros(1, 3, device=device, dtype=torch.float64),
        np.array([6]),
        voxel_size_a=voxel_size_a,
        shape=(size, size, size),
        centre="box",
        b_factor_a2=30.0,
        dtype=torch.float64,
    )
    assert volume.device.type == device.type
    profile = volume[size // 2, size // 2, :].cpu().numpy()  # along x through the atom
    radius = (np.arange(size) - size // 2) * voxel_size_a
    expected = analytic_potential(radius**2, 6, 30.0)
    # voxel averages of 0.1 Å vs point values: second-order difference ≈ h²∇²V/24, 0.3 % at the peak
    np.testing.assert_allclose(profile, expected, rtol=0, atol=5e-3 * expected.max())
    assert profile.argmax() == size // 2


def test_voxel_averages_match_gauss_legendre_quadrature():
    voxel_size_a, size, b_factor = 1.0, 9, 5.0
    atom = np.array([0.3, -0.2, 0.1])  # Å from the centre of voxel 4 (centre=None: voxel i at i Å)
    volume = atoms_to_potential(
        (atom + 4.0)[None],
        np.array([8]),
        voxel_size_a=voxel_size_a,
        shape=(size,) * 3,
        centre=None,
        b_factor_a2=b_factor,
        dtype=torch.float64,
    ).numpy()
    nodes, weights = roots_legendre(24)
    nodes, weights = nodes / 2, weights / 2  # on [-1/2, 1/2]
    block = np.empty((5, 5, 5))
    for iz, z in enumerate(range(-2, 3)):
        for iy, y in enumerate(range(-2, 3)):
            for ix, x in enumerate(range(-2, 3)):
                gx, gy, gz = np.meshgrid(x + nodes - atom[0], y + nodes - atom[1], z + nodes - atom[2])
                w = weights[:, None, None] * weights[None, :, None] * weights[None, None, :]
                block[iz, iy, ix] = (analytic_potential(gx**2 + gy**2 + gz**2, 8, b_factor) * w).sum()
    np.testing.assert_allclose(volume[2:7, 2:7, 2:7], block, rtol=0, atol=1e-4 * block.max())


def test_axis_order_and_box_centres():
    voxel_size_a = 2.0
    single = atoms_to_potential(
        np.array([[3.0, 5.0, 7.0]]) * voxel_size_a,
        np.array([6]),
        voxel_size_a=voxel_size_a,
        shape=(10, 12, 14),
        centre=None,
    )
    assert np.unravel_index(int(single.argmax()), single.shape) == (7, 5, 3)  # (z, y, x)

    pair = np.array([[0.0, 0.0, 0.0], [10.0, 4.0, -6.0]])
    for centre in ("mass", "box"):
        volume = atoms_to_potential(
            pair, np.array([6, 6]), voxel_size_a=1.0, shape=(32, 31, 30), centre=centre
        )
        grids = np.meshgrid(*(np.arange(n) for n in volume.shape), indexing="ij")
        centroid = [float((g * volume.numpy()).sum() / volume.sum()) for g in grids]
        np.testing.assert_allclose(centroid, [16, 15, 15], atol=1e-3)  # N // 2 per axis

    auto = atoms_to_potential(pair, np.array([6, 6]), voxel_size_a=1.0)
    assert all(n % 2 == 0 for n in auto.shape)
    assert float(auto.sum()) == pytest.approx(2 * float(atom_potential_integrals(np.array([6]))[0]), rel=1e-4)


def test_gradient_with_respect_to_coordinates():
    coordinates = torch.tensor([[2.2, 3.1, 2.8], [3.6, 2.4, 3.3]], dtype=torch.float64, requires_grad=True)

    def potential(xyz: torch.Tensor) -> torch.Tensor:
        return atoms_to_potential(
            xyz,
            np.array([6, 8]),
            voxel_size_a=1.0,
            shape=(6, 6, 6),
            centre=None,
            b_factor_a2=20.0,
            dtype=torch.float64,
        )

    assert torch.autograd.gradcheck(potential, (coordinates,), fast_mode=True)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        atoms_to_potential(np.zeros((2, 2)), np.array([6, 6]), voxel_size_a=1.0)
    with pytest.raises(ValueError, match="atomic numbers"):
        atoms_to_potential(np.zeros((2, 3)), np.array([6]), voxel_size_a=1.0)
    with pytest.raises(ValueError, match="positive"):
        atoms_to_potential(np.zeros((1, 3)), np.array([6]), voxel_size_a=0.0)
    with pytest.raises(ValueError, match="centre"):
        atoms_to_potential(np.zeros((1, 3)), np.array([6]), voxel_size_a=1.0, centre=None)
    with pytest.raises(ValueError, match="non-negative"):
        atoms_to_potential(np.zeros((1, 3)), np.array([6]), voxel_size_a=1.0, b_factor_a2=-1.0)


# ---------------------------------------------------------------- a real model against gemmi


def test_matches_gemmi_density_calculator_on_hsp70(hsp70_structure):
    """1S3X at 1.5 Å against gemmi.DensityCalculatorE (Peng coefficients, file B-factors).

    (a) gemmi sampled at 0.5 Å and averaged over 3×3×3 blocks = voxel averages at 1.5 Å;
    (b) gemmi sampled at 1.5 Å with a blur equal to the box filter's variance (B = 8π² h²/12).
    """
    coordinates, atomic_numbers, b_factors = load_atoms(shipped("1s3x.pdb.gz"))
    assert len(atomic_numbers) == hsp70_structure[0].count_atom_sites()
    voxel_size_a = 1.5
    shift = 8.0 - coordinates.min(0)  # put every atom ≥ 8 Å inside the periodic cell
    shape_xyz = np.ceil((coordinates.max(0) + shift + 8.0) / voxel_size_a).astype(int)
    ours = atoms_to_potential(
        coordinates + shift,
        atomic_numbers,
        voxel_size_a=voxel_size_a,
        shape=tuple(int(n) for n in shape_xyz[::-1]),
        centre=None,
        b_factor_a2=b_factors,
        dtype=torch.float64,
    ).numpy()

    model = hsp70_structure[0].clone()
    model.transform_pos_and_adp(gemmi.Transform(gemmi.Mat33(), gemmi.Vec3(*shift)))
    cell = gemmi.UnitCell(*(shape_xyz * voxel_size_a), 90, 90, 90)

    def gemmi_density(samples_per_voxel: int, blur: float) -> np.ndarray:
        calculator = gemmi.DensityCalculatorE()
        calculator.grid.set_unit_cell(cell)
        calculator.grid.set_size(*(int(n) * samples_per_voxel for n in shape_xyz))
        calculator.blur = blur
        calculator.add_model_density_to_grid(model)
        return np.array(calculator.grid, copy=True).transpose(2, 1, 0)  # (x, y, z) -> (z, y, x)

    fine = np.roll(gemmi_density(3, 0.0), 1, axis=(0, 1, 2))  # point 3i−1, 3i, 3i+1 -> block i
    blocks = fine.reshape(ours.shape[0], 3, ours.shape[1], 3, ours.shape[2], 3).mean(axis=(1, 3, 5))
    assert correlation(ours, blocks) > 0.999
    assert ours.sum() / blocks.sum() == pytest.approx(KIRKLAND_CONSTANT_V_A2, rel=2e-3)

    points = gemmi_density(1, 8 * math.pi**2 * voxel_size_a**2 / 12)
    assert correlation(ours, points) > 0.98


def test_total_potential_is_the_sum_of_atom_integrals():
    coordinates, atomic_numbers, _ = load_atoms(shipped("1bxn.pdb.gz"), assembly="1")
    assert len(atomic_numbers) == 2 * 18144  # L8S8 from the L4S4 asymmetric unit
    expected = atom_potential_integrals(atomic_numbers).sum()
    for voxel_size_a in (10.0, 3.0):
        volume = atoms_to_potential(coordinates, atomic_numbers, voxel_size_a=voxel_size_a)
        assert float(volume.sum()) * voxel_size_a**3 == pytest.approx(expected, rel=1e-2)
    # and from the element counts with the typed Peng table (C, N, O dominate; S, P from gemmi)
    counts = {z: int((atomic_numbers == z).sum()) for z in np.unique(atomic_numbers)}
    typed = sum(counts.pop(z) * sum(PENG_1996[z][0]) for z in (6, 7, 8))
    rest = sum(n * peng_coefficients(np.array([z]))[0].sum() for z, n in counts.items())
    assert expected == pytest.approx(KIRKLAND_CONSTANT_V_A2 * (typed + rest), rel=1e-4)


def test_devices_and_dtypes_agree(device):
    coordinates, atomic_numbers, _ = load_atoms(shipped("1s3x.pdb.gz"))
    reference = atoms_to_potential(coordinates, atomic_numbers, voxel_size_a=4.0, dtype=torch.float64)
    result = atoms_to_potential(
        torch.as_tensor(coordinates, device=device), atomic_numbers, voxel_size_a=4.0, dtype=torch.float32
    )
    assert result.device.type == device.type and result.dtype == torch.float32
    torch.testing.assert_close(result.cpu().double(), reference, rtol=0, atol=1e-4 * float(reference.max()))


# ---------------------------------------------------------------- reading files


PDB_TEXT = """\
MODEL        1
ATOM      1  N   ALA A   1       1.000   2.000   3.000  1.00 10.00           N
ATOM      2  CA AALA A   1       2.000   2.000   3.000  0.60 11.00           C
ATOM      3  CA BALA A   1       2.500   2.000   3.000  0.40 12.00           C
ATOM      4  H   ALA A   1       1.000   1.000   3.000  1.00 10.00           H
HETATM    5  O   HOH A 101       5.000   5.000   5.000  1.00 20.00           O
HETATM    6 ZN    ZN A 102       6.000   5.000   5.000  1.00 30.00          ZN
ENDMDL
MODEL        2
ATOM      1  N   ALA A   1       9.000   9.000   9.000  1.00 10.00           N
ENDMDL
END
"""


def test_load_atoms_reads_first_model_first_altloc_no_waters_no_hydrogens(tmp_path):
    path = tmp_path / "tiny.pdb"
    path.write_text(PDB_TEXT)
    coordinates, atomic_numbers, b_factors = load_atoms(path)
    np.testing.assert_array_equal(atomic_numbers, [7, 6, 30])
    np.testing.assert_allclose(coordinates, [[1, 2, 3], [2, 2, 3], [6, 5, 5]])
    np.testing.assert_allclose(b_factors, [10, 11, 30])
    _, with_all, _ = load_atoms(path, keep_hydrogens=True, keep_waters=True)
    np.testing.assert_array_equal(with_all, [7, 6, 1, 8, 30])

    cif = tmp_path / "tiny.cif"
    structure = gemmi.read_structure(str(path))
    structure.setup_entities()
    structure.make_mmcif_document().write_file(str(cif))
    np.testing.assert_allclose(load_atoms(cif)[0], coordinates)

    volume = potential_from_file(path, 1.0, use_file_b_factors=True)
    expected = atom_potential_integrals(atomic_numbers).sum()
    assert float(volume.sum()) == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such"),
        ("", "no atoms"),
        ("HEADER    nothing here\nEND\n", "no atoms"),
        ("ATOM  garbage\n", "cannot read"),
    ],
)
def test_load_atoms_bad_files_raise_input_error(tmp_path, content, message):
    path = tmp_path / "bad.pdb"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match=message) as error:
        load_atoms(path)
    assert error.value.path == path


def test_missing_assembly_and_bad_voxel_raise_input_error():
    with pytest.raises(InputError, match="assembly"):
        load_atoms(shipped("1s3x.pdb.gz"), assembly="7")
    with pytest.raises(InputError, match="positive"):
        potential_from_file(shipped("1s3x.pdb.gz"), -1.0)


# ---------------------------------------------------------------- the class library


def test_every_class_builds_at_10_a_into_its_default_box():
    assert len(available_classes()) >= 8
    for name in available_classes():
        volume = class_potential(name, 10.0)
        size = class_box_size(name, 10.0)
        assert volume.shape == (size, size, size) and size % 2 == 0 and volume.dtype == torch.float32
        assert class_radius_a(name) / 10.0 + library.BOX_MARGIN_VOXELS <= size / 2 - 1
        _, atomic_numbers = class_atoms(name)
        expected = atom_potential_integrals(atomic_numbers).sum()
        assert float(volume.sum()) * 1000.0 == pytest.approx(expected, rel=1e-3)  # nothing clipped
        grids = np.meshgrid(*(np.arange(size),) * 3, indexing="ij")
        centroid = [float((g * volume.numpy()).sum() / volume.sum()) for g in grids]
        np.testing.assert_allclose(centroid, [size // 2] * 3, atol=0.5)  # potential centroid ≈ mass centre


def test_classes_are_clearly_distinct_at_10_a():
    names = available_classes()
    volumes = np.stack([class_potential(name, 10.0, box_size=32).numpy() for name in names])
    rotations = [np.eye(3), *Rotation.random(199, random_state=0).as_matrix()]
    # best[i, j]: max over rotations R of corr(class i, R · class j), as products of unit vectors
    references = unit_vectors(volumes)  # (classes, voxels)
    columns = []
    for volume in volumes:
        rotated = unit_vectors(np.stack([rotate_about_centre(volume, r) for r in rotations]))
        columns.append((references @ rotated.T).max(axis=-1))
    best = np.stack(columns, axis=1)
    matrix = "\n".join(f"{a:>15s} " + " ".join(f"{c:5.2f}" for c in row) for a, row in zip(names, best))
    print("\nmax correlation over 200 rotations at 10 Å, 32³:\n" + matrix)
    np.testing.assert_allclose(np.diag(best), 1.0, atol=1e-5)
    off_diagonal = best[~np.eye(len(names), dtype=bool)]
    assert off_diagonal.max() < 0.9, matrix


def test_ring_has_its_cyclic_symmetry_and_filament_its_screw_symmetry():
    ring = class_potential("ring", 10.0).numpy()
    copies = library.RING_COPIES
    for turn, bound in ((360.0 / copies, lambda c: c > 0.95), (180.0 / copies, lambda c: c < 0.9)):
        matrix = Rotation.from_euler("z", turn, degrees=True).as_matrix()
        assert bound(correlation(ring, rotate_about_centre(ring, matrix))), turn
    # Rg² of a ring = R² + Rg(subunit)² (parallel-axis theorem)
    ring_rg = class_radius_a("ring", kind="gyration")
    subunit_rg = class_radius_a("hsp70_atpase", kind="gyration")
    assert ring_rg**2 == pytest.approx(library.RING_RADIUS_A**2 + subunit_rg**2, rel=1e-6)

    # screw symmetry at 6 Å, compared after a 1-voxel Gaussian low-pass so that trilinear interpolation of
    # a fractional shift (alone worth a 0.93 correlation) does not dominate
    voxel_size_a = 6.0
    filament = ndimage.gaussian_filter(class_potential("filament", voxel_size_a).numpy(), 1.0)
    screw = Rotation.from_euler("z", library.FILAMENT_TWIST_DEG, degrees=True).as_matrix()
    moved = rotate_about_centre(filament, screw, (0.0, 0.0, library.FILAMENT_RISE_A / voxel_size_a))
    centre, half = filament.shape[0] // 2, int(2.5 * library.FILAMENT_RISE_A / voxel_size_a)
    middle = slice(centre - half, centre + half + 1)  # z slab away from the filament's ends
    assert correlation(filament[middle], moved[middle]) > 0.98
    assert correlation(filament[middle], rotate_about_centre(filament, screw)[middle]) < 0.5


def test_apoferritin_map_keeps_the_octahedral_four_fold():
    volume = class_potential("apoferritin", 10.0).numpy()
    quarter_turn = Rotation.from_euler("z", 90, degrees=True).as_matrix()
    eighth_turn = Rotation.from_euler("z", 45, degrees=True).as_matrix()
    symmetric = correlation(volume, rotate_about_centre(volume, quarter_turn))
    assert (
        symmetric > 0.99 and symmetric > correlation(volume, rotate_about_centre(volume, eighth_turn)) + 0.03
    )


def test_class_potential_is_cached_in_memory_and_on_disk(map_cache):
    first = class_potential("esterase", 8.0)
    first.zero_()  # callers get a copy; the cache is untouched
    second = class_potential("esterase", 8.0)
    assert float(second.sum()) > 0
    files = list((map_cache / "structures").glob("esterase_8A_*.npy"))
    assert len(files) == 1
    library._cached_potential.cache_clear()
    np.testing.assert_array_equal(class_potential("esterase", 8.0).numpy(), np.load(files[0]))
    other = map_cache / "elsewhere"
    torch.testing.assert_close(class_potential("esterase", 8.0, cache_dir=other), second)
    assert list((other / "structures").glob("esterase_8A_*.npy"))
    assert os.environ["AITOM_CACHE"] == str(map_cache)


def test_class_errors_and_description():
    with pytest.raises(InputError, match="does not fit"):
        class_potential("ribosome_30s", 10.0, box_size=16)
    with pytest.raises(InputError, match="unknown structure class"):
        class_potential("no_such_class", 10.0)
    with pytest.raises(InputError, match="positive"):
        class_potential("esterase", 0.0)
    assert class_radius_a("ribosome_30s", kind="max") > class_radius_a("ribosome_30s", kind="gyration")
    table = describe_classes()
    rows = table.splitlines()
    assert rows[0].startswith("| class |") and len(rows) == 2 + len(available_classes())
    assert all(f"| {name} |" in table for name in available_classes())
