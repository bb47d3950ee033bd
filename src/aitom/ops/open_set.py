"""Open-set recognition maths: large-margin cosine logits, the centralisation loss, known-vs-unknown scores.

The loss follows AITom's open-set recognition of subtomograms (Du, Zeng, Xu et al., "soft large margin
centralized cosine loss"), built from CosFace's large margin cosine loss (LMCL, Wang et al. 2018) and a centre
loss (Wen et al. 2016). With L2-normalised features ``f̂`` and class weight vectors ``Ŵ_j``::

    logit_j = s · (cos θ_j − m · [j = y]),   cos θ_j = f̂ · Ŵ_j
    loss    = cross_entropy(logits, y) + λ · mean_i ‖f̂_i − ĉ_{y_i}‖²

What is implemented here, exactly (the paper's text was not available to check its details):

* :func:`large_margin_cosine_logits` is CosFace's logit with an additive cosine margin ``m`` on the true
  class only. The margin is "soft" in that the task ramps it linearly from 0 to ``m`` over the first
  training steps (:func:`soft_margin`), the annealing L-Softmax and SphereFace use to let the features
  form before the margin bites; at and after the end of the ramp it is CosFace's hard margin.
* :func:`centralization_loss` is a centre loss on the unit hypersphere: features and centres are both
  L2-normalised, so ``‖f̂ − ĉ‖² = 2 (1 − cos(f, c))``. The task keeps the centres as running means of the
  normalised features of each class (no gradient flows into them).
* :func:`open_set_scores` is the largest cosine similarity of a feature to any known-class centre: high for
  known classes, low for items of classes never seen in training.

Also :func:`auroc` (rank-based, ties counted one half) and :func:`cluster_purity` to evaluate it.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "auroc",
    "centralization_loss",
    "cluster_purity",
    "cosine_similarities",
    "large_margin_cosine_logits",
    "open_set_scores",
    "soft_margin",
]


def _check_features(features: torch.Tensor, vectors: torch.Tensor, name: str) -> None:
    if features.ndim != 2 or vectors.ndim != 2:
        raise ValueError(
            f"features must be (N, D) and {name} (C, D), "
            f"got {tuple(features.shape)} and {tuple(vectors.shape)}"
        )
    if features.shape[1] != vectors.shape[1]:
        raise ValueError(f"feature dimension {features.shape[1]} != {name} dimension {vectors.shape[1]}")


def _check_labels(labels: torch.Tensor, n_items: int, n_classes: int) -> None:
    if labels.shape != (n_items,):
        raise ValueError(f"labels must be ({n_items},), got {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise ValueError(
            f"labels must be in [0, {n_classes - 1}], got [{int(labels.min())}, {int(labels.max())}]"
        )


def cosine_similarities(features: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """``(N, C)`` cosines between ``(N, D)`` features and ``(C, D)`` vectors (both L2-normalised first)."""
    _check_features(features, vectors, "vectors")
    unit_features = torch.nn.functional.normalize(features, dim=1)
    unit_vectors = torch.nn.functional.normalize(vectors.to(features), dim=1)
    return unit_features @ unit_vectors.T


def large_margin_cosine_logits(
    features: torch.Tensor,
    weights: torch.Tensor,
    labels: torch.Tensor | None,
    scale: float,
    margin: float,
) -> torch.Tensor:
    """CosFace logits ``s · (cos θ_j − m · [j = y])`` of features against class weight vectors.

    Args:
        features: ``(N, D)`` features (any norm; normalised here).
        weights: ``(C, D)`` class weight vectors (any norm; normalised here).
        labels: ``(N,)`` true classes in ``[0, C)``; None gives the margin-free logits ``s · cos θ_j``
            (what inference uses).
        scale: ``s``, the norm the normalised features are rescaled to (CosFace uses 30 to 64).
        margin: ``m``, the cosine margin subtracted from the true class (CosFace uses 0.25 to 0.45).

    Returns:
        ``(N, C)`` logits for ``cross_entropy``.
    """
    cosines = cosine_similarities(features, weights)
    if labels is None or margin == 0:
        return scale * cosines
    _check_labels(labels, features.shape[0], weights.shape[0])
    one_hot = torch.nn.functional.one_hot(labels.long(), weights.shape[0]).to(cosines)
    return scale * (cosines - margin * one_hot)


def soft_margin(step: int, margin: float, warmup_steps: int) -> float:
    """The margin at training step ``step``: ``m · min(1, step / warmup_steps)`` (``m`` when no warm-up)."""
    if warmup_steps <= 0:
        return margin
    return margin * min(1.0, max(step, 0) / warmup_steps)


def centralization_loss(features: torch.Tensor, labels: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Mean squared distance ``mean_i ‖f̂_i − ĉ_{y_i}‖²`` of unit features to their unit class centres.

    Equals ``mean_i 2 (1 − cos(f_i, c_{y_i}))``; in ``[0, 4]``.

    Args:
        features: ``(N, D)`` features (normalised here).
        labels: ``(N,)`` classes in ``[0, C)``.
        centres: ``(C, D)`` class centres (normalised here; pass them detached to keep them fixed).

    Returns:
        scalar loss (0 for an empty batch).
    """
    _check_features(features, centres, "centres")
    _check_labels(labels, features.shape[0], centres.shape[0])
    if features.shape[0] == 0:
        return features.sum() * 0
    unit_features = torch.nn.functional.normalize(features, dim=1)
    unit_centres = torch.nn.functional.normalize(centres.to(features), dim=1)
    return (unit_features - unit_centres[labels.long()]).square().sum(dim=1).mean()


def open_set_scores(features: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Known-class score ``max_c cos(f, c)`` of each feature: ``(N, D)``, ``(C, D)`` -> ``(N,)`` in [-1, 1].

    High for items of a class seen in training, low for items far (in angle) from every known class.
    """
    return cosine_similarities(features, centres).max(dim=1).values


def auroc(scores: torch.Tensor | np.ndarray, is_known: torch.Tensor | np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` separating known (positive) from unknown items.

    The Mann-Whitney statistic: the probability that a random known item scores higher than a random unknown
    one, ties counting one half; computed from mid-ranks, ``(R_known − n_k (n_k + 1) / 2) / (n_k n_u)``.

    Args:
        scores: ``(N,)`` scores, higher meaning "more likely known".
        is_known: ``(N,)`` booleans.

    Returns:
        AUROC in [0, 1] (1: every known item outscores every unknown one; 0.5: no separation).
    """
    values = np.asarray(torch.as_tensor(scores).detach().cpu(), dtype=np.float64).ravel()
    known = np.asarray(torch.as_tensor(is_known).detach().cpu(), dtype=bool).ravel()
    if values.shape != known.shape:
        raise ValueError(f"scores ({values.shape[0]}) and is_known ({known.shape[0]}) differ in length")
    n_known = int(known.sum())
    n_unknown = known.size - n_known
    if n_known == 0 or n_unknown == 0:
        raise ValueError(f"AUROC needs known and unknown items, got {n_known} known and {n_unknown} unknown")
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    ranks = np.empty(values.size, dtype=np.float64)
    # mid-ranks: every run of equal scores gets the mean of the 1-based ranks it spans
    _, first, counts = np.unique(sorted_values, return_index=True, return_counts=True)
    mid_ranks = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(mid_ranks, counts)
    rank_sum = ranks[known].sum()
    return float((rank_sum - n_known * (n_known + 1) / 2.0) / (n_known * n_unknown))


def cluster_purity(labels_true: torch.Tensor | np.ndarray, labels_pred: torch.Tensor | np.ndarray) -> float:
    """Purity of a clustering: fraction of items in their cluster's majority class, ``Σ_k max_j n_kj / N``.

    ``n_kj`` counts the items of true class ``j`` in cluster ``k``; 1 when every cluster holds one class.
    """
    true = np.asarray(torch.as_tensor(labels_true).detach().cpu()).ravel()
    pred = np.asarray(torch.as_tensor(labels_pred).detach().cpu()).ravel()
    if true.shape != pred.shape:
        raise ValueError(f"labellings differ in length: {true.shape[0]} and {pred.shape[0]}")
    if true.size == 0:
        raise ValueError("purity of an empty clustering")
    _, true_index = np.unique(true, return_inverse=True)
    _, pred_index = np.unique(pred, return_inverse=True)
    table = np.zeros((pred_index.max() + 1, true_index.max() + 1), dtype=np.int64)
    np.add.at(table, (pred_index, true_index), 1)
    return float(table.max(axis=1).sum() / true.size)
