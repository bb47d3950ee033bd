"""Particle pickers as LightningModules for ``trainer.predict``: template matching, DoG and saliency.

Data come from :class:`aitom.data.TomogramDataModule` (items ``{"volume": (1, Z, Y, X) tile, "origin_zyx",
"tomogram"}``); each ``predict_step`` picks in its tiles and returns, per tile, the picks in tomogram voxels.
:class:`PickWriter` merges the tiles of each tomogram — a pick is kept only by the tile whose CORE holds it
(the tile minus half the overlap on every side shared with a neighbour), then non-maximum suppression across
tiles removes what is left of duplicates — and writes one STAR table (``rlnCoordinateX/Y/Z`` voxels,
``rlnAutopickFigureOfMerit``, ``rlnTomoName``; template matching adds ``rlnAngleRot/Tilt/Psi`` degrees,
``rlnClassNumber`` and ``aitomClassName``, the template's file name without its suffixes). Template matching
can also write the stitched score map and best-rotation-index map (MRC) with the table of rotation index →
ZYZ angles (STAR).
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from aitom.errors import InputError
from aitom.geometry import matrix_to_relion_angles, rescale_volume, so3_grid, sphere_mask
from aitom.io import (
    HeaderWarning,
    open_volume_mmap,
    particles_table,
    read_volume,
    write_particles,
    write_volume,
)
from aitom.ops.dog_picking import dog_pick
from aitom.ops.peaks import false_alarm_threshold, inside_faces, non_maximum_suppression, peak_local_max
from aitom.ops.saliency import saliency_pick
from aitom.ops.template_matching import TemplateFilter, match_template, match_templates
from aitom.tasks.classify import DATASET_ORDER_KEY, gather_from_ranks

__all__ = [
    "DoGPicker",
    "PickWriter",
    "SaliencyPicker",
    "TemplateMatchingPicker",
    "TemplateRescaledWarning",
    "check_template",
    "map_paths",
    "read_template",
    "tile_core_mask",
]


def tile_core_mask(
    coordinates_zyx: torch.Tensor,
    origin_zyx: torch.Tensor,
    tile_shape_zyx: tuple[int, int, int],
    tomogram_shape_zyx: tuple[int, int, int],
    overlap_voxels: int,
) -> torch.Tensor:
    """Which picks ``(N, 3)`` (tomogram voxels, z y x) lie in the core of their tile, ``(N,)`` bool.

    The core is the tile minus ``overlap // 2`` voxels on a side shared with a neighbour at the start and
    ``overlap - overlap // 2`` at the end (the cores of all tiles partition the tomogram when neighbours
    overlap by exactly ``overlap_voxels``; with a larger actual overlap, e.g. the last tile, they overlap and
    the writer's NMS resolves duplicates).
    """
    origin = origin_zyx.to(coordinates_zyx.device).long()
    size = torch.tensor(tile_shape_zyx, device=coordinates_zyx.device)
    length = torch.tensor(tomogram_shape_zyx, device=coordinates_zyx.device)
    low = torch.where(origin > 0, origin + overlap_voxels // 2, origin)
    end = origin + size
    high = torch.where(end < length, end - (overlap_voxels - overlap_voxels // 2), end)
    return ((coordinates_zyx >= low) & (coordinates_zyx < high)).all(dim=-1)


POLARITIES = ("bright", "dark")
"""Particle contrast in a tomogram: ``bright`` (protein white: aitom's simulations, inverted data) or ``dark``
(raw cryo-ET contrast, protein black)."""


class _Picker(LightningModule, ABC):
    """Shared ``predict_step``: pick in every tile of the batch, return the picks in tomogram voxels."""

    def __init__(self, min_distance: int, polarity: str = "bright") -> None:
        super().__init__()
        if min_distance < 1:
            raise InputError(f"min distance must be >= 1 voxel, got {min_distance}")
        if polarity not in POLARITIES:
            raise InputError(f"polarity must be one of {', '.join(POLARITIES)}, got {polarity!r}")
        self.min_distance = min_distance
        #: +1 for protein-bright tomograms; -1 for protein-dark ones, whose tiles are negated before picking.
        self.contrast_sign = 1.0 if polarity == "bright" else -1.0

    @abstractmethod
    def pick_tile(self, tile: torch.Tensor) -> dict[str, torch.Tensor]:
        """Picks of one tile ``(Z, Y, X)``: ``coordinates_zyx`` (N, 3) tile voxels, ``scores`` (N,), ..."""

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        results = []
        for volume, origin, tomogram in zip(batch["volume"], batch["origin_zyx"], batch["tomogram"]):
            tile = volume[0] if self.contrast_sign > 0 else -volume[0]
            picks = self.pick_tile(tile)
            picks["coordinates_zyx"] = picks["coordinates_zyx"] + origin.to(tile.device)
            result = {key: value.detach().cpu() for key, value in picks.items()}
            result.update(tomogram=tomogram, origin_zyx=origin.cpu(), tile_shape=tuple(tile.shape))
            results.append(result)
        return results

    def configure_optimizers(self) -> None:
        return None


def _threshold(
    score: torch.Tensor, threshold_abs: float | None, false_alarm_rate: float | None
) -> float | None:
    if threshold_abs is not None:
        return threshold_abs
    return None if false_alarm_rate is None else false_alarm_threshold(score, false_alarm_rate)


MIN_TEMPLATE_BOX = 4
"""Smallest template box, voxels at the tomogram's voxel size, that template matching accepts."""


def check_template(
    path: str | Path,
    voxel_size_a: float,
    shape_zyx: tuple[int, ...],
    tomogram: str | Path,
    *,
    voxel_size_override: float | None = None,
) -> int:
    """Validate a template for a tomogram of ``shape_zyx`` at ``voxel_size_a`` Å; its box edge in its voxels.

    A template with another voxel size is accepted (:class:`TemplateMatchingPicker` resamples it); the box it
    will have must fit in the tomogram and keep at least ``MIN_TEMPLATE_BOX`` voxels. ``voxel_size_override``
    (``--voxel-size``, Å) replaces the template's header voxel size only where that looks unset (0 or 1 Å),
    as the picker does: a template whose header has a voxel size keeps it and is resampled.

    Raises:
        InputError: unreadable, not a cube, a header voxel size that looks unset (0 or 1 Å) and differs from
            the tomogram's, a box outside those limits at the tomogram's voxel size, or constant.
    """
    with warnings.catch_warnings():
        if voxel_size_override is not None:  # an unset header voxel size is replaced just below
            warnings.filterwarnings("ignore", message=".*looks unset", category=HeaderWarning)
        template, template_voxel_a = read_template(path, voxel_size_a)
    if voxel_size_override is not None and template_voxel_a in (0.0, 1.0):
        template_voxel_a = voxel_size_override
    if len(set(template.shape)) != 1:
        raise InputError(f"the template must be a cube, got {tuple(template.shape)} voxels", path)
    if template_voxel_a in (0.0, 1.0) and abs(template_voxel_a - voxel_size_a) > 1e-3 * voxel_size_a:
        raise InputError(
            f"voxel size {template_voxel_a:g} Å in the header looks unset, and the tomogram's is "
            f"{voxel_size_a:g} Å: write the template's into its header "
            "(aitom convert T.mrc T_fixed.mrc --voxel-size Å)",
            path,
        )
    box = round(template.shape[0] * template_voxel_a / voxel_size_a)
    if box < MIN_TEMPLATE_BOX:
        raise InputError(
            f"the template ({template.shape[0]}³ voxels of {template_voxel_a:g} Å) would be {box}³ voxels "
            f"at the tomogram's {voxel_size_a:g} Å, fewer than {MIN_TEMPLATE_BOX}",
            path,
        )
    if any(box > n for n in shape_zyx):
        raise InputError(
            f"the template ({box}³ voxels at the tomogram's {voxel_size_a:g} Å) is larger than the tomogram "
            f"({tuple(shape_zyx)} voxels, {tomogram})",
            path,
        )
    if float(template.std()) == 0.0:
        raise InputError("the template is constant", path)
    return box


def read_template(path: str | Path, voxel_size_a: float | None) -> tuple[torch.Tensor, float]:
    """A template and its voxel size, Å: an MRC volume as it is, or an atomic model (``.pdb``/``.cif``,
    :func:`aitom.simulate.get_class`) turned into its potential map at ``voxel_size_a`` (protein bright,
    centre of mass at the box centre, the library's default box).

    Raises:
        InputError: an unreadable file, or an atomic model without a voxel size to build it at.
    """
    from aitom.simulate.library import class_potential, is_atomic_model_path

    if is_atomic_model_path(str(path)):
        if voxel_size_a is None or not voxel_size_a > 0:
            raise InputError("an atomic-model template needs the tomogram's voxel size (--voxel-size)", path)
        return class_potential(str(path), voxel_size_a), voxel_size_a
    template, header = read_volume(path)
    return template, header.voxel_size_a[0]


def _template_name(path: str | Path) -> str:
    """Class name of a template: its file name without the volume suffixes (``p97.map.gz`` -> ``p97``), or
    an atomic model's class name (``7k00.cif.gz`` -> ``7k00``)."""
    from aitom.simulate.library import get_class, is_atomic_model_path

    if is_atomic_model_path(str(path)):
        return get_class(str(path)).name
    name = Path(path).name
    for suffix in (".gz", ".bz2", ".mrc", ".mrcs", ".map", ".rec", ".st"):
        name = name.removesuffix(suffix)
    return name


def _at_voxel_size(template: torch.Tensor, voxel_size_a: float, target_a: float, path: str) -> torch.Tensor:
    """The template resampled to ``target_a`` Å voxels when its own ``voxel_size_a`` differs (warned)."""
    if abs(voxel_size_a - target_a) <= 1e-3 * target_a:
        return template
    rescaled = rescale_volume(template, voxel_size_a, target_a)
    warnings.warn(
        f"{path}: template resampled from {voxel_size_a:g} Å to the tomogram's {target_a:g} Å voxels "
        f"(box {template.shape[-1]} -> {rescaled.shape[-1]})",
        TemplateRescaledWarning,
        stacklevel=3,
    )
    return rescaled


class TemplateRescaledWarning(UserWarning):
    """A template whose voxel size differs from the tomogram's was resampled to it."""


class TemplateMatchingPicker(_Picker):
    """FLCF template matching over an SO(3) grid (:func:`aitom.ops.template_matching.match_template`).

    With several templates (one per class), each template's score map is calibrated by its own null
    distribution (a z-score) and every voxel takes the template with the highest calibrated score
    (:func:`aitom.ops.template_matching.match_templates`); picks then go through one shared non-maximum
    suppression in which a pick suppresses weaker picks within the larger of the two templates' radii (half
    their boxes), so a small template firing inside a large particle loses to the large template. Scores
    (and ``threshold_abs``) are then z-scores; with one template they are raw FLCF values in ``[−1, 1]``.

    Args:
        template: path of the template, or a list of paths, one per class (MRC, protein bright, cubic; boxes
            may differ), or of an atomic model (``.pdb``/``.cif``, optionally ``.gz``) built at
            ``voxel_size_a`` (:func:`read_template`).
        voxel_size_a: the tomograms' voxel size, Å: a template with another voxel size is resampled to it
            (:func:`aitom.geometry.rescale_volume`, same extent, low-passed first when coarsened) with a
            :class:`TemplateRescaledWarning`. None: the templates' own voxel size (the first one's) is used.
        angular_step_deg: covering radius of the rotation grid, degrees, in ``(0, 180]``.
        tilt_range_deg: tilt range ``(min, max)`` of the tomograms (missing wedge applied to the template);
            None: no wedge.
        defocus_um: filter the template with this CTF (positive = underfocus); None: no CTF.
        voltage_kv, cs_mm, amplitude_contrast: CTF parameters.
        whiten: spectral whitening of each tile and of the template.
        mask_radius_voxels: radius of the spherical footprint mask; default half the template box.
        rotation_batch: rotations correlated at once.
        min_distance: minimal distance between picks, voxels; default half the (smallest) template box.
        false_alarm_rate: threshold from the score map's robust Gaussian tail, per voxel (default 1e-4).
        threshold_abs: absolute score threshold (overrides the false-alarm rates).
        num_peaks: at most this many picks per tile.
        peak_false_alarm_rate: when set, the threshold comes instead from the robust Gaussian tail of the
            values of the local maxima (after non-maximum suppression), per peak (e.g. 1e-2): in a crowded
            tomogram the voxel scores are not Gaussian in the tail (partial fits to neighbouring particles),
            whereas the bulk of the peaks are noise peaks and the particles stand out above them.
        class_number: ``rlnClassNumber`` of the picks (1-based), one per template; default 1, 2, ...
        keep_maps: return the score and rotation-index maps of every tile (for :class:`PickWriter` maps).
        polarity: the tomograms' particle contrast, :data:`POLARITIES` (the templates are protein bright).
    """

    def __init__(
        self,
        template: str | list[str],
        angular_step_deg: float = 30.0,
        tilt_range_deg: tuple[float, float] | None = (-60.0, 60.0),
        defocus_um: float | None = None,
        voltage_kv: float = 300.0,
        cs_mm: float = 2.7,
        amplitude_contrast: float = 0.07,
        whiten: bool = False,
        mask_radius_voxels: float | None = None,
        rotation_batch: int = 8,
        min_distance: int | None = None,
        false_alarm_rate: float | None = 1e-4,
        threshold_abs: float | None = None,
        num_peaks: int | None = None,
        peak_false_alarm_rate: float | None = None,
        class_number: int | list[int] | None = None,
        keep_maps: bool = False,
        voxel_size_a: float | None = None,
        polarity: str = "bright",
    ) -> None:
        paths = [template] if isinstance(template, str) else list(template)
        if not paths:
            raise InputError("no template given")
        with warnings.catch_warnings():  # an unset header voxel size is dealt with (and said) below
            warnings.simplefilter("ignore", HeaderWarning)
            references = [read_template(path, voxel_size_a) for path in paths]
        if voxel_size_a is None:
            voxel_size_a = references[0][1]
        for index, ((reference, reference_voxel_a), path) in enumerate(zip(references, paths)):
            if reference_voxel_a in (0.0, 1.0) and reference_voxel_a != voxel_size_a:
                # `aitom pick` refuses such a template unless --voxel-size says so (check_template).
                warnings.warn(
                    f"{path}: voxel size {reference_voxel_a:g} Å in the header looks unset; the template is "
                    f"taken at the tomogram's {voxel_size_a:g} Å",
                    HeaderWarning,
                    stacklevel=2,
                )
                references[index] = (reference, voxel_size_a)
        references = [
            _at_voxel_size(reference, reference_voxel_a, voxel_size_a, path)
            for (reference, reference_voxel_a), path in zip(references, paths)
        ]
        sizes = [int(reference.shape[0]) for reference in references]
        super().__init__(max(1, min(sizes) // 2) if min_distance is None else min_distance, polarity)
        self.save_hyperparameters()
        if class_number is None:
            class_number = list(range(1, len(paths) + 1))
        classes = [class_number] if isinstance(class_number, int) else list(class_number)
        if len(classes) != len(paths):
            raise InputError(f"{len(classes)} class numbers for {len(paths)} templates")
        if peak_false_alarm_rate is not None and not 0 < peak_false_alarm_rate < 1:
            raise InputError(f"peak false-alarm rate must be in (0, 1), got {peak_false_alarm_rate}")
        if min(classes) < 1:
            raise InputError(f"class numbers are 1-based, got {classes}")
        self.class_numbers = classes
        self.class_names = [_template_name(path) for path in paths]
        self.template_filter = TemplateFilter(
            tilt_range_deg=None if tilt_range_deg is None else tuple(tilt_range_deg),
            voxel_size_a=voxel_size_a,
            defocus_um=defocus_um,
            voltage_kv=voltage_kv,
            cs_mm=cs_mm,
            amplitude_contrast=amplitude_contrast,
        )
        for number, (reference, size) in enumerate(zip(references, sizes)):
            self.register_buffer(f"template_{number}", reference)
            radius = size / 2 if mask_radius_voxels is None else mask_radius_voxels
            self.register_buffer(f"mask_{number}", sphere_mask((size,) * 3, radius_voxels=radius))
        self.register_buffer("rotations", so3_grid(angular_step_deg))
        self.register_buffer("suppression_radii", torch.tensor([size / 2 for size in sizes]))

    @property
    def box_voxels(self) -> int:
        """Edge of the largest template box, voxels (after any resampling)."""
        return max(int(template.shape[-1]) for template in self.templates)

    @property
    def templates(self) -> list[torch.Tensor]:
        """The templates, one per class, on the module's device."""
        return [getattr(self, f"template_{number}") for number in range(len(self.class_numbers))]

    @property
    def masks(self) -> list[torch.Tensor | None]:
        """Footprint masks (None: the default sphere of the box, rotation-invariant)."""
        if self.hparams.mask_radius_voxels is None:
            return [None] * len(self.class_numbers)
        return [getattr(self, f"mask_{number}") for number in range(len(self.class_numbers))]

    def rotation_angles_deg(self) -> torch.Tensor:
        """``(R, 3)`` RELION angles (degrees) of the rotation grid, row = rotation index."""
        return matrix_to_relion_angles(self.rotations.double().cpu())

    def pick_tile(self, tile: torch.Tensor) -> dict[str, torch.Tensor]:
        hp = self.hparams
        if len(self.class_numbers) == 1:
            score, index = match_template(
                tile,
                self.templates[0],
                self.rotations,
                mask=self.masks[0],
                template_filter=self.template_filter,
                whiten=hp.whiten,
                rotation_batch=hp.rotation_batch,
            )
            template_index = torch.zeros_like(index)
        else:
            score, template_index, index = match_templates(
                tile,
                self.templates,
                self.rotations,
                masks=self.masks,
                template_filter=self.template_filter,
                whiten=hp.whiten,
                rotation_batch=hp.rotation_batch,
            )
        by_peaks = hp.peak_false_alarm_rate is not None and hp.threshold_abs is None
        # Peak-tail threshold: candidates from a finer search, so that the (many) noise peaks dominate the
        # statistics of the peak values whatever the particle density; the NMS below restores the spacing.
        coordinates, values = peak_local_max(
            score,
            min_distance=max(1, self.min_distance // 3) if by_peaks else self.min_distance,
            threshold_abs=None if by_peaks else _threshold(score, hp.threshold_abs, hp.false_alarm_rate),
            num_peaks=None if by_peaks else hp.num_peaks,
            # No border exclusion: the tile cores drop the unreliable rims at faces shared with neighbours
            # (overlap >= template box); at the tomogram's own faces the wrapped scores are kept.
            exclude_border=False,
        )
        which = template_index[tuple(coordinates.T)]
        if len(self.class_numbers) > 1 or by_peaks:
            radii = self.suppression_radii[which] if len(self.class_numbers) > 1 else None
            distance = float(self.min_distance)
            kept = non_maximum_suppression(coordinates.double(), values, distance, radii=radii)
            coordinates, values, which = coordinates[kept], values[kept], which[kept]
        if by_peaks and len(values):
            # Most local maxima of a score map are noise peaks: their robust tail sets the threshold.
            kept = values > false_alarm_threshold(values, hp.peak_false_alarm_rate)
            coordinates, values, which = coordinates[kept], values[kept], which[kept]
            if hp.num_peaks is not None:
                coordinates, values, which = (x[: hp.num_peaks] for x in (coordinates, values, which))
        rotation_index = index[tuple(coordinates.T)]
        angles = matrix_to_relion_angles(self.rotations[rotation_index].double()).to(values.dtype)
        classes = torch.tensor(self.class_numbers, device=which.device)
        picks = {
            "coordinates_zyx": coordinates,
            "scores": values,
            "angles_deg": angles,
            "class_number": classes[which],
            "template_index": which,
        }
        if hp.keep_maps:
            picks.update(score_map=score, rotation_index_map=index)
        return picks


class DoGPicker(_Picker):
    """Difference-of-Gaussians picker (:func:`aitom.ops.dog_picking.dog_pick`).

    Args:
        sigma1_voxels: smaller Gaussian, voxels (AITom: about 7 nm / voxel size).
        sigma2_voxels: larger Gaussian; default ``1.1 σ1``.
        polarity: the tomograms' particle contrast, :data:`POLARITIES`.
        min_distance: minimal distance between picks, voxels; default ``round(2 σ1)``.
        false_alarm_rate, threshold_abs, num_peaks: as :class:`TemplateMatchingPicker`.
    """

    def __init__(
        self,
        sigma1_voxels: float = 7.0,
        sigma2_voxels: float | None = None,
        polarity: str = "bright",
        min_distance: int | None = None,
        false_alarm_rate: float | None = 1e-3,
        threshold_abs: float | None = None,
        num_peaks: int | None = None,
    ) -> None:
        super().__init__(max(1, round(2 * sigma1_voxels)) if min_distance is None else min_distance, polarity)
        self.save_hyperparameters()

    def pick_tile(self, tile: torch.Tensor) -> dict[str, torch.Tensor]:
        hp = self.hparams
        coordinates, scores = dog_pick(
            tile,
            hp.sigma1_voxels,
            hp.sigma2_voxels,
            min_distance=self.min_distance,
            threshold_abs=hp.threshold_abs,
            false_alarm_rate=hp.false_alarm_rate,
            num_peaks=hp.num_peaks,
        )
        return {"coordinates_zyx": coordinates, "scores": scores}


class SaliencyPicker(_Picker):
    """Saliency picker: SLIC supervoxels + Robust PCA (:func:`aitom.ops.saliency.saliency_pick`).

    Args:
        particle_radius_voxels: expected particle radius, voxels.
        min_distance: minimal distance between picks, voxels; default the particle radius.
        false_alarm_rate, threshold_abs, num_peaks: as :class:`TemplateMatchingPicker` (on the smoothed
            saliency map).
        iterations: SLIC iterations.
        polarity: the tomograms' particle contrast, :data:`POLARITIES`.
    """

    def __init__(
        self,
        particle_radius_voxels: float = 8.0,
        min_distance: int | None = None,
        false_alarm_rate: float | None = None,
        threshold_abs: float | None = None,
        num_peaks: int | None = None,
        iterations: int = 5,
        polarity: str = "bright",
    ) -> None:
        default_distance = max(1, round(particle_radius_voxels))
        super().__init__(default_distance if min_distance is None else min_distance, polarity)
        self.save_hyperparameters()

    def pick_tile(self, tile: torch.Tensor) -> dict[str, torch.Tensor]:
        hp = self.hparams
        coordinates, scores = saliency_pick(
            tile,
            hp.particle_radius_voxels,
            min_distance=self.min_distance,
            threshold_abs=hp.threshold_abs,
            false_alarm_rate=hp.false_alarm_rate,
            num_peaks=hp.num_peaks,
            iterations=hp.iterations,
        )
        return {"coordinates_zyx": coordinates, "scores": scores}


def map_paths(output_path: str | Path, tomogram: str | Path) -> dict[str, Path]:
    """Files that template matching's ``--maps`` writes beside the STAR table ``output_path``.

    Returns:
        ``{"scores": <stem>_<tomo>_scores.mrc, "rotation_index": <stem>_<tomo>_rotation_index.mrc,
        "rotations": <stem>_rotations.star}`` (``<tomo>`` the tomogram's file name without its last suffix).
    """
    output_path = Path(output_path)
    stem = f"{output_path.stem}_{Path(tomogram).stem}"
    return {
        "scores": output_path.with_name(f"{stem}_scores.mrc"),
        "rotation_index": output_path.with_name(f"{stem}_rotation_index.mrc"),
        "rotations": output_path.with_name(f"{output_path.stem}_rotations.star"),
    }


class PickWriter(BasePredictionWriter):
    """Merge the tiles' picks of every tomogram and write them to one STAR table.

    With several processes (DDP), the tiles of every rank are gathered and rank 0 merges and writes them,
    so the files are those of a single process.

    Args:
        output_path: STAR file. With template matching and ``write_maps``, also ``<stem>_<tomo>_scores.mrc``
            (best FLCF score), ``<stem>_<tomo>_rotation_index.mrc`` (row of the rotation table, as float) and
            ``<stem>_rotations.star`` (rotation index → rlnAngleRot/Tilt/Psi, degrees) beside it.
        overlap_voxels: the DataModule's tile overlap (defines the tile cores).
        overwrite: replace existing files.
        write_maps: write the stitched score and rotation-index maps (template matching).
        voxel_size_a: voxel size of the maps, Å; None takes the tomogram header's.
        exclude_border_voxels: drop picks closer than this to a face of the tomogram, voxels (0: keep all).
            Picks at a face are partial particles at best, and the filters' boundary response makes
            false ones there.
    """

    def __init__(
        self,
        output_path: str = "outputs/picks.star",
        overlap_voxels: int = 32,
        overwrite: bool = False,
        write_maps: bool = False,
        voxel_size_a: float | None = None,
        exclude_border_voxels: float = 0.0,
    ) -> None:
        super().__init__(write_interval="batch")
        if not exclude_border_voxels >= 0:
            raise InputError(f"exclude_border_voxels must be >= 0, got {exclude_border_voxels}")
        self.output_path = Path(output_path)
        self.exclude_border_voxels = exclude_border_voxels
        self.overlap_voxels = overlap_voxels
        self.overwrite = overwrite
        self.write_maps = write_maps
        self.voxel_size_a = voxel_size_a
        self._tiles: list[dict[str, Any]] = []

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.output_path.exists() and not self.overwrite:
            raise InputError("exists; pass --overwrite to replace it", self.output_path)
        self._tiles = []

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: list[dict[str, Any]],
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        indices = [None] * len(prediction) if batch_indices is None else list(batch_indices)
        # each tile's place in the data set: the order of a single process, restored after gathering
        self._tiles.extend({**tile, DATASET_ORDER_KEY: index} for tile, index in zip(prediction, indices))

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Gather the tiles of every rank (DDP); rank 0 merges them and writes the files."""
        tiles = [tile for part in gather_from_ranks(trainer, self._tiles) for tile in part]
        self._tiles = []
        if all(tile[DATASET_ORDER_KEY] is not None for tile in tiles):
            tiles.sort(key=lambda tile: tile[DATASET_ORDER_KEY])
        if trainer.is_global_zero:
            self._write(tiles, pl_module)
        trainer.strategy.barrier("pick_writer")

    def _write(self, tiles: list[dict[str, Any]], pl_module: LightningModule) -> None:
        tables = []
        for tomogram in dict.fromkeys(tile["tomogram"] for tile in tiles):
            of_tomogram = [tile for tile in tiles if tile["tomogram"] == tomogram]
            shape = tuple(int(n) for n in open_volume_mmap(tomogram, voxel_size_a=self.voxel_size_a)[0].shape)
            tables.append(self._merge(of_tomogram, shape, Path(tomogram).stem, pl_module))
            if self.write_maps and "score_map" in of_tomogram[0]:
                self._write_maps(of_tomogram, shape, tomogram)
        table = pd.concat(tables, ignore_index=True) if tables else particles_table(np.zeros((0, 3)))
        write_particles(self.output_path, table, overwrite=self.overwrite)
        if self.write_maps and isinstance(pl_module, TemplateMatchingPicker):
            angles = pl_module.rotation_angles_deg().numpy()
            rotations = pd.DataFrame(
                {
                    "aitomRotationIndex": np.arange(len(angles)),
                    "rlnAngleRot": angles[:, 0],
                    "rlnAngleTilt": angles[:, 1],
                    "rlnAnglePsi": angles[:, 2],
                }
            )
            path = map_paths(self.output_path, "")["rotations"]
            write_particles(path, rotations, overwrite=self.overwrite)

    def _merge(
        self, tiles: list[dict[str, Any]], shape: tuple[int, int, int], name: str, pl_module: LightningModule
    ) -> pd.DataFrame:
        keys = [
            key
            for key in ("coordinates_zyx", "scores", "angles_deg", "class_number", "template_index")
            if key in tiles[0]
        ]
        kept: dict[str, list[torch.Tensor]] = {key: [] for key in keys}
        for tile in tiles:
            core = tile_core_mask(
                tile["coordinates_zyx"], tile["origin_zyx"], tile["tile_shape"], shape, self.overlap_voxels
            )
            for key in keys:
                kept[key].append(tile[key][core])
        merged = {key: torch.cat(values) for key, values in kept.items()}
        inside = inside_faces(merged["coordinates_zyx"], torch.tensor(shape), self.exclude_border_voxels)
        merged = {key: value[inside] for key, value in merged.items()}
        order = non_maximum_suppression(
            merged["coordinates_zyx"].double(), merged["scores"], float(getattr(pl_module, "min_distance", 1))
        )
        merged = {key: value[order] for key, value in merged.items()}
        table = particles_table(
            merged["coordinates_zyx"].flip(-1).double().numpy(),
            angles_deg=merged["angles_deg"].double().numpy() if "angles_deg" in merged else None,
            class_number=merged["class_number"].numpy() if "class_number" in merged else None,
            score=merged["scores"].double().numpy(),
            tomo_name=name,
        )
        if "template_index" in merged:
            names = np.asarray(pl_module.class_names, dtype=object)
            table["aitomClassName"] = names[merged["template_index"].long().numpy()]
        return table

    def _write_maps(self, tiles: list[dict[str, Any]], shape: tuple[int, int, int], tomogram: str) -> None:
        score = np.zeros(shape, dtype=np.float32)
        index = np.zeros(shape, dtype=np.float32)
        for tile in tiles:
            size = torch.tensor(tile["tile_shape"])
            origin = tile["origin_zyx"].long()
            grid = torch.stack(torch.meshgrid(*[torch.arange(int(n)) for n in size], indexing="ij"), -1)
            core = tile_core_mask(
                grid.reshape(-1, 3) + origin, origin, tile["tile_shape"], shape, self.overlap_voxels
            )
            core = core.reshape(*tile["tile_shape"]).numpy()
            region = tuple(slice(int(o), int(o) + int(n)) for o, n in zip(origin, size))
            score[region][core] = tile["score_map"].numpy()[core]
            index[region][core] = tile["rotation_index_map"].numpy()[core]
        header = open_volume_mmap(tomogram, voxel_size_a=self.voxel_size_a)[1]
        origin = header.grid_origin_a  # the maps lie on the tomogram's grid
        paths = map_paths(self.output_path, tomogram)
        for suffix, volume in (("scores", score), ("rotation_index", index)):
            write_volume(
                paths[suffix], volume, header.voxel_size_a, overwrite=self.overwrite, origin_a=origin
            )
