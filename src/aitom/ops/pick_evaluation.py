"""Scoring picks against ground truth: one-to-one matching within a distance, precision / recall / F1,
per class, and for template matching the fraction of orientations recovered.

Matching is optimal (``scipy.optimize.linear_sum_assignment`` on the distances, pairs farther than the
tolerance forbidden), so each true particle is found at most once and each pick counts once. Per-class
scores compare class names; pick classes named unlike every truth class are mapped to truth classes by
their matches (Hungarian algorithm on the counts of matched pairs).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from aitom.errors import InputError
from aitom.geometry import relion_angles_to_matrix
from aitom.geometry.symmetry import symmetric_angle_between
from aitom.io import table_angles_deg, table_coordinates

__all__ = ["evaluate_picks", "match_picks", "orientation_errors_deg", "precision_recall_f1"]

_FORBIDDEN = 1e12


def match_picks(
    picked_xyz: np.ndarray, truth_xyz: np.ndarray, tolerance_voxels: float
) -> tuple[np.ndarray, np.ndarray]:
    """Optimal one-to-one matching of picks to true positions within ``tolerance_voxels``.

    Args:
        picked_xyz: ``(P, 3)`` pick positions, voxels.
        truth_xyz: ``(T, 3)`` true positions, voxels.
        tolerance_voxels: largest distance of a match (inclusive), voxels, > 0.

    Returns:
        ``(pick_index, truth_index)``: matched pairs (equal-length int64 arrays), minimising the number of
        unmatched particles first and the total distance second.
    """
    if not tolerance_voxels > 0:
        raise InputError(f"distance tolerance must be > 0 voxels, got {tolerance_voxels}")
    picked = np.asarray(picked_xyz, dtype=np.float64).reshape(-1, 3)
    truth = np.asarray(truth_xyz, dtype=np.float64).reshape(-1, 3)
    empty = np.zeros(0, dtype=np.int64)
    if len(picked) == 0 or len(truth) == 0:
        return empty, empty.copy()
    distance = cdist(picked, truth)
    allowed = distance <= tolerance_voxels
    # A match is worth more than any total distance, so the matching is maximal first.
    cost = np.where(allowed, distance - (tolerance_voxels + 1.0) * max(len(picked), len(truth)), _FORBIDDEN)
    rows, columns = linear_sum_assignment(cost)
    keep = allowed[rows, columns]
    return rows[keep].astype(np.int64), columns[keep].astype(np.int64)


def precision_recall_f1(true_positives: int, n_picked: int, n_truth: int) -> dict[str, float]:
    """Precision, recall and F1 from counts (0 where undefined)."""
    precision = true_positives / n_picked if n_picked else 0.0
    recall = true_positives / n_truth if n_truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def orientation_errors_deg(
    picked_angles_deg: np.ndarray,
    truth_angles_deg: np.ndarray,
    symmetry_rotations: torch.Tensor | None = None,
) -> np.ndarray:
    """Geodesic angle (degrees) between the RELION rotations of matched picks and true particles, ``(N,)``.

    With ``symmetry_rotations`` (``(K, 3, 3)``, the template's symmetry in its own frame), the smallest angle
    over the equivalent orientations (:func:`aitom.geometry.symmetric_angle_between`).
    """
    picked = relion_angles_to_matrix(torch.as_tensor(np.asarray(picked_angles_deg), dtype=torch.float64))
    truth = relion_angles_to_matrix(torch.as_tensor(np.asarray(truth_angles_deg), dtype=torch.float64))
    symmetry = None if symmetry_rotations is None else symmetry_rotations.to(torch.float64)
    return np.rad2deg(symmetric_angle_between(picked, truth, symmetry).numpy()).reshape(-1)


def _class_labels(picks: pd.DataFrame, truth: pd.DataFrame) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Class labels (strings) of the picks and of the truth: names when both tables carry
    ``aitomClassName``, else ``rlnClassNumber``; None for a table without them."""
    if "aitomClassName" in picks.columns and "aitomClassName" in truth.columns:
        return picks["aitomClassName"].astype(str).to_numpy(), truth["aitomClassName"].astype(str).to_numpy()

    def numbers(table: pd.DataFrame) -> np.ndarray | None:
        if "rlnClassNumber" not in table.columns:
            return None
        return table["rlnClassNumber"].to_numpy(dtype=np.int64).astype(str)

    return numbers(picks), numbers(truth)


def _label_order(label: str) -> tuple[bool, int, str]:
    return (not label.isdigit(), int(label) if label.isdigit() else 0, label)


def _class_mapping(
    pick_labels: np.ndarray, truth_labels: np.ndarray, pick_index: np.ndarray, truth_index: np.ndarray
) -> dict[str, str] | None:
    """Pick class → truth class from the data, when no pick class is named like a truth class.

    Args:
        pick_labels: ``(P,)`` class label of each pick.
        truth_labels: ``(T,)`` class label of each true particle.
        pick_index, truth_index: ``(M,)`` the overall matched pairs (:func:`match_picks`).

    Returns:
        None when a pick label occurs among the truth labels, or either table has no rows. Otherwise the
        assignment (Hungarian algorithm, one truth class per pick class at most) that maximises the number
        of matched pairs whose pick class is mapped to their true particle's class; pick classes assigned
        no matched pair are left out (unmapped).
    """
    pick_classes, pick_rows = np.unique(pick_labels, return_inverse=True)
    truth_classes, truth_columns = np.unique(truth_labels, return_inverse=True)
    if not len(pick_classes) or not len(truth_classes) or set(pick_classes) & set(truth_classes):
        return None
    counts = np.zeros((len(pick_classes), len(truth_classes)), dtype=np.int64)
    np.add.at(counts, (pick_rows[pick_index], truth_columns[truth_index]), 1)
    rows, columns = linear_sum_assignment(counts, maximize=True)
    mapping = {str(pick_classes[r]): str(truth_classes[c]) for r, c in zip(rows, columns) if counts[r, c]}
    return {label: mapping[label] for label in sorted(mapping, key=_label_order)}


def evaluate_picks(
    picks: pd.DataFrame,
    truth: pd.DataFrame,
    tolerance_voxels: float,
    *,
    angle_tolerance_deg: float = 15.0,
    symmetry: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, object]:
    """Score a pick table against a ground-truth table (both RELION STAR tables, coordinates in voxels).

    Overall scores match every pick with every true particle. Per class: classes are ``aitomClassName``
    when both tables carry it (template matching writes the template's file name, the simulator the class
    name, so the template order does not matter), otherwise ``rlnClassNumber``. When the picks carry classes,
    picks of class ``c`` are matched with true particles of class ``c`` (precision, recall, F1); otherwise the
    overall matching is used and only the recall of each class is defined. When both tables carry angles,
    ``orientation_fraction`` is the fraction of matched picks whose rotation lies within
    ``angle_tolerance_deg`` of the truth (the particle is the template rotated by the RELION matrix of its
    angles, as template matching writes them). Classed picks are compared only with true particles of their
    own class: the orientation of a template fitted to another molecule means nothing.

    When both tables carry classes but no pick class is named like a truth class (templates named after
    their atomic model, ``3j9i``, against the simulator's ``proteasome_20s``), the per-class scores would all
    be 0: each pick class is then mapped to a truth class from the data instead. Over the overall matching,
    the number of picks of class ``p`` matched to true particles of class ``t`` is counted, and the
    Hungarian algorithm assigns at most one truth class to each pick class (and the reverse), maximising the
    matches mapped; a pick class with no matched pick in its assignment stays unmapped (scored under its
    own name, with no true particles). The per-class scores then use the mapped pick labels. When the
    names overlap, even partly, they are compared by name as they are.

    Args:
        picks, truth: STAR tables.
        tolerance_voxels: largest distance of a match, voxels.
        angle_tolerance_deg: orientation tolerance, degrees.
        symmetry: class label (as in ``per_class``) → ``(K, 3, 3)`` symmetry rotations of that class's
            template (e.g. :func:`aitom.simulate.library.class_symmetry_rotations`); orientations of those
            classes are compared up to their symmetry. Classes not given: no symmetry.

    Returns:
        JSON-ready dict: ``tolerance_voxels``, ``n_picked``, ``n_truth``, ``true_positives``, ``precision``,
        ``recall``, ``f1``, ``per_class`` ({class: {...}}), ``class_mapping`` ({pick class: truth class},
        the mapped pick classes only) when the pick and truth class names are disjoint, and
        ``orientation_fraction``, ``median_orientation_error_deg`` and ``orientations_compared`` when
        angles are present.
    """
    picked_xyz, truth_xyz = table_coordinates(picks), table_coordinates(truth)
    pick_index, truth_index = match_picks(picked_xyz, truth_xyz, tolerance_voxels)
    result: dict[str, object] = {
        "tolerance_voxels": float(tolerance_voxels),
        "n_picked": len(picked_xyz),
        "n_truth": len(truth_xyz),
        "true_positives": len(pick_index),
        **precision_recall_f1(len(pick_index), len(picked_xyz), len(truth_xyz)),
    }
    pick_labels, truth_labels = _class_labels(picks, truth)
    if pick_labels is not None and truth_labels is not None:
        mapping = _class_mapping(pick_labels, truth_labels, pick_index, truth_index)
        if mapping is not None:
            result["class_mapping"] = mapping
            pick_labels = np.array([mapping.get(label, label) for label in pick_labels.tolist()], dtype=str)
    # matched pairs whose orientations are compared, and the class of each
    pairs: list[tuple[np.ndarray, np.ndarray, str | None]] = []
    if truth_labels is not None:
        per_class: dict[str, dict[str, float]] = {}
        labels = set(truth_labels.tolist()) | set([] if pick_labels is None else pick_labels.tolist())
        for label in sorted(labels, key=_label_order):
            of_class = truth_labels == label
            if pick_labels is None:
                found = of_class[truth_index]
                per_class[label] = {
                    "n_truth": int(of_class.sum()),
                    "recall": int(found.sum()) / max(1, of_class.sum()),
                }
                pairs.append((pick_index[found], truth_index[found], label))
            else:
                chosen = pick_labels == label
                rows, columns = match_picks(picked_xyz[chosen], truth_xyz[of_class], tolerance_voxels)
                scores = precision_recall_f1(len(rows), int(chosen.sum()), int(of_class.sum()))
                per_class[label] = {"n_picked": int(chosen.sum()), "n_truth": int(of_class.sum()), **scores}
                pairs.append((np.flatnonzero(chosen)[rows], np.flatnonzero(of_class)[columns], label))
        result["per_class"] = per_class
    else:
        pairs.append((pick_index, truth_index, None))
    angle_columns = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
    if all(c in picks.columns and c in truth.columns for c in angle_columns):
        picked_angles, truth_angles = table_angles_deg(picks), table_angles_deg(truth)
        errors = [
            orientation_errors_deg(
                picked_angles[rows], truth_angles[columns], None if symmetry is None else symmetry.get(label)
            )
            for rows, columns, label in pairs
            if len(rows)
        ]
        if errors:
            compared = np.concatenate(errors)
            result["orientation_fraction"] = float(np.mean(compared <= angle_tolerance_deg))
            result["median_orientation_error_deg"] = float(np.median(compared))
            result["orientations_compared"] = len(compared)
    return result
