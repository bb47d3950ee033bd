"""Simulation recipes: typed defaults (dataclasses), YAML files read with OmegaConf, ``key=value`` overrides.

A recipe is a YAML file whose ``kind`` says what it simulates (``tomogram`` or ``subtomograms``); every key it
leaves out takes the default of :class:`TomogramRecipe` or :class:`SubtomogramRecipe`. OmegaConf
interpolation works (``defocus_um: ${ctf.defocus_u_um}``-style references to other keys), and dotted
overrides from the command line (``tilt.tilt_step_deg=2 snr=0.1``) are applied after the file (an override
of ``number_of_particles`` or ``crowding_fraction`` clears the other, which the file may set). Every
parameter carries its unit in its name. Mistakes raise :class:`aitom.errors.InputError` naming the file (or
the override) and the key: unknown keys, wrong types, impossible values, unknown class names (the message
lists the available ones).

Example:
    >>> recipe = load_recipe(None, ["shape_zyx_voxels=[40,64,64]", "snr=1.0"], kind="tomogram")
    >>> recipe.shape_zyx_voxels, recipe.tilt.tilt_step_deg
    ([40, 64, 64], 3.0)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aitom.errors import InputError
from aitom.io.memory import physical_memory_bytes
from aitom.simulate.tiltseries import TILT_ORDERS, WBP_WINDOWS

__all__ = [
    "NOISE_MODELS",
    "SUBTOMOGRAM_METHODS",
    "CtfConfig",
    "IceConfig",
    "SubtomogramRecipe",
    "TiltSeriesConfig",
    "TomogramRecipe",
    "load_recipe",
    "recipe_to_yaml",
]

#: noise models of a tomogram: target SNR, physical shot noise from the dose, or none
NOISE_MODELS = ("snr", "dose", "none")
#: subtomogram simulation methods: 3-D CTF × wedge mask in Fourier space, or full tilt-series model
SUBTOMOGRAM_METHODS = ("fourier", "tiltseries")

_TOMOGRAM_CLASSES = ["ribosome_30s", "proteasome_20s", "apoferritin", "p97", "hsp90"]
_SUBTOMOGRAM_CLASSES = ["ribosome_30s", "proteasome_20s", "apoferritin", "rubisco", "p97", "hsp90"]


@dataclasses.dataclass
class TiltSeriesConfig:
    """Tilt-series acquisition and reconstruction."""

    #: most negative tilt, degrees
    tilt_min_deg: float = -60.0
    #: most positive tilt, degrees
    tilt_max_deg: float = 60.0
    #: tilt increment, degrees
    tilt_step_deg: float = 3.0
    #: acquisition order: dose_symmetric | sequential | bidirectional
    tilt_order: str = "dose_symmetric"
    #: electron dose of one tilt image, e⁻/Å²
    dose_per_tilt_e_per_a2: float = 3.0
    #: damp each tilt's high frequencies by the exposure received before it (Grant & Grigorieff 2015)
    dose_weighting: bool = True
    #: roll-off of the WBP ramp filter: ramp | cosine | hamming
    wbp_window: str = "cosine"


@dataclasses.dataclass
class CtfConfig:
    """Microscope and contrast transfer function (per tilt for tilt series, one 3-D CTF for ``fourier``)."""

    #: apply the CTF (False: an ideal inverting detector)
    enabled: bool = True
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07
    #: mean defocus, µm, positive = underfocus
    defocus_um: float = 3.0
    #: standard deviation of a random per-tilt defocus offset, µm
    defocus_spread_um: float = 0.0
    #: defocus_u − defocus_v, µm (0: no astigmatism)
    astigmatism_um: float = 0.0
    #: angle of the defocus_u axis from +x, degrees
    astigmatism_angle_deg: float = 0.0
    #: envelope exp(−B k²/4), Å²
    b_factor_a2: float = 0.0


@dataclasses.dataclass
class IceConfig:
    """Amorphous ice: a slab of constant potential plus a smooth random component."""

    enabled: bool = True
    #: slab thickness along Z, voxels, centred in the box (None: the whole Z extent); particles lie inside
    thickness_voxels: int | None = None
    #: mean potential of the ice, volts (default: water's oxygen atoms in the heavy-atom model of the maps)
    potential_v: float = 2.98
    #: standard deviation of the smooth random component, volts
    fluctuation_v: float = 0.2
    #: resolution of the random component (white noise low-passed to this), Å, >= 2 voxels (None: 3 voxels)
    fluctuation_resolution_a: float | None = None
    #: subtract the ice a particle displaces (contrast = protein − displaced water)
    solvent_displacement: bool = True


@dataclasses.dataclass
class TomogramRecipe:
    """A crowded tomogram: packed particles in ice → tilt series → CTF, dose, noise → WBP."""

    kind: str = "tomogram"
    #: random seed (positions, orientations, ice, defocus, noise)
    seed: int = 0
    voxel_size_a: float = 10.0
    #: tomogram size (Z, Y, X), voxels
    shape_zyx_voxels: list[int] = dataclasses.field(default_factory=lambda: [100, 200, 200])
    #: library classes (see `aitom.simulate.available_classes()`) or paths to atomic models (.pdb/.cif[.gz]),
    #: equal numbers of each
    classes: list[str] = dataclasses.field(default_factory=lambda: list(_TOMOGRAM_CLASSES))
    #: total number of particles (set crowding_fraction to null to use it; a command-line override of either
    #: clears the other)
    number_of_particles: int | None = None
    #: fraction of the ice volume filled by the particles' bounding spheres
    crowding_fraction: float | None = 0.15
    #: smallest gap between the bounding spheres of two particles, voxels
    margin_voxels: float = 1.0
    #: snr | dose | none
    noise_model: str = "snr"
    #: var(signal) / var(noise) over the whole tomogram (noise_model snr)
    snr: float = 0.5
    tilt: TiltSeriesConfig = dataclasses.field(default_factory=TiltSeriesConfig)
    ctf: CtfConfig = dataclasses.field(default_factory=CtfConfig)
    ice: IceConfig = dataclasses.field(default_factory=IceConfig)


@dataclasses.dataclass
class SubtomogramRecipe:
    """Subtomograms of single particles: random pose and shift, CTF, missing wedge, noise at a target SNR."""

    kind: str = "subtomograms"
    seed: int = 0
    voxel_size_a: float = 10.0
    #: cubic box edge, voxels
    box_size_voxels: int = 32
    #: library classes (see `aitom.simulate.available_classes()`) or paths to atomic models (.pdb/.cif[.gz])
    classes: list[str] = dataclasses.field(default_factory=lambda: list(_SUBTOMOGRAM_CLASSES))
    particles_per_class: int = 100
    #: largest random shift of a particle from the box centre, voxels (uniform in a ball)
    max_shift_voxels: float = 2.0
    #: fourier (3-D CTF × wedge mask, fast) | tiltseries (project, per-tilt CTF and noise, WBP)
    method: str = "fourier"
    #: var(signal) / var(noise) of each subtomogram over the whole box (null: noise-free)
    snr: float | None = 0.1
    #: also make a second, independent noise realisation of every particle
    paired: bool = False
    #: scale every subtomogram to zero mean and unit standard deviation
    normalize: bool = True
    #: subtomograms simulated at once
    batch_size: int = 256
    tilt: TiltSeriesConfig = dataclasses.field(default_factory=TiltSeriesConfig)
    ctf: CtfConfig = dataclasses.field(default_factory=CtfConfig)


_KINDS: dict[str, type] = {"tomogram": TomogramRecipe, "subtomograms": SubtomogramRecipe}


def _error_key(error: OmegaConfBaseException) -> str:
    key = getattr(error, "full_key", None)
    return f"{key}: " if key else ""


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _merge(schema: DictConfig, update: DictConfig, source: str | Path) -> DictConfig:
    try:
        return OmegaConf.merge(schema, update)
    except OmegaConfBaseException as error:
        message = _first_line(error)
        if "not in" in message:
            message = f"unknown key ({message})"
        raise InputError(f"{_error_key(error)}{message}", source) from None


def load_recipe(
    path: str | Path | None,
    overrides: Sequence[str] = (),
    *,
    kind: str | None = None,
) -> TomogramRecipe | SubtomogramRecipe:
    """Read a recipe: defaults ← YAML file ← ``key=value`` overrides, then validate.

    Args:
        path: YAML recipe, or None for the defaults of ``kind``.
        overrides: dotted ``key=value`` strings (OmegaConf dotlist syntax, e.g. ``tilt.tilt_step_deg=2``).
        kind: ``"tomogram"`` or ``"subtomograms"``; must match the file's ``kind`` when both are given
            (the file's ``kind`` is used when this is None).

    Returns:
        A validated :class:`TomogramRecipe` or :class:`SubtomogramRecipe` (interpolations resolved).

    Raises:
        InputError: unreadable file, unknown key, wrong type, impossible value, unknown class.
    """
    file_config = OmegaConf.create({})
    source: str | Path = "recipe defaults"
    if path is not None:
        source = Path(path)
        if source.is_dir():
            raise InputError("is a folder, not a recipe file", source)
        if not source.is_file():
            raise InputError("recipe file not found", source)
        try:
            file_config = OmegaConf.load(source)
        except (OSError, ValueError, yaml.YAMLError, OmegaConfBaseException) as error:
            raise InputError(f"not a valid YAML recipe ({_first_line(error)})", source) from None
        if not isinstance(file_config, DictConfig):
            raise InputError("a recipe must be a mapping of keys to values", source)
    file_kind = file_config.get("kind") if "kind" in file_config else None
    if kind is None:
        kind = file_kind or "tomogram"
    elif file_kind is not None and file_kind != kind:
        raise InputError(f"kind: this is a {file_kind!r} recipe, not a {kind!r} one", source)
    if kind not in _KINDS:
        raise InputError(f"kind: unknown recipe kind {kind!r}; choose one of {', '.join(_KINDS)}", source)
    config = _merge(OmegaConf.structured(_KINDS[kind]), file_config, source)
    overridden = {override.split("=", 1)[0].strip(): f"override {override!r}" for override in overrides}
    for override in overrides:
        if "=" not in override:
            raise InputError(f"override {override!r} is not of the form key=value")
        try:
            update = OmegaConf.from_dotlist([override])
        except OmegaConfBaseException as error:
            raise InputError(f"override {override!r}: {_first_line(error)}") from None
        config = _merge(config, update, f"override {override!r}")
    _clear_the_other_particle_count(config, overridden)
    try:
        recipe = OmegaConf.to_object(config)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None)
        raise InputError(f"{_error_key(error)}{_first_line(error)}", overridden.get(key, source)) from None
    recipe_folder = source.parent if isinstance(source, Path) and "classes" not in overridden else None
    recipe.classes = [_absolute_model_path(key, recipe_folder) for key in recipe.classes]
    _validate(recipe, source, overridden)
    return recipe


def _absolute_model_path(class_name: str, recipe_folder: Path | None) -> str:
    """An atomic-model class made an absolute path (relative to the working directory, or else to the recipe
    file's folder when the file is there); a library class name is returned as it is."""
    from aitom.simulate.library import is_atomic_model_path

    if not is_atomic_model_path(class_name) or Path(class_name).is_absolute():
        return class_name
    if recipe_folder is not None and not Path(class_name).exists() and (recipe_folder / class_name).exists():
        return str((recipe_folder / class_name).resolve())
    return str(Path(class_name).resolve())


def recipe_to_yaml(recipe: TomogramRecipe | SubtomogramRecipe) -> str:
    """The recipe as YAML text (every key, interpolations resolved), loadable by :func:`load_recipe`."""
    return OmegaConf.to_yaml(OmegaConf.structured(recipe))


#: Largest seed: the noise of subtomograms is seeded with ``seed + 1``, and torch takes seeds below 2⁶⁴.
_MAX_SEED = 2**63 - 1


def _least_memory_bytes(recipe: TomogramRecipe | SubtomogramRecipe) -> list[tuple[str, int]]:
    """Lower bounds on the bytes a simulation holds in memory at once, growing, each with the key it grows by.

    A tomogram holds four float32 volumes (the clean potential, the reconstructed signal and noise, the
    tomogram) and two tilt series (contrast and noise); subtomograms hold the class maps, then every
    subtomogram too (twice with ``paired``), float32.
    """
    tilt = recipe.tilt
    if isinstance(recipe, TomogramRecipe):
        size_z, size_y, size_x = recipe.shape_zyx_voxels
        n_tilts = math.floor((tilt.tilt_max_deg - tilt.tilt_min_deg) / tilt.tilt_step_deg + 1e-6) + 1
        return [("shape_zyx_voxels", 4 * (4 * size_z * size_y * size_x + 2 * n_tilts * size_y * size_x))]
    box = recipe.box_size_voxels**3
    maps = 4 * len(recipe.classes) * box
    subtomograms = 4 * (2 if recipe.paired else 1) * recipe.particles_per_class * len(recipe.classes) * box
    return [("box_size_voxels", maps), ("particles_per_class", maps + subtomograms)]


#: a tomogram's particle count is given by exactly one of these
_PARTICLE_COUNTS = ("number_of_particles", "crowding_fraction")


def _clear_the_other_particle_count(config: DictConfig, overridden: dict[str, str]) -> None:
    """An override that sets one of :data:`_PARTICLE_COUNTS` clears the other, which the file or the
    defaults set (``number_of_particles=30`` on the command line means 30 particles, not a clash with the
    default ``crowding_fraction``); overriding both is left to the check that exactly one is set."""
    named = [key for key in _PARTICLE_COUNTS if key in overridden]
    if len(named) == 1 and named[0] in config and config[named[0]] is not None:
        (other,) = (key for key in _PARTICLE_COUNTS if key != named[0])
        config[other] = None


def _validate(
    recipe: TomogramRecipe | SubtomogramRecipe, source: str | Path, overridden: dict[str, str]
) -> None:
    """Check values; a key's value came from its override in ``overridden`` (key → override) or ``source``."""

    def fail(key: str, problem: str) -> None:
        raise InputError(f"{key}: {problem}", overridden.get(key, source))

    def finite(prefix: str, config: object) -> None:
        for field in dataclasses.fields(config):
            value = getattr(config, field.name)
            if dataclasses.is_dataclass(value):
                finite(f"{prefix}{field.name}.", value)
            elif isinstance(value, float) and not math.isfinite(value):
                fail(f"{prefix}{field.name}", f"must be a finite number, got {value}")

    def positive(key: str, value: float) -> None:
        if not value > 0:
            fail(key, f"must be positive, got {value}")

    def non_negative(key: str, value: float) -> None:
        if not value >= 0:
            fail(key, f"must be >= 0, got {value}")

    def one_of(key: str, value: str, choices: Sequence[str]) -> None:
        if value not in choices:
            fail(key, f"unknown value {value!r}; choose one of {', '.join(choices)}")

    from aitom.simulate.library import class_radius_a, get_class

    kind = "tomogram" if isinstance(recipe, TomogramRecipe) else "subtomograms"
    if recipe.kind != kind:
        fail("kind", f"{recipe.kind!r} in a {kind!r} recipe (aitom simulate {recipe.kind} reads those)")
    if not 0 <= recipe.seed <= _MAX_SEED:
        fail("seed", f"must lie in [0, 2^63 - 1], got {recipe.seed}")
    finite("", recipe)
    positive("voxel_size_a", recipe.voxel_size_a)
    if not recipe.classes:
        fail("classes", "list at least one structure class")
    names = []
    for key in recipe.classes:
        try:
            names.append(get_class(key).name)
        except InputError as error:
            fail("classes", str(error))
    if len(set(names)) != len(names):
        fail("classes", f"classes are listed more than once (by name): {names}")

    tilt = recipe.tilt
    positive("tilt.tilt_step_deg", tilt.tilt_step_deg)
    low, high = tilt.tilt_min_deg, tilt.tilt_max_deg
    if not -90 <= low <= high <= 90:
        if not -90 <= low <= 90:
            wrong = "tilt.tilt_min_deg"
        elif not -90 <= high <= 90:
            wrong = "tilt.tilt_max_deg"
        else:  # inverted: blame the end that was overridden
            only_max = "tilt.tilt_max_deg" in overridden and "tilt.tilt_min_deg" not in overridden
            wrong = "tilt.tilt_max_deg" if only_max else "tilt.tilt_min_deg"
        fail(wrong, f"need -90 <= tilt_min_deg <= tilt_max_deg <= 90, got ({low}, {high})")
    one_of("tilt.tilt_order", tilt.tilt_order, TILT_ORDERS)
    one_of("tilt.wbp_window", tilt.wbp_window, WBP_WINDOWS)
    non_negative("tilt.dose_per_tilt_e_per_a2", tilt.dose_per_tilt_e_per_a2)

    ctf = recipe.ctf
    positive("ctf.voltage_kv", ctf.voltage_kv)
    non_negative("ctf.cs_mm", ctf.cs_mm)
    if not 0 <= ctf.amplitude_contrast < 1:
        fail("ctf.amplitude_contrast", f"must lie in [0, 1), got {ctf.amplitude_contrast}")
    non_negative("ctf.defocus_spread_um", ctf.defocus_spread_um)
    non_negative("ctf.b_factor_a2", ctf.b_factor_a2)
    if ctf.enabled and not ctf.defocus_um - abs(ctf.astigmatism_um) / 2 > 0:
        fail("ctf.defocus_um", f"must exceed |astigmatism_um| / 2 (underfocus), got {ctf.defocus_um}")
    if tilt.dose_weighting and round(ctf.voltage_kv) not in (200, 300):
        fail("tilt.dose_weighting", f"is calibrated for 200 and 300 kV only, got {ctf.voltage_kv} kV")

    if isinstance(recipe, TomogramRecipe):
        shape = recipe.shape_zyx_voxels
        if len(shape) != 3 or min(shape) < 2:
            fail("shape_zyx_voxels", f"must be three sizes (Z, Y, X) of at least 2 voxels, got {shape}")
        if (recipe.number_of_particles is None) == (recipe.crowding_fraction is None):
            fail(
                "crowding_fraction",
                "set exactly one of number_of_particles and crowding_fraction (other: null)",
            )
        if recipe.number_of_particles is not None:
            non_negative("number_of_particles", recipe.number_of_particles)
        if recipe.crowding_fraction is not None and not 0 < recipe.crowding_fraction < 1:
            fail("crowding_fraction", f"must lie in (0, 1), got {recipe.crowding_fraction}")
        non_negative("margin_voxels", recipe.margin_voxels)
        one_of("noise_model", recipe.noise_model, NOISE_MODELS)
        if recipe.noise_model == "snr":
            positive("snr", recipe.snr)
        if recipe.noise_model == "dose":
            positive("tilt.dose_per_tilt_e_per_a2", tilt.dose_per_tilt_e_per_a2)
        ice = recipe.ice
        if ice.enabled and max(abs(low), abs(high)) >= 90:
            fail(
                "tilt.tilt_min_deg" if abs(low) >= 90 else "tilt.tilt_max_deg",
                f"a tilt of 90° looks along the ice slab, which is laterally infinite: keep tilts within "
                f"(-90, 90) or set ice.enabled=false, got ({low}, {high})",
            )
        if ice.thickness_voxels is not None and not 2 <= ice.thickness_voxels <= shape[0]:
            fail("ice.thickness_voxels", f"must lie in [2, Z = {shape[0]}], got {ice.thickness_voxels}")
        non_negative("ice.potential_v", ice.potential_v)
        non_negative("ice.fluctuation_v", ice.fluctuation_v)
        if (
            ice.fluctuation_resolution_a is not None
            and not ice.fluctuation_resolution_a >= 2 * recipe.voxel_size_a
        ):
            fail(
                "ice.fluctuation_resolution_a",
                f"must be at least 2 voxels ({2 * recipe.voxel_size_a:g} Å), "
                f"got {ice.fluctuation_resolution_a}",
            )
        thickness = ice.thickness_voxels if ice.enabled and ice.thickness_voxels is not None else shape[0]
        extent_a = max(thickness, *shape[1:]) * recipe.voxel_size_a
        resolution_a = ice.fluctuation_resolution_a or 3 * recipe.voxel_size_a
        if ice.enabled and ice.fluctuation_v > 0 and resolution_a > extent_a:
            fail(
                "ice.fluctuation_resolution_a",
                f"{resolution_a:g} Å{'' if ice.fluctuation_resolution_a else ' (the default, 3 voxels)'} is "
                f"coarser than the ice slab's largest extent ({extent_a:g} Å), so the fluctuation would be "
                "constant: make it finer, or set ice.fluctuation_v=0",
            )
        room = min(thickness, *shape[1:]) - 1
        for name in recipe.classes:
            diameter = 2 * class_radius_a(name) / recipe.voxel_size_a
            if not diameter > 0:
                fail("classes", f"{name}: every atom lies at one point (radius 0 Å): no particle to pack")
            if diameter > room:
                fail(
                    "shape_zyx_voxels",
                    f"{name!r} ({diameter:.1f} voxels across) does not fit in a slab of "
                    f"{thickness} × {shape[1]} × {shape[2]} voxels",
                )
    else:
        size = recipe.box_size_voxels
        if size < 4:
            fail("box_size_voxels", f"must be at least 4, got {size}")
        positive("particles_per_class", recipe.particles_per_class)
        non_negative("max_shift_voxels", recipe.max_shift_voxels)
        one_of("method", recipe.method, SUBTOMOGRAM_METHODS)
        if recipe.snr is not None:
            positive("snr", recipe.snr)
        positive("batch_size", recipe.batch_size)
        for name in recipe.classes:
            radius = class_radius_a(name) / recipe.voxel_size_a
            if radius > size / 2 - 1:
                fail(
                    "box_size_voxels",
                    f"class {name!r} (radius {radius:.1f} voxels of {recipe.voxel_size_a:g} Å) needs a box "
                    f"of at least {2 * int(radius + 1) + 2} voxels, got {size}",
                )
            gyration = class_radius_a(name, kind="gyration") / recipe.voxel_size_a
            if gyration + recipe.max_shift_voxels > size / 2:
                fail(
                    "max_shift_voxels",
                    f"class {name!r} (radius of gyration {gyration:.1f} voxels) shifted by up to "
                    f"{recipe.max_shift_voxels:g} voxels would leave the {size}³ box (and wrap around): "
                    f"at most {max(0.0, size / 2 - gyration):.1f} voxels",
                )
    memory = physical_memory_bytes()
    for key, needed in _least_memory_bytes(recipe) if memory is not None else ():
        if needed > memory:
            fail(
                key,
                f"the simulation holds at least {needed / 2**30:.3g} GiB in memory, more than this "
                f"machine's {memory / 2**30:.3g} GiB",
            )
