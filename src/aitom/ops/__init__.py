"""Pure functions of tensors: filters, diffusion, SNR and missing-wedge estimation, ...

Each function is batched over leading dims ``(..., Z, Y, X)`` where that makes sense, runs on the device and
dtype of its input, and validates its arguments (bad values from files or the command line raise
:class:`aitom.errors.InputError`). :mod:`aitom.modules` wraps them as ``nn.Module`` s.
"""

from __future__ import annotations

from aitom.ops.diffusion import (
    anisotropic_diffusion,
    anisotropic_diffusion_tiled,
    diffusion_contrast_k,
    diffusion_halo_voxels,
    diffusion_tensor,
    structure_tensor,
    symmetric_eigen3,
)
from aitom.ops.filters import bandpass_filter, difference_of_gaussians, gaussian_filter3d, gaussian_kernel1d
from aitom.ops.snr import pair_correlations, snr_from_cc, snr_from_pairs, ssnr_from_pairs
from aitom.ops.wedge_estimation import estimate_missing_wedge, wedge_angle_profile

__all__ = [
    "anisotropic_diffusion",
    "anisotropic_diffusion_tiled",
    "bandpass_filter",
    "difference_of_gaussians",
    "diffusion_contrast_k",
    "diffusion_halo_voxels",
    "diffusion_tensor",
    "estimate_missing_wedge",
    "gaussian_filter3d",
    "gaussian_kernel1d",
    "pair_correlations",
    "snr_from_cc",
    "snr_from_pairs",
    "ssnr_from_pairs",
    "structure_tensor",
    "symmetric_eigen3",
    "wedge_angle_profile",
]
