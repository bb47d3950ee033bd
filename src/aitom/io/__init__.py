"""File input and output: MRC volumes, STAR particle tables, slice montages, IMOD point lists.

Every writer is atomic (temporary file + rename, see :func:`atomic_output`) and refuses to replace an
existing file unless asked; every reader turns a bad file into a one-line :class:`aitom.errors.InputError`.
"""

from aitom.io.atomic import atomic_output, check_output_path
from aitom.io.imod import write_imod_points
from aitom.io.memory import physical_memory_bytes
from aitom.io.montage import save_fsc_plot, save_montage, slice_positions
from aitom.io.mrc import (
    HeaderWarning,
    VolumeHeader,
    central_crop,
    open_volume_mmap,
    read_stack,
    read_volume,
    voxels_are_cubic,
    write_volume,
)
from aitom.io.relion5 import (
    TiltSeriesGeometry,
    centered_angstrom_to_voxels,
    check_particles_against_tomograms,
    particle_positions_centered_a,
    read_optimisation_set,
    read_relion5_particles,
    read_tomograms_star,
    relion5_optics_table,
    relion5_particles_table,
    voxels_to_centered_angstrom,
    write_relion5_particles,
)
from aitom.io.star import (
    ANGLE_COLUMNS,
    COORDINATE_COLUMNS,
    particles_table,
    read_particles,
    table_angles_deg,
    table_coordinates,
    write_particles,
)

__all__ = [
    "ANGLE_COLUMNS",
    "COORDINATE_COLUMNS",
    "HeaderWarning",
    "TiltSeriesGeometry",
    "VolumeHeader",
    "atomic_output",
    "centered_angstrom_to_voxels",
    "central_crop",
    "check_output_path",
    "check_particles_against_tomograms",
    "open_volume_mmap",
    "particle_positions_centered_a",
    "particles_table",
    "physical_memory_bytes",
    "read_optimisation_set",
    "read_particles",
    "read_relion5_particles",
    "read_stack",
    "read_tomograms_star",
    "read_volume",
    "relion5_optics_table",
    "relion5_particles_table",
    "save_fsc_plot",
    "save_montage",
    "slice_positions",
    "table_angles_deg",
    "table_coordinates",
    "voxels_are_cubic",
    "voxels_to_centered_angstrom",
    "write_imod_points",
    "write_particles",
    "write_relion5_particles",
    "write_volume",
]
