"""The pipeline's settings: a structured OmegaConf schema, read from YAML and ``key=value`` overrides.

``configs/pipeline.yaml`` holds the defaults below with comments; every key can be overridden on the command
line (``aitom pipeline ... pick.particle_diameter_a=180 classify.n_classes=3``). Units are in the key names:
``_a`` Å, ``_deg`` degrees, ``_voxels`` voxels, ``_mb`` MiB.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aitom.commands.shared import MAX_SEED
from aitom.errors import InputError

__all__ = [
    "AverageConfig",
    "ClassifyConfig",
    "DenoiseConfig",
    "ExtractConfig",
    "PickConfig",
    "PipelineConfig",
    "WedgeConfig",
    "box_size_voxels",
    "load_pipeline_config",
]

DENOISE_METHODS = ("none", "gaussian", "diffusion")
PICK_METHODS = ("dog", "saliency", "template")
CLASSIFY_METHODS = ("clustering", "checkpoint")
PADDINGS = ("zero", "mean")
CONTRASTS = ("bright", "dark")


@dataclasses.dataclass
class DenoiseConfig:
    """Denoising of the tomogram used for PICKING only (subtomograms are cut from the raw tomogram)."""

    #: none | gaussian | diffusion (edge-enhancing anisotropic diffusion)
    method: str = "gaussian"
    #: Gaussian standard deviation, voxels
    sigma_voxels: float = 1.0
    #: diffusion iterations
    iterations: int = 10


@dataclasses.dataclass
class PickConfig:
    """Particle picking; the particle diameter also sets the DoG scale and the box size."""

    #: dog | saliency | template (needs `templates`)
    method: str = "dog"
    #: method template: one class per template (one file name may be given without a list), MRC maps
    #: (resampled to the tomogram's voxel size) or atomic models (.pdb/.cif, optionally .gz) built at the
    #: tomogram's voxel size
    templates: list[str] = dataclasses.field(default_factory=list)
    #: expected particle diameter, Å (DoG sigma1 = radius / sqrt(3); saliency radius; box size)
    particle_diameter_a: float = 200.0
    #: keep at most this many picks (best scores); null: all
    max_particles: int | None = 300
    #: false-alarm rate per voxel of the score threshold (robust Gaussian tail of the tomogram's scores)
    false_alarm_rate: float | None = 1e-6
    #: absolute score threshold (overrides false_alarm_rate)
    threshold: float | None = None
    #: drop picks closer than this to a face of the tomogram, voxels; null: half the particle radius
    exclude_border_voxels: float | None = None
    #: minimal distance between picks, voxels; null: the particle radius
    min_distance_voxels: int | None = None
    #: rotation grid covering radius for template matching, degrees
    angular_step_deg: float = 30.0
    #: tile edge for picking and denoising, voxels: the tomogram is processed tile by tile
    tile_voxels: int = 256
    #: overlap of neighbouring picking tiles, voxels; null: twice the picker's reach plus the peak spacing
    #: (then the picks do not depend on tile_voxels; at least the template box for template matching)
    overlap_voxels: int | None = None


@dataclasses.dataclass
class ExtractConfig:
    """Subtomogram extraction from the raw tomogram (read box by box from a memory map)."""

    #: box edge = next even size >= box_factor x diameter (voxels), capped at max_box_voxels; box_factor >= 1
    box_factor: float = 2.2
    max_box_voxels: int = 40
    #: padding outside the tomogram: zero | mean
    padding: str = "mean"


@dataclasses.dataclass
class ClassifyConfig:
    """Classification: PCA + k-means clustering with alignment (default) or a trained classifier."""

    #: clustering | checkpoint (template picks keep their template's class)
    method: str = "clustering"
    #: number of classes: auto (chosen by the silhouette in [2, max_classes]) or an integer
    n_classes: Any = "auto"
    max_classes: int = 4
    #: with auto: merge two classes whose estimated noise-free structures correlate by at least this, in
    #: (0, 1] (superposed class averages corrected by each class's half-set reproducibility); null: never
    merge_threshold: float | None = 0.9
    #: with auto, before merging: at most this many rounds in which every particle joins the class whose
    #: average it fits best, its own class's average computed without it (0: none)
    reassignment_rounds: int = 3
    #: PCA dimensions of the clustering
    n_components: int = 8
    #: Lightning checkpoint of an aitom.tasks.classify.Classifier (method checkpoint)
    checkpoint: str | None = None
    #: the classifier's network: import path of the class and its keyword arguments
    net_class_path: str | None = None
    net_init_args: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class AverageConfig:
    """Alignment and averaging per class (missing-wedge compensated)."""

    #: classify/align/average rounds (clustering) or align/average iterations (other classifiers)
    iterations: int = 2
    #: reference-free iterations before the first clustering
    initial_iterations: int = 2
    #: rotation search grid covering radius, degrees
    angular_step_deg: float = 30.0
    #: largest shift, voxels; null: a quarter of the box
    max_shift_voxels: float | None = None
    #: gradient refinement steps per alignment
    refine_steps: int = 10
    #: upper frequency of the alignment, cycles/voxel
    max_frequency: float = 0.35
    #: gold-standard rounds per class (even and odd particles refined apart from the class average low-passed
    #: to max_frequency / 2, so that the half-set FSC measures resolution); 0: half sets of the joint poses
    gold_standard_iterations: int = 2


@dataclasses.dataclass
class WedgeConfig:
    """The missing wedge of the subtomograms (tilt axis Y)."""

    #: tilt range [min, max], degrees; null: estimated from the tomogram (aitom estimate wedge)
    tilt_range_deg: list[float] | None = None
    #: edge of the central crop used for the estimate, voxels
    estimate_crop_voxels: int = 128
    #: used when no wedge is detected, degrees
    fallback_tilt_range_deg: list[float] = dataclasses.field(default_factory=lambda: [-60.0, 60.0])


@dataclasses.dataclass
class PipelineConfig:
    """All pipeline settings."""

    #: random seed (initial rotations, k-means)
    seed: int = 0
    #: torch device for denoising, classification and averaging: cpu | cuda
    device: str = "cpu"
    #: voxel size, Å, instead of the header's; needed when the header's is 0 or 1 (unset); null: the header's
    voxel_size_a: float | None = None
    #: bright: protein bright (aitom's simulations, or inverted data) | dark: raw cryo-ET contrast, negated
    #: tile by tile and box by box as it is read (the tomogram file is not changed)
    contrast: str = "bright"
    denoise: DenoiseConfig = dataclasses.field(default_factory=DenoiseConfig)
    pick: PickConfig = dataclasses.field(default_factory=PickConfig)
    extract: ExtractConfig = dataclasses.field(default_factory=ExtractConfig)
    classify: ClassifyConfig = dataclasses.field(default_factory=ClassifyConfig)
    average: AverageConfig = dataclasses.field(default_factory=AverageConfig)
    wedge: WedgeConfig = dataclasses.field(default_factory=WedgeConfig)


def box_size_voxels(config: PipelineConfig, voxel_size_a: float) -> int:
    """Box edge: the next even size >= ``box_factor × diameter`` in voxels, capped at ``max_box_voxels``."""
    diameter = config.pick.particle_diameter_a / voxel_size_a
    size = 2 * math.ceil(config.extract.box_factor * diameter / 2)
    return max(2, min(size, config.extract.max_box_voxels - config.extract.max_box_voxels % 2))


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _templates_as_list(settings: DictConfig) -> DictConfig:
    """A single template file name given for ``pick.templates`` becomes a one-element list."""
    pick = settings.get("pick")
    if isinstance(pick, DictConfig) and isinstance(pick.get("templates"), str):
        pick.templates = [pick.templates]
    return settings


def load_pipeline_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> PipelineConfig:
    """Defaults ← YAML file ← ``key=value`` overrides, validated.

    Raises:
        InputError: unreadable file, unknown key, wrong type or impossible value (named in the message).
    """
    config = OmegaConf.structured(PipelineConfig)
    source: str | Path = "pipeline defaults"
    try:
        if path is not None:
            source = Path(path)
            if not source.is_file():
                raise InputError("config file not found", source)
            try:
                loaded = OmegaConf.load(source)
            except (OSError, ValueError, yaml.YAMLError) as error:
                raise InputError(f"not a valid YAML config ({_first_line(error)})", source) from None
            if not isinstance(loaded, DictConfig):
                raise InputError("a pipeline config must be a mapping of keys to values", source)
            config = OmegaConf.merge(config, _templates_as_list(loaded))
        for override in overrides:
            if "=" not in override:
                raise InputError(f"override {override!r} is not of the form key=value")
            source = f"override {override!r}"
            config = OmegaConf.merge(config, _templates_as_list(OmegaConf.from_dotlist([override])))
        result = OmegaConf.to_object(config)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None)
        raise InputError(f"{key + ': ' if key else ''}{_first_line(error)}", source) from None
    validate_config(result)
    return result


def validate_config(config: PipelineConfig) -> None:
    """Raise :class:`InputError` naming the first impossible setting."""

    def fail(key: str, problem: str) -> None:
        raise InputError(f"{key}: {problem}")

    def positive(key: str, value: float | None, allow_none: bool = False) -> None:
        if value is None and allow_none:
            return
        if value is None or not 0 < value < math.inf:
            fail(key, f"must be a finite number > 0, got {value}")

    for key, value, choices in (
        ("contrast", config.contrast, CONTRASTS),
        ("denoise.method", config.denoise.method, DENOISE_METHODS),
        ("pick.method", config.pick.method, PICK_METHODS),
        ("classify.method", config.classify.method, CLASSIFY_METHODS),
        ("extract.padding", config.extract.padding, PADDINGS),
    ):
        if value not in choices:
            fail(key, f"must be one of {', '.join(choices)}, got {value!r}")
    if not 0 <= config.seed <= MAX_SEED:
        fail("seed", f"must lie in [0, {MAX_SEED}], got {config.seed}")
    if config.voxel_size_a is not None:
        positive("voxel_size_a", config.voxel_size_a)
    positive("denoise.sigma_voxels", config.denoise.sigma_voxels)
    positive("denoise.iterations", config.denoise.iterations)
    positive("pick.particle_diameter_a", config.pick.particle_diameter_a)
    positive("pick.max_particles", config.pick.max_particles, allow_none=True)
    if config.pick.exclude_border_voxels is not None and config.pick.exclude_border_voxels < 0:
        fail("pick.exclude_border_voxels", f"must be >= 0, got {config.pick.exclude_border_voxels}")
    positive("pick.min_distance_voxels", config.pick.min_distance_voxels, allow_none=True)
    positive("pick.angular_step_deg", config.pick.angular_step_deg)
    if config.pick.angular_step_deg > 180:
        fail("pick.angular_step_deg", f"must be at most 180, got {config.pick.angular_step_deg}")
    if config.pick.tile_voxels < 8:
        fail("pick.tile_voxels", f"must be >= 8, got {config.pick.tile_voxels}")
    if config.pick.overlap_voxels is not None and config.pick.overlap_voxels < 0:
        fail("pick.overlap_voxels", f"must be >= 0, got {config.pick.overlap_voxels}")
    if config.pick.threshold is not None and not math.isfinite(config.pick.threshold):
        fail("pick.threshold", f"must be a finite score or null, got {config.pick.threshold}")
    if config.pick.false_alarm_rate is not None and not 0 < config.pick.false_alarm_rate < 1:
        fail("pick.false_alarm_rate", f"must be in (0, 1), got {config.pick.false_alarm_rate}")
    if config.pick.method == "template" and not config.pick.templates:
        fail("pick.templates", "method template needs at least one template file")
    positive("extract.box_factor", config.extract.box_factor)
    if config.extract.box_factor < 1:
        fail(
            "extract.box_factor",
            f"must be >= 1 (a box at least the particle diameter), got {config.extract.box_factor}",
        )
    if config.extract.max_box_voxels < 8:
        fail("extract.max_box_voxels", f"must be >= 8, got {config.extract.max_box_voxels}")
    n_classes = config.classify.n_classes
    if n_classes != "auto" and not (isinstance(n_classes, int) and n_classes >= 1):
        fail("classify.n_classes", f"must be 'auto' or an integer >= 1, got {n_classes!r}")
    if config.classify.max_classes < 2:
        fail("classify.max_classes", f"must be >= 2, got {config.classify.max_classes}")
    merge_threshold = config.classify.merge_threshold
    if merge_threshold is not None and not 0.0 < merge_threshold <= 1.0:
        fail("classify.merge_threshold", f"must be in (0, 1] or null, got {merge_threshold}")
    rounds = config.classify.reassignment_rounds
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        fail("classify.reassignment_rounds", f"must be an integer >= 0, got {rounds!r}")
    positive("classify.n_components", config.classify.n_components)
    if config.classify.method == "checkpoint" and not (
        config.classify.checkpoint and config.classify.net_class_path
    ):
        fail("classify.checkpoint", "method checkpoint needs classify.checkpoint and classify.net_class_path")
    positive("average.iterations", config.average.iterations)
    positive("average.initial_iterations", config.average.initial_iterations)
    positive("average.angular_step_deg", config.average.angular_step_deg)
    positive("average.max_shift_voxels", config.average.max_shift_voxels, allow_none=True)
    if config.average.refine_steps < 0:
        fail("average.refine_steps", f"must be >= 0, got {config.average.refine_steps}")
    if config.average.gold_standard_iterations < 0:
        fail(
            "average.gold_standard_iterations",
            f"must be >= 0, got {config.average.gold_standard_iterations}",
        )
    if not 0 < config.average.max_frequency <= 0.5:
        fail("average.max_frequency", f"must be in (0, 0.5] cycles/voxel, got {config.average.max_frequency}")
    for key, tilt_range in (
        ("wedge.tilt_range_deg", config.wedge.tilt_range_deg),
        ("wedge.fallback_tilt_range_deg", config.wedge.fallback_tilt_range_deg),
    ):
        if tilt_range is not None and (
            len(tilt_range) != 2 or not -90 <= tilt_range[0] <= tilt_range[1] <= 90
        ):
            fail(key, f"must be [min, max] with -90 <= min <= max <= 90 degrees, got {list(tilt_range)}")
    if config.wedge.estimate_crop_voxels < 16:
        fail("wedge.estimate_crop_voxels", f"must be >= 16, got {config.wedge.estimate_crop_voxels}")


def config_to_yaml(config: PipelineConfig) -> str:
    """The settings as YAML text, loadable by :func:`load_pipeline_config`."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))
