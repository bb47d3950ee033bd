"""Classification by clustering: adjusted Rand index, silhouette, k-means, simultaneous classification."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from aitom.fourier import lowpass, missing_wedge_mask
from aitom.geometry import soft_sphere_mask
from aitom.ops.alignment import Alignment, align_subtomograms, refine_alignment
from aitom.ops.averaging import leave_one_out_averages, symmetric_average, wedge_compensated_average
from aitom.ops.clustering import (
    _reassign_leave_one_out,
    adjusted_rand_index,
    classify_and_average,
    describe_merge,
    kmeans,
    silhouette_score,
    structural_correlations,
)
from aitom.ops.faml import faml_average
from aitom.ops.handedness import masked_correlation, superpose_map
from tests.align_fixtures import blob_volume, posed_subtomograms


def test_adjusted_rand_index_hand_example():
    # Contingency table [[2, 1, 0], [0, 1, 2]] (n = 6): Σ C(n_ij, 2) = 2, rows 3 + 3 = 6 -> Σ C = 6,
    # columns 2, 2, 2 -> Σ C = 3, E = 6 * 3 / 15 = 1.2, max = 4.5, ARI = (2 - 1.2) / (4.5 - 1.2) = 0.2424...
    truth = [0, 0, 0, 1, 1, 1]
    found = [5, 5, 7, 7, 9, 9]
    assert adjusted_rand_index(truth, found) == pytest.approx(0.8 / 3.3, abs=1e-12)
    assert adjusted_rand_index(truth, [1, 1, 1, 0, 0, 0]) == 1.0
    assert adjusted_rand_index(torch.tensor(truth), torch.tensor(truth)) == 1.0


def test_adjusted_rand_index_is_near_zero_for_random_labels():
    generator = np.random.default_rng(0)
    values = [
        adjusted_rand_index(generator.integers(0, 3, 300), generator.integers(0, 3, 300)) for _ in range(20)
    ]
    assert abs(float(np.mean(values))) < 0.01


def test_silhouette_matches_direct_computation():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(9, 2, generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    expected = []
    for i in range(9):
        d = [float(torch.dist(features[i], features[j])) for j in range(9)]
        same = [d[j] for j in range(9) if labels[j] == labels[i] and j != i]
        others = [np.mean([d[j] for j in range(9) if labels[j] == k]) for k in range(3) if k != labels[i]]
        a, b = np.mean(same), min(others)
        expected.append((b - a) / max(a, b))
    assert silhouette_score(features, labels) == pytest.approx(float(np.mean(expected)), abs=1e-12)


def test_kmeans_separates_blobs(device):
    generator = torch.Generator().manual_seed(1)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = torch.arange(3).repeat_interleave(20)
    features = (centres[truth] + torch.randn(60, 2, generator=generator)).to(device)
    labels = kmeans(features, 3)
    assert labels.device.type == device.type
    assert adjusted_rand_index(truth, labels) == 1.0


def test_kmeans_works_after_simpleitk_registers_its_vectors():
    # torchio imports SimpleITK, whose SWIG std::vector<float> proxy broke faiss.Kmeans when faiss came first.
    code = (
        "import faiss, SimpleITK, torch\n"
        "from aitom.ops.clustering import kmeans\n"
        "features = torch.cat((torch.zeros(5, 2), torch.full((5, 2), 10.0)))\n"
        "labels = kmeans(features, 2)\n"
        "assert labels[:5].unique().numel() == labels[5:].unique().numel() == 1 != labels.unique().numel()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_classify_and_average_two_classes():
    mask = missing_wedge_mask((20,) * 3)
    first, _, _ = posed_subtomograms(blob_volume(20, "a"), 8, seed=1, max_shift=1.0, snr=2.0)
    second, _, _ = posed_subtomograms(blob_volume(20, "b"), 8, seed=2, max_shift=1.0, snr=2.0)
    volumes = torch.cat((first, second))
    truth = torch.arange(2).repeat_interleave(8)
    result = classify_and_average(
        volumes,
        mask,
        n_classes=None,
        max_classes=3,
        rounds=2,
        initial_iterations=2,
        angular_step_deg=25.0,
        max_shift_voxels=3,
        refine_steps=8,
        generator=torch.Generator().manual_seed(5),
    )
    assert result.averages.shape[0] == 2
    assert adjusted_rand_index(truth, result.labels) == 1.0
    assert result.fsc.shape == (2, 11)


def test_structural_correlations_match_the_noise_free_maps():
    # Three classes with their true poses: two halves of one structure and a second structure. The estimate
    # for the split structure must be about 1, and for the two structures the correlation of the noise-free
    # maps themselves (superposed, same band and sphere), which the noise lowers by the factor it corrects.
    size, band = 20, 0.3
    mask = missing_wedge_mask((size,) * 3)
    first, first_rotations, first_shifts = posed_subtomograms(blob_volume(size, "a"), 24, seed=3, snr=0.05)
    second, second_rotations, second_shifts = posed_subtomograms(blob_volume(size, "b"), 12, seed=4, snr=0.05)
    volumes = torch.cat((first, second))
    labels = torch.tensor([0, 1] * 12 + [2] * 12)
    estimates = structural_correlations(
        volumes,
        labels,
        torch.cat((first_rotations, second_rotations)),
        torch.cat((first_shifts, second_shifts)),
        mask,
        max_frequency=band,
    )
    clean_a, clean_b = (lowpass(blob_volume(size, kind), 1 / band, 1.0) for kind in "ab")
    moved, _ = superpose_map(clean_b, clean_a, voxel_size_a=1.0, lowpass_a=1 / band, angular_step_deg=15.0)
    sphere = soft_sphere_mask((size,) * 3, radius_voxels=0.4 * size, edge_width_voxels=2.0)
    truth = float(masked_correlation(lowpass(moved, 1 / band, 1.0), clean_a, sphere))
    assert torch.equal(estimates, estimates.T) and torch.all(estimates.diagonal() == 1)
    assert estimates[0, 1] == pytest.approx(1.0, abs=0.05)  # the plain correlation of the halves: 0.89
    assert truth < 0.8
    assert estimates[0, 2] == pytest.approx(truth, abs=0.1)
    assert estimates[1, 2] == pytest.approx(truth, abs=0.1)


def test_a_class_of_one_particle_has_no_estimate_and_says_why():
    # One member: no half sets, so no reproducibility; its pairs are +inf (always merged) and the merge is
    # described without a number.
    volumes, rotations, shifts = posed_subtomograms(blob_volume(16, "a"), 5, seed=2, snr=0.5)
    estimates = structural_correlations(
        volumes, torch.tensor([0, 0, 0, 0, 1]), rotations, shifts, max_frequency=0.3
    )
    assert estimates[0, 1] == float("inf") and estimates[1, 0] == float("inf")
    assert describe_merge({"classes": [0, 1], "structural_correlation": None}) == (
        "a class of one particle or with irreproducible halves"
    )
    assert (
        describe_merge({"classes": [0, 1], "structural_correlation": 0.934}) == "structural correlation 0.93"
    )


def test_classify_and_average_merges_one_structure_split_by_the_silhouette():
    mask = missing_wedge_mask((20,) * 3)
    volumes, _, _ = posed_subtomograms(blob_volume(20, "a"), 16, seed=6, max_shift=1.0, snr=0.5)
    options = {
        "n_classes": None,
        "max_classes": 3,
        "rounds": 2,
        "initial_iterations": 2,
        "angular_step_deg": 25.0,
        "max_shift_voxels": 3,
        "refine_steps": 8,
        "reassignment_rounds": 0,
    }
    split = classify_and_average(
        volumes, mask, merge_threshold=None, generator=torch.Generator().manual_seed(5), **options
    )
    merged = classify_and_average(volumes, mask, generator=torch.Generator().manual_seed(5), **options)
    assert split.averages.shape[0] >= 2 and split.merges == [] and split.structural_correlations is None
    assert split.reassignments == []
    # the leave-one-out reassignment alone (no merging) also brings the split structure back to one class
    reassigned = classify_and_average(
        volumes,
        mask,
        merge_threshold=None,
        generator=torch.Generator().manual_seed(5),
        **{**options, "reassignment_rounds": 3},
    )
    assert reassigned.averages.shape[0] == 1 and torch.all(reassigned.labels == 0)
    assert reassigned.reassignments[-1]["n_classes"] == 1 and reassigned.merges == []
    assert merged.averages.shape[0] == 1
    assert torch.all(merged.labels == 0)
    assert len(merged.merges) == split.averages.shape[0] - 1
    assert all(m["structural_correlation"] >= 0.9 for m in merged.merges)
    assert merged.fsc.shape[0] == 1 and merged.structural_correlations.tolist() == [[1.0]]


def test_faml_separates_two_classes_and_estimates_noise():
    mask = missing_wedge_mask((20,) * 3)
    first, _, _ = posed_subtomograms(blob_volume(20, "a"), 8, seed=1, max_shift=1.0, snr=2.0)
    second, _, _ = posed_subtomograms(blob_volume(20, "b"), 8, seed=2, max_shift=1.0, snr=2.0)
    volumes = torch.cat((first, second))
    truth = torch.arange(2).repeat_interleave(8)
    result = faml_average(
        volumes,
        mask,
        n_classes=2,
        iterations=3,
        angular_step_deg=25.0,
        max_shift_voxels=3,
        generator=torch.Generator().manual_seed(3),
    )
    assert adjusted_rand_index(truth, result.labels) == 1.0
    assert torch.allclose(result.responsibilities.sum(1), torch.ones(16), atol=1e-5)
    # σ² decreases as the models improve; it stays positive.
    variances = [entry["noise_variance"] for entry in result.history]
    assert 0 < variances[-1] <= variances[0]
    assert result.averages.shape == (2, 20, 20, 20) and result.fsc.shape == (2, 11)


def test_faml_several_starts_keep_the_highest_log_likelihood():
    # starts=3 runs three single starts drawn one after another from the generator and returns the one with
    # the highest final log-likelihood, reporting all three.
    mask = missing_wedge_mask((16,) * 3)
    first, _, _ = posed_subtomograms(blob_volume(16, "a"), 6, seed=1, max_shift=1.0, snr=0.3)
    second, _, _ = posed_subtomograms(blob_volume(16, "b"), 6, seed=2, max_shift=1.0, snr=0.3)
    volumes = torch.cat((first, second))
    options = {"n_classes": 2, "iterations": 2, "angular_step_deg": 30.0, "max_shift_voxels": 2}
    generator = torch.Generator().manual_seed(4)
    singles = [faml_average(volumes, mask, generator=generator, **options) for _ in range(3)]
    several = faml_average(volumes, mask, starts=3, generator=torch.Generator().manual_seed(4), **options)
    expected = [run.history[-1]["log_likelihood"] for run in singles]
    assert several.start_log_likelihoods == pytest.approx(expected, rel=1e-6)
    kept = max(range(3), key=expected.__getitem__)
    assert several.kept_start == kept
    assert torch.allclose(several.averages, singles[kept].averages, atol=1e-5)
    assert torch.equal(several.labels, singles[kept].labels)
    with pytest.raises(ValueError, match="starts"):
        faml_average(volumes, mask, starts=0, **options)


def _two_classes_two_wedges(size: int = 20) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Structures a and b, half of each class seen through ±60° and half through ±30° (24 subtomograms).

    Returns:
        ``(volumes, per-subtomogram wedge masks (24, S, S, S), true labels)``.
    """
    volumes, masks, labels = [], [], []
    for label, kind in enumerate("ab"):
        for index, (low, high) in enumerate(((-60.0, 60.0), (-30.0, 30.0))):
            part, _, _ = posed_subtomograms(
                blob_volume(size, kind),
                6,
                seed=10 * label + index,
                max_shift=1.0,
                snr=2.0,
                tilt_range_deg=(low, high),
            )
            volumes.append(part)
            masks.append(
                missing_wedge_mask((size,) * 3, tilt_min_deg=low, tilt_max_deg=high).expand(6, -1, -1, -1)
            )
            labels += [label] * 6
    return torch.cat(volumes), torch.cat(masks), torch.tensor(labels)


def _class_correlations(averages: torch.Tensor, labels: torch.Tensor, truth: torch.Tensor) -> list[float]:
    """Correlation of each true structure with the average of the class most of its subtomograms are in."""
    correlations = []
    for label, kind in enumerate("ab"):
        structure = blob_volume(averages.shape[-1], kind)
        average = averages[int(torch.mode(labels[truth == label]).values)]
        moved, _ = superpose_map(average, structure, voxel_size_a=1.0, lowpass_a=3.0, angular_step_deg=20.0)
        correlations.append(float(masked_correlation(moved, structure)))
    return correlations


def test_classification_and_faml_take_each_subtomogram_its_own_fourier_mask():
    """Per-subtomogram masks (the real wedge of each, as rlnCtfImage gives) equal to one shared mask give the
    shared-mask result exactly; the true masks of subtomograms seen through two wedges give class averages
    closer to the structures than the ±60° mask assumed for all (measured: 0.958 / 0.935 against 0.901 /
    0.924)."""
    volumes, masks, truth = _two_classes_two_wedges()
    shared = missing_wedge_mask((20,) * 3)
    options = {"angular_step_deg": 25.0, "max_shift_voxels": 3}
    results = {}
    for name, mask in (
        ("shared", shared),
        ("copies", shared.expand(24, -1, -1, -1).clone()),
        ("true", masks),
    ):
        results[name] = classify_and_average(
            volumes,
            mask,
            n_classes=2,
            rounds=2,
            initial_iterations=2,
            refine_steps=8,
            generator=torch.Generator().manual_seed(5),
            **options,
        )
        assert adjusted_rand_index(truth, results[name].labels) == 1.0
    assert torch.equal(results["copies"].labels, results["shared"].labels)
    torch.testing.assert_close(results["copies"].averages, results["shared"].averages, atol=1e-4, rtol=0)
    with_true = _class_correlations(results["true"].averages, results["true"].labels, truth)
    with_shared = _class_correlations(results["shared"].averages, results["shared"].labels, truth)
    assert sum(with_true) / 2 > sum(with_shared) / 2 + 0.02

    for name, mask in (("shared", shared), ("copies", shared.expand(24, -1, -1, -1).clone())):
        results[name] = faml_average(
            volumes, mask, n_classes=2, iterations=2, generator=torch.Generator().manual_seed(5), **options
        )
    assert adjusted_rand_index(truth, results["copies"].labels) == 1.0
    torch.testing.assert_close(results["copies"].averages, results["shared"].averages, atol=1e-4, rtol=0)


@pytest.mark.parametrize(("method", "snr"), [("classify", 0.5), ("faml", 2.0)])
def test_symmetry_imposed_on_every_class_about_its_own_axes(method, snr):
    """Two structures with a 4-fold axis (10 particles each, ±60° wedge) classified with C4: the labels are
    right and each class average, superposed on its structure, is unchanged by the structure's own 4-fold
    rotation (correlation 0.994 / 0.997 for classification / FAML when written), where C1 leaves it at 0.86 /
    0.89."""
    from aitom.geometry import rotate_volume
    from aitom.geometry.symmetry import point_group_rotations
    from aitom.ops.symmetry import symmetrize_volume

    group = point_group_rotations("C4").float()
    truths = [symmetrize_volume(blob_volume(20, kind), group) for kind in "ab"]
    volumes = torch.cat(
        [posed_subtomograms(t, 10, seed=1 + k, max_shift=1.0, snr=snr)[0] for k, t in enumerate(truths)]
    )
    truth_labels = torch.arange(2).repeat_interleave(10)
    mask = missing_wedge_mask((20,) * 3)
    self_correlation = {}
    for symbol in ("C1", "C4"):
        # the classes' own symmetrisation, without the half-set refinement (halves of 5 particles)
        options = {
            "max_shift_voxels": 2,
            "angular_step_deg": 25.0,
            "symmetry": symbol,
            "gold_standard_iterations": 0,
        }
        if method == "classify":
            result = classify_and_average(
                volumes,
                mask,
                n_classes=2,
                rounds=2,
                initial_iterations=2,
                refine_steps=8,
                generator=torch.Generator().manual_seed(5),
                **options,
            )
        else:
            generator = torch.Generator().manual_seed(3)
            result = faml_average(volumes, mask, n_classes=2, iterations=3, generator=generator, **options)
        assert adjusted_rand_index(truth_labels, result.labels) == 1.0
        values, sphere = [], soft_sphere_mask((20,) * 3, 9.0, 2.0)
        for k, average in enumerate(result.averages):
            structure = truths[int(truth_labels[result.labels == k].mode().values)]
            superposed, _ = superpose_map(average, structure, voxel_size_a=1.0, lowpass_a=3.0)
            turned = rotate_volume(superposed, group[1])
            values.append(float(masked_correlation(superposed, turned, sphere)))
        self_correlation[symbol] = min(values)
    assert self_correlation["C4"] > 0.97 and self_correlation["C1"] < 0.93, self_correlation


@pytest.mark.parametrize("symmetry", ["C1", "C2"])
def test_leave_one_out_averages_equal_the_averages_without_each_member(symmetry):
    """Subtracting each member from its class's sums gives the average of the other members exactly; the
    only member of a class gets a zero average."""
    from aitom.geometry import point_group_rotations

    volumes, rotations, shifts = posed_subtomograms(blob_volume(12), 7, seed=3, max_shift=1.0, snr=1.0)
    masks = torch.stack(
        [missing_wedge_mask((12,) * 3, tilt_min_deg=-50.0 - 3 * i, tilt_max_deg=60.0) for i in range(7)]
    )
    labels = torch.tensor([0, 1, 0, 0, 1, 2, 1])
    group = point_group_rotations(symmetry, dtype=torch.float32) if symmetry != "C1" else None
    symmetry_rotations = [group, group, group]
    result = leave_one_out_averages(
        volumes, rotations, shifts, masks, labels=labels, symmetry_rotations=symmetry_rotations
    )
    for item in range(7):
        others = (labels == labels[item]).float()
        others[item] = 0
        expected = wedge_compensated_average(
            volumes, rotations, shifts, masks, weights=others, symmetry_rotations=group
        )[0]
        assert torch.allclose(result[item], expected, atol=1e-5 * float(expected.abs().max()) + 1e-7)
    assert torch.count_nonzero(result[5]) == 0


def test_leave_one_out_reassignment_dissolves_a_class_that_mixes_two_structures():
    """Two structures, 8 subtomograms each, and a third class holding 2 of each (as PCA + k-means can leave):
    scored against its own class's average, a member of the mixed class fits it best only because it is a
    quarter of it; left out of it, each goes to its own structure's class and the mixed class empties."""
    mask = missing_wedge_mask((16,) * 3)
    first, first_rotations, first_shifts = posed_subtomograms(
        blob_volume(16, "a"), 8, seed=1, max_shift=1.0, snr=0.1
    )
    second, second_rotations, second_shifts = posed_subtomograms(
        blob_volume(16, "b"), 8, seed=2, max_shift=1.0, snr=0.1
    )
    volumes = torch.cat((first, second))
    truth = torch.arange(2).repeat_interleave(8)
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 2, 2, 1, 1, 1, 1, 1, 1, 2, 2])
    options = {"max_frequency": 0.35, "max_shift_voxels": 2}

    def align(reference, members):
        index = slice(None) if members is None else members
        return align_subtomograms(
            reference, volumes[index], None, mask, angular_step_deg=25.0, refine_steps=10, **options
        )

    def refine(references, start):
        return refine_alignment(
            references, volumes, start.rotation, start.shift_xyz, None, mask, steps=10, **options
        )

    def average(rotation, shift, members):
        return symmetric_average(volumes, rotation, shift, mask, weights=members.float())[0]

    # poses relative to each structure's own frame (the frame of the class averages below)
    alignment = Alignment(
        torch.cat((first_rotations, second_rotations)),
        torch.cat((first_shifts, second_shifts)),
        torch.zeros(16),
    )
    averages = torch.stack([average(alignment.rotation, alignment.shift_xyz, labels == k) for k in range(3)])
    plain = torch.stack([align(reference, None).score for reference in averages]).argmax(0)
    print("PLAIN", plain.tolist())
    new_labels, _, new_averages, history = _reassign_leave_one_out(
        volumes,
        mask,
        labels,
        alignment,
        averages,
        rounds=3,
        symmetry="C1",
        align=align,
        refine=refine,
        average=average,
    )
    assert adjusted_rand_index(truth, new_labels) == 1.0
    assert new_averages.shape[0] == 2 and history[0]["moved"] == 4 and history[-1]["moved"] == 0
