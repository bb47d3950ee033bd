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
from aitom.ops.augmentation import random_rotated_views, wedge_preserving_rotations
from aitom.ops.averaging import (
    AveragingResult,
    GoldStandardRefinement,
    align_to_reference_frame,
    gold_standard_refinement,
    half_set_averages,
    leave_one_out_averages,
    leave_one_out_scores,
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
    structural_correlations,
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
from aitom.ops.extraction import box_bounds, extract_subvolumes
from aitom.ops.faml import FamlResult, faml_average
from aitom.ops.filters import bandpass_filter, difference_of_gaussians, gaussian_filter3d, gaussian_kernel1d
from aitom.ops.handedness import (
    hand_check,
    known_pose_average,
    masked_correlation,
    mirror_volume,
    superpose_map,
)
from aitom.ops.open_set import (
    auroc,
    centralization_loss,
    cluster_purity,
    cosine_similarities,
    large_margin_cosine_logits,
    open_set_scores,
    soft_margin,
)
from aitom.ops.peaks import false_alarm_threshold, non_maximum_suppression, peak_local_max, robust_mean_std
from aitom.ops.pick_evaluation import evaluate_picks, match_picks, orientation_errors_deg, precision_recall_f1
from aitom.ops.pose_normalisation import pose_normalise
from aitom.ops.reconstruction import (
    RECONSTRUCTION_MODES,
    FourierSums,
    centre_contrast,
    finish_reconstruction,
    insert_for_reconstruction,
    insert_tilt_images,
    reconstruct_subtomogram,
)
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
    best_calibrated_template,
    calibrate_scores,
    match_template,
    match_templates,
    padded_rfftn,
    radial_power_spectrum,
    score_calibration,
    spectral_whitening_filter,
    template_filter_kernel,
    whitening_filter,
)
from aitom.ops.wedge_estimation import estimate_missing_wedge, wedge_angle_profile

__all__ = [
    "RECONSTRUCTION_MODES",
    "Alignment",
    "AveragingResult",
    "ClassificationResult",
    "FamlResult",
    "FourierSums",
    "GoldStandardRefinement",
    "TemplateFilter",
    "adjusted_rand_index",
    "align_subtomograms",
    "align_to_reference_frame",
    "anisotropic_diffusion",
    "anisotropic_diffusion_tiled",
    "auroc",
    "bandpass_filter",
    "best_calibrated_template",
    "box_bounds",
    "calibrate_scores",
    "centralization_loss",
    "centre_contrast",
    "classify_and_average",
    "cluster_purity",
    "constrained_correlation",
    "constrained_correlation_map",
    "cosine_similarities",
    "difference_of_gaussians",
    "diffusion_contrast_k",
    "diffusion_halo_voxels",
    "diffusion_tensor",
    "dog_pick",
    "dog_response",
    "estimate_missing_wedge",
    "evaluate_picks",
    "extract_subvolumes",
    "false_alarm_threshold",
    "faml_average",
    "finish_reconstruction",
    "gaussian_filter3d",
    "gaussian_kernel1d",
    "gold_standard_refinement",
    "half_set_averages",
    "hand_check",
    "insert_for_reconstruction",
    "insert_tilt_images",
    "kmeans",
    "known_pose_average",
    "large_margin_cosine_logits",
    "leave_one_out_averages",
    "leave_one_out_scores",
    "masked_correlation",
    "match_picks",
    "match_template",
    "match_templates",
    "mirror_volume",
    "non_maximum_suppression",
    "open_set_scores",
    "orientation_errors_deg",
    "padded_rfftn",
    "pair_correlations",
    "pca_features",
    "peak_local_max",
    "pose_normalise",
    "precision_recall_f1",
    "radial_power_spectrum",
    "random_rotated_views",
    "reconstruct_subtomogram",
    "reference_free_average",
    "refine_alignment",
    "robust_mean_std",
    "robust_pca",
    "rotational_search",
    "saliency_map",
    "saliency_pick",
    "score_calibration",
    "silhouette_score",
    "singular_value_threshold",
    "slic_supervoxels",
    "snr_from_cc",
    "snr_from_pairs",
    "soft_margin",
    "spectral_whitening_filter",
    "ssnr_from_pairs",
    "structural_correlations",
    "structure_tensor",
    "superpose_map",
    "supervoxel_features",
    "symmetric_eigen3",
    "template_filter_kernel",
    "translation_search",
    "wedge_angle_profile",
    "wedge_compensated_average",
    "wedge_preserving_rotations",
    "whitening_filter",
]
