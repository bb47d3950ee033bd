"""Classification by clustering: simultaneous classification and averaging (Xu et al. 2012).

Each round: subtomograms, brought to the frame of their class average by their current poses, get their
missing wedge filled with the class average's Fourier coefficients (so that the wedge orientation does not
drive the clustering), are reduced by PCA, and are clustered by k-means (faiss); the number of classes can be
chosen by the mean silhouette. Each class is averaged with wedge compensation, every subtomogram is aligned to
every class average and keeps the pose of its best-scoring one, and the next round clusters again.
Also here: :func:`adjusted_rand_index` (Hubert & Arabie 1985, from the contingency table) to score a
clustering against the truth, and :func:`silhouette_score`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from aitom.fourier import fftn_centered, ifftn_centered, lowpass
from aitom.geometry import point_group_order, rotate_volume, soft_sphere_mask
from aitom.ops.alignment import Alignment, align_subtomograms, particle_masks, refine_alignment
from aitom.ops.averaging import (
    align_to_reference_frame,
    class_half_sets,
    leave_one_out_averages,
    reference_free_average,
    symmetric_average,
    wedge_compensated_average,
)
from aitom.ops.handedness import masked_correlation, superpose_map
from aitom.ops.symmetry import map_symmetry_rotations

__all__ = [
    "ClassificationResult",
    "adjusted_rand_index",
    "classify_and_average",
    "describe_merge",
    "describe_reassignment",
    "kmeans",
    "pca_features",
    "silhouette_score",
    "structural_correlations",
]


def adjusted_rand_index(
    labels_true: torch.Tensor | np.ndarray, labels_pred: torch.Tensor | np.ndarray
) -> float:
    """Adjusted Rand index of two labellings of the same items (1: identical up to renaming; ~0: chance).

    ``ARI = (Σ C(n_ij, 2) − E) / (½ (Σ C(a_i, 2) + Σ C(b_j, 2)) − E)`` with ``E = Σ C(a_i, 2) Σ C(b_j, 2) /
    C(n, 2)``, ``n_ij`` the contingency table and ``a_i``, ``b_j`` its row and column sums.
    """
    true = np.asarray(torch.as_tensor(labels_true).cpu()).ravel()
    pred = np.asarray(torch.as_tensor(labels_pred).cpu()).ravel()
    if true.shape != pred.shape:
        raise ValueError(f"labellings differ in length: {true.shape[0]} and {pred.shape[0]}")
    n = true.shape[0]
    _, true_index = np.unique(true, return_inverse=True)
    _, pred_index = np.unique(pred, return_inverse=True)
    table = np.zeros((true_index.max() + 1, pred_index.max() + 1), dtype=np.int64)
    np.add.at(table, (true_index, pred_index), 1)

    def pairs(counts: np.ndarray) -> float:
        return float((counts * (counts - 1) // 2).sum())

    index = pairs(table)
    rows, columns = pairs(table.sum(axis=1)), pairs(table.sum(axis=0))
    total = n * (n - 1) / 2
    expected = rows * columns / total if total > 0 else 0.0
    maximum = (rows + columns) / 2
    if maximum == expected:
        return 1.0
    return (index - expected) / (maximum - expected)


def silhouette_score(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean silhouette ``(b − a) / max(a, b)`` over items (Euclidean distances; items alone in a class: 0).

    Args:
        features: ``(P, D)``; labels: ``(P,)`` integers, at least 2 distinct.
    """
    labels = labels.to(features.device)
    classes = labels.unique()
    if classes.numel() < 2:
        raise ValueError("silhouette needs at least 2 classes")
    distances = torch.cdist(features, features)
    one_hot = (labels[:, None] == classes[None, :]).to(features.dtype)  # (P, K)
    counts = one_hot.sum(0)
    sums = distances @ one_hot  # (P, K)
    own = one_hot.bool()
    own_count = (counts[None, :] * one_hot).sum(1)
    within = (sums * one_hot).sum(1) / (own_count - 1).clamp(min=1)
    between = (sums / counts[None, :]).masked_fill(own, float("inf")).min(1).values
    silhouette = (between - within) / torch.maximum(within, between).clamp(
        min=torch.finfo(features.dtype).tiny
    )
    silhouette = torch.where(own_count > 1, silhouette, torch.zeros_like(silhouette))
    return float(silhouette.mean())


def kmeans(features: torch.Tensor, n_clusters: int, *, seed: int = 0, n_init: int = 10) -> torch.Tensor:
    """k-means labels ``(P,)`` (long, on the device of ``features``) by faiss, best of ``n_init`` starts.

    ``faiss.Clustering`` with a flat L2 index is used directly rather than ``faiss.Kmeans``, whose copy of the
    centroids breaks when SimpleITK (imported by torchio) has registered its own SWIG ``std::vector<float>``.
    """
    import faiss

    if not 1 <= n_clusters <= features.shape[0]:
        raise ValueError(f"n_clusters must be in [1, {features.shape[0]}], got {n_clusters}")
    data = np.ascontiguousarray(features.detach().cpu().numpy().astype(np.float32))
    clustering = faiss.Clustering(data.shape[1], n_clusters)
    clustering.niter, clustering.nredo, clustering.seed = 50, n_init, seed
    clustering.min_points_per_centroid, clustering.verbose = 1, False
    index = faiss.IndexFlatL2(data.shape[1])
    clustering.train(data, index)
    _, assignment = index.search(data, 1)
    return torch.as_tensor(assignment[:, 0], dtype=torch.long, device=features.device)


def _particle_sphere(volumes: torch.Tensor) -> torch.Tensor:
    """Soft sphere of radius 0.4 × box, edge 2 voxels, on the device and dtype of ``volumes``."""
    size = volumes.shape[-1]
    return soft_sphere_mask(
        (size,) * 3,
        radius_voxels=0.4 * size,
        edge_width_voxels=2.0,
        device=volumes.device,
        dtype=volumes.dtype,
    )


def pca_features(
    volumes: torch.Tensor,
    rotations: torch.Tensor,
    shifts_xyz: torch.Tensor,
    fill: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    n_components: int = 8,
) -> torch.Tensor:
    """PCA features of wedge-filled aligned subtomograms.

    Each subtomogram is brought to the reference frame, its unobserved Fourier coefficients (mask rotated by
    ``Rᵀ``) are replaced by those of ``fill`` (its class average, ``(S, S, S)`` or ``(P, S, S, S)``), it is
    multiplied by a soft sphere and the result is projected on the ``n_components`` leading principal axes.

    Returns:
        ``(P, n_components)`` features.
    """
    aligned = align_to_reference_frame(volumes, rotations, shifts_xyz)
    if mask is not None:
        observed = rotate_volume(mask.to(volumes), rotations.to(volumes).transpose(-1, -2)).clamp(0, 1)
        spectrum = observed * fftn_centered(aligned) + (1 - observed) * fftn_centered(fill.to(volumes))
        aligned = ifftn_centered(spectrum).real
    data = (aligned * _particle_sphere(volumes)).flatten(1)
    data = data - data.mean(0, keepdim=True)
    n_components = min(n_components, data.shape[0] - 1, data.shape[1])
    _, _, basis = torch.linalg.svd(data, full_matrices=False)
    return data @ basis[:n_components].T


def structural_correlations(
    volumes: torch.Tensor,
    labels: torch.Tensor,
    rotations: torch.Tensor,
    shifts_xyz: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    max_frequency: float = 0.35,
    angular_step_deg: float = 15.0,
) -> torch.Tensor:
    """Correlation between the noise-free structures of every two classes, estimated from their averages.

    Each class's two half-set averages (even and odd members, wedge compensated, low-passed to
    ``max_frequency``) correlate by ``c_k`` inside a soft sphere of radius 0.4 × box; the full average then
    correlates with its noise-free structure by about ``ρ_k = √(2 c_k / (1 + c_k))`` (two independent halves,
    the relation of Rosenthal & Henderson 2003 applied to the band). Every two class averages are superposed
    (best rotation and shift, :func:`aitom.ops.handedness.superpose_map`) and their correlation ``c_ab``,
    divided by ``ρ_a ρ_b``, estimates the correlation of the two structures: about 1 for one structure split
    in two classes, clearly less for different structures. A class with fewer than two members, or whose
    halves do not correlate, has ``ρ = 0`` and its pairs are +inf.

    Args:
        volumes: ``(P, S, S, S)`` subtomograms; labels ``(P,)`` classes ``0 … K−1``.
        rotations, shifts_xyz: ``(P, 3, 3)``, ``(P, 3)`` poses in the frame of each one's class average.
        mask: centred Fourier mask ``(S, S, S)`` shared by all, per-subtomogram masks ``(P, S, S, S)``, or
            None.
        max_frequency: band limit of the averages, the superposition and the correlations, cycles/voxel.
        angular_step_deg: rotation grid of the superposition, degrees.

    Returns:
        ``(K, K)`` symmetric estimates, ones on the diagonal.
    """
    band_a = 1.0 / max_frequency  # resolution in voxels, i.e. Å at a voxel size of 1
    sphere = _particle_sphere(volumes)
    n_classes = int(labels.max()) + 1
    averages, reproducibility = [], []
    for k in range(n_classes):
        members = torch.nonzero(labels == k).flatten()
        average, _ = wedge_compensated_average(
            volumes[members], rotations[members], shifts_xyz[members], particle_masks(mask, members)
        )
        averages.append(lowpass(average, band_a, 1.0))
        if members.numel() < 2:
            reproducibility.append(0.0)
            continue
        halves = [
            lowpass(
                wedge_compensated_average(
                    volumes[half], rotations[half], shifts_xyz[half], particle_masks(mask, half)
                )[0],
                band_a,
                1.0,
            )
            for half in (members[0::2], members[1::2])
        ]
        half_correlation = float(masked_correlation(halves[0], halves[1], sphere))
        reproducibility.append(
            math.sqrt(2 * half_correlation / (1 + half_correlation)) if half_correlation > 0 else 0.0
        )
    estimates = torch.ones(n_classes, n_classes, dtype=torch.float64)
    for a in range(n_classes):
        for b in range(a + 1, n_classes):
            moved, _ = superpose_map(
                averages[b],
                averages[a],
                voxel_size_a=1.0,
                lowpass_a=band_a,
                angular_step_deg=angular_step_deg,
            )
            correlation = float(masked_correlation(lowpass(moved, band_a, 1.0), averages[a], sphere))
            expected = reproducibility[a] * reproducibility[b]
            estimates[a, b] = estimates[b, a] = correlation / expected if expected > 0 else math.inf
    return estimates


@dataclasses.dataclass
class ClassificationResult:
    """Result of :func:`classify_and_average`.

    Attributes:
        averages: ``(K, S, S, S)`` class averages.
        labels: ``(P,)`` 0-based classes.
        alignment: poses (in the frame of each subtomogram's class average) and scores.
        frequency: ``(n,)`` FSC shell centres, cycles/voxel.
        fsc: ``(K, n)`` half-set FSC of each class.
        half_averages: ``(K, 2, S, S, S)`` the two half-set averages of each class behind ``fsc``.
        history: per round: ``round``, ``n_classes``, ``silhouette``, ``mean_score``.
        merges: per merge after the last round: ``classes`` (the two merged, numbered as in that round),
            ``structural_correlation`` (None where it cannot be estimated: :func:`describe_merge`).
        structural_correlations: ``(K, K)`` :func:`structural_correlations` of the final classes when
            merging ran (ones on the diagonal), else None.
        reassignments: per leave-one-out reassignment round (before the merges): ``round``, ``moved`` (how
            many subtomograms changed class), ``n_classes`` (left after it).
    """

    averages: torch.Tensor
    labels: torch.Tensor
    alignment: Alignment
    frequency: torch.Tensor
    fsc: torch.Tensor
    half_averages: torch.Tensor
    history: list[dict]
    merges: list[dict] = dataclasses.field(default_factory=list)
    structural_correlations: torch.Tensor | None = None
    reassignments: list[dict] = dataclasses.field(default_factory=list)


def describe_merge(merge: dict) -> str:
    """One merge of :attr:`ClassificationResult.merges` in words: its estimated structural correlation, or why
    there is none (a class of one particle, or one whose half-set averages do not correlate, is merged into
    the nearest class without an estimate)."""
    value = merge["structural_correlation"]
    if value is None:
        return "a class of one particle or with irreproducible halves"
    return f"structural correlation {value:.2f}"


def _choose_clusters(
    features: torch.Tensor, n_classes: int | None, max_classes: int, seed: int
) -> tuple[torch.Tensor, float]:
    if n_classes is not None:
        labels = kmeans(features, n_classes, seed=seed)
        score = silhouette_score(features, labels) if labels.unique().numel() > 1 else 0.0
        return labels, score
    best_labels, best_score = None, -float("inf")
    for k in range(2, min(max_classes, features.shape[0] - 1) + 1):
        labels = kmeans(features, k, seed=seed)
        if labels.unique().numel() < 2:
            continue
        score = silhouette_score(features, labels)
        if score > best_score:
            best_labels, best_score = labels, score
    if best_labels is None:
        return torch.zeros(features.shape[0], dtype=torch.long, device=features.device), 0.0
    return best_labels, best_score


def _merge_similar_classes(
    volumes: torch.Tensor,
    mask: torch.Tensor | None,
    labels: torch.Tensor,
    alignment: Alignment,
    averages: torch.Tensor,
    *,
    threshold: float,
    max_frequency: float,
    align: Callable[[torch.Tensor, torch.Tensor], Alignment],
    average: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, Alignment, torch.Tensor, list[dict], torch.Tensor]:
    """Merge the classes of one structure, best pair first, until no pair correlates by ``threshold``.

    ``align(reference, members)`` aligns the subtomograms ``members`` (indices) to ``reference``;
    ``average(rotations, shifts, members)`` is the average of the subtomograms where ``members`` (a boolean
    ``(P,)`` mask) is true under those poses.

    Returns the new labels, poses, averages, the merges and the structural correlations of the final classes.
    """
    rotation, shift, score = alignment.rotation.clone(), alignment.shift_xyz.clone(), alignment.score.clone()
    merges = []
    estimates = torch.ones(1, 1, dtype=torch.float64)
    while averages.shape[0] > 1:
        estimates = structural_correlations(
            volumes, labels, rotation, shift, mask, max_frequency=max_frequency
        )
        off_diagonal = estimates.clone().fill_diagonal_(-math.inf)
        first, second = divmod(int(off_diagonal.argmax()), estimates.shape[0])
        if not estimates[first, second] >= threshold:
            break
        sizes = torch.bincount(labels, minlength=averages.shape[0])
        kept, moved = (first, second) if sizes[first] >= sizes[second] else (second, first)
        members = torch.nonzero(labels == moved).flatten()
        realigned = align(averages[kept], members)
        rotation[members], shift[members] = realigned.rotation, realigned.shift_xyz
        score[members] = realigned.score
        estimate = float(estimates[first, second])
        merges.append(
            {
                "classes": sorted((kept, moved)),
                "structural_correlation": estimate if math.isfinite(estimate) else None,
            }
        )
        labels = torch.where(labels == moved, kept, labels)
        labels = labels - (labels > moved).long()
        estimates = torch.ones(1, 1, dtype=torch.float64)
        averages = torch.stack([average(rotation, shift, labels == k) for k in range(averages.shape[0] - 1)])
    return labels, Alignment(rotation, shift, score), averages, merges, estimates


def _reassign_leave_one_out(
    volumes: torch.Tensor,
    mask: torch.Tensor | None,
    labels: torch.Tensor,
    alignment: Alignment,
    averages: torch.Tensor,
    *,
    rounds: int,
    symmetry: str,
    align: Callable[[torch.Tensor, torch.Tensor | None], Alignment],
    refine: Callable[[torch.Tensor, Alignment], Alignment],
    average: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    progress: bool = False,
) -> tuple[torch.Tensor, Alignment, torch.Tensor, list[dict]]:
    """Multi-reference reassignment without self-reference: every subtomogram is aligned to every other
    class's average and to its own class's average computed without it
    (:func:`aitom.ops.averaging.leave_one_out_averages`), and joins the class it scores best against.

    ``align(reference, members)`` searches the poses of the subtomograms ``members`` (all when None) against
    one reference; ``refine(references, start)`` refines every subtomogram's pose ``start`` locally against
    its own reference ``(P, S, S, S)`` (its pose against its class's full average is the start: one average
    less differs from it by one member).

    A subtomogram always fits best an average it is part of (a class of n holds 1/n of it), so plain
    reassignment keeps small spurious classes alive; without itself in the reference, a member of such a class
    moves to the class whose structure it has. Classes left empty are dropped (the only member of a class has
    no average to stay with). Repeated ``rounds`` times at most, until no subtomogram moves.

    Returns the new labels, poses, averages and per round ``{"round", "moved", "n_classes"}``.
    """
    items = torch.arange(volumes.shape[0], device=volumes.device)
    history = []
    for round_index in tqdm(range(1, rounds + 1), desc="reassign", disable=not progress, leave=False):
        per_class = [align(reference, None) for reference in averages]
        scores = torch.stack([result.score for result in per_class])  # (K, P)
        rotations = torch.stack([result.rotation for result in per_class])
        shifts = torch.stack([result.shift_xyz for result in per_class])
        symmetry_rotations = [
            map_symmetry_rotations(reference, symmetry)[0] if point_group_order(symmetry) > 1 else None
            for reference in averages
        ]
        own_averages = leave_one_out_averages(
            volumes,
            alignment.rotation,
            alignment.shift_xyz,
            mask,
            labels=labels,
            symmetry_rotations=symmetry_rotations,
        )
        own = refine(
            own_averages, Alignment(rotations[labels, items], shifts[labels, items], scores[labels, items])
        )
        alone = torch.bincount(labels, minlength=averages.shape[0])[labels] == 1
        scores[labels, items] = torch.where(alone, -math.inf, own.score)
        rotations[labels, items], shifts[labels, items] = own.rotation, own.shift_xyz
        best = scores.argmax(0)
        moved = int((best != labels).sum())
        alignment = Alignment(rotations[best, items], shifts[best, items], scores[best, items])
        kept = best.unique()
        labels = torch.searchsorted(kept, best)
        averages = torch.stack(
            [average(alignment.rotation, alignment.shift_xyz, labels == k) for k in range(kept.numel())]
        )
        history.append({"round": round_index, "moved": moved, "n_classes": int(kept.numel())})
        if moved == 0:
            break
    return labels, alignment, averages, history


def describe_reassignment(result: ClassificationResult) -> str:
    """The leave-one-out reassignment of ``result`` in words: how many subtomograms moved, the classes before
    and after it."""
    moved = sum(entry["moved"] for entry in result.reassignments)
    before, after = result.history[-1]["n_classes"], result.reassignments[-1]["n_classes"]
    rounds = len(result.reassignments)
    classes = f"{before} → {after} classes" if after != before else f"{after} classes kept"
    return (
        f"leave-one-out reassignment: {moved} moved in {rounds} round{'s' if rounds > 1 else ''}, {classes}"
    )


def classify_and_average(
    volumes: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    n_classes: int | None = None,
    max_classes: int = 6,
    merge_threshold: float | None = 0.9,
    rounds: int = 3,
    initial_iterations: int = 3,
    n_components: int = 8,
    voxel_size_a: float = 1.0,
    angular_step_deg: float = 15.0,
    max_shift_voxels: float | None = None,
    max_frequency: float = 0.35,
    refine_steps: int = 30,
    symmetry: str = "C1",
    generator: torch.Generator | None = None,
    progress: bool = False,
    gold_standard_iterations: int = 2,
    gold_standard_start_frequency: float | None = None,
    reassignment_rounds: int = 3,
) -> ClassificationResult:
    """Simultaneous classification and averaging (Xu et al. 2012) with PCA, k-means and wedge filling.

    Args:
        volumes: ``(P, S, S, S)`` subtomograms.
        mask: centred Fourier mask ``(S, S, S)`` shared by all, per-subtomogram masks ``(P, S, S, S)`` (e.g.
            the real wedge and CTF of each), or None.
        n_classes: number of classes; None chooses it in ``[2, max_classes]`` by the mean silhouette, then
            merges classes that hold one structure (below).
        merge_threshold: with ``n_classes`` None, after the last round the two classes whose structures
            correlate best (:func:`structural_correlations`) are merged while that correlation is at least
            this; the smaller class's members are aligned to the larger one's average. None: no merging.
        rounds: cluster / average / align rounds after the initial reference-free average.
        initial_iterations: iterations of :func:`aitom.ops.averaging.reference_free_average` for the start.
        n_components: PCA dimensions.
        voxel_size_a, angular_step_deg, max_shift_voxels, max_frequency, refine_steps, generator, progress:
            as in :func:`aitom.ops.averaging.reference_free_average`.
        symmetry: point group shared by every class (``"C1"``: none; ``"D7"``...): each class average is
            symmetrised about axes found in it (:func:`aitom.ops.averaging.symmetric_average`), in the start,
            every round, the merges and the half-set FSC.
        gold_standard_iterations, gold_standard_start_frequency: after the last round every class is refined
            in independent half sets from its average (:func:`aitom.ops.averaging.class_half_sets`): the
            class averages, poses and half-set FSC returned are theirs. 0: the half sets of the final poses,
            whose FSC is not independent. The start frequency defaults to ``max_frequency / 2``.
        reassignment_rounds: with ``n_classes`` None, after the last round (before merging), at most this
            many rounds in which each subtomogram joins the class it aligns best to, its own class's average
            computed without it (:func:`_reassign_leave_one_out`): small classes held together only by their
            members' own noise dissolve. 0: none. A number of classes set by the caller is kept.

    Returns:
        :class:`ClassificationResult`.
    """
    if gold_standard_iterations < 0:
        raise ValueError(f"gold_standard_iterations must be >= 0, got {gold_standard_iterations}")
    if reassignment_rounds < 0:
        raise ValueError(f"reassignment_rounds must be >= 0, got {reassignment_rounds}")
    start = reference_free_average(
        volumes,
        mask,
        iterations=initial_iterations,
        voxel_size_a=voxel_size_a,
        angular_step_deg=angular_step_deg,
        max_shift_voxels=max_shift_voxels,
        max_frequency=max_frequency,
        refine_steps=refine_steps,
        symmetry=symmetry,
        generator=generator,
        progress=progress,
        gold_standard_iterations=0,  # a start for the classes: their half sets come later
    )
    seed = 0 if generator is None else int(generator.initial_seed())

    def class_average(rotation: torch.Tensor, shift: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
        """Average of the subtomograms ``members`` (boolean ``(P,)``), symmetrised with ``symmetry``."""
        return symmetric_average(
            volumes, rotation, shift, mask, symmetry=symmetry, weights=members.to(volumes)
        )[0]

    def align_to(reference: torch.Tensor, members: torch.Tensor | None = None) -> Alignment:
        """Align the subtomograms ``members`` (all when None) to ``reference``."""
        index = slice(None) if members is None else members
        return align_subtomograms(
            reference,
            volumes[index],
            None,
            particle_masks(mask, index),
            angular_step_deg=angular_step_deg,
            max_shift_voxels=max_shift_voxels,
            max_frequency=max_frequency,
            search_band=(min(0.05, max_frequency / 2), min(0.25, max_frequency)),
            refine_steps=refine_steps,
        )

    def refine_each(references: torch.Tensor, start: Alignment, batch_size: int = 64) -> Alignment:
        """Refine every subtomogram's pose ``start`` locally against its own reference ``(P, S, S, S)``."""
        parts = [
            refine_alignment(
                references[part],
                volumes[part],
                start.rotation[part],
                start.shift_xyz[part],
                None,
                particle_masks(mask, part),
                steps=refine_steps,
                max_frequency=max_frequency,
                max_shift_voxels=max_shift_voxels,
            )
            for part in (slice(i, i + batch_size) for i in range(0, volumes.shape[0], batch_size))
        ]
        return Alignment(
            torch.cat([part.rotation for part in parts]),
            torch.cat([part.shift_xyz for part in parts]),
            torch.cat([part.score for part in parts]),
        )

    alignment = start.alignment
    fill = start.average.expand_as(volumes)
    history = []
    for round_index in tqdm(range(1, rounds + 1), desc="classify rounds", disable=not progress, leave=False):
        features = pca_features(
            volumes, alignment.rotation, alignment.shift_xyz, fill, mask, n_components=n_components
        )
        labels, silhouette = _choose_clusters(features, n_classes, max_classes, seed)
        classes = labels.unique()
        labels = torch.searchsorted(classes, labels)
        averages = torch.stack(
            [
                class_average(alignment.rotation, alignment.shift_xyz, labels == k)
                for k in range(classes.numel())
            ]
        )
        if round_index == rounds:
            history.append(
                {
                    "round": round_index,
                    "n_classes": int(classes.numel()),
                    "silhouette": silhouette,
                    "mean_score": float(alignment.score.mean()),
                }
            )
            break
        per_class = [align_to(average) for average in averages]
        scores = torch.stack([result.score for result in per_class])  # (K, P)
        best = scores.argmax(0)
        items = torch.arange(volumes.shape[0], device=volumes.device)
        alignment = Alignment(
            torch.stack([r.rotation for r in per_class])[best, items],
            torch.stack([r.shift_xyz for r in per_class])[best, items],
            scores[best, items],
        )
        fill = averages[best]
        history.append(
            {
                "round": round_index,
                "n_classes": int(classes.numel()),
                "silhouette": silhouette,
                "mean_score": float(alignment.score.mean()),
            }
        )
    reassignments: list[dict] = []
    if n_classes is None and reassignment_rounds > 0 and averages.shape[0] > 1:
        labels, alignment, averages, reassignments = _reassign_leave_one_out(
            volumes,
            mask,
            labels,
            alignment,
            averages,
            rounds=reassignment_rounds,
            symmetry=symmetry,
            align=align_to,
            refine=refine_each,
            average=class_average,
            progress=progress,
        )
    merges: list[dict] = []
    estimates = None
    if n_classes is None and merge_threshold is not None:
        labels, alignment, averages, merges, estimates = _merge_similar_classes(
            volumes,
            mask,
            labels,
            alignment,
            averages,
            threshold=merge_threshold,
            max_frequency=max_frequency,
            align=align_to,
            average=class_average,
        )
    # the final averages are symmetric already: their axes, not a second average, for the half sets
    symmetry_rotations = [
        map_symmetry_rotations(average, symmetry)[0] if point_group_order(symmetry) > 1 else None
        for average in averages
    ]
    averages, alignment, frequency, fsc_curves, half_averages = class_half_sets(
        volumes,
        mask,
        labels,
        averages,
        alignment,
        symmetry_rotations,
        gold_standard_iterations=gold_standard_iterations,
        start_frequency=max_frequency / 2
        if gold_standard_start_frequency is None
        else gold_standard_start_frequency,
        voxel_size_a=voxel_size_a,
        angular_step_deg=angular_step_deg,
        max_shift_voxels=max_shift_voxels,
        max_frequency=max_frequency,
        refine_steps=refine_steps,
        progress=progress,
    )
    return ClassificationResult(
        averages,
        labels,
        alignment,
        frequency,
        fsc_curves,
        half_averages,
        history,
        merges,
        estimates,
        reassignments,
    )
