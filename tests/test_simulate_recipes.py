"""Simulation recipes: every shipped YAML loads, defaults, overrides, interpolation and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from aitom.errors import InputError
from aitom.simulate import SubtomogramRecipe, TomogramRecipe, available_classes, load_recipe, recipe_to_yaml

SIMULATIONS = Path(__file__).resolve().parents[1] / "simulations"
RECIPES = sorted(SIMULATIONS.glob("*.yaml"))


def test_the_shipped_recipes_exist():
    names = {path.name for path in RECIPES}
    expected = {
        "tomogram_default.yaml",
        "tomogram_large.yaml",
        "subtomograms_default.yaml",
        "subtomograms_snr003.yaml",
    }
    assert expected <= names


@pytest.mark.parametrize("path", RECIPES, ids=[path.name for path in RECIPES])
def test_every_shipped_recipe_loads_and_round_trips(path, tmp_path):
    recipe = load_recipe(path)
    expected_type = TomogramRecipe if path.name.startswith("tomogram") else SubtomogramRecipe
    assert isinstance(recipe, expected_type)
    dumped = tmp_path / "recipe.yaml"
    dumped.write_text(recipe_to_yaml(recipe))
    assert load_recipe(dumped) == recipe


def test_default_recipes_are_the_built_in_defaults():
    assert load_recipe(SIMULATIONS / "tomogram_default.yaml") == TomogramRecipe()
    assert load_recipe(SIMULATIONS / "subtomograms_default.yaml") == SubtomogramRecipe()
    assert load_recipe(None, kind="subtomograms") == SubtomogramRecipe()


def test_overrides_and_interpolation(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        "kind: tomogram\nsnr: 0.25\ntilt:\n  tilt_max_deg: 50\n  tilt_min_deg: -${tilt.tilt_max_deg}\n"
    )
    recipe = load_recipe(path, ["tilt.tilt_step_deg=2", "shape_zyx_voxels=[30,64,80]", "ctf.enabled=false"])
    assert recipe.snr == 0.25 and recipe.tilt.tilt_min_deg == -50.0 and recipe.tilt.tilt_max_deg == 50.0
    assert recipe.tilt.tilt_step_deg == 2.0 and recipe.shape_zyx_voxels == [30, 64, 80]
    assert recipe.ctf.enabled is False


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("kind: tomogram\nsnr_db: 3\n", [], r"r\.yaml: snr_db: unknown key"),
        ("kind: tomogram\ntilt:\n  step: 2\n", [], r"r\.yaml: tilt\.step: unknown key"),
        (
            "kind: tomogram\nshape_zyx_voxels: [10, -4, 20]\n",
            [],
            r"r\.yaml: shape_zyx_voxels: must be three sizes",
        ),
        ("kind: tomogram\nvoxel_size_a: abc\n", [], r"r\.yaml: voxel_size_a: .*could not be converted"),
        (
            "kind: tomogram\nclasses: [ribosome_30s, unicorn]\n",
            [],
            r"unknown structure class 'unicorn'; available: ",
        ),
        (
            "kind: tomogram\n",
            ["tilt.tilt_step_deg=-3"],
            r"override 'tilt\.tilt_step_deg=-3': .*must be positive",
        ),
        (
            "kind: tomogram\n",
            ["noise_model=loud"],
            r"noise_model: unknown value 'loud'; choose one of snr, dose",
        ),
        (
            "kind: tomogram\n",
            ["ice.thickness_voxels=500"],
            r"ice\.thickness_voxels: must lie in \[2, Z = 100\]",
        ),
        (
            "kind: tomogram\n",
            ["number_of_particles=10", "crowding_fraction=0.1"],
            r"set exactly one of number_of_particles",
        ),
        ("kind: tomogram\ncrowding_fraction: null\n", [], r"set exactly one of number_of_particles"),
        ("kind: subtomograms\n", ["box_size_voxels=16"], r"box_size_voxels: class 'ribosome_30s'"),
        ("kind: subtomograms\n", ["method=magic"], r"method: unknown value 'magic'"),
        ("kind: subtomograms\n", ["snr"], r"override 'snr' is not of the form key=value"),
        ("kind: tomogram\nsnr: [1\n", [], r"r\.yaml: not a valid YAML recipe"),
        ("- just\n- a list\n", [], r"r\.yaml: a recipe must be a mapping"),
    ],
)
def test_bad_recipes_name_the_file_and_key(tmp_path, text, overrides, message):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        load_recipe(path, overrides)


COUNT_GIVEN = "kind: tomogram\nnumber_of_particles: 12\ncrowding_fraction: null\n"


@pytest.mark.parametrize(
    ("text", "overrides", "expected"),
    [
        ("kind: tomogram\n", ["number_of_particles=10"], (10, None)),  # the default crowding_fraction cleared
        (COUNT_GIVEN, ["crowding_fraction=0.2"], (None, 0.2)),
        (COUNT_GIVEN, [], (12, None)),
    ],
)
def test_an_override_of_one_particle_count_clears_the_other(tmp_path, text, overrides, expected):
    """``number_of_particles=10`` alone was refused: the default crowding_fraction was set too."""
    path = tmp_path / "r.yaml"
    path.write_text(text)
    recipe = load_recipe(path, overrides)
    assert (recipe.number_of_particles, recipe.crowding_fraction) == expected


def test_unknown_class_lists_every_available_class(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("kind: subtomograms\nclasses: [unicorn]\n")
    with pytest.raises(InputError) as error:
        load_recipe(path)
    assert all(name in str(error.value) for name in available_classes())


def test_kind_must_match(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("kind: subtomograms\n")
    with pytest.raises(InputError, match="this is a 'subtomograms' recipe, not a 'tomogram' one"):
        load_recipe(path, kind="tomogram")
    with pytest.raises(InputError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_a_shift_that_moves_the_particle_out_of_its_box_is_refused():
    """apoferritin's radius of gyration at 20 Å is 2.7 voxels: in a 16³ box it may move 5.3 voxels."""
    load_recipe(None, ["classes=[apoferritin]", "voxel_size_a=20", "box_size_voxels=16",
                       "max_shift_voxels=5"], kind="subtomograms")  # fmt: skip
    message = r"max_shift_voxels: .* would leave the 16³ box .* at most 5\.3 voxels"
    with pytest.raises(InputError, match=message):
        load_recipe(None, ["classes=[apoferritin]", "voxel_size_a=20",
                           "box_size_voxels=16", "max_shift_voxels=100"], kind="subtomograms")  # fmt: skip


def test_a_slab_too_thin_for_a_class_blames_the_shape():
    message = r"override 'shape_zyx_voxels=\[5,40,40\]': shape_zyx_voxels: .* slab"
    with pytest.raises(InputError, match=message):
        load_recipe(None, ["classes=[apoferritin]", "shape_zyx_voxels=[5,40,40]"])
