"""Awkward recipes, overrides, atomic models and output folders for ``aitom simulate tomogram|subtomograms``:
each must either work or stop with exit code 2, one line on stderr naming the file or key and the problem,
and no output written or replaced."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pytest

from aitom.cli import main
from aitom.simulate.packing import PackingWarning, pack_spheres
from tests.test_cli_awkward_inputs import _one_error_line

TINY_TOMOGRAM = [
    "shape_zyx_voxels=[20,40,40]",
    "classes=[hsp70_atpase]",
    "crowding_fraction=null",
    "number_of_particles=3",
    "tilt.tilt_step_deg=15",
]
TINY_SUBTOMOGRAMS = ["box_size_voxels=20", "classes=[hsp70_atpase]", "particles_per_class=2"]


@pytest.fixture(autouse=True)
def private_map_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("AITOM_CACHE", str(tmp_path / "cache"))


def _simulate(kind: str, out: Path, *extra: str) -> int:
    tiny = TINY_TOMOGRAM if kind == "tomogram" else TINY_SUBTOMOGRAMS
    return main(["simulate", kind, "--out", str(out), *tiny, *extra])


def _pdb_text(n_atoms: int, radius_a: float = 15.0, seed: int = 0) -> str:
    """``n_atoms`` carbon atoms at random in a ball of ``radius_a`` Å, as PDB ATOM records."""
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(n_atoms, 3))
    points *= radius_a * rng.random((n_atoms, 1)) ** (1 / 3) / np.linalg.norm(points, axis=1, keepdims=True)
    lines = [
        f"ATOM  {index + 1:5d}  CA  ALA A{index + 1:4d}    {x:8.3f}{y:8.3f}{z:8.3f}{1.0:6.2f}{20.0:6.2f}"
        f"           C"
        for index, (x, y, z) in enumerate(points)
    ]
    return "\n".join([*lines, "END", ""])


# --- recipe values --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "override", "key"),
    [
        ("tomogram", "voxel_size_a=inf", "voxel_size_a"),
        ("tomogram", "ctf.cs_mm=inf", "ctf.cs_mm"),
        ("tomogram", "ctf.b_factor_a2=inf", "ctf.b_factor_a2"),
        ("tomogram", "ctf.astigmatism_um=nan", "ctf.astigmatism_um"),
        ("tomogram", "ice.fluctuation_v=inf", "ice.fluctuation_v"),
        ("tomogram", "ice.fluctuation_resolution_a=inf", "ice.fluctuation_resolution_a"),
        ("tomogram", "snr=inf", "snr"),
        ("subtomograms", "snr=inf", "snr"),
    ],
)
def test_values_that_are_not_finite_are_refused(tmp_path, capsys, kind, override, key):
    """An infinite Cs, B-factor or ice fluctuation wrote a traceback after the whole simulation (NaN voxels),
    an infinite voxel size gave a message naming no key, a NaN astigmatism blamed ctf.defocus_um of the
    recipe defaults, an infinite SNR passed."""
    assert _simulate(kind, tmp_path / "out", override) == 2
    assert (
        _one_error_line(capsys)
        == f"override {override!r}: {key}: must be a finite number, got {override[-3:]}"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("kind", "seed"), [("tomogram", "-1"), ("subtomograms", "-1"), ("subtomograms", str(2**64))]
)
def test_seeds_out_of_range_are_refused(tmp_path, capsys, kind, seed):
    """--seed -1 gave NumPy's traceback for a tomogram; a seed of 2^64 torch's for subtomograms."""
    assert _simulate(kind, tmp_path / "out", "--seed", seed) == 2
    assert _one_error_line(capsys) == f"override 'seed={seed}': seed: must lie in [0, 2^63 - 1], got {seed}"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("tilt.tilt_max_deg=100", "tilt.tilt_max_deg"),
        ("tilt.tilt_min_deg=-100", "tilt.tilt_min_deg"),
        ("tilt.tilt_max_deg=-70", "tilt.tilt_max_deg"),
    ],
)
def test_a_bad_tilt_range_names_the_key_given(tmp_path, capsys, override, key):
    """tilt.tilt_max_deg=100 was blamed on tilt.tilt_min_deg of the 'recipe defaults'."""
    assert _simulate("subtomograms", tmp_path / "out", override) == 2
    message = _one_error_line(capsys)
    assert message.startswith(f"override {override!r}: {key}: need -90 <= tilt_min_deg <= tilt_max_deg <= 90")
    assert not (tmp_path / "out").exists()


def test_a_tomogram_tilted_to_90_degrees_in_ice_is_refused(tmp_path, capsys):
    """At ±90° the beam runs along the laterally infinite ice slab: its projection (thickness / cos 90°)
    was ~10^17 V·Å and the tomogram lost all correlation with the particles, silently."""
    assert _simulate("tomogram", tmp_path / "out", "tilt.tilt_min_deg=-90") == 2
    message = _one_error_line(capsys)
    assert message.startswith(
        "override 'tilt.tilt_min_deg=-90': tilt.tilt_min_deg: a tilt of 90° looks along"
    )
    assert not (tmp_path / "out").exists()


def test_an_ice_fluctuation_coarser_than_the_slab_is_refused(tmp_path, capsys):
    """A fluctuation resolution beyond the slab left only a constant, divided by its rounding-level standard
    deviation: the clean volume held 1.8 MV of 'ice' (and a 2³ tomogram NaN, a traceback)."""
    override = "ice.fluctuation_resolution_a=100000"
    assert _simulate("tomogram", tmp_path / "out", override) == 2
    assert _one_error_line(capsys).startswith(
        f"override {override!r}: ice.fluctuation_resolution_a: 100000 Å is coarser than the ice slab's "
        "largest extent (400 Å)"
    )
    assert _simulate("tomogram", tmp_path / "out", "shape_zyx_voxels=[2,2,2]", "voxel_size_a=1000") == 2
    assert "ice.fluctuation_resolution_a: 3000 Å (the default, 3 voxels) is coarser" in _one_error_line(
        capsys
    )
    assert not (tmp_path / "out").exists()


def test_the_kind_cannot_be_overridden(tmp_path, capsys):
    """kind=tomogram on subtomograms ran, and wrote a recipe.yaml that said kind: tomogram."""
    assert _simulate("subtomograms", tmp_path / "out", "kind=tomogram") == 2
    assert _one_error_line(capsys).startswith(
        "override 'kind=tomogram': kind: 'tomogram' in a 'subtomograms'"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("kind", "override", "key"),
    [
        ("tomogram", "shape_zyx_voxels=[100000,1000000,1000000]", "shape_zyx_voxels"),
        ("subtomograms", "box_size_voxels=100000", "box_size_voxels"),
        ("subtomograms", "particles_per_class=1000000000000", "particles_per_class"),
    ],
)
def test_a_simulation_larger_than_the_memory_is_refused(tmp_path, capsys, kind, override, key):
    """A 100000³ box was a traceback from the allocator; 10^9 subtomograms were killed by the system."""
    assert _simulate(kind, tmp_path / "out", override) == 2
    message = _one_error_line(capsys)
    assert message.startswith(f"override {override!r}: {key}: the simulation holds at least ")
    assert "GiB in memory, more than this machine's" in message
    assert not (tmp_path / "out").exists()


def test_an_interpolation_error_names_the_override(tmp_path, capsys):
    assert _simulate("subtomograms", tmp_path / "out", "snr=${nowhere}") == 2
    assert _one_error_line(capsys).startswith("override 'snr=${nowhere}': snr: Interpolation key 'nowhere'")


def test_a_recipe_that_is_a_folder_is_named_so(tmp_path, capsys):
    (tmp_path / "r.yaml").mkdir()
    assert _simulate("tomogram", tmp_path / "out", "--config", str(tmp_path / "r.yaml")) == 2
    assert _one_error_line(capsys) == f"{tmp_path / 'r.yaml'}: is a folder, not a recipe file"


# --- crowding ------------------------------------------------------------------------------------------


def test_far_more_particles_than_fit_are_placed_as_far_as_they_fit():
    """number_of_particles=10^11 allocated room for all of them first: a 2 TiB MemoryError."""
    with pytest.warns(PackingWarning, match="box too full"):
        positions, class_ids = pack_spheres((10, 10, 10), [2.0], number=10**11, rng=np.random.default_rng(0))
    assert 0 < len(positions) <= 1000 / (4 / 3 * math.pi * 2.0**3) and len(class_ids) == len(positions)


# --- atomic models -------------------------------------------------------------------------------------


def test_a_truncated_gzip_model_is_refused(tmp_path, capsys):
    """The reader stopped quietly where the stream ended and built the atoms before it as the model."""
    whole = gzip.compress(_pdb_text(2000).encode())
    model = tmp_path / "cut.pdb.gz"
    model.write_bytes(whole[: len(whole) // 2])
    assert _simulate("subtomograms", tmp_path / "out", f"classes=[{model}]") == 2
    message = _one_error_line(capsys)
    assert message.startswith(
        f"override 'classes=[{model}]': classes: {model}: cannot read atomic model: damaged"
    )
    assert not (tmp_path / "out").exists()


def test_a_model_with_coordinates_that_are_not_numbers_is_refused(tmp_path, capsys):
    """A 'nan' coordinate made a map of zeros (subtomograms) or a traceback (tomogram)."""
    model = tmp_path / "nan.pdb"
    model.write_text(
        _pdb_text(5).replace("ATOM      3  CA  ALA A   3    ", "ATOM      3  CA  ALA A   3         nan")
    )
    for kind in ("subtomograms", "tomogram"):
        assert _simulate(kind, tmp_path / "out", f"classes=[{model}]") == 2
        assert _one_error_line(capsys).endswith(
            f"{model}: 1 atoms have coordinates that are not finite numbers"
        )
    assert not (tmp_path / "out").exists()


def test_a_model_whose_atoms_lie_at_one_point_cannot_be_packed_in_a_tomogram(tmp_path, capsys):
    """Atoms all at one point: the bounding sphere has radius 0, and the packer's message named neither the
    model nor the key."""
    model = tmp_path / "atom.pdb"
    model.write_text(_pdb_text(3, radius_a=0.0))
    assert _simulate("tomogram", tmp_path / "out", f"classes=[{model}]") == 2
    assert _one_error_line(capsys) == (
        f"override 'classes=[{model}]': classes: {model}: every atom lies at one point (radius 0 Å): "
        "no particle to pack"
    )
    assert not (tmp_path / "out").exists()


def test_a_reader_error_spanning_lines_is_one_line(tmp_path, capsys):
    model = tmp_path / "short.pdb"
    model.write_text("ATOM      1  CA  ALA A   1      91.120 128.795   8.6\n")
    assert _simulate("subtomograms", tmp_path / "out", f"classes=[{model}]") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "cannot read atomic model: Problem in line 1" in lines[0], lines


# --- output folders ------------------------------------------------------------------------------------


def test_overwriting_the_recipes_folder_is_refused(tmp_path, capsys):
    """--out the recipe's own folder --overwrite replaced it, deleting the recipe and its model."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "model.pdb").write_text(_pdb_text(50))
    recipe = project / "recipe.yaml"
    recipe.write_text(
        "kind: subtomograms\nclasses: [model.pdb]\nbox_size_voxels: 12\nparticles_per_class: 2\n"
    )
    argv = ["simulate", "subtomograms", "--config", str(recipe), "--out", str(project), "--overwrite"]
    assert main(argv) == 2
    assert _one_error_line(capsys) == f"{project}: holds the input {recipe}: --overwrite would delete it " + (
        "(choose another --out)"
    )
    assert sorted(path.name for path in project.iterdir()) == ["model.pdb", "recipe.yaml"]


def test_overwriting_the_folder_of_a_model_is_refused(tmp_path, capsys):
    models = tmp_path / "models"
    models.mkdir()
    model = models / "model.pdb"
    model.write_text(_pdb_text(50))
    assert _simulate("subtomograms", models, f"classes=[{model}]", "box_size_voxels=12", "--overwrite") == 2
    assert _one_error_line(capsys).startswith(f"{models}: holds the input {model}")
    assert [path.name for path in models.iterdir()] == ["model.pdb"]


def test_output_folder_under_a_file_is_refused_before_simulating(tmp_path, capsys):
    """`--out afile/sub` passed the output check, simulated, then failed in mkdir with a traceback."""
    blocking = tmp_path / "afile"
    blocking.write_text("not a folder")
    assert _simulate("subtomograms", blocking / "sub") == 2
    assert "afile is a file, not a folder" in _one_error_line(capsys)
    assert blocking.read_text() == "not a folder"
