"""Crowded tomograms with ground truth: packed particles in ice → tilt series → CTF, dose, noise → WBP.

The pipeline of :func:`simulate_tomogram` (SHREC'19/'20-like data, AITom simulator of Pei et al. 2016 with a
physical image-formation model):

1. class maps: electrostatic potentials (volts) of real atomic models, :func:`aitom.simulate.class_potential`;
2. packing: non-overlapping bounding spheres in the ice slab, uniform random orientations
   (:func:`aitom.simulate.packing.pack_particles`); a particle is its class map rotated actively by the
   rotation ``A`` of its Euler angles (RELION convention) and centred at its position;
3. ice: a slab of constant potential (infinite laterally, so it enters every tilt image as the constant
   ``potential · thickness / cos α``) with a smooth random component; each particle displaces the ice it
   occupies (its contrast is protein minus water, with the occupancy ``clamp(V / V_protein, 0, 1)`` and
   ``V_protein`` the mean potential of bulk protein of that class at 1.35 g/cm³);
4. tilt series: line integrals (V·Å), per-tilt CTF (random defocus offsets, astigmatism), dose weighting
   by the exposure accumulated in the acquisition order, intensity contrast (weak phase; protein dark, as
   recorded): :mod:`aitom.simulate.tiltseries`, :mod:`aitom.simulate.noise`;
5. noise: ``snr`` (white noise per tilt, scaled so that the final tomogram has the requested
   ``var(signal) / var(noise)`` over the whole volume), ``dose`` (Gaussian-approximated shot noise of the
   physical electron dose) or ``none``;
6. reconstruction: weighted back-projection of the signal and of the noise separately (exact, the
   reconstruction is linear), so the missing wedge comes from the tilt geometry;
7. output: the tomogram NEGATED to PROTEIN BRIGHT (positive density, like AITom, so pickers and averagers see
   positive particles), then normalised to zero mean and unit standard deviation.

Ground truth: ``rlnCoordinateX/Y/Z`` (voxels, sub-voxel precision), ``rlnAngleRot/Tilt/Psi`` (degrees),
``rlnClassNumber`` (1-based, in the order of ``recipe.classes``) and ``aitomClassName``.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from aitom.fourier import lowpass
from aitom.geometry import rotate_volume
from aitom.io import particles_table
from aitom.simulate.library import class_atoms, class_potential, class_radius_a, get_class
from aitom.simulate.noise import (
    electrons_per_pixel,
    form_tilt_images,
    noise_scale_for_snr,
    shot_noise,
    tilt_transfer,
)
from aitom.simulate.packing import Packing, pack_particles
from aitom.simulate.recipe import TomogramRecipe
from aitom.simulate.structures import atom_potential_integrals, atomic_masses_da
from aitom.simulate.tiltseries import (
    pre_exposure_e_per_a2,
    project_tilt_series,
    tilt_angles_deg,
    weighted_back_projection,
)

__all__ = [
    "CLASS_NAME_COLUMN",
    "SimulatedTomogram",
    "displaced_solvent_contrast",
    "place_particles",
    "protein_potential_v",
    "simulate_tomogram",
]

#: ground-truth column holding each particle's class name
CLASS_NAME_COLUMN = "aitomClassName"
#: density of protein, Da/Å³ (1.35 g/cm³)
_PROTEIN_DENSITY_DA_PER_A3 = 1.35 * 0.602214
#: volumes above this many voxels get progress bars by default
_PROGRESS_VOXELS = 1 << 24


@dataclasses.dataclass
class SimulatedTomogram:
    """A simulated tomogram and everything needed to evaluate methods on it.

    Attributes:
        tomogram: ``(Z, Y, X)`` float32 reconstruction, protein bright, zero mean, unit standard deviation.
        voxel_size_a: voxel size, Å.
        truth: one row per particle: ``rlnCoordinateX/Y/Z`` (voxels), ``rlnAngleRot/Tilt/Psi`` (degrees),
            ``rlnClassNumber`` (1-based), ``aitomClassName``.
        templates: class name → ``(S, S, S)`` potential map (volts), centre of mass at voxel ``S // 2``.
        tilt_series: ``(n, Y, X)`` recorded tilt images (intensity contrast with noise; protein dark).
        tilt_angles_deg: ``(n,)`` tilt angles, degrees.
        clean: ``(Z, Y, X)`` noise-free potential (volts): particles in the ice slab.
        snr: ``var(signal) / var(noise)`` of the tomogram over the whole volume (``inf`` without noise).
    """

    tomogram: torch.Tensor
    voxel_size_a: float
    truth: pd.DataFrame
    templates: dict[str, torch.Tensor]
    tilt_series: torch.Tensor
    tilt_angles_deg: torch.Tensor
    clean: torch.Tensor
    snr: float


@functools.cache
def protein_potential_v(name: str) -> float:
    """Mean potential (volts) of the bulk of a class's protein: its atoms' potential integrals over its
    volume at 1.35 g/cm³ (≈ 7 V for the heavy-atom maps of the library)."""
    _, atomic_numbers = class_atoms(name)
    volume_a3 = atomic_masses_da(atomic_numbers).sum() / _PROTEIN_DENSITY_DA_PER_A3
    return float(atom_potential_integrals(atomic_numbers).sum() / volume_a3)


def displaced_solvent_contrast(
    potential_v: torch.Tensor, protein_potential_v: float, solvent_potential_v: float
) -> torch.Tensor:
    """Potential of a particle relative to the solvent it displaces.

    ``V − V_solvent · clamp(V / V_protein, 0, 1)``: a voxel is occupied by protein in proportion to its
    potential, up to fully occupied at the bulk protein potential.

    Args:
        potential_v: ``(...)`` particle potential in vacuum, volts.
        protein_potential_v: bulk protein potential, volts (:func:`protein_potential_v`).
        solvent_potential_v: mean potential of the solvent (ice), volts.
    """
    occupancy = (potential_v / protein_potential_v).clamp(0.0, 1.0)
    return potential_v - solvent_potential_v * occupancy


def place_particles(
    volume: torch.Tensor,
    maps: list[torch.Tensor] | tuple[torch.Tensor, ...],
    positions_xyz: torch.Tensor | np.ndarray,
    class_ids: torch.Tensor | np.ndarray,
    rotations: torch.Tensor | np.ndarray,
    *,
    batch_size: int = 64,
    progress: bool = False,
) -> torch.Tensor:
    """Add rotated copies of class maps into a volume, in place.

    Particle ``i`` is ``maps[class_ids[i]]`` rotated actively by ``rotations[i]`` about its box centre
    (trilinear, :func:`aitom.geometry.rotate_volume`), with the box centre ``S // 2`` put at
    ``positions_xyz[i]`` (sub-voxel positions through the rotation's shift). Parts outside the volume are
    cut off.

    Args:
        volume: ``(Z, Y, X)`` tensor, modified in place.
        maps: ``C`` cubic maps ``(S_c, S_c, S_c)``.
        positions_xyz: ``(N, 3)`` voxel coordinates ``(x, y, z)``.
        class_ids: ``(N,)`` 0-based indices into ``maps``.
        rotations: ``(N, 3, 3)`` rotation matrices (RELION's ``A``).
        batch_size: particles rotated at once.
        progress: show a progress bar over the particles.

    Returns:
        ``volume``.
    """
    device, dtype = volume.device, volume.dtype
    positions = torch.as_tensor(positions_xyz, dtype=torch.float64).reshape(-1, 3).cpu()
    ids = torch.as_tensor(class_ids, dtype=torch.int64).reshape(-1).cpu()
    matrices = torch.as_tensor(rotations, dtype=torch.float64).reshape(-1, 3, 3).cpu()
    centres = torch.round(positions)
    fractions = positions - centres
    shape_xyz = torch.tensor(volume.shape[::-1])
    bar = tqdm(
        total=ids.numel(), desc="placing particles", unit="particle", disable=not progress, leave=False
    )
    for class_id, reference in enumerate(maps):
        members = torch.nonzero(ids == class_id).flatten()
        size = reference.shape[-1]
        reference = reference.to(device=device, dtype=dtype)
        for start in range(0, members.numel(), batch_size):
            batch = members[start : start + batch_size]
            rotated = rotate_volume(
                reference.expand(batch.numel(), size, size, size),
                matrices[batch].to(device=device, dtype=dtype),
                fractions[batch].to(device=device, dtype=dtype),
            )
            corners = centres[batch].to(torch.int64) - size // 2
            for particle, corner in zip(rotated, corners):
                low = corner.clamp(min=0)
                high = torch.minimum(corner + size, shape_xyz)
                if bool((high <= low).any()):
                    continue
                (x0, y0, z0), (x1, y1, z1) = low.tolist(), high.tolist()
                (a0, b0, c0) = (low - corner).tolist()
                volume[z0:z1, y0:y1, x0:x1] += particle[
                    c0 : c0 + z1 - z0, b0 : b0 + y1 - y0, a0 : a0 + x1 - x0
                ]
            bar.update(batch.numel())
    bar.close()
    return volume


def _seeds(seed: int, n: int) -> list[int]:
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(n, dtype=np.uint32)]


def _ice_slab(recipe: TomogramRecipe) -> tuple[int, int]:
    size_z = recipe.shape_zyx_voxels[0]
    thickness = recipe.ice.thickness_voxels if recipe.ice.enabled and recipe.ice.thickness_voxels else size_z
    start = (size_z - thickness) // 2
    return start, thickness


def simulate_tomogram(
    recipe: TomogramRecipe, *, device: torch.device | str | None = None, progress: bool | None = None
) -> SimulatedTomogram:
    """Simulate a crowded tomogram with ground truth (pipeline in the module docstring).

    Args:
        recipe: a :class:`aitom.simulate.recipe.TomogramRecipe` (e.g. from :func:`load_recipe`).
        device: where the volumes are computed (default CPU); results are returned on CPU.
        progress: progress bars (default: for volumes above 16 M voxels).

    Returns:
        :class:`SimulatedTomogram`; the same recipe (seed included) gives the same result on a device.
    """
    device = torch.device("cpu" if device is None else device)
    size_z, size_y, size_x = recipe.shape_zyx_voxels
    if progress is None:
        progress = size_z * size_y * size_x > _PROGRESS_VOXELS
    packing_seed, ice_seed, defocus_seed, noise_seed = _seeds(recipe.seed, 4)
    voxel = recipe.voxel_size_a
    ice = recipe.ice
    ice_potential = ice.potential_v if ice.enabled else 0.0

    maps = [class_potential(name, voxel) for name in recipe.classes]
    contrasts = [
        displaced_solvent_contrast(potential, protein_potential_v(name), ice_potential)
        if ice.enabled and ice.solvent_displacement
        else potential
        for name, potential in zip(recipe.classes, maps)
    ]
    names = [get_class(name).name for name in recipe.classes]  # a model file's class is named by its stem
    templates = dict(zip(names, maps))
    slab_start, slab_thickness = _ice_slab(recipe)
    packing = pack_particles(
        (slab_thickness, size_y, size_x),
        [class_radius_a(name) / voxel for name in recipe.classes],
        number=recipe.number_of_particles,
        crowding_fraction=recipe.crowding_fraction,
        margin_voxels=recipe.margin_voxels,
        seed=packing_seed,
    )
    positions = packing.positions_xyz + np.array([0.0, 0.0, slab_start])
    packing = dataclasses.replace(packing, positions_xyz=positions)

    volume = torch.zeros((size_z, size_y, size_x), device=device, dtype=torch.float32)
    place_particles(
        volume, contrasts, packing.positions_xyz, packing.class_ids, packing.rotations, progress=progress
    )
    if ice.enabled and ice.fluctuation_v > 0:
        generator = torch.Generator(device=device).manual_seed(ice_seed)
        white = torch.randn((slab_thickness, size_y, size_x), generator=generator, device=device)
        resolution_a = ice.fluctuation_resolution_a or 3 * voxel
        smooth = lowpass(white, resolution_a, voxel)
        volume[slab_start : slab_start + slab_thickness] += ice.fluctuation_v * smooth / smooth.std()

    angles = tilt_angles_deg(recipe.tilt.tilt_min_deg, recipe.tilt.tilt_max_deg, recipe.tilt.tilt_step_deg)
    projected = project_tilt_series(volume, angles, progress=progress) * voxel  # V·Å
    slab_projection = ice_potential * slab_thickness * voxel / torch.cos(torch.deg2rad(angles))
    projected += slab_projection.to(device=device, dtype=projected.dtype)[:, None, None]
    volume[slab_start : slab_start + slab_thickness] += ice_potential  # the clean volume: absolute potential

    contrast = form_tilt_images(
        projected, _transfer(recipe, angles, defocus_seed, device), voltage_kv=recipe.ctf.voltage_kv
    )
    del projected
    generator = torch.Generator(device=device).manual_seed(noise_seed)
    if recipe.noise_model == "dose":
        count = electrons_per_pixel(recipe.tilt.dose_per_tilt_e_per_a2, voxel)
        noise = shot_noise(contrast, count, generator=generator)
    elif recipe.noise_model == "snr":
        noise = torch.randn(contrast.shape, generator=generator, device=device, dtype=contrast.dtype)
    else:
        noise = torch.zeros_like(contrast)

    # negated: the reconstruction of protein-dark images is made protein bright
    signal, noise_part = weighted_back_projection(
        -torch.stack((contrast, noise)), angles, size_z, window=recipe.tilt.wbp_window, progress=progress
    )
    if recipe.noise_model == "snr":
        scale = noise_scale_for_snr(signal, noise_part, recipe.snr)
    else:
        scale = torch.ones((), device=device)
    noise_variance = float((scale * noise_part).var())
    snr = float(signal.var()) / noise_variance if noise_variance > 0 else math.inf
    tomogram = signal.add_(noise_part.mul_(scale)).clone()  # own storage: frees the noise part
    del signal, noise_part
    std, mean = torch.std_mean(tomogram)
    tomogram.sub_(mean).div_(std if std > 0 else 1.0)

    return SimulatedTomogram(
        tomogram=tomogram.cpu(),
        voxel_size_a=voxel,
        truth=_truth_table(packing, names),
        templates=templates,
        tilt_series=(contrast + scale * noise).cpu(),
        tilt_angles_deg=angles.to(torch.float32),
        clean=volume.cpu(),
        snr=snr,
    )


def _transfer(recipe: TomogramRecipe, angles: torch.Tensor, seed: int, device: torch.device) -> torch.Tensor:
    ctf = recipe.ctf
    size_y, size_x = recipe.shape_zyx_voxels[1:]
    offsets = np.random.default_rng(seed).normal(0.0, ctf.defocus_spread_um, angles.numel())
    defocus = torch.as_tensor(ctf.defocus_um + offsets, dtype=torch.float64)
    exposure = None
    if recipe.tilt.dose_weighting:
        dose = recipe.tilt.dose_per_tilt_e_per_a2
        exposure = pre_exposure_e_per_a2(angles, dose, recipe.tilt.tilt_order) + dose / 2
    return tilt_transfer(
        (size_y, size_x),
        pixel_size_a=recipe.voxel_size_a,
        defocus_u_um=defocus + ctf.astigmatism_um / 2,
        defocus_v_um=defocus - ctf.astigmatism_um / 2,
        astigmatism_angle_deg=ctf.astigmatism_angle_deg,
        voltage_kv=ctf.voltage_kv,
        cs_mm=ctf.cs_mm,
        amplitude_contrast=ctf.amplitude_contrast,
        b_factor_a2=ctf.b_factor_a2,
        exposure_e_per_a2=exposure,
        ctf=ctf.enabled,
        device=device,
    )


def _truth_table(packing: Packing, classes: list[str]) -> pd.DataFrame:
    return particles_table(
        packing.positions_xyz,
        angles_deg=np.rad2deg(packing.angles_rad),
        class_number=packing.class_ids + 1,
        extra={CLASS_NAME_COLUMN: np.array([classes[i] for i in packing.class_ids], dtype=object)},
    )
