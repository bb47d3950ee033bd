"""Simulated subtomograms of single particles with ground truth (class, orientation, shift) at a target SNR.

A particle is a class map (electrostatic potential, :func:`aitom.simulate.class_potential`) rotated actively
by a uniformly random rotation ``A`` (RELION's matrix of its Euler angles) about the box centre and shifted by
``t`` (uniform in a ball of radius ``max_shift_voxels``): ``particle(x) = map(Aᵀ(x − c − t) + c)``. Two
imaging models:

* ``fourier`` (fast, AITom's model; on-the-fly training data): signal =
  ``F⁻¹[−CTF₃D(|k|) · W(k) · F[particle]]`` with the isotropic 3-D CTF and the missing-wedge mask ``W``;
  noise = white Gaussian noise through the same wedge (not the CTF). The CTF is negated so that particles
  are PROTEIN BRIGHT like the tomograms.
* ``tiltseries`` (slower, physical): project the particle over the tilt series, apply the per-tilt CTF and
  dose weighting, add white noise per tilt, reconstruct signal and noise by WBP and negate (protein bright).

SNR as AITom defines it: ``var(signal) / var(noise)`` of each final subtomogram over the whole box, the noise
being scaled per subtomogram so the ratio is exact. With paired copies (same particle and pose, independent
noises) the correlation ``cc`` of the two copies estimates it as ``cc / (1 − cc)``.

Ground truth columns: ``rlnClassNumber`` (1-based), ``aitomClassName``, ``rlnAngleRot/Tilt/Psi`` (degrees),
``rlnOriginX/Y/Z`` (voxels, RELION's meaning: the particle centre is at box centre − origin, i.e. origin =
−t).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from aitom.fourier import ctf_3d, missing_wedge_mask
from aitom.geometry import matrix_to_euler_zyz, random_rotations, rotate_volume
from aitom.simulate.library import class_potential, get_class
from aitom.simulate.noise import form_tilt_images, noise_scale_for_snr, tilt_transfer
from aitom.simulate.recipe import CtfConfig, SubtomogramRecipe, TiltSeriesConfig
from aitom.simulate.tiltseries import (
    pre_exposure_e_per_a2,
    project_tilt_series,
    tilt_angles_deg,
    weighted_back_projection,
)
from aitom.simulate.tomogram import CLASS_NAME_COLUMN

__all__ = [
    "ORIGIN_COLUMNS",
    "SimulatedSubtomograms",
    "fourier_transfer",
    "random_shifts",
    "simulate_subtomogram_batch",
    "simulate_subtomogram_batch_tiltseries",
    "simulate_subtomograms",
]

#: ground-truth shift columns (voxels, RELION's sign: origin = −shift)
ORIGIN_COLUMNS = ("rlnOriginX", "rlnOriginY", "rlnOriginZ")


@dataclasses.dataclass
class SimulatedSubtomograms:
    """Simulated subtomograms and their ground truth.

    Attributes:
        volumes: ``(N, S, S, S)`` float32 subtomograms (protein bright).
        truth: one row per subtomogram: ``rlnClassNumber`` (1-based), ``aitomClassName``,
            ``rlnAngleRot/Tilt/Psi`` (degrees), ``rlnOriginX/Y/Z`` (voxels, −shift).
        templates: class name → ``(S, S, S)`` potential map (volts), centre of mass at voxel ``S // 2``.
        voxel_size_a: voxel size, Å.
        paired_volumes: ``(N, S, S, S)`` second noise realisation of the same particles (``paired``), or None.
    """

    volumes: torch.Tensor
    truth: pd.DataFrame
    templates: dict[str, torch.Tensor]
    voxel_size_a: float
    paired_volumes: torch.Tensor | None = None


@functools.lru_cache(maxsize=16)
def _cached_fourier_transfer(
    box_size: int,
    voxel_size_a: float,
    tilt_range_deg: tuple[float, float] | None,
    ctf_key: tuple | None,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (box_size,) * 3
    if tilt_range_deg is None:
        wedge = torch.ones((box_size, box_size, box_size // 2 + 1), device=device, dtype=dtype)
    else:
        wedge = missing_wedge_mask(
            shape,
            tilt_min_deg=tilt_range_deg[0],
            tilt_max_deg=tilt_range_deg[1],
            rfft=True,
            centered=False,
            device=device,
            dtype=dtype,
        )
    if ctf_key is None:
        return wedge, wedge
    ctf = CtfConfig(*ctf_key)
    transfer = ctf_3d(
        shape,
        voxel_size_a=voxel_size_a,
        defocus_um=ctf.defocus_um,
        voltage_kv=ctf.voltage_kv,
        cs_mm=ctf.cs_mm,
        amplitude_contrast=ctf.amplitude_contrast,
        b_factor_a2=ctf.b_factor_a2,
        rfft=True,
        centered=False,
        device=device,
        dtype=dtype,
    )
    return -transfer * wedge, wedge


def fourier_transfer(
    box_size: int,
    *,
    voxel_size_a: float,
    tilt_range_deg: tuple[float, float] | None = (-60.0, 60.0),
    ctf: CtfConfig | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Signal and noise transfer functions of the ``fourier`` model (``rfftn`` layout, not centred).

    Args:
        box_size: cubic box edge ``S``, voxels.
        voxel_size_a: voxel size, Å.
        tilt_range_deg: ``(min, max)`` tilt range of the missing wedge, degrees (None: no wedge).
        ctf: CTF parameters (``defocus_um``, microscope, B-factor; ``enabled`` False or None: no CTF).
        device, dtype: of the result (cached per argument set).

    Returns:
        ``signal_transfer = −CTF₃D · W`` (``W`` alone without CTF) and ``noise_transfer = W``, each
        ``(S, S, S // 2 + 1)``.
    """
    device = torch.device("cpu" if device is None else device)
    ctf_key = dataclasses.astuple(ctf) if ctf is not None and ctf.enabled else None
    wedge_key = None if tilt_range_deg is None else (float(tilt_range_deg[0]), float(tilt_range_deg[1]))
    return _cached_fourier_transfer(int(box_size), float(voxel_size_a), wedge_key, ctf_key, device, dtype)


def _check_batch(
    maps: torch.Tensor, class_ids: torch.Tensor, rotations: torch.Tensor, shifts_xyz: torch.Tensor
) -> None:
    if maps.ndim != 4 or len(set(maps.shape[1:])) != 1:
        raise ValueError(f"maps must be (C, S, S, S), got {tuple(maps.shape)}")
    n = class_ids.shape[0]
    if class_ids.ndim != 1 or rotations.shape != (n, 3, 3) or shifts_xyz.shape != (n, 3):
        raise ValueError(
            f"need class_ids (B,), rotations (B, 3, 3), shifts_xyz (B, 3); got {tuple(class_ids.shape)}, "
            f"{tuple(rotations.shape)}, {tuple(shifts_xyz.shape)}"
        )


def _posed_particles(
    maps: torch.Tensor, class_ids: torch.Tensor, rotations: torch.Tensor, shifts_xyz: torch.Tensor
) -> torch.Tensor:
    _check_batch(maps, class_ids, rotations, shifts_xyz)
    return rotate_volume(
        maps[class_ids.to(maps.device)],
        rotations.to(device=maps.device, dtype=maps.dtype),
        shifts_xyz.to(device=maps.device, dtype=maps.dtype),
    )


def _standardise(volumes: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit standard deviation per volume, in place."""
    variance, mean = torch.var_mean(volumes, dim=(-3, -2, -1), keepdim=True, correction=0)
    std = variance.sqrt_()
    return volumes.sub_(mean).div_(torch.where(std > 0, std, torch.ones_like(std)))


def _add_noise(
    signal: torch.Tensor, noises: list[torch.Tensor], snr: float, normalize: bool, paired: bool
) -> torch.Tensor:
    """``signal + λ·noise`` with ``λ`` per volume for the exact SNR; the noise tensors are overwritten."""
    results = []
    for noise in noises:
        volumes = noise.mul_(noise_scale_for_snr(signal, noise, snr)).add_(signal)
        results.append(_standardise(volumes) if normalize else volumes)
    return torch.stack(results) if paired else results[0]


def simulate_subtomogram_batch(
    maps: torch.Tensor,
    class_ids: torch.Tensor,
    rotations: torch.Tensor,
    shifts_xyz: torch.Tensor,
    *,
    snr: float | None,
    generator: torch.Generator | None = None,
    voxel_size_a: float = 10.0,
    tilt_range_deg: tuple[float, float] | None = (-60.0, 60.0),
    ctf: CtfConfig | None = None,
    paired: bool = False,
    normalize: bool = True,
    white_noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Subtomograms by the fast ``fourier`` model: pose, 3-D CTF × missing wedge, wedge-filtered noise.

    Pure torch, batched, on the device and dtype of ``maps``.

    Args:
        maps: ``(C, S, S, S)`` class maps (centre at ``S // 2``).
        class_ids: ``(B,)`` int64 0-based class of each subtomogram.
        rotations: ``(B, 3, 3)`` rotations ``A`` (the particle is the map rotated actively by ``A``).
        shifts_xyz: ``(B, 3)`` shifts ``t`` of the particle centre from the box centre, voxels ``(x, y, z)``.
        snr: ``var(signal) / var(noise)`` of each subtomogram over the box (None: noise-free).
        generator: random generator on the device of ``maps``.
        voxel_size_a: voxel size, Å (for the CTF).
        tilt_range_deg: missing-wedge tilt range ``(min, max)``, degrees (None: no wedge).
        ctf: CTF parameters (None or ``enabled=False``: no CTF, only the wedge).
        paired: also return a second, independent noise realisation of the same particles.
        normalize: scale each subtomogram to zero mean and unit standard deviation.
        white_noise: unit white Gaussian noise to use instead of drawing it from ``generator``:
            ``(B, S, S, S)``, or ``(2, B, S, S, S)`` when ``paired`` (lets a caller seed each particle).

    Returns:
        ``(B, S, S, S)``, or ``(2, B, S, S, S)`` when ``paired``.
    """
    particles = _posed_particles(maps, class_ids, rotations, shifts_xyz)
    size = maps.shape[-1]
    signal_transfer, noise_transfer = fourier_transfer(
        size,
        voxel_size_a=voxel_size_a,
        tilt_range_deg=tilt_range_deg,
        ctf=ctf,
        device=maps.device,
        dtype=maps.dtype,
    )
    shape = (size,) * 3
    signal = torch.fft.irfftn(torch.fft.rfftn(particles, dim=(-3, -2, -1)) * signal_transfer, s=shape)
    if snr is None:
        volumes = _standardise(signal) if normalize else signal
        return torch.stack((volumes, volumes.clone())) if paired else volumes
    noises = []
    for copy in range(2 if paired else 1):
        if white_noise is None:
            white = torch.randn(particles.shape, generator=generator, device=maps.device, dtype=maps.dtype)
        else:
            white = (white_noise[copy] if paired else white_noise).to(device=maps.device, dtype=maps.dtype)
        noises.append(torch.fft.irfftn(torch.fft.rfftn(white, dim=(-3, -2, -1)) * noise_transfer, s=shape))
    return _add_noise(signal, noises, snr, normalize, paired)


def simulate_subtomogram_batch_tiltseries(
    maps: torch.Tensor,
    class_ids: torch.Tensor,
    rotations: torch.Tensor,
    shifts_xyz: torch.Tensor,
    *,
    snr: float | None,
    generator: torch.Generator | None = None,
    voxel_size_a: float = 10.0,
    tilt: TiltSeriesConfig | None = None,
    ctf: CtfConfig | None = None,
    paired: bool = False,
    normalize: bool = True,
) -> torch.Tensor:
    """Subtomograms by the ``tiltseries`` model: project, per-tilt CTF and dose, per-tilt noise, WBP.

    The particle (potential in volts) is projected over the tilt series (V·Å), turned into contrast images
    (weak phase, per-tilt CTF with the acquisition's dose weighting, :mod:`aitom.simulate.noise`), white
    noise is added per tilt, and signal and noise are reconstructed separately by weighted back-projection,
    negated (protein bright) and combined at the requested SNR. Batched on the device of ``maps``.

    Args:
        maps, class_ids, rotations, shifts_xyz, snr, generator, voxel_size_a, paired, normalize: as in
            :func:`simulate_subtomogram_batch`.
        tilt: tilt range, step, order, dose (default :class:`TiltSeriesConfig`).
        ctf: microscope and defocus (None or ``enabled=False``: an ideal inverting detector).

    Returns:
        ``(B, S, S, S)``, or ``(2, B, S, S, S)`` when ``paired``.
    """
    tilt = TiltSeriesConfig() if tilt is None else tilt
    particles = _posed_particles(maps, class_ids, rotations, shifts_xyz)
    size = maps.shape[-1]
    angles = tilt_angles_deg(tilt.tilt_min_deg, tilt.tilt_max_deg, tilt.tilt_step_deg)
    use_ctf = ctf is not None and ctf.enabled
    ctf = ctf if use_ctf else CtfConfig()
    exposure = None
    if tilt.dose_weighting:
        exposure = pre_exposure_e_per_a2(angles, tilt.dose_per_tilt_e_per_a2, tilt.tilt_order)
        exposure = exposure + tilt.dose_per_tilt_e_per_a2 / 2
    defocus = torch.full((angles.numel(),), ctf.defocus_um, dtype=torch.float64)
    transfer = tilt_transfer(
        (size, size),
        pixel_size_a=voxel_size_a,
        defocus_u_um=defocus + ctf.astigmatism_um / 2,
        defocus_v_um=defocus - ctf.astigmatism_um / 2,
        astigmatism_angle_deg=ctf.astigmatism_angle_deg,
        voltage_kv=ctf.voltage_kv,
        cs_mm=ctf.cs_mm,
        amplitude_contrast=ctf.amplitude_contrast,
        b_factor_a2=ctf.b_factor_a2,
        exposure_e_per_a2=exposure,
        ctf=use_ctf,
        device=maps.device,
        dtype=maps.dtype,
    )
    projected = project_tilt_series(particles, angles) * voxel_size_a
    tilts = [-form_tilt_images(projected, transfer, voltage_kv=ctf.voltage_kv)]
    if snr is not None:
        for _ in range(2 if paired else 1):
            tilts.append(
                torch.randn(projected.shape, generator=generator, device=maps.device, dtype=maps.dtype)
            )
    signal, *noises = weighted_back_projection(torch.stack(tilts), angles, size, window=tilt.wbp_window)
    if snr is None:
        volumes = _standardise(signal) if normalize else signal
        return torch.stack((volumes, volumes.clone())) if paired else volumes
    return _add_noise(signal, noises, snr, normalize, paired)


def random_shifts(
    n: int,
    max_shift_voxels: float,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Shifts uniform in the ball of radius ``max_shift_voxels``: ``(n, 3)`` voxels ``(x, y, z)``."""
    direction = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    direction = direction / torch.linalg.vector_norm(direction, dim=1, keepdim=True).clamp(min=1e-12)
    radius = max_shift_voxels * torch.rand(n, 1, generator=generator, dtype=torch.float64) ** (1.0 / 3.0)
    return (direction * radius).to(dtype)


def simulate_subtomograms(
    recipe: SubtomogramRecipe,
    *,
    device: torch.device | str | None = None,
    progress: bool = False,
    class_maps: Sequence[torch.Tensor] | None = None,
) -> SimulatedSubtomograms:
    """Simulate ``particles_per_class`` subtomograms of every class of a recipe, in random order.

    Args:
        recipe: a :class:`aitom.simulate.recipe.SubtomogramRecipe`.
        device: where the batches are computed (default CPU); results are returned on CPU.
        progress: show a progress bar over the batches.
        class_maps: maps to use instead of the library's (one per ``recipe.classes``, ``(S, S, S)`` each).

    Returns:
        :class:`SimulatedSubtomograms`; the same recipe (seed included) gives the same result on a device.
    """
    device = torch.device("cpu" if device is None else device)
    size = recipe.box_size_voxels
    if class_maps is None:
        class_maps = [class_potential(name, recipe.voxel_size_a, box_size=size) for name in recipe.classes]
    names = [get_class(name).name for name in recipe.classes]  # a model file's class is named by its stem
    templates = dict(zip(names, (m.cpu() for m in class_maps)))
    maps = torch.stack([torch.as_tensor(m, dtype=torch.float32) for m in class_maps]).to(device)
    if maps.shape[1:] != (size, size, size):
        raise ValueError(f"class maps must be {size}³ like box_size_voxels, got {tuple(maps.shape[1:])}")

    pose_generator = torch.Generator().manual_seed(recipe.seed)
    n_classes = len(recipe.classes)
    n = recipe.particles_per_class * n_classes
    class_ids = torch.arange(n_classes).repeat_interleave(recipe.particles_per_class)
    class_ids = class_ids[torch.randperm(n, generator=pose_generator)]
    rotations = random_rotations(n, generator=pose_generator, dtype=torch.float64)
    shifts = random_shifts(n, recipe.max_shift_voxels, generator=pose_generator)
    noise_generator = torch.Generator(device=device).manual_seed(recipe.seed + 1)

    batch_function = (
        simulate_subtomogram_batch if recipe.method == "fourier" else simulate_subtomogram_batch_tiltseries
    )
    options = (
        {"tilt_range_deg": (recipe.tilt.tilt_min_deg, recipe.tilt.tilt_max_deg)}
        if recipe.method == "fourier"
        else {"tilt": recipe.tilt}
    )
    volumes, paired_volumes = [], []
    starts = range(0, n, recipe.batch_size)
    for start in tqdm(starts, desc="subtomograms", unit="batch", disable=not progress, leave=False):
        batch = slice(start, start + recipe.batch_size)
        result = batch_function(
            maps,
            class_ids[batch],
            rotations[batch].to(torch.float32),
            shifts[batch].to(torch.float32),
            snr=recipe.snr,
            generator=noise_generator,
            voxel_size_a=recipe.voxel_size_a,
            ctf=recipe.ctf,
            paired=recipe.paired,
            normalize=recipe.normalize,
            **options,
        )
        if recipe.paired:
            volumes.append(result[0].cpu())
            paired_volumes.append(result[1].cpu())
        else:
            volumes.append(result.cpu())

    angles_deg = torch.rad2deg(matrix_to_euler_zyz(rotations)).numpy()
    truth = pd.DataFrame(
        {
            "rlnClassNumber": (class_ids + 1).numpy(),
            CLASS_NAME_COLUMN: np.array([names[i] for i in class_ids.tolist()], dtype=object),
            "rlnAngleRot": angles_deg[:, 0],
            "rlnAngleTilt": angles_deg[:, 1],
            "rlnAnglePsi": angles_deg[:, 2],
            **{column: -shifts[:, axis].numpy() for axis, column in enumerate(ORIGIN_COLUMNS)},
        }
    )
    return SimulatedSubtomograms(
        volumes=torch.cat(volumes),
        truth=truth,
        templates=templates,
        voxel_size_a=recipe.voxel_size_a,
        paired_volumes=torch.cat(paired_volumes) if recipe.paired else None,
    )
