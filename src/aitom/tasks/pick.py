"""Particle pickers as LightningModules for ``trainer.predict``: template matching, DoG and saliency.

Data come from :class:`aitom.data.TomogramDataModule` (items ``{"volume": (1, Z, Y, X) tile, "origin_zyx",
"core_start_zyx", "core_stop_zyx", "shape_zyx", "tomogram"}``: the cores of a tomogram's tiles partition it).
Picking is split so that the picks do not depend on the tiling:

1. ``predict_step``, per tile: the score map, its local maxima inside the tile's CORE (candidates, in
   tomogram voxels, with their scores and, for template matching, rotation and class) and the statistics a
   false-alarm threshold needs: the core's scores at every k-th voxel of the tomogram's raster order
   (:func:`aitom.ops.peaks.strided_sample`, at most :data:`aitom.ops.peaks.ROBUST_MAX_SAMPLES` over the
   tomogram) and the core's minimum. When the tiles overlap by at least :attr:`_Picker.tile_overlap_voxels`
   (twice the reach of the picker's filter plus the peak spacing), every core's score map and maxima are
   those of the whole tomogram.
2. :class:`PickWriter`, once the tiles of every process are gathered (DDP), per tomogram: the thresholds
   from the pooled statistics (the robust Gaussian tail of the voxel scores, or of the peak values with
   ``peak_false_alarm_rate``, or Otsu's split of the saliency peaks), the greedy spacing of the picks and
   ``num_peaks`` (:meth:`_Picker.select_picks`) — exactly what one tile covering the tomogram gives. Then
   picks near the faces are dropped (``exclude_border_voxels``) and the table is written:
   ``rlnCoordinateX/Y/Z`` voxels, ``rlnAutopickFigureOfMerit``, ``rlnTomoName``; template matching adds
   ``rlnAngleRot/Tilt/Psi`` degrees, ``rlnClassNumber`` and ``aitomClassName``, the template's file name
   without its suffixes.

With several templates the scores are z-scores against each template's null distribution over the whole
tomogram, which no tile knows: a tile gives every template's raw maxima and samples, and the writer
calibrates them and keeps the maxima of the best calibrated score
(:meth:`TemplateMatchingPicker.select_picks`), so these picks too are those of one tile.

Memory: no whole-tomogram map is held, only the candidates (local maxima) and the bounded sample. Template
matching tiles are cut from the periodic tomogram (``boundary="periodic"``: its FFT correlation wraps around
the tomogram's faces as on the whole tomogram). Left to the tiling: saliency's scores (its supervoxels and
Robust PCA are those of one tile) and spectral whitening, whose filter comes from the whole tomogram's power
spectrum (:meth:`TemplateMatchingPicker.begin_tomogram`) but acts circularly on each tile, so the scores
differ slightly from the whole tomogram's. Template matching can also write the stitched score map and
best-rotation-index map (MRC) with the table of rotation index → ZYZ angles (STAR); with several templates
the tiles then hold every template's maps until the statistics are pooled.
"""

from __future__ import annotations

import math
import sys
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from tqdm import tqdm

from aitom.data.tomogram import tomogram_power_spectrum
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
from aitom.ops.dog_picking import dog_response
from aitom.ops.filters import gaussian_kernel1d
from aitom.ops.peaks import (
    cube_maximum,
    false_alarm_threshold,
    inside_faces,
    local_maxima,
    non_maximum_suppression,
    otsu_threshold,
    sample_stride,
    strided_sample,
    thin_peaks,
)
from aitom.ops.saliency import saliency_smoothing_sigma, smoothed_saliency, supervoxel_spacing
from aitom.ops.template_matching import (
    TemplateFilter,
    best_calibrated_template,
    calibrate_scores,
    crop_template,
    match_template,
    score_calibration,
    template_signal_outside,
    whitening_filter,
)
from aitom.tasks.classify import DATASET_ORDER_KEY, gather_from_ranks

__all__ = [
    "MAX_CROPPED_SIGNAL",
    "DoGPicker",
    "PickWriter",
    "SaliencyPicker",
    "TemplateCroppedWarning",
    "TemplateMatchingPicker",
    "TemplateRescaledWarning",
    "check_template",
    "map_paths",
    "read_template",
    "tile_core_mask",
]

#: per-candidate entries of a tile's result (``predict_step``) and of the picks (``select_picks``)
PICK_KEYS = ("coordinates_zyx", "scores", "angles_deg", "class_number", "template_index")


def tile_core_mask(
    coordinates_zyx: torch.Tensor, core_start_zyx: torch.Tensor, core_stop_zyx: torch.Tensor
) -> torch.Tensor:
    """Which positions ``(N, 3)`` (tomogram voxels, z y x) lie in a tile's core ``[start, stop)``: ``(N,)``
    bool."""
    start = core_start_zyx.to(coordinates_zyx.device)
    stop = core_stop_zyx.to(coordinates_zyx.device)
    return ((coordinates_zyx >= start) & (coordinates_zyx < stop)).all(dim=-1)


POLARITIES = ("bright", "dark")
"""Particle contrast in a tomogram: ``bright`` (protein white: aitom's simulations, inverted data) or ``dark``
(raw cryo-ET contrast, protein black)."""


def _core_and_beyond(
    tile_shape: torch.Size,
    origin_zyx: torch.Tensor,
    core_start_zyx: torch.Tensor,
    core_stop_zyx: torch.Tensor,
    shape_zyx: tuple[int, int, int],
    device: torch.device,
) -> tuple[tuple[slice, slice, slice], torch.Tensor]:
    """A tile's core as slices of the tile, and which of its voxels lie beyond the tomogram's faces
    ``(z, y, x)`` bool (a periodic tile's wrapped voxels: they take no part in the maxima, so that the cube
    around a voxel is cut at the faces as on the whole tomogram), on ``device``. Positions: ``(3,)`` int
    tomogram voxels, z y x."""
    low = (core_start_zyx - origin_zyx).tolist()
    high = (core_stop_zyx - origin_zyx).tolist()
    core = tuple(slice(a, b) for a, b in zip(low, high))
    positions = [torch.arange(n, device=device) + o for n, o in zip(tile_shape, origin_zyx.tolist())]
    outside = [(position < 0) | (position >= length) for position, length in zip(positions, shape_zyx)]
    beyond = outside[0][:, None, None] | outside[1][None, :, None] | outside[2][None, None, :]
    return core, beyond


def _merged_candidates(
    tiles: list[dict[str, Any]], shape_zyx: tuple[int, int, int], keys: list[str]
) -> dict[str, torch.Tensor]:
    """The ``keys`` entries of all tiles' candidates, in the raster order of their positions (as in one
    tile: candidates of equal score keep the same precedence; a stable sort, so candidates at one voxel keep
    their tile's order)."""
    merged = {key: torch.cat([tile[key] for tile in tiles]) for key in keys}
    order = torch.argsort(_raster_index(merged["coordinates_zyx"], shape_zyx), stable=True)
    return {key: value[order] for key, value in merged.items()}


def _raster_index(coordinates_zyx: torch.Tensor, shape_zyx: tuple[int, int, int]) -> torch.Tensor:
    """``(N,)`` raster-order index (z slowest) of positions ``(N, 3)`` in a volume of ``shape_zyx`` voxels."""
    steps = torch.tensor([shape_zyx[1] * shape_zyx[2], shape_zyx[2], 1])
    return (coordinates_zyx * steps.to(coordinates_zyx)).sum(-1)


class _Picker(LightningModule, ABC):
    """Shared tiling logic: candidates and statistics per tile (``predict_step``), picks from all of a
    tomogram's tiles (:meth:`select_picks`, called by :class:`PickWriter`); module doc."""

    #: how the data module cuts tiles at the tomogram's faces (:data:`aitom.data.tomogram.BOUNDARIES`)
    tile_boundary = "clamp"

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
    def score_maps(self, tile: torch.Tensor) -> dict[str, torch.Tensor]:
        """Maps of one protein-bright tile ``(Z, Y, X)``: ``score`` (higher = more particle-like) and any
        other per-voxel map the picks carry, each ``(Z, Y, X)``."""

    @property
    @abstractmethod
    def filter_reach_voxels(self) -> int:
        """Voxels from a voxel within which the data set its score (the filter's truncation radius)."""

    @property
    def maxima_distance(self) -> int:
        """Half-edge of the cube within which a candidate is the maximum of the score map, voxels."""
        return self.min_distance

    @property
    def tile_overlap_voxels(self) -> int:
        """Default tile overlap, voxels: twice the filter's reach plus the candidates' cube, the smallest for
        which each core's scores and maxima are the whole tomogram's, so that the picks do not depend on the
        tiling (saliency: :class:`SaliencyPicker`)."""
        return 2 * (self.filter_reach_voxels + self.maxima_distance)

    def candidate_extras(
        self, maps: dict[str, torch.Tensor], coordinates: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Per-candidate entries besides position and score, from the maps at ``coordinates`` ``(N, 3)``
        (tile voxels)."""
        return {}

    def tile_candidates(
        self,
        tile: torch.Tensor,
        origin_zyx: torch.Tensor,
        core_start_zyx: torch.Tensor,
        core_stop_zyx: torch.Tensor,
        shape_zyx: tuple[int, int, int],
    ) -> dict[str, Any]:
        """Candidates and statistics of one protein-bright tile (module doc, step 1).

        Args:
            tile: ``(z, y, x)`` voxels of the tomogram, the first at ``origin_zyx``.
            origin_zyx, core_start_zyx, core_stop_zyx: ``(3,)`` int tomogram voxels; the core is
                ``core_start <= voxel < core_stop``.
            shape_zyx: the tomogram's shape, voxels.

        Returns:
            ``coordinates_zyx`` ``(N, 3)`` int64 tomogram voxels, ``scores`` ``(N,)`` and the
            :meth:`candidate_extras` of the local maxima in the core (raster order); ``sample`` ``(M,)``, the
            core's scores at the tomogram's strided raster positions; ``minimum``, the core's lowest score
            (0-d); ``maps``, the score maps.
        """
        maps = self.score_maps(tile)
        score = maps["score"]
        origin = origin_zyx.to(score.device)
        core, beyond = _core_and_beyond(
            score.shape, origin_zyx, core_start_zyx, core_stop_zyx, shape_zyx, score.device
        )
        coordinates = torch.nonzero(local_maxima(score.masked_fill(beyond, -math.inf), self.maxima_distance))
        coordinates = coordinates[tile_core_mask(coordinates + origin, core_start_zyx, core_stop_zyx)]
        stride = sample_stride(math.prod(shape_zyx))
        return {
            "coordinates_zyx": coordinates + origin,
            "scores": score[tuple(coordinates.T)],
            **self.candidate_extras(maps, coordinates),
            "sample": strided_sample(score[core], tuple(core_start_zyx.tolist()), shape_zyx, stride),
            "minimum": score[core].min(),
            "maps": maps,
        }

    def select_picks(self, tiles: list[dict[str, Any]], shape_zyx: tuple[int, int, int]) -> dict[str, Any]:
        """The picks of a tomogram from the candidates and statistics of all its tiles (module doc, step 2).

        Args:
            tiles: :meth:`tile_candidates` of every tile of the tomogram (on one device), any order.
            shape_zyx: the tomogram's shape, voxels.

        Returns:
            The :data:`PICK_KEYS` the picker gives, best first: the same as one tile covering the tomogram.
        """
        merged = _merged_candidates(tiles, shape_zyx, [key for key in PICK_KEYS if key in tiles[0]])
        sample = torch.cat([tile["sample"] for tile in tiles])
        minimum = min(float(tile["minimum"]) for tile in tiles)
        kept = self.select_candidates(merged, sample, minimum)
        return {key: value[kept] for key, value in merged.items()}

    @abstractmethod
    def select_candidates(
        self, candidates: dict[str, torch.Tensor], sample: torch.Tensor, minimum: float
    ) -> torch.Tensor:
        """Indices ``(K,)`` of the candidates (raster order, all tiles) picked, best first.

        Args:
            candidates: the :data:`PICK_KEYS` entries of the tomogram's local maxima.
            sample: the tomogram's strided scores (:func:`aitom.ops.peaks.strided_sample`).
            minimum: the tomogram's lowest score.
        """

    def voxel_threshold(self, sample: torch.Tensor, minimum: float) -> float:
        """Score threshold (exclusive): ``threshold_abs``, else the false-alarm threshold of the tomogram's
        scores, else its lowest score (as :func:`aitom.ops.peaks.peak_local_max` without a threshold)."""
        hp = self.hparams
        if hp.threshold_abs is not None:
            return hp.threshold_abs
        return minimum if hp.false_alarm_rate is None else false_alarm_threshold(sample, hp.false_alarm_rate)

    def begin_tomogram(self, tomogram: str | torch.Tensor) -> None:
        """Called before the tiles of a tomogram are scored, with its path (MRC, memory-mapped) or, for
        :meth:`pick_tile`, the whole volume: for what a picker takes from the whole tomogram rather than
        from a tile. Nothing by default."""

    def pick_tile(self, tile: torch.Tensor) -> dict[str, torch.Tensor]:
        """Picks of one protein-bright volume ``(Z, Y, X)`` taken as a whole tomogram: ``coordinates_zyx``
        ``(N, 3)`` voxels, ``scores`` ``(N,)``, ... best first (:data:`PICK_KEYS`)."""
        self.begin_tomogram(tile)
        shape = tuple(int(n) for n in tile.shape)
        zero = torch.zeros(3, dtype=torch.int64)
        part = self.tile_candidates(tile, zero, zero, torch.tensor(shape), shape)
        return self.select_picks([part], shape)

    def kept_maps(self, maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The score maps that ``predict_step`` returns with a tile's candidates (for :class:`PickWriter`)."""
        return {}

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        results = []
        for index, (volume, tomogram) in enumerate(zip(batch["volume"], batch["tomogram"])):
            tile = volume[0] if self.contrast_sign > 0 else -volume[0]
            where = {
                key: batch[key][index].cpu() for key in ("origin_zyx", "core_start_zyx", "core_stop_zyx")
            }
            shape = tuple(int(n) for n in batch["shape_zyx"][index])
            self.begin_tomogram(tomogram)
            part = self.tile_candidates(tile, *where.values(), shape)
            maps = self.kept_maps(part.pop("maps"))
            result = {key: value.detach().cpu() for key, value in part.items()}
            result.update({f"{name}_map": value.detach().cpu() for name, value in maps.items()})
            result.update(where, tomogram=tomogram, shape_zyx=shape)
            results.append(result)
        return results

    def configure_optimizers(self) -> None:
        return None


MIN_TEMPLATE_BOX = 4
"""Smallest template box, voxels at the tomogram's voxel size, that template matching accepts."""


def check_template(
    path: str | Path,
    voxel_size_a: float,
    shape_zyx: tuple[int, ...],
    tomogram: str | Path,
    *,
    voxel_size_override: float | None = None,
    template_voxel_size_a: float | None = None,
) -> int:
    """Validate a template for a tomogram of ``shape_zyx`` at ``voxel_size_a`` Å; its box edge at that voxel
    size (after any crop).

    A template with another voxel size is accepted (:class:`TemplateMatchingPicker` resamples it); the box it
    will have must keep at least ``MIN_TEMPLATE_BOX`` voxels, and fit in the tomogram or be croppable to its
    thinnest axis (``max_box_voxels`` of the picker: at most :data:`MAX_CROPPED_SIGNAL` of its signal
    outside). ``voxel_size_override``
    (``--voxel-size``, Å) replaces the template's header voxel size only where that looks unset (0 or 1 Å),
    as the picker does: a template whose header has a voxel size keeps it and is resampled.
    ``template_voxel_size_a`` (``--template-voxel-size``, Å) replaces an MRC template's header voxel size
    whatever it says.

    Raises:
        InputError: unreadable, not a cube, a header voxel size that looks unset (0 or 1 Å) and differs from
            the tomogram's, a box outside those limits at the tomogram's voxel size (naming ``tomogram``), or
            constant.
    """
    with warnings.catch_warnings():
        if voxel_size_override is not None or template_voxel_size_a is not None:  # replaced just below
            warnings.filterwarnings("ignore", message=".*looks unset", category=HeaderWarning)
        template, template_voxel_a = read_template(path, voxel_size_a, template_voxel_size_a)
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
    if float(template.std()) == 0.0:
        raise InputError("the template is constant", path)
    if box > min(shape_zyx):  # the picker crops it (and says so) if the particle fits
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TemplateRescaledWarning)
            warnings.simplefilter("ignore", TemplateCroppedWarning)
            fitted = _at_voxel_size(template, template_voxel_a, voxel_size_a, path)
            _within_box(fitted, min(shape_zyx), path, tomogram)
        box = min(shape_zyx)
    return box


def read_template(
    path: str | Path, voxel_size_a: float | None, template_voxel_size_a: float | None = None
) -> tuple[torch.Tensor, float]:
    """A template and its voxel size, Å: an MRC volume as it is (its voxel size ``template_voxel_size_a``
    when given, else the header's), or an atomic model (``.pdb``/``.cif``, :func:`aitom.simulate.get_class`)
    turned into its potential map at ``voxel_size_a`` (protein bright, centre of mass at the box centre, the
    library's default box).

    Raises:
        InputError: an unreadable file, or an atomic model without a voxel size to build it at.
    """
    from aitom.simulate.library import class_potential, is_atomic_model_path

    if is_atomic_model_path(str(path)):
        if voxel_size_a is None or not voxel_size_a > 0:
            raise InputError("an atomic-model template needs the tomogram's voxel size (--voxel-size)", path)
        return class_potential(str(path), voxel_size_a), voxel_size_a
    template, header = read_volume(path)
    return template, header.voxel_size_a[0] if template_voxel_size_a is None else template_voxel_size_a


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


MAX_CROPPED_SIGNAL = 0.01
"""Largest share of a template's signal (:func:`aitom.ops.template_matching.template_signal_outside`) that
cropping it to fit a tomogram may cut off."""


class TemplateCroppedWarning(UserWarning):
    """A template box larger than the tomogram was cropped about its centre (its particle fits)."""


def _within_box(
    template: torch.Tensor, max_box_voxels: int | None, path: str | Path, tomogram: str | Path | None = None
) -> torch.Tensor:
    """The template, cropped about its centre to ``max_box_voxels`` when larger (warned); ``tomogram``, when
    given, is named in the refusal.

    Raises:
        InputError: the crop would cut off more than :data:`MAX_CROPPED_SIGNAL` of its signal.
    """
    box = int(template.shape[-1])
    if max_box_voxels is None or box <= max_box_voxels:
        return template
    outside = template_signal_outside(template, max_box_voxels)
    if outside > MAX_CROPPED_SIGNAL:
        raise InputError(
            f"the template ({box}³ voxels at the tomogram's voxel size) is larger than the tomogram's "
            f"thinnest axis ({max_box_voxels} voxels{'' if tomogram is None else f', {tomogram}'}), and "
            "cropping it to fit would cut off "
            f"{100 * outside:.1f} % of its density: the particle does not fit in the tomogram",
            path,
        )
    warnings.warn(
        f"{path}: template cropped from {box}³ to {max_box_voxels}³ voxels about its centre to fit the "
        f"tomogram ({100 * outside:.2f} % of its density was outside)",
        TemplateCroppedWarning,
        stacklevel=3,
    )
    return crop_template(template, max_box_voxels)


class TemplateMatchingPicker(_Picker):
    """FLCF template matching over an SO(3) grid (:func:`aitom.ops.template_matching.match_template`).

    With several templates (one per class), each template's score map is calibrated by its own null
    distribution over the whole tomogram (a z-score) and every voxel takes the template with the highest
    calibrated score (as :func:`aitom.ops.template_matching.match_templates`; over tiles,
    :meth:`select_picks`); picks then go through one shared non-maximum
    suppression in which a pick suppresses weaker picks within the larger of the two templates' radii (half
    their boxes), so a small template firing inside a large particle loses to the large template. Scores
    (and ``threshold_abs``) are then z-scores; with one template they are raw FLCF values in ``[−1, 1]``.

    Tiles are cut from the periodic tomogram (the FFT correlation wraps around the tomogram's faces, module
    doc); a search of several rotation batches shows a progress bar over the rotations of each tile (on a
    terminal, when the Trainer shows its own).

    Args:
        template: path of the template, or a list of paths, one per class (MRC, protein bright, cubic; boxes
            may differ), or of an atomic model (``.pdb``/``.cif``, optionally ``.gz``) built at
            ``voxel_size_a`` (:func:`read_template`).
        voxel_size_a: the tomograms' voxel size, Å: a template with another voxel size is resampled to it
            (:func:`aitom.geometry.rescale_volume`, same extent, low-passed first when coarsened) with a
            :class:`TemplateRescaledWarning`. None: the templates' own voxel size (the first one's) is used.
        template_voxel_size_a: the voxel size of the MRC templates, Å, replacing their headers' (wrong or
            unset headers); None: the headers'.
        angular_step_deg: covering radius of the rotation grid, degrees, in ``(0, 180]``.
        tilt_range_deg: tilt range ``(min, max)`` of the tomograms (missing wedge applied to the template);
            None: no wedge.
        defocus_um: filter the template with this CTF (positive = underfocus); None: no CTF.
        voltage_kv, cs_mm, amplitude_contrast: CTF parameters.
        whiten: spectral whitening of the tomogram and of the template, by the whole tomogram's radial power
            spectrum (:meth:`begin_tomogram`).
        mask_radius_voxels: radius of the spherical footprint mask; default half the template box.
        rotation_batch: rotations correlated at once.
        min_distance: minimal distance between picks, voxels; default half the (smallest) template box.
        false_alarm_rate: threshold from the robust Gaussian tail of the tomogram's scores, per voxel (default
            1e-4).
        threshold_abs: absolute score threshold (overrides the false-alarm rates).
        num_peaks: at most this many picks (the best) per tomogram.
        peak_false_alarm_rate: when set, the threshold comes instead from the robust Gaussian tail of the
            values of the tomogram's local maxima (after non-maximum suppression), per peak (e.g. 1e-2): in a
            crowded tomogram the voxel scores are not Gaussian in the tail (partial fits to neighbouring
            particles), whereas the bulk of the peaks are noise peaks and the particles stand out above them.
        class_number: ``rlnClassNumber`` of the picks (1-based), one per template; default 1, 2, ...
        keep_maps: return the score and rotation-index maps of every tile (for :class:`PickWriter` maps).
        polarity: the tomograms' particle contrast, :data:`POLARITIES` (the templates are protein bright).
        max_box_voxels: largest template box, voxels (at the tomograms' voxel size; e.g. the thinnest
            tomogram axis): a larger template is cropped about its centre to this box with a
            :class:`TemplateCroppedWarning`, and refused when that would cut off more than
            :data:`MAX_CROPPED_SIGNAL` of its signal. None: no limit.
    """

    tile_boundary = "periodic"

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
        template_voxel_size_a: float | None = None,
        max_box_voxels: int | None = None,
    ) -> None:
        paths = [template] if isinstance(template, str) else list(template)
        if not paths:
            raise InputError("no template given")
        if template_voxel_size_a is not None and not 0 < template_voxel_size_a < math.inf:
            raise InputError(
                f"template voxel size must be a positive number of Å, got {template_voxel_size_a}"
            )
        with warnings.catch_warnings():  # an unset header voxel size is dealt with (and said) below
            warnings.simplefilter("ignore", HeaderWarning)
            references = [read_template(path, voxel_size_a, template_voxel_size_a) for path in paths]
        if voxel_size_a is None:
            voxel_size_a = references[0][1]
        for index, ((reference, reference_voxel_a), path) in enumerate(zip(references, paths)):
            unset = reference_voxel_a in (0.0, 1.0) and template_voxel_size_a is None
            if unset and reference_voxel_a != voxel_size_a:
                # `aitom pick` refuses such a template unless --voxel-size says so (check_template).
                warnings.warn(
                    f"{path}: voxel size {reference_voxel_a:g} Å in the header looks unset; the template is "
                    f"taken at the tomogram's {voxel_size_a:g} Å",
                    HeaderWarning,
                    stacklevel=2,
                )
                references[index] = (reference, voxel_size_a)
        references = [
            _within_box(
                _at_voxel_size(reference, reference_voxel_a, voxel_size_a, path), max_box_voxels, path
            )
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
        #: with ``whiten``: each tomogram's radial power spectrum (by path), and the current tomogram's
        self._power_spectra: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._power_spectrum: tuple[torch.Tensor, torch.Tensor] | None = None

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

    @property
    def _by_peaks(self) -> bool:
        """Whether the threshold comes from the peak values (``peak_false_alarm_rate``)."""
        return self.hparams.peak_false_alarm_rate is not None and self.hparams.threshold_abs is None

    @property
    def filter_reach_voxels(self) -> int:
        # the score at a voxel correlates the largest box around it: up to ceil(box / 2) voxels away
        return self.box_voxels - self.box_voxels // 2

    @property
    def maxima_distance(self) -> int:
        # Peak-tail threshold: candidates from a finer search, so that the (many) noise peaks dominate the
        # statistics of the peak values whatever the particle density; the NMS restores the spacing.
        return max(1, self.min_distance // 3) if self._by_peaks else self.min_distance

    @contextmanager
    def _rotation_progress(self, total: int) -> Iterator[Callable[[int], None] | None]:
        """Progress over the ``total`` (template, rotation) pairs of a tile's search, as a function of the
        number done: a line under the Trainer's progress bar when the search takes several rotation batches
        and that bar is shown (a Rich task, or a tqdm bar on a terminal); None otherwise."""
        bar = None if self._trainer is None else self._trainer.progress_bar_callback
        if bar is None or bar.is_disabled or total <= self.hparams.rotation_batch:
            yield None
        elif getattr(bar, "progress", None) is not None:  # RichProgressBar's live rich Progress
            task = bar.progress.add_task("rotations", total=total)
            try:
                yield lambda done: bar.progress.update(task, completed=done, refresh=True)
            finally:
                bar.progress.remove_task(task)
        else:
            disable = not sys.stderr.isatty()
            with tqdm(total=total, desc="rotations", leave=False, disable=disable) as line:
                yield lambda done: line.update(done - line.n)

    def begin_tomogram(self, tomogram: str | torch.Tensor) -> None:
        """With ``whiten``: the whitening comes from the whole tomogram's power spectrum (Welch's estimate
        over segments, :func:`aitom.data.tomogram.tomogram_power_spectrum`), so that the picks do not
        depend on the tiling."""
        if not self.hparams.whiten:
            return
        if isinstance(tomogram, torch.Tensor):
            self._power_spectrum = tomogram_power_spectrum(tomogram.detach().cpu())
            return
        if tomogram not in self._power_spectra:
            with warnings.catch_warnings():  # the header was read (and its warnings given) for the tiles
                warnings.simplefilter("ignore", HeaderWarning)
                array, _ = open_volume_mmap(tomogram)
            self._power_spectra[tomogram] = tomogram_power_spectrum(array, path=tomogram)
        self._power_spectrum = self._power_spectra[tomogram]

    def score_maps(self, tile: torch.Tensor) -> dict[str, torch.Tensor]:
        hp = self.hparams
        whitening = None
        if hp.whiten and self._power_spectrum is not None:
            centres, power = (
                value.to(device=tile.device, dtype=tile.dtype) for value in self._power_spectrum
            )
            whitening = whitening_filter(centres, power)
        options = {
            "template_filter": self.template_filter,
            "whiten": hp.whiten,
            "whitening": whitening,
            "rotation_batch": hp.rotation_batch,
        }
        count = len(self.rotations)
        with self._rotation_progress(count * len(self.class_numbers)) as progress:
            scores, rotation_indices = [], []
            for number, (template, mask) in enumerate(zip(self.templates, self.masks)):
                score, index = match_template(
                    tile,
                    template,
                    self.rotations,
                    mask=mask,
                    progress=None
                    if progress is None
                    else (lambda done, n=number: progress(n * count + done)),
                    **options,
                )
                scores.append(score)
                rotation_indices.append(index.int())
        if len(self.class_numbers) == 1:
            return {"score": scores[0], "rotation_index": rotation_indices[0]}
        # several templates: raw scores, calibrated once the whole tomogram's statistics are pooled
        return {
            "template_scores": torch.stack(scores),
            "template_rotation_index": torch.stack(rotation_indices),
        }

    def kept_maps(self, maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return dict(maps) if self.hparams.keep_maps else {}

    def candidate_extras(
        self, maps: dict[str, torch.Tensor], coordinates: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        at = tuple(coordinates.T)
        return self._pose_and_class(maps["rotation_index"][at], torch.zeros_like(at[0]))

    def _pose_and_class(
        self, rotation_index: torch.Tensor, template_index: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """``angles_deg`` ``(N, 3)``, ``class_number`` and ``template_index`` ``(N,)`` of candidates with
        these rotation and template indices ``(N,)``."""
        angles = matrix_to_relion_angles(self.rotations[rotation_index.long()].double())
        classes = torch.tensor(self.class_numbers, device=template_index.device)
        return {
            "angles_deg": angles.to(self.rotations.dtype),
            "class_number": classes[template_index],
            "template_index": template_index,
        }

    def tile_candidates(
        self,
        tile: torch.Tensor,
        origin_zyx: torch.Tensor,
        core_start_zyx: torch.Tensor,
        core_stop_zyx: torch.Tensor,
        shape_zyx: tuple[int, int, int],
    ) -> dict[str, Any]:
        """With several templates the maps are calibrated only once the tomogram's statistics are pooled
        (:meth:`select_picks`), so a tile gives, per template, the local maxima of its raw score in the core,
        with every template's raw maximum over the cube around each (``cube_maxima`` ``(N, K)``: whether a
        candidate is a maximum of the calibrated best-template map is decided from them), the core's raw
        scores at the strided positions (``sample`` ``(M, K)``) and its lowest raw scores (``minimum``
        ``(K,)``). One template: :meth:`_Picker.tile_candidates`."""
        if len(self.class_numbers) == 1:
            return super().tile_candidates(tile, origin_zyx, core_start_zyx, core_stop_zyx, shape_zyx)
        maps = self.score_maps(tile)
        scores = maps["template_scores"]
        origin = origin_zyx.to(scores.device)
        core, beyond = _core_and_beyond(
            scores.shape[1:], origin_zyx, core_start_zyx, core_stop_zyx, shape_zyx, scores.device
        )
        masked = scores.masked_fill(beyond, -math.inf)
        pooled = cube_maximum(masked, self.maxima_distance)
        coordinates, template_index = [], []
        for number in range(len(self.class_numbers)):
            found = torch.nonzero(masked[number] == pooled[number])
            found = found[tile_core_mask(found + origin, core_start_zyx, core_stop_zyx)]
            coordinates.append(found)
            template_index.append(torch.full_like(found[:, 0], number))
        coordinates, template_index = torch.cat(coordinates), torch.cat(template_index)
        at = (template_index, *coordinates.T)
        stride = sample_stride(math.prod(shape_zyx))
        start = tuple(core_start_zyx.tolist())
        return {
            "coordinates_zyx": coordinates + origin,
            "scores": scores[at],
            **self._pose_and_class(maps["template_rotation_index"][at], template_index),
            "cube_maxima": pooled[(slice(None), *coordinates.T)].T,
            "sample": torch.stack(
                [strided_sample(score[core], start, shape_zyx, stride) for score in scores], -1
            ),
            "minimum": scores[(slice(None), *core)].amin(dim=(1, 2, 3)),
            "maps": maps,
        }

    def select_picks(self, tiles: list[dict[str, Any]], shape_zyx: tuple[int, int, int]) -> dict[str, Any]:
        """With several templates, each template's raw scores are calibrated by the null distribution of
        the tomogram's pooled sample (:func:`aitom.ops.template_matching.score_calibration`); the candidates
        are the local maxima of the voxel-wise best calibrated score (each is a maximum of its own template's
        map, and calibrated at least as high as every template's maximum over its cube), and the thresholds
        come from that best score at the sampled voxels; the lowest score is bounded below by the best
        calibrated of the templates' lowest scores. The same as one tile covering the tomogram. One template:
        :meth:`_Picker.select_picks`."""
        if len(self.class_numbers) == 1:
            return super().select_picks(tiles, shape_zyx)
        keys = [*PICK_KEYS, "cube_maxima"]
        merged = _merged_candidates(tiles, shape_zyx, keys)
        calibrations = self._template_calibrations(tiles)
        scores = merged["scores"].clone()
        cube_best = torch.full_like(scores, -math.inf)
        for number, calibration in enumerate(calibrations):
            mine = merged["template_index"] == number
            scores[mine] = calibrate_scores(merged["scores"][mine], calibration)
            cube_best = torch.maximum(
                cube_best, calibrate_scores(merged["cube_maxima"][:, number], calibration)
            )
        maximum = scores >= cube_best
        # Two templates tied at one voxel: the first keeps it (as the voxel-wise arg-max does).
        raster = _raster_index(merged["coordinates_zyx"], shape_zyx)[maximum]
        first = torch.ones_like(raster, dtype=torch.bool)
        first[1:] = raster[1:] != raster[:-1]
        merged = {key: merged[key][maximum][first] for key in PICK_KEYS}
        merged["scores"] = scores[maximum][first]
        sample = torch.cat([tile["sample"] for tile in tiles])
        best_sample = best_calibrated_template(
            (column, torch.zeros_like(column, dtype=torch.int64), calibration)
            for column, calibration in zip(sample.T, calibrations)
        )[0]
        minimum = torch.cat([tile["minimum"][None] for tile in tiles]).amin(0)
        lowest = max(
            float(calibrate_scores(value, calibration)) for value, calibration in zip(minimum, calibrations)
        )
        kept = self.select_candidates(merged, best_sample, lowest)
        return {key: value[kept] for key, value in merged.items()}

    def _template_calibrations(self, tiles: list[dict[str, Any]]) -> list[tuple[float, float]]:
        """Each template's ``(median, spread)`` of raw scores over the tomogram's pooled sample."""
        sample = torch.cat([tile["sample"] for tile in tiles])
        return [score_calibration(column) for column in sample.T]

    def tile_score_maps(self, tiles: list[dict[str, Any]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each tile's best score and best-rotation-index maps (``keep_maps``): with several templates, the
        voxel-wise best calibrated score (calibrated as :meth:`select_picks` does)."""
        if len(self.class_numbers) == 1:
            return [(tile["score_map"], tile["rotation_index_map"]) for tile in tiles]
        calibrations = self._template_calibrations(tiles)
        maps = []
        for tile in tiles:
            score, _, rotation_index = best_calibrated_template(
                zip(tile["template_scores_map"], tile["template_rotation_index_map"], calibrations)
            )
            maps.append((score, rotation_index))
        return maps

    def select_candidates(
        self, candidates: dict[str, torch.Tensor], sample: torch.Tensor, minimum: float
    ) -> torch.Tensor:
        hp = self.hparams
        coordinates, values = candidates["coordinates_zyx"], candidates["scores"]
        if self._by_peaks:
            kept = thin_peaks(coordinates, values, self.maxima_distance, minimum)
        else:
            threshold = self.voxel_threshold(sample, minimum)
            kept = thin_peaks(coordinates, values, self.min_distance, threshold, hp.num_peaks)
        if len(self.class_numbers) > 1 or self._by_peaks:
            which = candidates["template_index"][kept]
            radii = self.suppression_radii.to(which.device)[which] if len(self.class_numbers) > 1 else None
            distance = float(self.min_distance)
            kept = kept[
                non_maximum_suppression(coordinates[kept].double(), values[kept], distance, radii=radii)
            ]
        if self._by_peaks and len(kept):
            # Most local maxima of a score map are noise peaks: their robust tail sets the threshold.
            kept = kept[values[kept] > false_alarm_threshold(values[kept], hp.peak_false_alarm_rate)]
            kept = kept[: hp.num_peaks]
        return kept


class DoGPicker(_Picker):
    """Difference-of-Gaussians picker (:func:`aitom.ops.dog_picking.dog_pick`), tile by tile.

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

    @property
    def filter_reach_voxels(self) -> int:
        # the larger Gaussian's kernel radius (truncated at 4 σ2, as difference_of_gaussians)
        sigma2 = self.hparams.sigma2_voxels or 1.1 * self.hparams.sigma1_voxels
        return gaussian_kernel1d(sigma2).numel() // 2

    def score_maps(self, tile: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"score": dog_response(tile, self.hparams.sigma1_voxels, self.hparams.sigma2_voxels)}

    def select_candidates(
        self, candidates: dict[str, torch.Tensor], sample: torch.Tensor, minimum: float
    ) -> torch.Tensor:
        threshold = self.voxel_threshold(sample, minimum)
        return thin_peaks(
            candidates["coordinates_zyx"],
            candidates["scores"],
            self.min_distance,
            threshold,
            self.hparams.num_peaks,
        )


class SaliencyPicker(_Picker):
    """Saliency picker: SLIC supervoxels + Robust PCA (:func:`aitom.ops.saliency.saliency_pick`), tile by
    tile.

    The supervoxels and the Robust PCA are those of one tile, so unlike the other pickers' scores the
    saliency depends on the tiling; the tiles overlap by twice the supervoxels' reach plus the peak spacing,
    so a particle near a tile face is seen whole in the core that keeps its peak, and the threshold is one per
    tomogram, set from the candidates of all tiles. A tomogram no larger than one tile is picked whole.

    Args:
        particle_radius_voxels: expected particle radius, voxels.
        min_distance: minimal distance between picks, voxels; default the particle radius.
        false_alarm_rate, threshold_abs, num_peaks: as :class:`TemplateMatchingPicker` (on the smoothed
            saliency map); with neither threshold, the peaks are split by Otsu's threshold of their
            log-saliency and the upper class is kept.
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

    @property
    def filter_reach_voxels(self) -> int:
        # a supervoxel spans up to twice the SLIC grid spacing from its centre; then the saliency smoothing
        radius = self.hparams.particle_radius_voxels
        return (
            2 * supervoxel_spacing(radius) + gaussian_kernel1d(saliency_smoothing_sigma(radius)).numel() // 2
        )

    def score_maps(self, tile: torch.Tensor) -> dict[str, torch.Tensor]:
        radius = self.hparams.particle_radius_voxels
        return {"score": smoothed_saliency(tile, radius, iterations=self.hparams.iterations)}

    def select_candidates(
        self, candidates: dict[str, torch.Tensor], sample: torch.Tensor, minimum: float
    ) -> torch.Tensor:
        hp = self.hparams
        values = candidates["scores"]
        automatic = hp.threshold_abs is None and hp.false_alarm_rate is None
        threshold = hp.threshold_abs
        if threshold is None:
            threshold = 0.0 if automatic else false_alarm_threshold(sample, hp.false_alarm_rate)
        kept = thin_peaks(
            candidates["coordinates_zyx"],
            values,
            self.min_distance,
            threshold,
            None if automatic else hp.num_peaks,
        )
        if automatic and len(kept) >= 2:
            # Half the map is exactly 0 (dim supervoxels), so voxel statistics say nothing about the noise;
            # the peak values split into background and particles, and Otsu's threshold of their logarithm
            # separates the two (the saliency of particles spans orders of magnitude).
            logarithm = values[kept].log()
            kept = kept[logarithm > otsu_threshold(logarithm)][: hp.num_peaks]
        return kept


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
    """Pick in every tomogram from its tiles' candidates and statistics, and write one STAR table.

    With several processes (DDP), the tiles of every rank are gathered and rank 0 merges and writes them,
    so the files are those of a single process. The picks of a tomogram are the picker's
    :meth:`_Picker.select_picks` of all its tiles (thresholds from the whole tomogram's statistics), without
    those closer than ``exclude_border_voxels`` to a face.

    Args:
        output_path: STAR file. With template matching and ``write_maps``, also ``<stem>_<tomo>_scores.mrc``
            (best FLCF score), ``<stem>_<tomo>_rotation_index.mrc`` (row of the rotation table, as float) and
            ``<stem>_rotations.star`` (rotation index → rlnAngleRot/Tilt/Psi, degrees) beside it.
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
            shape = of_tomogram[0]["shape_zyx"]
            tables.append(self._merge(of_tomogram, shape, Path(tomogram).stem, pl_module))
            if (
                self.write_maps
                and isinstance(pl_module, TemplateMatchingPicker)
                and pl_module.hparams.keep_maps
            ):
                self._write_maps(of_tomogram, shape, tomogram, pl_module)
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
        self, tiles: list[dict[str, Any]], shape: tuple[int, int, int], name: str, pl_module: _Picker
    ) -> pd.DataFrame:
        picks = pl_module.select_picks(tiles, shape)
        inside = inside_faces(picks["coordinates_zyx"], torch.tensor(shape), self.exclude_border_voxels)
        picks = {key: value[inside] for key, value in picks.items()}
        table = particles_table(
            picks["coordinates_zyx"].flip(-1).double().numpy(),
            angles_deg=picks["angles_deg"].double().numpy() if "angles_deg" in picks else None,
            class_number=picks["class_number"].numpy() if "class_number" in picks else None,
            score=picks["scores"].double().numpy(),
            tomo_name=name,
        )
        if "template_index" in picks:
            names = np.asarray(pl_module.class_names, dtype=object)
            table["aitomClassName"] = names[picks["template_index"].long().numpy()]
        return table

    def _write_maps(
        self,
        tiles: list[dict[str, Any]],
        shape: tuple[int, int, int],
        tomogram: str,
        pl_module: TemplateMatchingPicker,
    ) -> None:
        score = np.zeros(shape, dtype=np.float32)
        index = np.zeros(shape, dtype=np.float32)
        for tile, (tile_score, tile_index) in zip(tiles, pl_module.tile_score_maps(tiles)):
            start, stop, origin = (
                tile[key].tolist() for key in ("core_start_zyx", "core_stop_zyx", "origin_zyx")
            )
            region = tuple(slice(a, b) for a, b in zip(start, stop))
            in_tile = tuple(slice(a - o, b - o) for a, b, o in zip(start, stop, origin))
            score[region] = tile_score[in_tile].numpy()
            index[region] = tile_index[in_tile].numpy()
        header = open_volume_mmap(tomogram, voxel_size_a=self.voxel_size_a)[1]
        origin = header.grid_origin_a  # the maps lie on the tomogram's grid
        paths = map_paths(self.output_path, tomogram)
        for suffix, volume in (("scores", score), ("rotation_index", index)):
            write_volume(
                paths[suffix], volume, header.voxel_size_a, overwrite=self.overwrite, origin_a=origin
            )
