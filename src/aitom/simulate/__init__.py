"""The simulator: atomic models → potentials → crowded packing → tilt series (CTF, dose, noise) → WBP.

Everything simulated is PROTEIN BRIGHT (positive density), like AITom's data, so pickers and averagers see
positive particles; recorded tilt images are protein dark, as a microscope records them.

* structures and the class library: :func:`class_potential`, :func:`available_classes`,
  :func:`class_radius_a`, :func:`describe_classes`, :func:`atoms_to_potential`, :func:`potential_from_file`;
* tilt series: :func:`tilt_angles_deg`, :func:`project_tilt_series`, :func:`weighted_back_projection`;
* image formation and noise: :func:`tilt_transfer`, :func:`form_tilt_images`, :func:`shot_noise`,
  :func:`noise_scale_for_snr`;
* crowding: :func:`pack_particles`;
* whole simulations from recipes (:func:`load_recipe`): :func:`simulate_tomogram`,
  :func:`simulate_subtomograms`, and the batched on-the-fly :func:`simulate_subtomogram_batch`.
"""

from __future__ import annotations

from aitom.simulate.library import (
    StructureClass,
    available_classes,
    class_atoms,
    class_box_size,
    class_potential,
    class_radius_a,
    default_cache_dir,
    describe_classes,
    get_class,
    helical_filament,
    ring_of_subunits,
)
from aitom.simulate.noise import (
    electrons_per_pixel,
    form_tilt_images,
    interaction_constant_rad_per_v_a,
    noise_scale_for_snr,
    shot_noise,
    tilt_transfer,
)
from aitom.simulate.packing import Packing, PackingWarning, pack_particles, pack_spheres
from aitom.simulate.recipe import (
    CtfConfig,
    IceConfig,
    SubtomogramRecipe,
    TiltSeriesConfig,
    TomogramRecipe,
    load_recipe,
    recipe_to_yaml,
)
from aitom.simulate.structures import atoms_to_potential, load_atoms, potential_from_file
from aitom.simulate.subtomograms import (
    ORIGIN_COLUMNS,
    SimulatedSubtomograms,
    fourier_transfer,
    random_shifts,
    simulate_subtomogram_batch,
    simulate_subtomogram_batch_tiltseries,
    simulate_subtomograms,
)
from aitom.simulate.tiltseries import (
    acquisition_order,
    back_project,
    pre_exposure_e_per_a2,
    project_tilt_series,
    ramp_filter,
    tilt_angle_weights,
    tilt_angles_deg,
    weighted_back_projection,
)
from aitom.simulate.tomogram import (
    CLASS_NAME_COLUMN,
    SimulatedTomogram,
    displaced_solvent_contrast,
    place_particles,
    protein_potential_v,
    simulate_tomogram,
)

__all__ = [
    "CLASS_NAME_COLUMN",
    "ORIGIN_COLUMNS",
    "CtfConfig",
    "IceConfig",
    "Packing",
    "PackingWarning",
    "SimulatedSubtomograms",
    "SimulatedTomogram",
    "StructureClass",
    "SubtomogramRecipe",
    "TiltSeriesConfig",
    "TomogramRecipe",
    "acquisition_order",
    "atoms_to_potential",
    "available_classes",
    "back_project",
    "class_atoms",
    "class_box_size",
    "class_potential",
    "class_radius_a",
    "default_cache_dir",
    "describe_classes",
    "displaced_solvent_contrast",
    "electrons_per_pixel",
    "form_tilt_images",
    "fourier_transfer",
    "get_class",
    "helical_filament",
    "interaction_constant_rad_per_v_a",
    "load_atoms",
    "load_recipe",
    "noise_scale_for_snr",
    "pack_particles",
    "pack_spheres",
    "place_particles",
    "potential_from_file",
    "pre_exposure_e_per_a2",
    "project_tilt_series",
    "protein_potential_v",
    "ramp_filter",
    "random_shifts",
    "recipe_to_yaml",
    "ring_of_subunits",
    "shot_noise",
    "simulate_subtomogram_batch",
    "simulate_subtomogram_batch_tiltseries",
    "simulate_subtomograms",
    "simulate_tomogram",
    "tilt_angle_weights",
    "tilt_angles_deg",
    "tilt_transfer",
    "weighted_back_projection",
]
