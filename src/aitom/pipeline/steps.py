"""The pipeline's steps: wedge estimate, tiled denoising, picking, classification and averaging.

Each step is a function of the tomogram's memory map (or of tensors) and the :class:`PipelineConfig`; the
orchestration, outputs and messages are in :mod:`aitom.pipeline.run`.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import types
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from aitom.errors import InputError
from aitom.pipeline.config import PipelineConfig

if TYPE_CHECKING:
    from aitom.ops.clustering import ClassificationResult

__all__ = [
    "MIN_PARTICLES_TO_CLASSIFY",
    "ClassAverages",
    "build_pickers",
    "check_templates",
    "class_limit",
    "classify_subtomograms",
    "denoise_tiled",
    "estimate_tilt_range",
    "pick_overlap_voxels",
    "pick_particles",
    "tomogram_value_range",
]


def tomogram_value_range(
    array: np.ndarray, slab_voxels: int, path: Path | None = None
) -> tuple[float, float]:
    """``(min, max)`` of a ``(Z, Y, X)`` array read in Z-slabs (never the whole array at once).

    Raises:
        InputError: the tomogram holds NaN or Inf voxels (the message names ``path``, the count in the first
            slab that has any, and the first Z slice).
    """
    low, high = math.inf, -math.inf
    for start in range(0, array.shape[0], max(1, slab_voxels)):
        slab = np.asarray(array[start : start + slab_voxels], dtype=np.float32)
        finite = np.isfinite(slab)
        if not finite.all():
            first = start + int(np.flatnonzero(~finite.reshape(len(slab), -1).all(axis=1))[0])
            raise InputError(
                f"NaN or Inf voxels: {int((~finite).sum())} in Z slices {start}–{start + len(slab) - 1}, the "
                f"first in Z slice {first}",
                path,
            )
        low, high = min(low, float(slab.min())), max(high, float(slab.max()))
    return low, high


def estimate_tilt_range(
    array: np.ndarray, config: PipelineConfig, tomogram_path: Path
) -> tuple[tuple[float, float], str]:
    """The tilt range (degrees) of the missing wedge and where it comes from (config, estimate, fallback).

    The estimate (:func:`aitom.ops.estimate_missing_wedge`, as ``aitom estimate wedge``) uses the central
    crop of ``wedge.estimate_crop_voxels`` voxels per axis; when no wedge is detected, or the tomogram is
    smaller than 16 voxels on an axis, ``wedge.fallback_tilt_range_deg`` is used. A spectrum that fits tilt
    axis X better than Y is warned about, naming ``tomogram_path``: the pipeline's wedge is about Y.
    """
    import warnings

    from aitom.io import central_crop
    from aitom.ops.wedge_estimation import TiltAxisWarning, estimate_missing_wedge

    if config.wedge.tilt_range_deg is not None:
        low, high = config.wedge.tilt_range_deg
        return (float(low), float(high)), "config"
    fallback = tuple(float(v) for v in config.wedge.fallback_tilt_range_deg)
    if min(array.shape) < 16:
        return fallback, "fallback (tomogram too small to estimate)"
    crop = config.wedge.estimate_crop_voxels
    volume = torch.from_numpy(np.array(array[central_crop(array.shape, crop)], dtype=np.float32))
    if float(volume.std()) == 0.0:
        return fallback, "fallback (constant tomogram)"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TiltAxisWarning)
        estimate = estimate_missing_wedge(volume)
    for warning in caught:
        message = warning.message
        if isinstance(message, TiltAxisWarning):
            message = TiltAxisWarning(
                f"{tomogram_path}: {message}; the pipeline models the missing wedge about Y, so its wedge "
                "compensation does not fit this tomogram"
            )
        warnings.warn_explicit(message, warning.category, warning.filename, warning.lineno)
    if not estimate["wedge_detected"]:
        return fallback, "fallback (no wedge detected)"
    return (float(estimate["tilt_min_deg"]), float(estimate["tilt_max_deg"])), "estimated"


def denoise_tiled(
    array: np.ndarray,
    voxel_size_a: float,
    config: PipelineConfig,
    out_path: Path,
    device: torch.device,
) -> Path:
    """Write the denoised tomogram (``denoise.method``) to ``out_path`` (MRC), one tile at a time.

    Each tile of ``pick.tile_voxels`` is read from the memory map with a halo (4 σ for the Gaussian, the
    reach of all iterations for diffusion), filtered, and its interior written into a memory-mapped output,
    so the working memory is bounded by the tile and the result equals the whole-volume filter away from
    the tomogram's faces (up to the kernels' truncation). With ``contrast: dark`` every tile is negated as it
    is read, so the output is protein bright (with ``denoise.method: none`` it is just the negated copy).
    """
    import mrcfile

    from aitom.ops.diffusion import anisotropic_diffusion, diffusion_contrast_k, diffusion_halo_voxels
    from aitom.ops.filters import gaussian_filter3d

    method = config.denoise.method
    sign = -1.0 if config.contrast == "dark" else 1.0
    if method == "none":
        halo = 0

        def apply(block: torch.Tensor) -> torch.Tensor:
            return block

    elif method == "gaussian":
        sigma = config.denoise.sigma_voxels
        halo = int(4.0 * sigma + 0.5) + 1

        def apply(block: torch.Tensor) -> torch.Tensor:
            return gaussian_filter3d(block, sigma)

    else:
        iterations = config.denoise.iterations
        halo = diffusion_halo_voxels(1.0, 1.0, iterations)
        contrast_k = float(diffusion_contrast_k(array).reshape(()))

        def apply(block: torch.Tensor) -> torch.Tensor:
            return anisotropic_diffusion(block, n_iterations=iterations, contrast_k=contrast_k)

    tile = config.pick.tile_voxels
    shape = tuple(int(n) for n in array.shape)
    with mrcfile.new_mmap(out_path, shape=shape, mrc_mode=2, overwrite=True) as output:
        output.voxel_size = voxel_size_a
        for z in range(0, shape[0], tile):
            for y in range(0, shape[1], tile):
                for x in range(0, shape[2], tile):
                    start = np.array([z, y, x])
                    end = np.minimum(start + tile, shape)
                    low = np.maximum(start - halo, 0)
                    high = np.minimum(end + halo, shape)
                    read = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
                    block = sign * torch.from_numpy(np.array(array[read], dtype=np.float32)).to(device)
                    filtered = apply(block).cpu().numpy()
                    core = tuple(slice(int(a - lo), int(b - lo)) for a, b, lo in zip(start, end, low))
                    output.data[tuple(slice(int(a), int(b)) for a, b in zip(start, end))] = filtered[core]
    return out_path


def read_volume_shape(path: Path) -> tuple[int, int, int]:
    """``(Z, Y, X)`` of an MRC volume, from its memory map."""
    from aitom.io import open_volume_mmap

    return tuple(int(n) for n in open_volume_mmap(path)[0].shape)


def check_templates(
    config: PipelineConfig, shape_zyx: tuple[int, ...], voxel_size_a: float, tomogram: Path
) -> None:
    """Refuse templates that are missing, not cubic, constant or (at the tomogram's voxel size) larger than
    the tomogram; another voxel size is accepted (the picker resamples the template)."""
    from aitom.tasks.pick import check_template

    if config.pick.method != "template":
        return
    for path in config.pick.templates:
        check_template(path, voxel_size_a, shape_zyx, tomogram)


def build_pickers(
    config: PipelineConfig,
    voxel_size_a: float,
    tilt_range_deg: tuple[float, float] | None,
    shape_zyx: tuple[int, int, int],
) -> list:
    """The pickers (:mod:`aitom.tasks.pick`) of ``config.pick`` for a tomogram of ``shape_zyx`` voxels of
    ``voxel_size_a`` Å.

    DoG: σ1 = radius / √3, σ2 = 1.1 σ1 (the response peaks on balls of radius √(3 σ1 σ2) = 1.05 r);
    saliency: the radius; template matching: one picker per template, class numbers 1, 2, ... in their
    order, the missing wedge of ``tilt_range_deg`` (degrees; None: no wedge) applied to them, a box larger
    than the tomogram's thinnest axis cropped to it. Minimal distance: ``pick.min_distance_voxels`` or the
    particle radius.
    """
    from aitom.tasks.pick import DoGPicker, SaliencyPicker, TemplateMatchingPicker

    pick = config.pick
    radius = pick.particle_diameter_a / 2 / voxel_size_a
    # No cap in the pickers: the best picks on a face (where DoG responds to the border, even on pure noise)
    # would fill it, then be excluded with nothing left. pick.max_particles is applied after the exclusion.
    common = {
        "min_distance": pick.min_distance_voxels or max(1, round(radius)),
        "false_alarm_rate": pick.false_alarm_rate,
        "threshold_abs": pick.threshold,
        "num_peaks": None,
    }
    if pick.method == "dog":
        sigma = radius / math.sqrt(3.0)
        return [DoGPicker(sigma, 1.1 * sigma, **common)]
    if pick.method == "saliency":
        return [SaliencyPicker(radius, **common)]
    return [
        TemplateMatchingPicker(
            str(path),
            angular_step_deg=pick.angular_step_deg,
            tilt_range_deg=tilt_range_deg,
            class_number=index + 1,
            voxel_size_a=voxel_size_a,
            max_box_voxels=min(shape_zyx),
            **common,
        )
        for index, path in enumerate(pick.templates)
    ]


def pick_overlap_voxels(config: PipelineConfig, pickers: list, shape_zyx: tuple[int, int, int]) -> int:
    """Overlap of the picking tiles, voxels: ``pick.overlap_voxels`` (at least the largest template box),
    or by default the largest :attr:`aitom.tasks.pick.DoGPicker.tile_overlap_voxels` of the pickers, with
    which the picks do not depend on ``pick.tile_voxels``.

    Raises:
        InputError: a tomogram of ``shape_zyx`` voxels larger than one tile, and an overlap that is not
            smaller than the tile.
    """
    overlap = config.pick.overlap_voxels
    if overlap is None:
        overlap = max(picker.tile_overlap_voxels for picker in pickers)
    overlap = max([overlap, *(getattr(picker, "box_voxels", 0) for picker in pickers)])
    tile = config.pick.tile_voxels
    if tile < max(shape_zyx) and overlap >= tile:
        raise InputError(f"pick.tile_voxels ({tile}) must be larger than the tile overlap ({overlap} voxels)")
    return overlap


def pick_particles(
    tomogram_path: Path,
    voxel_size_a: float,
    config: PipelineConfig,
    tilt_range_deg: tuple[float, float],
    work_dir: Path,
) -> pd.DataFrame:
    """Pick under ``trainer.predict`` over tiles (:func:`aitom.commands.pick._predict`), best first.

    The pickers are :func:`build_pickers`'; the picks of several templates are merged by non-maximum
    suppression. Picks closer than ``pick.exclude_border_voxels`` to a face are dropped, then at most
    ``pick.max_particles`` picks (the best) are kept.

    Returns:
        The pick table (``rlnCoordinateX/Y/Z`` voxels, ``rlnAutopickFigureOfMerit``; template matching adds
        ``rlnClassNumber`` and ``rlnAngleRot/Tilt/Psi``).
    """
    from aitom.commands.pick import _predict
    from aitom.ops.peaks import inside_faces, non_maximum_suppression

    pick = config.pick
    radius = pick.particle_diameter_a / 2 / voxel_size_a
    shape = read_volume_shape(tomogram_path)
    pickers = build_pickers(config, voxel_size_a, tilt_range_deg, shape)
    overlap = pick_overlap_voxels(config, pickers, shape)
    tables = []
    for index, picker in enumerate(pickers):
        arguments = types.SimpleNamespace(
            seed=config.seed,
            devices="1",
            accelerator="cpu" if config.device == "cpu" else "gpu",
            out=work_dir / f"picks_{index}.star",
            overwrite=True,
            tomogram=tomogram_path,
            tile_voxels=pick.tile_voxels,
            voxel_size=voxel_size_a,
            exclude_border=0.0,  # the faces are excluded below, once the pickers' tables are merged
        )
        table, _ = _predict(arguments, picker, overlap, shape)  # (picks, is_global_zero)
        tables.append(table)
    table = pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]
    if len(table) == 0:
        return table
    coordinates = torch.from_numpy(
        table[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy(dtype=np.float64, copy=True)
    )
    # Picks at a face are half particles at best; on pure noise the DoG's border response makes them up.
    border = radius / 2 if pick.exclude_border_voxels is None else pick.exclude_border_voxels
    size_xyz = torch.tensor(shape[::-1], dtype=coordinates.dtype)
    inside = inside_faces(coordinates, size_xyz, border)
    table, coordinates = table[inside.numpy()].reset_index(drop=True), coordinates[inside]
    if len(table) == 0:
        return table
    scores = torch.from_numpy(table["rlnAutopickFigureOfMerit"].to_numpy(dtype=np.float64, copy=True))
    order = non_maximum_suppression(coordinates, scores, float(pickers[0].min_distance)).numpy()
    if pick.max_particles is not None:
        order = order[: pick.max_particles]
    return table.iloc[order].reset_index(drop=True)


@dataclasses.dataclass
class ClassAverages:
    """Classes and averages of the subtomograms.

    Attributes:
        labels: ``(P,)`` 0-based classes, ``0 … K−1``.
        averages: ``(K, S, S, S)`` wedge-compensated class averages.
        rotations: ``(P, 3, 3)``, shifts_xyz ``(P, 3)`` voxels, scores ``(P,)``: each subtomogram's pose
            relative to its class average (``subtomogram ≈ shift(rotate(average, R), t)``).
        frequency: ``(n,)`` cycles/voxel; fsc ``(K, n)`` half-set FSC of each class.
        half_averages: ``(K, 2, S, S, S)`` the two half-set averages behind each class's FSC (even- and
            odd-numbered members); a class of one particle has its subtomogram in both.
        method: how the classes were found.
        structural_correlations: ``(K, K)`` estimated correlations of the classes' noise-free structures
            (:func:`aitom.ops.structural_correlations`) when the number of classes was chosen, else None.
    """

    labels: torch.Tensor
    averages: torch.Tensor
    rotations: torch.Tensor
    shifts_xyz: torch.Tensor
    scores: torch.Tensor
    frequency: torch.Tensor
    fsc: torch.Tensor
    half_averages: torch.Tensor
    method: str
    structural_correlations: torch.Tensor | None = None


#: fewest particles that the clustering classifies; fewer are averaged as one class
MIN_PARTICLES_TO_CLASSIFY = 4


def class_limit(n_particles: int) -> int:
    """Most classes the clustering makes of ``n_particles``: two particles per class, so that each class
    can have a half-set FSC."""
    return n_particles // 2


def _alignment_options(config: PipelineConfig, box_size: int) -> dict[str, float]:
    average = config.average
    return {
        "angular_step_deg": average.angular_step_deg,
        "max_shift_voxels": box_size / 4 if average.max_shift_voxels is None else average.max_shift_voxels,
        "max_frequency": average.max_frequency,
        "refine_steps": average.refine_steps,
        "gold_standard_iterations": average.gold_standard_iterations,
    }


def _predict_with_checkpoint(volumes: torch.Tensor, config: PipelineConfig) -> torch.Tensor:
    """0-based classes of the subtomograms from a trained :class:`aitom.tasks.classify.Classifier`."""
    from aitom.tasks.classify import Classifier

    module_name, _, class_name = (config.classify.net_class_path or "").rpartition(".")
    try:
        net_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise InputError(
            f"classify.net_class_path: cannot import {config.classify.net_class_path!r} ({error})"
        ) from None
    checkpoint = Path(config.classify.checkpoint or "")
    if not checkpoint.is_file():
        raise InputError("checkpoint not found", checkpoint)
    net = net_class(**config.classify.net_init_args)
    model = Classifier.load_from_checkpoint(checkpoint, net=net, map_location=volumes.device).eval()
    with torch.no_grad():
        logits = torch.cat([model(volumes[i : i + 32, None]) for i in range(0, volumes.shape[0], 32)])
    return logits.argmax(dim=1)


def _auto_description(result: ClassificationResult) -> str:
    """The silhouette's K, the reassignment and merges after it, the closest pair kept."""
    from aitom.ops.clustering import describe_merge, describe_reassignment

    parts = [f"K = {result.history[-1]['n_classes']} by silhouette"]
    if result.reassignments:
        parts.append(describe_reassignment(result))
    if result.merges:
        merged = ", ".join(describe_merge(merge) for merge in result.merges)
        parts.append(f"{len(result.merges)} merged ({merged})")
    estimates = result.structural_correlations
    if estimates is not None and estimates.shape[0] > 1:
        closest = float(estimates.clone().fill_diagonal_(-math.inf).max())
        parts.append(f"closest remaining pair {closest:.2f}")
    return " (" + "; ".join(parts) + ")"


def classify_subtomograms(
    volumes: torch.Tensor,
    mask: torch.Tensor,
    config: PipelineConfig,
    voxel_size_a: float,
    pick_classes: torch.Tensor | None = None,
) -> ClassAverages:
    """Classify ``(P, S, S, S)`` subtomograms and align and average each class (wedge compensated).

    Template picks (``pick_classes``, 0-based) and a trained classifier (``classify.method: checkpoint``) fix
    the classes, and each class is averaged by :func:`aitom.ops.reference_free_average`; otherwise
    :func:`aitom.ops.classify_and_average` clusters (PCA + k-means, the number of classes by the silhouette
    when ``n_classes`` is ``auto``) and averages simultaneously, into at most :func:`class_limit` classes;
    fewer than :data:`MIN_PARTICLES_TO_CLASSIFY` subtomograms make one class. A lone subtomogram keeps the
    identity pose.
    """
    from aitom.fourier import fourier_shell_correlation
    from aitom.ops.averaging import reference_free_average
    from aitom.ops.clustering import classify_and_average

    n, size = volumes.shape[0], volumes.shape[-1]
    options = _alignment_options(config, size)
    generator = torch.Generator(device=volumes.device).manual_seed(config.seed)
    requested = config.classify.n_classes
    if pick_classes is not None:
        labels, method = torch.unique(pick_classes, return_inverse=True)[1], "template matching"
    elif config.classify.method == "checkpoint":
        labels, method = _predict_with_checkpoint(volumes, config), "trained classifier"
        labels = torch.unique(labels, return_inverse=True)[1]
    elif requested == 1 or n < MIN_PARTICLES_TO_CLASSIFY:
        labels, method = torch.zeros(n, dtype=torch.long, device=volumes.device), "single class"
    else:
        result = classify_and_average(
            volumes,
            mask,
            n_classes=None if requested == "auto" else min(int(requested), class_limit(n)),
            max_classes=min(config.classify.max_classes, class_limit(n)),
            merge_threshold=config.classify.merge_threshold,
            reassignment_rounds=config.classify.reassignment_rounds,
            rounds=config.average.iterations,
            initial_iterations=config.average.initial_iterations,
            n_components=config.classify.n_components,
            voxel_size_a=voxel_size_a,
            generator=generator,
            progress=True,
            **options,
        )
        alignment = result.alignment
        description = "PCA + k-means clustering with alignment"
        return ClassAverages(
            result.labels,
            result.averages,
            alignment.rotation,
            alignment.shift_xyz,
            alignment.score,
            result.frequency,
            result.fsc,
            result.half_averages,
            description + (_auto_description(result) if requested == "auto" else ""),
            result.structural_correlations,
        )
    eye = torch.eye(3, device=volumes.device, dtype=volumes.dtype)
    rotations = eye.expand(n, 3, 3).clone()
    shifts = torch.zeros(n, 3, device=volumes.device, dtype=volumes.dtype)
    scores = torch.zeros(n, device=volumes.device, dtype=volumes.dtype)
    frequency = fourier_shell_correlation(volumes[0], volumes[0])[0]
    averages, curves, halves = [], [], []
    for k in range(int(labels.max()) + 1):
        members = torch.nonzero(labels == k).flatten()
        if members.numel() < 2:
            averages.append(volumes[members[0]])
            curves.append(torch.zeros_like(frequency))
            halves.append(volumes[members[0]].expand(2, -1, -1, -1))
            continue
        result = reference_free_average(
            volumes[members],
            mask,
            iterations=config.average.iterations + config.average.initial_iterations,
            voxel_size_a=voxel_size_a,
            generator=generator,
            progress=True,
            **options,
        )
        rotations[members] = result.alignment.rotation
        shifts[members] = result.alignment.shift_xyz
        scores[members] = result.alignment.score
        averages.append(result.average)
        curves.append(result.fsc)
        halves.append(result.half_averages)
    return ClassAverages(
        labels,
        torch.stack(averages),
        rotations,
        shifts,
        scores,
        frequency,
        torch.stack(curves),
        torch.stack(halves),
        method,
    )
