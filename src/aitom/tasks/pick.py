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

Memory: no whole-tomogram map is held, only the candidates (local maxima) and the bounded sample. Template
matching tiles are cut from the periodic tomogram (``boundary="periodic"``: its FFT correlation wraps around
the tomogram's faces as on the whole tomogram). Left to the tiling: saliency's scores (its supervoxels and
Robust PCA are those of one tile), with several templates each tile's score maps are calibrated by the
tile's own statistics (:func:`aitom.ops.template_matching.match_templates`), and spectral whitening, whose
filter comes from the whole tomogram's power spectrum (:meth:`TemplateMatchingPicker.begin_tomogram`) but
acts circularly on each tile, so the scores differ slightly from the whole tomogram's. Template matching can
also write the stitched score map and best-rotation-index map (MRC) with the table of rotation index → ZYZ
angles (STAR).
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
    crop_template,
    match_template,
    match_templates,
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
        low = (core_start_zyx.to(score.device) - origin).tolist()
        high = (core_stop_zyx.to(score.device) - origin).tolist()
        core = tuple(slice(a, b) for a, b in zip(low, high))
        # Voxels of a periodic tile beyond the tomogram's faces take no part in the maxima: the cube around
        # a voxel is cut at the faces, as on the whole tomogram.
        positions = [torch.arange(n, device=score.device) + o for n, o in zip(score.shape, origin.tolist())]
        outside = [(position < 0) | (position >= length) for position, length in zip(positions, shape_zyx)]
        beyond = outside[0][:, None, None] | outside[1][None, :, None] | outside[2][None, None, :]
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
        keys = [key for key in PICK_KEYS if key in tiles[0]]
        merged = {key: torch.cat([tile[key] for tile in tiles]) for key in keys}
        # Raster order, as in one tile: candidates of equal score keep the same precedence.
        steps = torch.tensor([shape_zyx[1] * shape_zyx[2], shape_zyx[2], 1])
        order = torch.argsort((merged["coordinates_zyx"] * steps.to(merged["coordinates_zyx"])).sum(-1))
        merged = {key: value[order] for key, value in merged.items()}
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
    distribution (a z-score) and every voxel takes the template with the highest calibrated score
    (:func:`aitom.ops.template_matching.match_templates`); picks then go through one shared non-maximum
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
        with self._rotation_progress(len(self.rotations) * len(self.class_numbers)) as progress:
            options["progress"] = progress
            if len(self.class_numbers) == 1:
                score, index = match_template(
                    tile, self.templates[0], self.rotations, mask=self.masks[0], **options
                )
                template_index = torch.zeros_like(index)
            else:
                score, template_index, index = match_templates(
                    tile, self.templates, self.rotations, masks=self.masks, **options
                )
        return {"score": score, "rotation_index": index, "template_index": template_index}

    def kept_maps(self, maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: maps[name] for name in ("score", "rotation_index")} if self.hparams.keep_maps else {}

    def candidate_extras(
        self, maps: dict[str, torch.Tensor], coordinates: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        at = tuple(coordinates.T)
        which = maps["template_index"][at]
        angles = matrix_to_relion_angles(self.rotations[maps["rotation_index"][at]].double())
        classes = torch.tensor(self.class_numbers, device=which.device)
        return {
            "angles_deg": angles.to(maps["score"].dtype),
            "class_number": classes[which],
            "template_index": which,
        }

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

    def _write_maps(self, tiles: list[dict[str, Any]], shape: tuple[int, int, int], tomogram: str) -> None:
        score = np.zeros(shape, dtype=np.float32)
        index = np.zeros(shape, dtype=np.float32)
        for tile in tiles:
            start, stop, origin = (
                tile[key].tolist() for key in ("core_start_zyx", "core_stop_zyx", "origin_zyx")
            )
            region = tuple(slice(a, b) for a, b in zip(start, stop))
            in_tile = tuple(slice(a - o, b - o) for a, b, o in zip(start, stop, origin))
            score[region] = tile["score_map"][in_tile].numpy()
            index[region] = tile["rotation_index_map"][in_tile].numpy()
        header = open_volume_mmap(tomogram, voxel_size_a=self.voxel_size_a)[1]
        origin = header.grid_origin_a  # the maps lie on the tomogram's grid
        paths = map_paths(self.output_path, tomogram)
        for suffix, volume in (("scores", score), ("rotation_index", index)):
            write_volume(
                paths[suffix], volume, header.voxel_size_a, overwrite=self.overwrite, origin_a=origin
            )
