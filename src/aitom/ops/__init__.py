"""Pure functions of tensors: filters, diffusion, SNR and missing-wedge estimation, ...

Each function is batched over leading dims ``(..., Z, Y, X)`` where that makes sense, runs on the device and
dtype of its input, and validates its arguments (bad values from files or the command line raise
:class:`aitom.errors.InputError`). :mod:`aitom.modules` wraps them as ``nn.Module`` s.
"""

from __future__ import annotations

from aitom.ops.alignment import (
    Alignment,
    align_subtomograms,
    constrained_correlation,
    constrained_correlation_map,
    refine_alignment,
    rotational_search,
    translation_search,
)
from aitom.ops.averaging import (
    AveragingResult,
    align_to_reference_frame,
    half_set_fsc,
    reference_free_average,
    wedge_compensated_average,
)
from aitom.ops.clustering import (
    ClassificationResult,
    adjusted_rand_index,
    classify_and_average,
    kmeans,
    pca_features,
    silhouette_score,
)
from aitom.ops.diffusion import (
    anisotropic_diffusion,
    anisotropic_diffusion_tiled,
    diffusion_contrast_k,
    diffusion_halo_voxels,
    diffusion_tensor,
    structure_tensor,
    symmetric_eigen3,
)
from aitom.ops.dog_picking import dog_pick, dog_response
from aitom.ops.faml import FamlResult, faml_average
from aitom.ops.filters import bandpass_filter, difference_of_gaussians, gaussian_filter3d, gaussian_kernel1d
from aitom.ops.peaks import false_alarm_threshold, non_maximum_suppression, peak_local_max, robust_mean_std
from aitom.ops.pick_evaluation import evaluate_picks, match_picks, orientation_errors_deg, precision_recall_f1
from aitom.ops.saliency import (
    robust_pca,
    saliency_map,
    saliency_pick,
    singular_value_threshold,
    slic_supervoxels,
    supervoxel_features,
)
from aitom.ops.snr import pair_correlations, snr_from_cc, snr_from_pairs, ssnr_from_pairs
from aitom.ops.template_matching import (
    TemplateFilter,
    match_template,
    spectral_whitening_filter,
    template_filter_kernel,
)
from aitom.ops.wedge_estimation import estimate_missing_wedge, wedge_angle_profile

__all__ = [
    "Alignment",
    "AveragingResult",
    "ClassificationResult",
    "FamlResult",
    "TemplateFilter",
    "adjusted_rand_index",
    "align_subtomograms",
    "align_to_reference_frame",
    "anisotropic_diffusion",
    "anisotropic_diffusion_tiled",
    "bandpass_filter",
    "classify_and_average",
    "constrained_correlation",
    "constrained_correlation_map",
    "difference_of_gaussians",
    "diffusion_contrast_k",
    "diffusion_halo_voxels",
    "diffusion_tensor",
    "dog_pick",
    "dog_response",
    "estimate_missing_wedge",
    "evaluate_picks",
    "false_alarm_threshold",
    "faml_average",
    "gaussian_filter3d",
    "gaussian_kernel1d",
    "half_set_fsc",
    "kmeans",
    "match_picks",
    "match_template",
    "non_maximum_suppression",
    "orientation_errors_deg",
    "pair_correlations",
    "pca_features",
    "peak_local_max",
    "precision_recall_f1",
    "reference_free_average",
    "refine_alignment",
    "robust_mean_std",
    "robust_pca",
    "rotational_search",
    "saliency_map",
    "saliency_pick",
    "silhouette_score",
    "singular_value_threshold",
    "slic_supervoxels",
    "snr_from_cc",
    "snr_from_pairs",
    "spectral_whitening_filter",
    "ssnr_from_pairs",
    "structure_tensor",
    "supervoxel_features",
    "symmetric_eigen3",
    "template_filter_kernel",
    "translation_search",
    "wedge_angle_profile",
    "wedge_compensated_average",
]
