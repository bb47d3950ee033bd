"""Handedness: mirror a map, superpose two maps, decide which hand of a reference matches an average,
and average subtomograms with known poses and per-particle 3-D Fourier weights.

A mirror image cannot be rotated into the original (a chiral object), so comparing an average with a
reference *and* with the reference's mirror image, each superposed on the average by the best rotation and
shift, tells whether the two were reconstructed with the same handedness. Tomography software disagrees
about the sign of the tilt angles and the direction of the beam (RELION's ``rlnTomoHand``); a map of the
wrong hand is the mirror image along Z of the right one.

Mirroring is about the box centre (voxel ``N // 2``, the FFT / RELION convention): voxel ``c + d`` goes to
``c − d`` along the mirrored axis, so the centre stays put and a centred particle stays centred.
"""

from __future__ import annotations

import torch

from aitom.fourier import fftn_centered, fsc_resolutions, ifftn_centered, lowpass
from aitom.geometry import rotate_volume, soft_sphere_mask
from aitom.ops.alignment import Alignment, align_subtomograms
from aitom.ops.averaging import align_to_reference_frame

__all__ = [
    "hand_check",
    "known_pose_average",
    "masked_correlation",
    "mirror_volume",
    "superpose_map",
]

_AXIS_DIM = {"z": -3, "y": -2, "x": -1}


def mirror_volume(volume: torch.Tensor, axis: str = "z") -> torch.Tensor:
    """Mirror volumes about the box centre along one axis (flip the hand).

    ``output[..., c − d, :, :] = volume[..., c + d, :, :]`` for ``axis="z"`` with ``c = N // 2``; for even
    ``N`` the first plane (``d = −N/2``) has no partner inside the box and maps onto itself.

    Args:
        volume: real tensor ``(..., Z, Y, X)``.
        axis: ``"z"``, ``"y"`` or ``"x"``.

    Returns:
        Tensor of the same shape, device and dtype.
    """
    if axis not in _AXIS_DIM:
        raise ValueError(f"axis must be 'z', 'y' or 'x', got {axis!r}")
    if volume.ndim < 3:
        raise ValueError(f"need a volume (..., Z, Y, X), got shape {tuple(volume.shape)}")
    dim = _AXIS_DIM[axis]
    flipped = torch.flip(volume, dims=(dim,))  # index i -> N - 1 - i
    return torch.roll(flipped, 1, dims=dim) if volume.shape[dim] % 2 == 0 else flipped


def masked_correlation(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Pearson correlation of two volumes over a (soft) real-space mask, means and norms weighted by it.

    Args:
        a, b: ``(..., Z, Y, X)`` real volumes (broadcastable).
        mask: ``(Z, Y, X)`` weights in ``[0, 1]``; None: every voxel.

    Returns:
        ``(...)`` correlations in ``[-1, 1]``.
    """
    weight = torch.ones_like(a[..., :1, :1, :1]) if mask is None else mask.to(a)
    dims = (-3, -2, -1)
    total = (weight * torch.ones_like(a)).sum(dim=dims, keepdim=True)
    centred_a = a - (weight * a).sum(dim=dims, keepdim=True) / total
    centred_b = b - (weight * b).sum(dim=dims, keepdim=True) / total
    cross = (weight * centred_a * centred_b).sum(dim=dims)
    norm = ((weight * centred_a.square()).sum(dim=dims) * (weight * centred_b.square()).sum(dim=dims)).sqrt()
    return cross / norm.clamp(min=torch.finfo(a.dtype).tiny)


def superpose_map(
    moving: torch.Tensor,
    fixed: torch.Tensor,
    *,
    voxel_size_a: float,
    lowpass_a: float = 40.0,
    angular_step_deg: float = 10.0,
    n_candidates: int = 16,
    refine_steps: int = 60,
    max_shift_voxels: float | None = None,
) -> tuple[torch.Tensor, Alignment]:
    """Rotate and shift ``moving`` onto ``fixed`` (two maps, no missing wedge), best by correlation.

    :func:`aitom.ops.alignment.align_subtomograms` with ``fixed`` as the reference finds ``R, t`` with
    ``moving ≈ shift(rotate(fixed, R), t)`` over frequencies up to ``voxel_size_a / lowpass_a``
    cycles/voxel; ``moving`` is then brought into ``fixed``'s frame.

    Args:
        moving, fixed: ``(S, S, S)`` maps.
        voxel_size_a: voxel size, Å.
        lowpass_a: highest resolution used in the search, Å.
        angular_step_deg: covering radius of the rotation grid, degrees.
        n_candidates: grid rotations passed from the amplitude search to the translation search.
        refine_steps: gradient refinement steps of the best two candidates (0: grid only).
        max_shift_voxels: largest shift searched (None: any).

    Returns:
        ``(moving in fixed's frame (S, S, S), Alignment with one entry)``.
    """
    if moving.ndim != 3 or moving.shape != fixed.shape:
        raise ValueError(
            f"need two maps (S, S, S) of one size, got {tuple(moving.shape)}, {tuple(fixed.shape)}"
        )
    max_frequency = min(0.5, voxel_size_a / lowpass_a)
    alignment = align_subtomograms(
        fixed,
        moving,
        angular_step_deg=angular_step_deg,
        n_candidates=n_candidates,
        refine_steps=refine_steps,
        max_shift_voxels=max_shift_voxels,
        search_band=(min(0.05, max_frequency / 2), max_frequency),
        max_frequency=max_frequency,
    )
    aligned = align_to_reference_frame(moving[None], alignment.rotation, alignment.shift_xyz)[0]
    return aligned, alignment


def hand_check(
    average: torch.Tensor,
    reference: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    voxel_size_a: float,
    lowpass_a: float = 40.0,
    axis: str = "z",
    angular_step_deg: float = 10.0,
    refine_steps: int = 60,
    max_shift_voxels: float | None = None,
) -> dict:
    """Which hand of ``reference`` matches ``average``: as it is, or mirrored along ``axis``?

    Each hand of the reference is superposed on the average (:func:`superpose_map`: best rotation and shift,
    so a reference that is also rotated is treated fairly); then both are low-passed to ``lowpass_a`` and
    correlated inside ``mask`` (:func:`masked_correlation`), and their FSC-0.5 / 0.143 resolutions are
    measured (unfiltered maps, same mask).

    Args:
        average, reference: ``(S, S, S)`` maps on the same voxel size.
        mask: ``(S, S, S)`` real-space mask; None: a soft sphere of radius ``0.4 S`` with a ``0.08 S`` edge.
        voxel_size_a: voxel size, Å.
        lowpass_a: low-pass before correlating and highest resolution used in the superposition, Å.
        axis: mirror axis (``"z"`` flips tomography's hand).
        angular_step_deg, refine_steps, max_shift_voxels: superposition search (:func:`superpose_map`).

    Returns:
        dict with ``correlation_as_is``, ``correlation_mirrored`` (low-passed, masked), ``better``
        (``"as_is"`` or ``"mirrored"``), ``margin`` (the better minus the other correlation),
        ``fsc_0.5_a_as_is``, ``fsc_0.143_a_as_is``, ``fsc_0.5_a_mirrored``, ``fsc_0.143_a_mirrored`` (Å),
        ``rotation_as_is`` / ``rotation_mirrored`` (3×3 lists) and ``shift_xyz_as_is`` /
        ``shift_xyz_mirrored`` (voxels): the superposition ``reference ≈ shift(rotate(average, R), t)``.
    """
    if average.ndim != 3 or average.shape != reference.shape:
        raise ValueError(
            f"need two maps (S, S, S) of one size, got {tuple(average.shape)}, {tuple(reference.shape)}"
        )
    size = min(average.shape)
    if mask is None:
        mask = soft_sphere_mask(
            tuple(average.shape), 0.4 * size, 0.08 * size, dtype=average.dtype, device=average.device
        )
    mask = mask.to(average)
    filtered_average = lowpass(average, lowpass_a, voxel_size_a)
    result: dict = {}
    for hand, candidate in (("as_is", reference), ("mirrored", mirror_volume(reference, axis))):
        aligned, alignment = superpose_map(
            candidate.to(average),
            average,
            voxel_size_a=voxel_size_a,
            lowpass_a=lowpass_a,
            angular_step_deg=angular_step_deg,
            refine_steps=refine_steps,
            max_shift_voxels=max_shift_voxels,
        )
        correlation = masked_correlation(filtered_average, lowpass(aligned, lowpass_a, voxel_size_a), mask)
        resolutions = fsc_resolutions(average, aligned, voxel_size_a=voxel_size_a, mask=mask)
        result[f"correlation_{hand}"] = float(correlation)
        result[f"fsc_0.5_a_{hand}"] = resolutions["fsc_0.5_a"]
        result[f"fsc_0.143_a_{hand}"] = resolutions["fsc_0.143_a"]
        result[f"rotation_{hand}"] = alignment.rotation[0].tolist()
        result[f"shift_xyz_{hand}"] = alignment.shift_xyz[0].tolist()
    as_is, mirrored = result["correlation_as_is"], result["correlation_mirrored"]
    result["better"] = "as_is" if as_is >= mirrored else "mirrored"
    result["margin"] = abs(as_is - mirrored)
    return result


def known_pose_average(
    volumes: torch.Tensor,
    rotations: torch.Tensor,
    weights_3d: torch.Tensor | None = None,
    shifts_xyz: torch.Tensor | None = None,
    *,
    wiener_floor: float = 0.05,
    batch_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average subtomograms with known poses, each Fourier coefficient weighted by its per-particle weight.

    ``average = F⁻¹[Σ Wᵢ(Rᵢᵀ k) F(alignedᵢ)(k) / max(Σ Wᵢ(Rᵢᵀ k), ε)]`` with ``alignedᵢ`` the subtomogram
    brought back to the reference frame (:func:`aitom.ops.averaging.align_to_reference_frame`), ``Wᵢ`` its
    centred Fourier weight rotated with it (e.g. the sampled CTF² × dose of a reconstruction from tilt
    images: the real missing wedge and CTF weighting) and ``ε = wiener_floor`` × the mean of ``Σ Wᵢ`` over
    the observed coefficients. Unlike :func:`aitom.ops.averaging.wedge_compensated_average` (masks in
    ``[0, 1]``, floor relative to the number of particles) the weights keep their scale, so a frequency
    sampled by many tilts counts more than one sampled by few. Without weights every coefficient counts
    once and this is the plain average of the aligned subtomograms (up to the floor, which then never acts).

    Args:
        volumes: ``(P, S, S, S)`` subtomograms; a subtomogram is the reference rotated actively by ``R``
            (RELION's matrix of its angles, :func:`aitom.geometry.euler_zyz_to_matrix`) and shifted by ``t``.
        rotations: ``(P, 3, 3)``.
        weights_3d: ``(P, S, S, S)`` non-negative centred full Fourier weights (zero frequency at voxel
            ``S // 2``), ``(S, S, S)`` shared by all, or None (fully observed).
        shifts_xyz: ``(P, 3)`` voxels ``(x, y, z)`` (RELION's origin is ``−t``); None: centred particles.
        wiener_floor: relative floor of the weight sum, ``> 0``.
        batch_size: subtomograms transformed at once (memory).

    Returns:
        ``(average (S, S, S), coverage (S, S, S))``: the real average and the summed rotated weights
        ``Σ Wᵢ(Rᵢᵀ k)`` divided by their maximum (centred layout).
    """
    n = volumes.shape[0]
    if volumes.ndim != 4 or rotations.shape != (n, 3, 3):
        raise ValueError(
            f"need volumes (P, S, S, S) and rotations (P, 3, 3), got {tuple(volumes.shape)}, "
            f"{tuple(rotations.shape)}"
        )
    if weights_3d is not None and weights_3d.shape[-3:] != volumes.shape[-3:]:
        raise ValueError(f"weights_3d {tuple(weights_3d.shape)} do not match volumes {tuple(volumes.shape)}")
    if weights_3d is not None and bool((weights_3d < 0).any()):
        raise ValueError("weights_3d must be non-negative")
    if wiener_floor <= 0:
        raise ValueError(f"wiener_floor must be > 0, got {wiener_floor}")
    if shifts_xyz is None:
        shifts_xyz = torch.zeros(n, 3, device=volumes.device, dtype=volumes.dtype)
    spectrum_sum = torch.zeros(volumes.shape[-3:], device=volumes.device, dtype=volumes.dtype)
    spectrum_sum = spectrum_sum.to(fftn_centered(volumes[:1]).dtype)
    weight_sum = torch.zeros(volumes.shape[-3:], device=volumes.device, dtype=volumes.dtype)
    for start in range(0, n, batch_size):
        part = slice(start, start + batch_size)
        aligned = align_to_reference_frame(volumes[part], rotations[part], shifts_xyz[part])
        if weights_3d is None:
            weight = torch.ones_like(aligned)
        else:
            source = weights_3d.to(volumes) if weights_3d.ndim == 3 else weights_3d[part].to(volumes)
            weight = rotate_volume(source, rotations[part].to(volumes).transpose(-1, -2)).clamp(min=0.0)
        spectrum_sum += (weight * fftn_centered(aligned)).sum(0)
        weight_sum += weight.sum(0)
    observed = weight_sum > 0
    floor = wiener_floor * (
        weight_sum[observed].mean() if bool(observed.any()) else weight_sum.new_tensor(1.0)
    )
    average = ifftn_centered(spectrum_sum / weight_sum.clamp(min=floor)).real
    return average, weight_sum / weight_sum.max().clamp(min=torch.finfo(weight_sum.dtype).tiny)
