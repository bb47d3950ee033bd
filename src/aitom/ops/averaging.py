"""Subtomogram averaging: wedge-compensated averages and iterative reference-free alignment.

Poses follow :mod:`aitom.ops.alignment`: a subtomogram is the reference rotated actively by ``R`` and shifted
by ``t``, so ``rotate_volume(fourier_shift(v, -t), Rᵀ)`` brings it back to the reference frame, and its
centred Fourier mask comes along rotated by ``Rᵀ``. The average is ``F⁻¹[Σ F(aligned_i) / max(Σ W_i, ε)]``
with ``W_i`` the rotated masks: each Fourier coefficient is divided by the number of subtomograms that
observed it (wedge compensation), with a Wiener-like floor ``ε`` (a fraction of the number of subtomograms) so
that coefficients seen by few subtomograms are damped rather than amplified.
"""

from __future__ import annotations

import dataclasses

import torch
from tqdm.auto import tqdm

from aitom.fourier import fftn_centered, fourier_shell_correlation, ifftn_centered, lowpass, resolution_at
from aitom.geometry import (
    fourier_shift,
    point_group_order,
    random_rotations,
    rotate_volume,
    rotation_angle_between,
    so3_grid,
    soft_sphere_mask,
)
from aitom.ops.alignment import (
    Alignment,
    align_subtomograms,
    constrained_correlation,
    particle_masks,
    phase_rotational_search,
    shift_lattice,
)
from aitom.ops.symmetry import map_symmetry_rotations, symmetrize_volume

__all__ = [
    "AveragingResult",
    "GoldStandardRefinement",
    "align_to_reference_frame",
    "annealed_initial_reference",
    "class_half_sets",
    "gold_standard_refinement",
    "half_set_averages",
    "leave_one_out_averages",
    "leave_one_out_scores",
    "reference_free_average",
    "shared_start_limit",
    "symmetric_average",
    "wedge_compensated_average",
]

GOLD_STANDARD_START_EDGE = 0.025
"""Width of the raised-cosine edge of the low-pass on the gold-standard half sets' shared start,
cycles/voxel (5 % of Nyquist)."""


def shared_start_limit(start_frequency: float) -> float:
    """The highest frequency, cycles/voxel, that gold-standard half sets share through their start: the
    start's low-pass cut-off ``start_frequency`` plus half its raised-cosine edge, where the filter reaches 0
    (at the cut-off itself it still passes half the amplitude)."""
    return start_frequency + GOLD_STANDARD_START_EDGE / 2


def align_to_reference_frame(
    volumes: torch.Tensor, rotations: torch.Tensor, shifts_xyz: torch.Tensor
) -> torch.Tensor:
    """Undo the poses: ``rotate_volume(fourier_shift(v, -t), Rᵀ)`` for every subtomogram.

    Args:
        volumes: ``(P, S, S, S)``; rotations ``(P, 3, 3)``; shifts_xyz ``(P, 3)`` voxels ``(x, y, z)``.

    Returns:
        ``(P, S, S, S)`` subtomograms in the reference frame.
    """
    unshifted = fourier_shift(volumes, -shifts_xyz.to(volumes))
    return rotate_volume(unshifted, rotations.to(volumes).transpose(-1, -2))


def wedge_compensated_average(
    volumes: torch.Tensor,
    rotations: torch.Tensor,
    shifts_xyz: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    weights: torch.Tensor | None = None,
    wiener_floor: float = 0.05,
    batch_size: int = 64,
    symmetry_rotations: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted average of aligned subtomograms, each Fourier coefficient divided by its coverage.

    Args:
        volumes: ``(P, S, S, S)`` subtomograms; rotations ``(P, 3, 3)``, shifts_xyz ``(P, 3)``: their poses.
        mask: centred Fourier mask ``(S, S, S)`` shared by all or ``(P, S, S, S)``; None: fully observed.
        weights: ``(P,)`` non-negative weights (class memberships); None: all 1. All zero (an empty class):
            the average is zero.
        wiener_floor: the coverage is floored at this fraction of ``Σ weights`` before dividing.
        batch_size: subtomograms transformed at once (memory).
        symmetry_rotations: ``(K, 3, 3)`` point-group rotations about the box centre (identity included), or
            None. The weighted sum of the particles (in real space) and their coverage (in Fourier space) are
            each symmetrised (:func:`aitom.ops.symmetry.symmetrize_volume`) before dividing, so every
            particle counts K times and the symmetric copies fill each other's missing wedges.

    Returns:
        ``(average (S, S, S), coverage (S, S, S))``: the real average and the centred Fourier coverage
        ``Σ w_i W_i(Rᵢᵀ k)`` normalised to ``[0, 1]`` by ``Σ w_i`` (use ``coverage`` as the average's mask).
    """
    if (
        volumes.ndim != 4
        or rotations.shape != (volumes.shape[0], 3, 3)
        or shifts_xyz.shape != (volumes.shape[0], 3)
    ):
        raise ValueError(
            f"need volumes (P, S, S, S), rotations (P, 3, 3), shifts (P, 3); got {tuple(volumes.shape)}, "
            f"{tuple(rotations.shape)}, {tuple(shifts_xyz.shape)}"
        )
    if wiener_floor <= 0:
        raise ValueError(f"wiener_floor must be > 0, got {wiener_floor}")
    n = volumes.shape[0]
    weights = (
        torch.ones(n, device=volumes.device, dtype=volumes.dtype) if weights is None else weights.to(volumes)
    )
    shape = volumes.shape[-3:]
    spectrum_sum = torch.zeros(shape, device=volumes.device, dtype=volumes.dtype).to(
        fftn_centered(volumes[:1]).dtype
    )
    coverage = torch.zeros(shape, device=volumes.device, dtype=volumes.dtype)
    for start in range(0, n, batch_size):
        part = slice(start, start + batch_size)
        w = weights[part][:, None, None, None]
        spectra, part_mask = _aligned_contributions(volumes, rotations, shifts_xyz, mask, part)
        spectrum_sum += (w * spectra).sum(0)
        coverage += (w * part_mask).sum(0)
    return _divide_by_coverage(spectrum_sum, coverage, weights.sum(), wiener_floor, symmetry_rotations)


def _aligned_contributions(
    volumes: torch.Tensor,
    rotations: torch.Tensor,
    shifts_xyz: torch.Tensor,
    mask: torch.Tensor | None,
    part: slice | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """What the subtomograms ``part`` add to an average: ``(masked centred spectra (B, S, S, S) complex,
    their masks in the reference frame (B, S, S, S))``."""
    aligned = align_to_reference_frame(volumes[part], rotations[part], shifts_xyz[part])
    if mask is None:
        part_mask = torch.ones_like(aligned)
    else:
        source = mask.to(volumes) if mask.ndim == 3 else mask[part].to(volumes)
        part_mask = rotate_volume(source, rotations[part].to(volumes).transpose(-1, -2)).clamp(0.0, 1.0)
    return part_mask * fftn_centered(aligned), part_mask


def _divide_by_coverage(
    spectrum_sum: torch.Tensor,
    coverage: torch.Tensor,
    total: torch.Tensor,
    wiener_floor: float,
    symmetry_rotations: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(average, coverage / total)`` from a weighted sum of aligned spectra, its coverage and ``total`` (the
    sum of the weights), both symmetrised first when ``symmetry_rotations`` is given."""
    if symmetry_rotations is not None:
        spectrum_sum = fftn_centered(symmetrize_volume(ifftn_centered(spectrum_sum).real, symmetry_rotations))
        coverage = symmetrize_volume(coverage, symmetry_rotations)
    # all-zero weights (an empty class): a zero average, the floored denominator a normal number (not 0/0)
    total = total.clamp(min=torch.finfo(coverage.dtype).tiny / wiener_floor)
    denominator = coverage.clamp(min=wiener_floor * total)
    average = ifftn_centered(spectrum_sum / denominator).real
    return average, coverage / total


def leave_one_out_averages(
    volumes: torch.Tensor,
    rotations: torch.Tensor,
    shifts_xyz: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    labels: torch.Tensor,
    wiener_floor: float = 0.05,
    batch_size: int = 64,
    symmetry_rotations: list[torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """For every subtomogram, the :func:`wedge_compensated_average` of the other members of its class.

    Each class's sums are formed once and every member's own contribution is subtracted from them, so the
    cost is two passes over the subtomograms whatever their number (not one average per subtomogram).

    Args:
        volumes, rotations, shifts_xyz, mask, wiener_floor, batch_size: as in
            :func:`wedge_compensated_average`.
        labels: ``(P,)`` 0-based classes.
        symmetry_rotations: per class, its point-group rotations ``(K, 3, 3)`` or None; None: no symmetry.

    Returns:
        ``(P, S, S, S)``: subtomogram ``i``'s class average without it (zero for the only member of a class).
    """
    n_classes = int(labels.max()) + 1
    shape = volumes.shape[-3:]
    complex_dtype = fftn_centered(volumes[:1]).dtype
    spectrum_sums = torch.zeros((n_classes, *shape), device=volumes.device, dtype=complex_dtype)
    coverages = torch.zeros((n_classes, *shape), device=volumes.device, dtype=volumes.dtype)
    sizes = torch.bincount(labels, minlength=n_classes).to(volumes)
    for start in range(0, volumes.shape[0], batch_size):
        part = slice(start, start + batch_size)
        spectra, part_mask = _aligned_contributions(volumes, rotations, shifts_xyz, mask, part)
        spectrum_sums.index_add_(0, labels[part], spectra)
        coverages.index_add_(0, labels[part], part_mask)
    averages = torch.empty_like(volumes)
    for start in range(0, volumes.shape[0], batch_size):
        part = slice(start, start + batch_size)
        spectra, part_mask = _aligned_contributions(volumes, rotations, shifts_xyz, mask, part)
        for offset, label in enumerate(labels[part].tolist()):
            averages[start + offset] = _divide_by_coverage(
                spectrum_sums[label] - spectra[offset],
                coverages[label] - part_mask[offset],
                sizes[label] - 1,
                wiener_floor,
                None if symmetry_rotations is None else symmetry_rotations[label],
            )[0]
    return averages


def leave_one_out_scores(
    volumes: torch.Tensor,
    rotations: torch.Tensor,
    shifts_xyz: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    min_frequency: float,
    max_frequency: float,
    particle_radius_voxels: float | None = None,
    wiener_floor: float = 0.05,
    batch_size: int = 64,
) -> torch.Tensor:
    """How well the poses explain each subtomogram by the others: its constrained correlation with the
    average of all the other subtomograms, brought into its frame.

    A subtomogram's alignment score against an average that holds it rewards the noise it put there; against
    the others' average (:func:`leave_one_out_averages`) only the signal it shares with them counts, so the
    mean of these scores compares pose sets (e.g. the starts of :func:`reference_free_average`) without that
    bias.

    Args:
        volumes, rotations, shifts_xyz, mask, wiener_floor, batch_size: as in
            :func:`wedge_compensated_average`.
        min_frequency, max_frequency: band of the correlation, cycles/voxel.
        particle_radius_voxels: radius of the soft spherical mask (3-voxel edge) applied to each average of
            the others before the comparison, voxels; None: none.

    Returns:
        ``(P,)`` correlations in ``[-1, 1]``.
    """
    labels = torch.zeros(volumes.shape[0], dtype=torch.long, device=volumes.device)
    others = leave_one_out_averages(
        volumes, rotations, shifts_xyz, mask, labels=labels, wiener_floor=wiener_floor, batch_size=batch_size
    )
    if particle_radius_voxels is not None:
        others = others * soft_sphere_mask(
            volumes.shape[-3:], particle_radius_voxels, 3.0, dtype=volumes.dtype, device=volumes.device
        )
    scores = []
    for start in range(0, volumes.shape[0], batch_size):
        part = slice(start, start + batch_size)
        in_frame = fourier_shift(rotate_volume(others[part], rotations[part].to(volumes)), shifts_xyz[part])
        scores.append(
            constrained_correlation(
                in_frame,
                volumes[part],
                None,
                particle_masks(mask, part),
                min_frequency=min_frequency,
                max_frequency=max_frequency,
            )
        )
    return torch.cat(scores)


def symmetric_average(
    volumes: torch.Tensor,
    rotations: torch.Tensor,
    shifts_xyz: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    symmetry: str = "C1",
    weights: torch.Tensor | None = None,
    wiener_floor: float = 0.05,
    axes_mask_real: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """:func:`wedge_compensated_average` with point group ``symmetry`` imposed about axes found in the map.

    The plain average is computed first; its symmetry axes are found from it
    (:func:`aitom.ops.symmetry.map_symmetry_rotations`, after multiplying it by ``axes_mask_real`` when
    given) and the average is recomputed with those ``symmetry_rotations``.

    Args:
        volumes, rotations, shifts_xyz, mask, weights, wiener_floor: as in :func:`wedge_compensated_average`.
        symmetry: point group (``"C1"``: none, one average computed; ``"C7"``, ``"D7"``, ``"O"``...).
        axes_mask_real: ``(S, S, S)`` real-space mask (the particle) applied before the axes are searched.

    Returns:
        ``(average (S, S, S), coverage (S, S, S), symmetry rotations (K, 3, 3) or None for C1)``; pass the
        rotations to :func:`half_set_averages` for the symmetrised half sets.
    """
    average, coverage = wedge_compensated_average(
        volumes, rotations, shifts_xyz, mask, weights=weights, wiener_floor=wiener_floor
    )
    if point_group_order(symmetry) == 1:
        return average, coverage, None
    masked = average if axes_mask_real is None else average * axes_mask_real
    symmetry_rotations, _ = map_symmetry_rotations(masked, symmetry)
    average, coverage = wedge_compensated_average(
        volumes,
        rotations,
        shifts_xyz,
        mask,
        weights=weights,
        wiener_floor=wiener_floor,
        symmetry_rotations=symmetry_rotations,
    )
    return average, coverage, symmetry_rotations


def half_set_averages(
    volumes: torch.Tensor,
    rotations: torch.Tensor,
    shifts_xyz: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    weights: torch.Tensor | None = None,
    wiener_floor: float = 0.05,
    symmetry_rotations: torch.Tensor | None = None,
) -> torch.Tensor:
    """Wedge-compensated averages of the even- and odd-numbered subtomograms (the two half sets).

    Their FSC (:func:`aitom.fourier.fourier_shell_correlation`) is the half-set FSC; written out they are the
    half maps that post-processing and local-resolution tools take. With ``symmetry_rotations`` both halves
    are symmetrised with them (:func:`wedge_compensated_average`), as the FSC of a symmetric structure is
    reported.

    Args:
        volumes, rotations, shifts_xyz, mask, weights, wiener_floor: as in :func:`wedge_compensated_average`.
        symmetry_rotations: ``(K, 3, 3)`` or None.

    Returns:
        ``(2, S, S, S)``: the even half, the odd half; zeros for fewer than two subtomograms (no half sets,
        an FSC of 0).
    """
    if volumes.shape[0] < 2:
        return volumes.new_zeros((2, *volumes.shape[-3:]))
    halves = []
    for parity in (0, 1):
        index = torch.arange(parity, volumes.shape[0], 2, device=volumes.device)
        half_weights = None if weights is None else weights[index]
        average, _ = wedge_compensated_average(
            volumes[index],
            rotations[index],
            shifts_xyz[index],
            particle_masks(mask, index),
            weights=half_weights,
            wiener_floor=wiener_floor,
            symmetry_rotations=symmetry_rotations,
        )
        halves.append(average)
    return torch.stack(halves)


@dataclasses.dataclass
class AveragingResult:
    """Result of :func:`reference_free_average`.

    Attributes:
        average: ``(S, S, S)`` final wedge-compensated average.
        coverage: ``(S, S, S)`` its centred Fourier coverage in ``[0, 1]``.
        alignment: final poses and scores of every subtomogram (:class:`aitom.ops.alignment.Alignment`).
        frequency: ``(n,)`` FSC shell centres, cycles/voxel.
        fsc: ``(n,)`` half-set FSC of the last iteration.
        half_averages: ``(2, S, S, S)`` the two half-set averages behind ``fsc``.
        history: one dict per iteration: ``iteration``, ``fsc_0.5_a``, ``fsc_0.143_a`` (Å), ``mean_score``,
            ``median_rotation_change_deg``, ``median_shift_change_voxels``, ``fsc`` (list); the iterations of
            the gold-standard stage also carry ``gold_standard: True``.
        start_scores: every start's mean leave-one-out score after its joint rounds (each subtomogram's
            correlation with the average of the others, :func:`leave_one_out_scores`), in the order they ran.
        kept_start: index of the start returned (the best of ``start_scores``).
        independent_above_frequency: cycles/voxel above which the half sets were refined independently (the
            limit of their shared start's low-pass, :func:`shared_start_limit`), so that ``fsc`` measures
            resolution there; None: the half sets are of one joint alignment and ``fsc`` is not independent
            at any frequency.
    """

    average: torch.Tensor
    coverage: torch.Tensor
    alignment: Alignment
    frequency: torch.Tensor
    fsc: torch.Tensor
    half_averages: torch.Tensor
    history: list[dict]
    start_scores: list[float] = dataclasses.field(default_factory=list)
    kept_start: int = 0
    independent_above_frequency: float | None = None


def annealed_initial_reference(
    volumes: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    iterations: int = 21,
    inverse_temperatures: tuple[float, float] = (0.3, 6.0),
    candidates: int = 50,
    angular_step_deg: float = 15.0,
    max_shift_voxels: float = 2.0,
    max_frequency: float = 0.3,
    particle_radius_voxels: float | None = None,
    wiener_floor: float = 0.05,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial model by stochastic annealing: orientations drawn from a sharpening posterior, re-averaged.

    Starts from the average under uniformly random rotations. Each iteration scores every rotation of
    ``so3_grid(angular_step_deg)`` (and integer shift up to ``max_shift_voxels``) of the current reference
    against every subtomogram with :func:`aitom.ops.alignment.phase_rotational_search`, turns each
    subtomogram's scores into z-scores over the rotations, draws ONE rotation per subtomogram from the softmax
    ``∝ exp(β z)`` over its ``candidates`` best, and re-averages. ``β`` grows geometrically over the
    iterations from ``inverse_temperatures[0]`` (nearly random draws: the reference cannot lock on to noise)
    to ``inverse_temperatures[1]`` (nearly the best rotation). This is simulated annealing of the poses; a
    start from the plain random-rotation average instead locks on to the first features that noise puts into
    it. On simulated 70S particles (32³, 12 Å, ±60° wedge, 3 µm CTF, SNR 0.01, 100 particles; best of 3
    starts, ``scripts/study_reference_free_size.py``) the refinement from this start put 100 % of the
    orientations within 20°, from random starts 0 %. The draws are random: keep the best of several starts.

    Args:
        volumes: ``(P, S, S, S)`` subtomograms.
        mask: centred Fourier mask ``(S, S, S)`` shared by all, ``(P, S, S, S)``, or None.
        iterations: annealing iterations (``>= 2``).
        inverse_temperatures: ``(first, last)`` ``β``, on the z-scores of the rotation scores.
        candidates: best rotations per subtomogram that the draw is restricted to.
        angular_step_deg, max_shift_voxels, max_frequency: search settings (rotations, shifts in voxels,
            band limit in cycles/voxel; the band starts at 0.05 cycles/voxel).
        particle_radius_voxels: soft spherical mask on the reference, voxels (None: none).
        wiener_floor: see :func:`wedge_compensated_average`.
        generator: random generator of the initial rotations and the draws (any device).

    Returns:
        ``(reference (S, S, S), coverage (S, S, S))``: the last average and its Fourier coverage.
    """
    if iterations < 2:
        raise ValueError(f"annealing needs at least 2 iterations, got {iterations}")
    first, last = inverse_temperatures
    if not 0 < first <= last:
        raise ValueError(f"need 0 < first <= last inverse temperature, got {inverse_temperatures}")
    if candidates < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}")
    n = volumes.shape[0]
    device, dtype = volumes.device, volumes.dtype
    grid = so3_grid(angular_step_deg, dtype=dtype, device=device)
    shifts_searched = shift_lattice(max_shift_voxels, device=device, dtype=dtype)
    sphere = (
        None
        if particle_radius_voxels is None
        else soft_sphere_mask(volumes.shape[-3:], particle_radius_voxels, 3.0, dtype=dtype, device=device)
    )
    rotations = random_rotations(n, generator=generator, dtype=dtype, device=device)
    reference, coverage = wedge_compensated_average(
        volumes, rotations, torch.zeros(n, 3, device=device, dtype=dtype), mask, wiener_floor=wiener_floor
    )
    count = min(candidates, grid.shape[0])
    for step in range(iterations):
        beta = first * (last / first) ** (step / (iterations - 1))
        scores, shift_index = phase_rotational_search(
            reference if sphere is None else reference * sphere,
            volumes,
            grid,
            (coverage / wiener_floor).clamp(max=1.0),
            mask,
            shifts_xyz=shifts_searched,
            min_frequency=min(0.05, max_frequency / 2),
            max_frequency=max_frequency,
        )
        z = (scores - scores.mean(1, keepdim=True)) / scores.std(1, keepdim=True).clamp(min=1e-12)
        best = z.topk(count, dim=1)
        probabilities = torch.softmax(beta * best.values, dim=1)
        if generator is not None:
            probabilities = probabilities.to(generator.device)
        drawn = torch.multinomial(probabilities, 1, generator=generator).to(device)
        index = best.indices.gather(1, drawn)[:, 0]
        rotations = grid[index]
        shifts = shifts_searched[shift_index.gather(1, index[:, None])[:, 0]]
        reference, coverage = wedge_compensated_average(
            volumes, rotations, shifts, mask, wiener_floor=wiener_floor
        )
    return reference, coverage


def _align_in_batches(
    reference: torch.Tensor,
    volumes: torch.Tensor,
    reference_mask: torch.Tensor | None,
    mask: torch.Tensor | None,
    *,
    batch_size: int,
    progress: bool,
    description: str,
    angular_step_deg: float,
    max_shift_voxels: float | None,
    max_frequency: float,
    refine_steps: int,
) -> Alignment:
    """:func:`aitom.ops.alignment.align_subtomograms` of ``volumes`` to ``reference``, ``batch_size`` at once,
    the rotational search in the band from 0.05 (or ``max_frequency / 2``) to ``max_frequency``."""
    parts = []
    for start in tqdm(
        range(0, volumes.shape[0], batch_size), desc=description, disable=not progress, leave=False
    ):
        part = slice(start, start + batch_size)
        parts.append(
            align_subtomograms(
                reference,
                volumes[part],
                reference_mask,
                particle_masks(mask, part),
                angular_step_deg=angular_step_deg,
                max_shift_voxels=max_shift_voxels,
                max_frequency=max_frequency,
                search_band=(min(0.05, max_frequency / 2), max_frequency),
                refine_steps=refine_steps,
            )
        )
    return Alignment(
        torch.cat([p.rotation for p in parts]),
        torch.cat([p.shift_xyz for p in parts]),
        torch.cat([p.score for p in parts]),
    )


def _history_entry(
    iteration: int,
    frequency: torch.Tensor,
    fsc: torch.Tensor,
    voxel_size_a: float,
    previous: Alignment,
    alignment: Alignment,
) -> dict:
    """One iteration's record: FSC resolutions (Å), mean score, median rotation (°) and shift (voxels)
    changes, the FSC curve."""
    return {
        "iteration": iteration,
        "fsc_0.5_a": float(resolution_at(frequency, fsc, 0.5, voxel_size_a=voxel_size_a)),
        "fsc_0.143_a": float(resolution_at(frequency, fsc, 0.143, voxel_size_a=voxel_size_a)),
        "mean_score": float(alignment.score.mean()),
        "median_rotation_change_deg": float(
            torch.rad2deg(rotation_angle_between(previous.rotation, alignment.rotation)).median()
        ),
        "median_shift_change_voxels": float((previous.shift_xyz - alignment.shift_xyz).norm(dim=1).median()),
        "fsc": fsc.tolist(),
    }


@dataclasses.dataclass
class GoldStandardRefinement:
    """Result of :func:`gold_standard_refinement`.

    Attributes:
        average: ``(S, S, S)`` wedge-compensated average of all subtomograms at their half-set poses.
        coverage: ``(S, S, S)`` its centred Fourier coverage in ``[0, 1]``.
        alignment: every subtomogram's pose and score against its own half set's reference.
        frequency: ``(n,)`` FSC shell centres, cycles/voxel.
        fsc: ``(n,)`` FSC of the two independently refined half averages.
        half_averages: ``(2, S, S, S)`` the even and the odd half average.
        history: one dict per iteration, as in :class:`AveragingResult` (``iteration`` counts from 1).
    """

    average: torch.Tensor
    coverage: torch.Tensor
    alignment: Alignment
    frequency: torch.Tensor
    fsc: torch.Tensor
    half_averages: torch.Tensor
    history: list[dict]


def gold_standard_refinement(
    volumes: torch.Tensor,
    mask: torch.Tensor | None,
    reference: torch.Tensor,
    *,
    start_frequency: float,
    coverage: torch.Tensor | None = None,
    iterations: int = 2,
    voxel_size_a: float = 1.0,
    angular_step_deg: float = 15.0,
    max_shift_voxels: float | None = None,
    max_frequency: float = 0.35,
    refine_steps: int = 30,
    wiener_floor: float = 0.05,
    batch_size: int = 64,
    weights: torch.Tensor | None = None,
    particle_radius_voxels: float | None = None,
    symmetry_rotations: torch.Tensor | None = None,
    initial_alignment: Alignment | None = None,
    progress: bool = False,
) -> GoldStandardRefinement:
    """Gold-standard refinement: the even- and odd-numbered subtomograms refined against separate references.

    Both half sets start from ``reference`` low-passed to ``start_frequency``, the only thing they share;
    each iteration aligns every subtomogram of a half set to that half set's current average (full
    rotational search) and re-averages the half set. Above the start's low-pass (beyond its soft edge,
    :func:`shared_start_limit`) the two half averages are then independent and their FSC measures
    resolution. The half sets of one joint alignment are not
    independent: each subtomogram's noise was aligned to a reference that holds the noise of both halves,
    so the noise reproduces in both. On 40 pure-noise subtomograms (32³, ±60° wedge, 5 joint rounds) the FSC
    of the joint half sets averages 0.15 between 0.175 and 0.35 cycles/voxel, that of these half sets 0.014
    (``tests/test_gold_standard.py`` checks the same contrast at 20³).

    Args:
        volumes: ``(P, S, S, S)`` subtomograms, ``P >= 2``.
        mask: centred Fourier mask ``(S, S, S)`` shared by all, ``(P, S, S, S)``, or None.
        reference: ``(S, S, S)`` the shared start (the joint average).
        start_frequency: low-pass cut-off of the shared start, cycles/voxel in ``(0, 0.5]`` (a raised-cosine
            edge :data:`GOLD_STANDARD_START_EDGE` wide about it). Below ``shared_start_limit`` of it the FSC
            of the half averages is not independent.
        coverage: ``(S, S, S)`` Fourier coverage of ``reference`` (its alignment mask), or None.
        iterations: align/average rounds of each half set (``>= 1``).
        voxel_size_a: voxel size, Å (for the resolutions in ``history``).
        angular_step_deg, max_shift_voxels, max_frequency, refine_steps, wiener_floor, batch_size,
            particle_radius_voxels, weights: as in :func:`reference_free_average`.
        symmetry_rotations: ``(K, 3, 3)`` point-group rotations imposed on both half averages, or None.
        initial_alignment: the poses before this refinement (of the joint rounds), from which the first
            iteration's changes in ``history`` are measured; None: identity poses.
        progress: show progress bars.
    """
    n = volumes.shape[0]
    if volumes.ndim != 4 or n < 2:
        raise ValueError(f"need at least 2 subtomograms (P, S, S, S), got {tuple(volumes.shape)}")
    if not 0 < start_frequency <= 0.5:
        raise ValueError(f"start_frequency must be in (0, 0.5] cycles/voxel, got {start_frequency}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    sphere = (
        None
        if particle_radius_voxels is None
        else soft_sphere_mask(
            volumes.shape[-3:], particle_radius_voxels, 3.0, dtype=volumes.dtype, device=volumes.device
        )
    )
    indices = [torch.arange(parity, n, 2, device=volumes.device) for parity in (0, 1)]
    start = lowpass(
        reference.to(volumes), 1.0 / start_frequency, 1.0, edge_width_frac=GOLD_STANDARD_START_EDGE / 0.5
    )
    references = [start, start]
    reference_masks = [None if coverage is None else (coverage / wiener_floor).clamp(max=1.0)] * 2
    zero = torch.zeros(n, device=volumes.device, dtype=volumes.dtype)
    previous = initial_alignment or Alignment(
        torch.eye(3).to(volumes).expand(n, 3, 3).clone(), zero[:, None].expand(n, 3).clone(), zero
    )
    history: list[dict] = []
    for iteration in range(1, iterations + 1):
        alignment = Alignment(previous.rotation.clone(), previous.shift_xyz.clone(), previous.score.clone())
        for parity, index in enumerate(indices):
            half_mask = particle_masks(mask, index)
            found = _align_in_batches(
                references[parity] if sphere is None else references[parity] * sphere,
                volumes[index],
                reference_masks[parity],
                half_mask,
                batch_size=batch_size,
                progress=progress,
                description=f"half set {parity + 1}, iteration {iteration}",
                angular_step_deg=angular_step_deg,
                max_shift_voxels=max_shift_voxels,
                max_frequency=max_frequency,
                refine_steps=refine_steps,
            )
            alignment.rotation[index], alignment.shift_xyz[index], alignment.score[index] = (
                found.rotation,
                found.shift_xyz,
                found.score,
            )
            references[parity], half_coverage = wedge_compensated_average(
                volumes[index],
                found.rotation,
                found.shift_xyz,
                half_mask,
                weights=None if weights is None else weights[index],
                wiener_floor=wiener_floor,
                symmetry_rotations=symmetry_rotations,
            )
            reference_masks[parity] = (half_coverage / wiener_floor).clamp(max=1.0)
        frequency, fsc = fourier_shell_correlation(references[0], references[1])
        history.append(_history_entry(iteration, frequency, fsc, voxel_size_a, previous, alignment))
        previous = alignment
    average, average_coverage = wedge_compensated_average(
        volumes,
        alignment.rotation,
        alignment.shift_xyz,
        mask,
        weights=weights,
        wiener_floor=wiener_floor,
        symmetry_rotations=symmetry_rotations,
    )
    return GoldStandardRefinement(
        average, average_coverage, alignment, frequency, fsc, torch.stack(references), history
    )


def _joint_refinement(
    volumes: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    iterations: int,
    voxel_size_a: float,
    angular_step_deg: float,
    max_shift_voxels: float | None,
    max_frequency: float,
    refine_steps: int,
    wiener_floor: float,
    tolerance_deg: float,
    batch_size: int,
    generator: torch.Generator | None,
    initial_reference: torch.Tensor | None,
    weights: torch.Tensor | None,
    particle_radius_voxels: float | None,
    annealing_iterations: int,
    progress: bool,
    symmetry: str,
) -> tuple[AveragingResult, torch.Tensor | None]:
    """One start of :func:`reference_free_average` without the gold-standard stage: every subtomogram
    aligned to one shared average. Returns the result (its half sets are of this joint alignment) and the
    symmetry rotations of the last average (None for C1)."""
    n = volumes.shape[0]
    device, dtype = volumes.device, volumes.dtype
    reference_mask_real = (
        None
        if particle_radius_voxels is None
        else soft_sphere_mask(volumes.shape[-3:], particle_radius_voxels, 3.0, dtype=dtype, device=device)
    )
    rotations = random_rotations(n, generator=generator, dtype=dtype, device=device)
    shifts = torch.zeros(n, 3, device=device, dtype=dtype)
    if initial_reference is not None:
        reference = initial_reference.to(volumes)
        coverage = None
    elif annealing_iterations > 0:
        reference, coverage = annealed_initial_reference(
            volumes,
            mask,
            iterations=annealing_iterations,
            angular_step_deg=angular_step_deg,
            max_shift_voxels=2.0 if max_shift_voxels is None else min(2.0, max_shift_voxels),
            max_frequency=max_frequency,
            particle_radius_voxels=particle_radius_voxels,
            wiener_floor=wiener_floor,
            generator=generator,
        )
    else:
        reference, coverage = wedge_compensated_average(
            volumes, rotations, shifts, mask, weights=weights, wiener_floor=wiener_floor
        )
    history: list[dict] = []
    alignment = Alignment(rotations, shifts, torch.zeros(n, device=device, dtype=dtype))
    symmetry_rotations = None
    for iteration in range(1, iterations + 1):
        reference_mask = None if coverage is None else (coverage / wiener_floor).clamp(max=1.0)
        if reference_mask_real is not None:
            reference = reference * reference_mask_real
        new = _align_in_batches(
            reference,
            volumes,
            reference_mask,
            mask,
            batch_size=batch_size,
            progress=progress,
            description=f"align {iteration}",
            angular_step_deg=angular_step_deg,
            max_shift_voxels=max_shift_voxels,
            max_frequency=max_frequency,
            refine_steps=refine_steps,
        )
        average_options = {"weights": weights, "wiener_floor": wiener_floor}
        reference, coverage, symmetry_rotations = symmetric_average(
            volumes,
            new.rotation,
            new.shift_xyz,
            mask,
            symmetry=symmetry,
            axes_mask_real=reference_mask_real,
            **average_options,
        )
        halves = half_set_averages(
            volumes,
            new.rotation,
            new.shift_xyz,
            mask,
            symmetry_rotations=symmetry_rotations,
            **average_options,
        )
        frequency, fsc = fourier_shell_correlation(halves[0], halves[1])
        entry = _history_entry(iteration, frequency, fsc, voxel_size_a, alignment, new)
        history.append(entry)
        alignment = new
        if (
            iteration > 1
            and entry["median_rotation_change_deg"] < tolerance_deg
            and entry["median_shift_change_voxels"] < 0.5
        ):
            break
    result = AveragingResult(reference, coverage, alignment, frequency, fsc, halves, history)
    return result, symmetry_rotations


def reference_free_average(
    volumes: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    iterations: int = 5,
    voxel_size_a: float = 1.0,
    angular_step_deg: float = 15.0,
    max_shift_voxels: float | None = None,
    max_frequency: float = 0.35,
    refine_steps: int = 30,
    wiener_floor: float = 0.05,
    tolerance_deg: float = 1.0,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    initial_reference: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    particle_radius_voxels: float | None = None,
    annealing_iterations: int = 0,
    progress: bool = False,
    starts: int = 1,
    particle_starts: bool = False,
    symmetry: str = "C1",
    gold_standard_iterations: int = 2,
    gold_standard_start_frequency: float | None = None,
) -> AveragingResult:
    """Iterative reference-free averaging: align everything to the current average, re-average, repeat; then
    refine the two half sets independently (gold standard) for an FSC that measures resolution.

    Starts from the wedge-compensated average of the subtomograms under uniformly random rotations (or from
    ``initial_reference``); each iteration aligns all subtomograms to the current average (whose mask is its
    coverage), re-averages with wedge compensation and computes the FSC of the even/odd half-set averages.
    Stops after ``iterations`` or when the median rotation change drops below ``tolerance_deg`` and the median
    shift change below 0.5 voxel. Then :func:`gold_standard_refinement` refines the even and the odd
    subtomograms separately, from the joint average low-passed to ``gold_standard_start_frequency``, for
    ``gold_standard_iterations``: the returned average, poses, half averages and FSC are theirs.

    Args:
        volumes: ``(P, S, S, S)`` subtomograms.
        mask: centred Fourier mask ``(S, S, S)`` shared by all, ``(P, S, S, S)``, or None.
        iterations: maximum number of joint align/average rounds.
        voxel_size_a: voxel size, Å (for the resolutions in ``history``).
        angular_step_deg, max_shift_voxels, max_frequency, refine_steps: alignment settings
            (:func:`aitom.ops.alignment.align_subtomograms`); the rotational search uses the band from 0.05
            to ``max_frequency`` cycles/voxel, the translation search and the refinement every frequency up
            to ``max_frequency``. On the 40 real
            70S particles (12 Å) a search capped at 0.25 cycles/voxel inside a 0.45 band kept 48 % of the
            STAR orientations within 20° when started from them, the whole band 70 %.
        wiener_floor: see :func:`wedge_compensated_average`.
        tolerance_deg: convergence threshold on the median rotation change, degrees.
        batch_size: subtomograms aligned at once.
        generator: random generator for the initial rotations.
        initial_reference: ``(S, S, S)`` starting reference instead of the random-rotation average.
        weights: ``(P,)`` weights of the subtomograms in the averages (class memberships).
        particle_radius_voxels: radius of a soft spherical mask (3-voxel raised-cosine edge) applied to the
            reference before each alignment, voxels; None: no mask. Masking away the solvent keeps the
            alignment from fitting noise outside the particle, which matters with few, noisy particles.
        annealing_iterations: when > 0 (and no ``initial_reference``), start from
            :func:`annealed_initial_reference` with this many iterations instead of the random-rotation
            average: slower (one full rotational search per iteration) but far less prone to locking on to
            noise at low SNR. The subtomogram ``weights`` do not enter the annealing.
        progress: show progress bars.
        starts: independent starts (random rotations, annealing or particles, drawn one after another from
            ``generator``); the one whose poses best explain each subtomogram by the others (the highest
            mean :func:`leave_one_out_scores` in the rotational search's band, after the joint rounds) is
            kept and refined in half sets, which needs no reference. The mean alignment score would favour
            a start whose average fits the subtomograms' own noise: on the 40 real 70S particles it ranks
            wrong maps of random starts above the poses from the STAR file, the leave-one-out score ranks
            the STAR poses first (docs/real_70s.md).
        particle_starts: start each run from one subtomogram as the reference (``starts`` of them, drawn
            without repeats from ``generator``) instead of the random-rotation average: an actual particle
            gives the first alignment an asymmetric shape to lock on to, where the featureless average of
            randomly rotated particles gives noise. Not with ``initial_reference`` or annealing.
        symmetry: point group of the particle (``"C1"``: none; ``"C7"``, ``"D7"``, ``"O"``...). After every
            iteration the average's symmetry axes are found from the average itself
            (:func:`aitom.ops.symmetry.map_symmetry_rotations`) and the average and its Fourier coverage
            are recomputed symmetrised (``symmetry_rotations`` of :func:`wedge_compensated_average`); the
            orientations are then defined up to the symmetry. The half sets are symmetrised with the last
            joint average's rotations.
        gold_standard_iterations: rounds of the independent half-set refinement; 0: none, the half sets
            and FSC are those of the last joint alignment, which are not independent (noise aligned to a
            shared reference correlates between them).
        gold_standard_start_frequency: low-pass of the joint average that both half sets start from,
            cycles/voxel (None: ``max_frequency / 2``); the FSC below it is not independent.

    Returns:
        :class:`AveragingResult` of the kept start, with every start's score.
    """
    point_group_order(symmetry)  # an unknown point group fails here, before any work
    if starts < 1:
        raise ValueError(f"starts must be >= 1, got {starts}")
    if starts > 1 and initial_reference is not None:
        raise ValueError("several starts need random or particle starts: pass no initial_reference")
    if particle_starts and (initial_reference is not None or annealing_iterations > 0):
        raise ValueError("particle starts replace the initial reference and the annealing: pass neither")
    if particle_starts and starts > volumes.shape[0]:
        raise ValueError(f"{starts} particle starts need as many subtomograms, got {volumes.shape[0]}")
    if starts > 1 and weights is not None:
        raise ValueError("several starts are compared without subtomogram weights: pass no weights")
    if volumes.ndim != 4 or volumes.shape[0] < 2:
        raise ValueError(f"need at least 2 subtomograms (P, S, S, S), got {tuple(volumes.shape)}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if annealing_iterations < 0:
        raise ValueError(f"annealing_iterations must be >= 0, got {annealing_iterations}")
    if particle_radius_voxels is not None and not particle_radius_voxels > 0:
        raise ValueError(f"particle_radius_voxels must be > 0, got {particle_radius_voxels}")
    if gold_standard_iterations < 0:
        raise ValueError(f"gold_standard_iterations must be >= 0, got {gold_standard_iterations}")
    start_frequency = (
        max_frequency / 2 if gold_standard_start_frequency is None else gold_standard_start_frequency
    )
    if not 0 < start_frequency <= 0.5:
        raise ValueError(
            f"gold_standard_start_frequency must be in (0, 0.5] cycles/voxel, got {start_frequency}"
        )
    options = {
        "voxel_size_a": voxel_size_a,
        "angular_step_deg": angular_step_deg,
        "max_shift_voxels": max_shift_voxels,
        "max_frequency": max_frequency,
        "refine_steps": refine_steps,
        "wiener_floor": wiener_floor,
        "batch_size": batch_size,
        "weights": weights,
        "particle_radius_voxels": particle_radius_voxels,
        "progress": progress,
    }
    if particle_starts:
        device = None if generator is None else generator.device
        drawn = torch.randperm(volumes.shape[0], generator=generator, device=device)[:starts].tolist()
        initial_references = [volumes[index] for index in drawn]
    else:
        initial_references = [initial_reference] * starts
    runs = [
        _joint_refinement(
            volumes,
            mask,
            iterations=iterations,
            tolerance_deg=tolerance_deg,
            generator=generator,
            initial_reference=start_reference,
            annealing_iterations=annealing_iterations,
            symmetry=symmetry,
            **options,
        )
        for start_reference in initial_references
    ]
    # the starts are compared by how well each subtomogram agrees with the others' average: the mean
    # alignment score would favour a start whose average fits the subtomograms' own noise
    scores = [
        float(
            leave_one_out_scores(
                volumes,
                run.alignment.rotation,
                run.alignment.shift_xyz,
                mask,
                min_frequency=min(0.05, max_frequency / 2),
                max_frequency=max_frequency,
                particle_radius_voxels=particle_radius_voxels,
                wiener_floor=wiener_floor,
                batch_size=batch_size,
            ).mean()
        )
        for run, _ in runs
    ]
    kept = max(range(starts), key=scores.__getitem__)
    joint, symmetry_rotations = runs[kept]
    if gold_standard_iterations == 0:
        return dataclasses.replace(joint, start_scores=scores, kept_start=kept)
    halves = gold_standard_refinement(
        volumes,
        mask,
        joint.average,
        start_frequency=start_frequency,
        coverage=joint.coverage,
        iterations=gold_standard_iterations,
        symmetry_rotations=symmetry_rotations,
        initial_alignment=joint.alignment,
        **options,
    )
    offset = len(joint.history)
    history = joint.history + [
        {**entry, "iteration": offset + entry["iteration"], "gold_standard": True} for entry in halves.history
    ]
    return AveragingResult(
        halves.average,
        halves.coverage,
        halves.alignment,
        halves.frequency,
        halves.fsc,
        halves.half_averages,
        history,
        scores,
        kept,
        independent_above_frequency=shared_start_limit(start_frequency),
    )


def class_half_sets(
    volumes: torch.Tensor,
    mask: torch.Tensor | None,
    labels: torch.Tensor,
    averages: torch.Tensor,
    alignment: Alignment,
    symmetry_rotations: list[torch.Tensor | None],
    *,
    gold_standard_iterations: int = 2,
    start_frequency: float = 0.175,
    **alignment_options,
) -> tuple[torch.Tensor, Alignment, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every class's two half sets and their FSC, gold-standard where the class has at least two members.

    With ``gold_standard_iterations > 0`` each class of two or more subtomograms is refined in independent
    half sets from its average (:func:`gold_standard_refinement`), and its average and its members' poses
    become those of the refinement. With 0 (or a single member) the half sets are those of the current
    poses (:func:`half_set_averages`), whose FSC is not independent.

    Args:
        volumes: ``(P, S, S, S)``; mask: as in :func:`reference_free_average`.
        labels: ``(P,)`` class of every subtomogram in ``[0, K)``.
        averages: ``(K, S, S, S)`` class averages; alignment: every subtomogram's pose and score.
        symmetry_rotations: per class ``(M, 3, 3)`` point-group rotations or None.
        gold_standard_iterations, start_frequency: see :func:`gold_standard_refinement`.
        alignment_options: ``voxel_size_a``, ``angular_step_deg``, ``max_shift_voxels``, ``max_frequency``,
            ``refine_steps``... of :func:`gold_standard_refinement`.

    Returns:
        ``(averages (K, S, S, S), alignment, frequency (n,), fsc (K, n), half averages (K, 2, S, S, S))``.
    """
    if gold_standard_iterations < 0:
        raise ValueError(f"gold_standard_iterations must be >= 0, got {gold_standard_iterations}")
    averages = averages.clone()
    alignment = Alignment(alignment.rotation.clone(), alignment.shift_xyz.clone(), alignment.score.clone())
    curves, half_averages = [], []
    for k in range(averages.shape[0]):
        members = torch.nonzero(labels == k).flatten()
        if gold_standard_iterations > 0 and members.numel() >= 2:
            refined = gold_standard_refinement(
                volumes[members],
                particle_masks(mask, members),
                averages[k],
                start_frequency=start_frequency,
                iterations=gold_standard_iterations,
                symmetry_rotations=symmetry_rotations[k],
                initial_alignment=Alignment(
                    alignment.rotation[members], alignment.shift_xyz[members], alignment.score[members]
                ),
                **alignment_options,
            )
            averages[k] = refined.average
            alignment.rotation[members] = refined.alignment.rotation
            alignment.shift_xyz[members] = refined.alignment.shift_xyz
            alignment.score[members] = refined.alignment.score
            halves = refined.half_averages
        else:
            halves = half_set_averages(
                volumes[members],
                alignment.rotation[members],
                alignment.shift_xyz[members],
                particle_masks(mask, members),
                symmetry_rotations=symmetry_rotations[k],
            )
        frequency, curve = fourier_shell_correlation(halves[0], halves[1])
        curves.append(curve)
        half_averages.append(halves)
    return averages, alignment, frequency, torch.stack(curves), torch.stack(half_averages)
