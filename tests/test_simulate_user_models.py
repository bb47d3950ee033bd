"""The user's own atomic models as simulation classes: a path to a ``.pdb``/``.cif`` file wherever a class
name is taken (recipes, ``aitom simulate``, the simulated data modules).

The reference is the library: a copy of a shipped model under another name must give exactly the library
class's map, since both are built from the same atoms.
"""

from __future__ import annotations

import shutil
from importlib.resources import files
from pathlib import Path

import gemmi
import pytest
import torch

from aitom import cli
from aitom.data import SimulatedSubtomogramDataModule
from aitom.errors import InputError
from aitom.io import read_particles
from aitom.simulate import class_potential, get_class, load_recipe
from aitom.simulate.library import class_radius_a

SHIPPED_MODEL = Path(str(files("aitom") / "data" / "structures" / "1s3x.pdb.gz"))  # the hsp70_atpase class
VOXEL_A = 20.0


@pytest.fixture
def models(tmp_path, monkeypatch) -> Path:
    """A folder with the 1S3X model as ``my_atpase.pdb.gz`` and as mmCIF ``atpase_cif.cif``; the working
    directory is the folder and the map cache is private."""
    monkeypatch.setenv("AITOM_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(SHIPPED_MODEL, folder / "my_atpase.pdb.gz")
    structure = gemmi.read_structure(str(SHIPPED_MODEL))
    structure.setup_entities()
    structure.make_mmcif_document().write_file(str(folder / "atpase_cif.cif"))
    monkeypatch.chdir(folder)
    return folder


def test_model_file_gives_the_library_map_of_the_same_atoms(models):
    reference = class_potential("hsp70_atpase", VOXEL_A)
    for file_name, name in (("my_atpase.pdb.gz", "my_atpase"), ("atpase_cif.cif", "atpase_cif")):
        assert get_class(file_name).name == name
        assert get_class(file_name).symmetry == "C1"
        assert class_radius_a(file_name) == pytest.approx(class_radius_a("hsp70_atpase"), abs=1e-9)
        torch.testing.assert_close(class_potential(file_name, VOXEL_A), reference, rtol=0, atol=1e-6)


def test_recipe_finds_a_model_beside_the_recipe_file(models, tmp_path, monkeypatch):
    recipe_folder = tmp_path / "recipes"
    recipe_folder.mkdir()
    (recipe_folder / "mine.yaml").write_text(
        "kind: subtomograms\nclasses: [../models/my_atpase.pdb.gz, apoferritin]\n"
    )
    monkeypatch.chdir(tmp_path)  # neither the recipe's folder nor the models'
    recipe = load_recipe(recipe_folder / "mine.yaml")
    assert recipe.classes == [str((models / "my_atpase.pdb.gz").resolve()), "apoferritin"]


def test_simulate_subtomograms_names_the_class_by_its_file(models, tmp_path):
    out = tmp_path / "sim"
    argv = ["simulate", "subtomograms", "--out", str(out), "voxel_size_a=20", "box_size_voxels=16"]
    argv += ["classes=[my_atpase.pdb.gz,apoferritin]", "particles_per_class=2", "snr=null", "normalize=false"]
    assert cli.main(argv) == 0
    table = read_particles(out / "particles.star", require=())
    assert sorted(set(table["aitomClassName"])) == ["apoferritin", "my_atpase"]
    assert (out / "templates" / "my_atpase.mrc").is_file()
    assert (table["rlnClassNumber"][table["aitomClassName"] == "my_atpase"] == 1).all()


@pytest.mark.parametrize(
    ("classes", "problem"),
    [
        ("[missing.cif,apoferritin]", "no such atomic model file"),
        ("[garbage.pdb,apoferritin]", "no atoms"),
        ("[my_atpase.pdb.gz,sub/my_atpase.pdb.gz]", "listed more than once"),
        ("[my_atpase.txt,apoferritin]", "unknown structure class"),
    ],
)
def test_bad_model_files_are_refused_before_writing(models, tmp_path, capsys, classes, problem):
    (models / "garbage.pdb").write_text("this is not a PDB file\n")
    (models / "sub").mkdir()
    shutil.copy(SHIPPED_MODEL, models / "sub" / "my_atpase.pdb.gz")
    out = tmp_path / "never"
    assert cli.main(["simulate", "tomogram", "--out", str(out), f"classes={classes}"]) == 2
    message = capsys.readouterr().err.strip()
    assert problem in message and "\n" not in message
    assert not out.exists()


def test_data_module_trains_on_a_model_file(models):
    data = SimulatedSubtomogramDataModule(
        classes=["my_atpase.pdb.gz", "apoferritin"], box_size_voxels=16, voxel_size_a=VOXEL_A
    )
    assert data.class_names == ["my_atpase", "apoferritin"]
    maps = data.class_maps()
    reference = class_potential("hsp70_atpase", VOXEL_A, box_size=16)
    torch.testing.assert_close(maps[0], reference, rtol=0, atol=1e-6)
    with pytest.raises(InputError, match="no such atomic model file"):
        SimulatedSubtomogramDataModule(classes=["absent.pdb", "apoferritin"])
