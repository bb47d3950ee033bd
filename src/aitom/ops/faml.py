"""FAML: fast maximum-likelihood subtomogram averaging and classification (Zhao et al. 2018).

The model of Scheres et al. (2009): subtomogram ``i`` is class model ``μ_k`` rotated by ``R`` and shifted by
``t``, observed through its Fourier mask ``W`` with white Gaussian noise of variance ``σ²`` per observed
coefficient (orthonormal FFT). Instead of integrating over all of SO(3) × shifts, FAML integrates over a short
candidate set of transformations per subtomogram and class, the best ones of the fast alignment
(:mod:`aitom.ops.alignment`: amplitude rotational search, then FFT translation search). EM:

* E-step: ``γ_ikj ∝ π_k exp(−‖W (F_i − F[T_kj μ_k])‖² / 2σ²)`` over classes ``k`` and candidates ``j``;
* M-step: ``μ_k`` = the wedge-compensated average of all subtomograms under all candidates weighted by
  ``γ_ikj``; ``π_k = mean_i Σ_j γ_ikj``; ``σ² = Σ γ ‖residual‖² / Σ γ (number of observed coefficients)``.

The candidate sets are recomputed from the current models at every iteration.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from tqdm.auto import tqdm

from aitom.geometry import fourier_shift, point_group_order, rotate_volume, so3_grid
from aitom.ops.alignment import (
    Alignment,
    _band_and_friedel_weight,
    _distinct_best,
    _half_spectrum_mask,
    particle_masks,
    rotational_search,
    translation_search,
)
from aitom.ops.averaging import class_half_sets, reference_free_average, symmetric_average
from aitom.ops.symmetry import map_symmetry_rotations

__all__ = ["FamlResult", "faml_average"]


@dataclasses.dataclass
class FamlResult:
    """Result of :func:`faml_average`.

    Attributes:
        averages: ``(K, S, S, S)`` class maps: each class refined in independent half sets from its EM model
            (the EM models themselves with ``gold_standard_iterations=0``).
        labels: ``(P,)`` most probable class of each subtomogram (0-based).
        responsibilities: ``(P, K)`` class posteriors (summed over candidates).
        alignment: pose of each subtomogram in its class's half-set refinement (with
            ``gold_standard_iterations=0``: of its most probable (class, candidate)); ``score``: the posterior
            of its most probable (class, candidate).
        frequency: ``(n,)`` FSC shell centres, cycles/voxel.
        fsc: ``(K, n)`` half-set FSC of each class (:func:`aitom.ops.averaging.class_half_sets`).
        half_averages: ``(K, 2, S, S, S)`` the two half-set averages of each class behind ``fsc``.
        history: per iteration: ``iteration``, ``noise_variance``, ``log_likelihood``, ``class_fractions``.
        start_log_likelihoods: final log-likelihood of every start (one entry for a single start).
        kept_start: 0-based index of the start returned (the highest final log-likelihood).
    """

    averages: torch.Tensor
    labels: torch.Tensor
    responsibilities: torch.Tensor
    alignment: Alignment
    frequency: torch.Tensor
    fsc: torch.Tensor
    half_averages: torch.Tensor
    history: list[dict]
    start_log_likelihoods: list[float] = dataclasses.field(default_factory=list)
    kept_start: int = 0


def _candidates(
    model: torch.Tensor,
    volumes: torch.Tensor,
    mask: torch.Tensor | None,
    grid: torch.Tensor,
    n_candidates: int,
    separation_rad: float,
    max_shift_voxels: float | None,
    max_frequency: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best ``J`` (rotation, shift) of a model for every subtomogram: ``(P, J, 3, 3)``, ``(P, J, 3)``."""
    scores = rotational_search(model, volumes, grid, None, mask, max_frequency=min(0.25, max_frequency))
    best = _distinct_best(scores, grid, n_candidates, separation_rad)
    n, count = best.shape
    rotations = grid[best].reshape(-1, 3, 3)
    expanded_mask = mask
    if mask is not None and mask.ndim == 4:
        expanded_mask = mask.repeat_interleave(count, dim=0)
    shifts, _ = translation_search(
        model,
        volumes.repeat_interleave(count, dim=0),
        rotations,
        None,
        expanded_mask,
        max_shift_voxels=max_shift_voxels,
        max_frequency=max_frequency,
    )
    return rotations.reshape(n, count, 3, 3), shifts.reshape(n, count, 3)


def _squared_residuals(
    model: torch.Tensor,
    volumes: torch.Tensor,
    rotations: torch.Tensor,
    shifts: torch.Tensor,
    mask: torch.Tensor | None,
    max_frequency: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``‖W (F_i − F[T μ])‖²`` (orthonormal FFT, in the band) for ``(P, J)`` poses, and coefficient counts."""
    n, count = rotations.shape[:2]
    shape = volumes.shape[-3:]
    predicted = fourier_shift(rotate_volume(model, rotations.reshape(-1, 3, 3)), shifts.reshape(-1, 3))
    weight = _half_spectrum_mask(mask, shape, volumes) * _band_and_friedel_weight(
        shape, 0.0, max_frequency, volumes
    )
    observed = torch.fft.rfftn(volumes, dim=(-3, -2, -1), norm="ortho")
    prediction = torch.fft.rfftn(predicted, dim=(-3, -2, -1), norm="ortho").reshape(
        n, count, *observed.shape[1:]
    )
    if weight.ndim == 4:
        weight = weight[:, None]
    residual = (weight * (observed[:, None] - prediction).abs().square()).sum(dim=(-3, -2, -1))
    coefficients = (
        weight.sum(dim=(-3, -2, -1)).expand(n, count) if weight.ndim == 3 else weight.sum((-3, -2, -1))
    )
    return residual, coefficients.expand(n, count)


def _class_maps_and_half_sets(
    volumes: torch.Tensor,
    mask: torch.Tensor | None,
    labels: torch.Tensor,
    models: torch.Tensor,
    alignment: Alignment,
    symmetry_rotations: list[torch.Tensor | None],
    **options,
) -> dict:
    """The :class:`FamlResult` fields that :func:`aitom.ops.averaging.class_half_sets` gives (class maps,
    poses, FSC, half maps), the alignment keeping EM's posteriors as its scores."""
    averages, refined, frequency, fsc, half_averages = class_half_sets(
        volumes, mask, labels, models, alignment, symmetry_rotations, **options
    )
    return {
        "averages": averages,
        "alignment": dataclasses.replace(refined, score=alignment.score),
        "frequency": frequency,
        "fsc": fsc,
        "half_averages": half_averages,
    }


def faml_average(
    volumes: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    n_classes: int = 1,
    iterations: int = 5,
    n_candidates: int = 4,
    voxel_size_a: float = 1.0,
    angular_step_deg: float = 15.0,
    max_shift_voxels: float | None = None,
    max_frequency: float = 0.35,
    initial_iterations: int = 2,
    batch_size: int = 32,
    starts: int = 1,
    symmetry: str = "C1",
    generator: torch.Generator | None = None,
    progress: bool = False,
    gold_standard_iterations: int = 2,
    gold_standard_start_frequency: float | None = None,
) -> FamlResult:
    """FAML expectation-maximisation over per-subtomogram candidate transformations.

    Starts from :func:`aitom.ops.averaging.reference_free_average` (``initial_iterations``); with several
    classes the initial models are averages of random subsets under those poses (none empty: when a draw
    leaves a class empty, a random partition into classes of equal size ±1 replaces it).

    Args:
        volumes: ``(P, S, S, S)`` subtomograms.
        mask: centred Fourier mask ``(S, S, S)`` shared by all, or None.
        n_classes: number of class models ``K``.
        iterations: EM iterations.
        n_candidates: candidate transformations per subtomogram and class.
        voxel_size_a, angular_step_deg, max_shift_voxels, max_frequency, generator, progress: as in
            :func:`aitom.ops.averaging.reference_free_average`.
        batch_size: subtomograms per batch (memory).
        starts: independent runs (random initial poses and class subsets, drawn one after another from
            ``generator``); the one with the highest final log-likelihood is kept. EM settles on different
            partitions from different starts: on 90 simulated subtomograms of three complexes (SNR 0.1), four
            seeds gave adjusted Rand indices 0.52, 0.97, 1.00 and 0.42, and the two good ones had the two
            highest final log-likelihoods.
        symmetry: point group shared by every class model (``"C1"``: none; ``"D7"``...): the start and each
            M-step's models are symmetrised about axes found in them
            (:func:`aitom.ops.averaging.symmetric_average`), and so are the half sets of the FSC.
        gold_standard_iterations, gold_standard_start_frequency: after EM every class is refined in
            independent half sets from its model (:func:`aitom.ops.averaging.class_half_sets`): the class
            maps, best poses and half-set FSC returned are theirs (the class posteriors stay EM's). 0: the
            half sets of the EM poses, whose FSC is not independent. The start frequency defaults to
            ``max_frequency / 2``.

    Returns:
        :class:`FamlResult` of the kept start, with every start's final log-likelihood.
    """
    if n_classes < 1 or n_classes > volumes.shape[0]:
        raise ValueError(f"n_classes must be in [1, {volumes.shape[0]}], got {n_classes}")
    if starts < 1:
        raise ValueError(f"starts must be >= 1, got {starts}")
    if gold_standard_iterations < 0:
        raise ValueError(f"gold_standard_iterations must be >= 0, got {gold_standard_iterations}")
    # every other argument as given (nothing else is defined yet): the options of each start
    options = {key: value for key, value in locals().items() if key not in ("volumes", "mask", "starts")}
    start_frequency = (
        max_frequency / 2 if gold_standard_start_frequency is None else gold_standard_start_frequency
    )
    alignment_options = {
        "voxel_size_a": voxel_size_a,
        "angular_step_deg": angular_step_deg,
        "max_shift_voxels": max_shift_voxels,
        "max_frequency": max_frequency,
        "progress": progress,
    }
    if starts > 1:
        options["gold_standard_iterations"] = 0  # the half-set refinement for the kept start only
        runs = [faml_average(volumes, mask, **options) for _ in range(starts)]
        log_likelihoods = [run.start_log_likelihoods[0] for run in runs]
        kept = max(range(starts), key=log_likelihoods.__getitem__)
        best = runs[kept]
        if gold_standard_iterations > 0:
            order = point_group_order(symmetry)
            best = dataclasses.replace(
                best,
                **_class_maps_and_half_sets(
                    volumes,
                    mask,
                    best.labels,
                    best.averages,
                    best.alignment,
                    [
                        map_symmetry_rotations(model, symmetry)[0] if order > 1 else None
                        for model in best.averages
                    ],
                    gold_standard_iterations=gold_standard_iterations,
                    start_frequency=start_frequency,
                    **alignment_options,
                ),
            )
        return dataclasses.replace(best, start_log_likelihoods=log_likelihoods, kept_start=kept)
    start = reference_free_average(
        volumes,
        mask,
        iterations=initial_iterations,
        voxel_size_a=voxel_size_a,
        angular_step_deg=angular_step_deg,
        max_shift_voxels=max_shift_voxels,
        max_frequency=max_frequency,
        symmetry=symmetry,
        generator=generator,
        progress=progress,
        gold_standard_iterations=0,  # a start for the classes: their half sets come later
    )
    n = volumes.shape[0]
    device, dtype = volumes.device, volumes.dtype
    if n_classes == 1:
        models = start.average[None]
    else:
        draw_device = generator.device if generator else None
        subset = torch.randint(n_classes, (n,), generator=generator, device=draw_device)
        if int(torch.bincount(subset, minlength=n_classes).min()) == 0:
            # a class drawn empty would start as a zero map and never win a particle: a random partition
            # into classes of equal size (±1) instead
            subset = torch.randperm(n, generator=generator, device=draw_device) % n_classes
        subset = subset.to(device)
        models = torch.stack(
            [
                symmetric_average(
                    volumes,
                    start.alignment.rotation,
                    start.alignment.shift_xyz,
                    mask,
                    symmetry=symmetry,
                    weights=(subset == k).to(dtype),
                )[0]
                for k in range(n_classes)
            ]
        )
    priors = torch.full((n_classes,), 1.0 / n_classes, device=device, dtype=dtype)
    grid = so3_grid(angular_step_deg, dtype=dtype, device=device)
    separation = math.radians(angular_step_deg)
    noise_variance = None
    history = []
    for iteration in tqdm(range(1, iterations + 1), desc="FAML", disable=not progress, leave=False):
        rotations = torch.empty(n, n_classes, n_candidates, 3, 3, device=device, dtype=dtype)
        shifts = torch.empty(n, n_classes, n_candidates, 3, device=device, dtype=dtype)
        residuals = torch.empty(n, n_classes, n_candidates, device=device, dtype=dtype)
        coefficients = torch.empty_like(residuals)
        for begin in range(0, n, batch_size):
            part = slice(begin, begin + batch_size)
            part_mask = particle_masks(mask, part)
            for k in range(n_classes):
                candidate_rotations, candidate_shifts = _candidates(
                    models[k],
                    volumes[part],
                    part_mask,
                    grid,
                    n_candidates,
                    separation,
                    max_shift_voxels,
                    max_frequency,
                )
                count = candidate_rotations.shape[1]
                rotations[part, k, :count] = candidate_rotations
                shifts[part, k, :count] = candidate_shifts
                residual, coefficient = _squared_residuals(
                    models[k], volumes[part], candidate_rotations, candidate_shifts, part_mask, max_frequency
                )
                residuals[part, k, :count] = residual
                coefficients[part, k, :count] = coefficient
                if count < n_candidates:  # fewer grid rotations than candidates: pad with impossible ones
                    residuals[part, k, count:] = math.inf
                    coefficients[part, k, count:] = coefficient[:, :1]
                    rotations[part, k, count:] = candidate_rotations[:, :1]
                    shifts[part, k, count:] = candidate_shifts[:, :1]
        if noise_variance is None:
            best = residuals.flatten(1).min(1)
            noise_variance = float(
                (best.values / coefficients.flatten(1).gather(1, best.indices[:, None])[:, 0]).mean()
            )
        log_posterior = -residuals / (2 * noise_variance) + torch.log(priors)[None, :, None]
        log_norm = torch.logsumexp(log_posterior.flatten(1), dim=1)
        responsibilities = torch.exp(log_posterior - log_norm[:, None, None])  # (P, K, J)
        # M-step.
        flat_volumes = volumes.repeat_interleave(n_candidates, dim=0)
        flat_mask = mask if mask is None or mask.ndim == 3 else mask.repeat_interleave(n_candidates, dim=0)
        averaged = [
            symmetric_average(
                flat_volumes,
                rotations[:, k].reshape(-1, 3, 3),
                shifts[:, k].reshape(-1, 3),
                flat_mask,
                symmetry=symmetry,
                weights=responsibilities[:, k].reshape(-1),
            )
            for k in range(n_classes)
        ]
        models = torch.stack([model for model, _, _ in averaged])
        model_symmetry_rotations = [symmetry_rotations for _, _, symmetry_rotations in averaged]
        finite = torch.isfinite(residuals)
        weighted = torch.where(finite, responsibilities * residuals, 0.0).sum()
        noise_variance = float(weighted / (responsibilities * coefficients).sum())
        priors = responsibilities.sum(dim=(0, 2)) / n
        priors = priors.clamp(min=1e-6) / priors.clamp(min=1e-6).sum()
        history.append(
            {
                "iteration": iteration,
                "noise_variance": noise_variance,
                "log_likelihood": float(log_norm.sum()),
                "class_fractions": priors.tolist(),
            }
        )
    class_posterior = responsibilities.sum(2)
    labels = class_posterior.argmax(1)
    best_candidate = responsibilities.flatten(1).argmax(1)
    items = torch.arange(n, device=device)
    alignment = Alignment(
        rotations.flatten(1, 2)[items, best_candidate],
        shifts.flatten(1, 2)[items, best_candidate],
        responsibilities.flatten(1)[items, best_candidate],
    )
    return FamlResult(
        labels=labels,
        responsibilities=class_posterior,
        history=history,
        **_class_maps_and_half_sets(
            volumes,
            mask,
            labels,
            models,
            alignment,
            model_symmetry_rotations,
            gold_standard_iterations=gold_standard_iterations,
            start_frequency=start_frequency,
            **alignment_options,
        ),
        start_log_likelihoods=[history[-1]["log_likelihood"]],
    )
