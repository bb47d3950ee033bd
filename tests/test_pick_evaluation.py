"""Pick evaluation on hand-made cases: optimal matching, precision/recall/F1, per class, orientations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aitom.errors import InputError
from aitom.io import particles_table
from aitom.ops.pick_evaluation import evaluate_picks, match_picks, precision_recall_f1


def test_optimal_matching_beats_greedy():
    # Greedy by distance would pair pick 0 with truth 0 (distance 1) and leave pick 1 unmatched;
    # the optimal one-to-one matching pairs 0-1 and 1-0 (both within 2).
    picks = np.array([[1.0, 0.0, 0.0], [-1.5, 0.0, 0.0]])
    truth = np.array([[0.0, 0.0, 0.0], [2.5, 0.0, 0.0]])
    rows, columns = match_picks(picks, truth, tolerance_voxels=2.0)
    assert sorted(zip(rows.tolist(), columns.tolist())) == [(0, 1), (1, 0)]
    assert len(match_picks(picks[:0], truth, 2.0)[0]) == 0
    with pytest.raises(InputError):
        match_picks(picks, truth, 0.0)


def test_precision_recall_f1_counts():
    assert precision_recall_f1(3, 4, 6) == pytest.approx({"precision": 0.75, "recall": 0.5, "f1": 0.6})
    assert precision_recall_f1(0, 0, 5) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_evaluate_per_class_and_orientation():
    truth = particles_table(
        [[10, 10, 10], [30, 10, 10], [10, 30, 10], [30, 30, 30]],
        angles_deg=[[0, 0, 0], [10, 20, 30], [0, 90, 0], [45, 45, 45]],
        class_number=[1, 1, 2, 2],
    )
    # Three picks near truths 0, 1, 2 (one with the wrong class), one false pick far away.
    picks = particles_table(
        [[10.5, 10, 10], [30, 11, 10], [10, 30, 10.8], [50, 50, 50]],
        angles_deg=[[0, 0, 10], [10, 20, 30], [0, 90, 90], [0, 0, 0]],
        class_number=[1, 1, 1, 2],
    )
    result = evaluate_picks(picks, truth, tolerance_voxels=2.0, angle_tolerance_deg=15.0)
    assert result["true_positives"] == 3
    assert result["precision"] == pytest.approx(0.75) and result["recall"] == pytest.approx(0.75)
    # Class 1: 3 picks, 2 truths, both found; class 2: 1 pick (false), 2 truths.
    assert result["per_class"]["1"] == pytest.approx(
        {"n_picked": 3, "n_truth": 2, "precision": 2 / 3, "recall": 1.0, "f1": 0.8}
    )
    assert result["per_class"]["2"]["f1"] == 0.0
    # Orientations of class-1 picks matched to class-1 particles only: 10° (psi) and 0°. The class-1 pick on
    # the class-2 particle (90° off) is not compared: its template is another molecule.
    assert result["orientations_compared"] == 2
    assert result["orientation_fraction"] == pytest.approx(1.0)
    assert result["median_orientation_error_deg"] == pytest.approx(5.0, abs=1e-6)


def test_classes_matched_by_name_whatever_the_numbers():
    truth = particles_table([[10, 10, 10], [30, 10, 10], [10, 30, 10]], class_number=[1, 2, 2])
    truth["aitomClassName"] = ["ribosome", "proteasome", "proteasome"]
    # One template, the proteasome, numbered 1 as a single template is: names decide, not numbers.
    picks = particles_table([[30, 10, 10.5], [10, 30, 10], [10, 10, 10]], class_number=[1, 1, 1])
    picks["aitomClassName"] = "proteasome"
    result = evaluate_picks(picks, truth, tolerance_voxels=2.0)
    assert result["per_class"]["proteasome"] == pytest.approx(
        {"n_picked": 3, "n_truth": 2, "precision": 2 / 3, "recall": 1.0, "f1": 0.8}
    )
    assert result["per_class"]["ribosome"]["recall"] == 0.0
    # Without the names the numbers are used, and the single template's class 1 is the ribosome's.
    by_number = evaluate_picks(picks.drop(columns="aitomClassName"), truth, tolerance_voxels=2.0)
    assert by_number["per_class"]["1"]["n_picked"] == 3 and by_number["per_class"]["1"]["recall"] == 1.0


def test_symmetric_orientations_are_equivalent():
    from aitom.geometry import matrix_to_relion_angles, point_group_rotations, random_rotations

    generator = torch.Generator().manual_seed(3)
    truth_rotations = random_rotations(14, generator=generator, dtype=torch.float64)
    group = point_group_rotations("D7")
    picked_rotations = truth_rotations @ group  # each pick in another of the 14 equivalent orientations
    positions = [[10.0 * i, 0.0, 0.0] for i in range(14)]
    truth = particles_table(positions, angles_deg=matrix_to_relion_angles(truth_rotations).numpy())
    picks = particles_table(positions, angles_deg=matrix_to_relion_angles(picked_rotations).numpy())
    plain = evaluate_picks(picks, truth, tolerance_voxels=1.0)
    assert plain["orientation_fraction"] == pytest.approx(1 / 14)  # only the identity agrees
    truth["rlnClassNumber"] = 4
    symmetric = evaluate_picks(picks, truth, tolerance_voxels=1.0, symmetry={"4": group})
    assert symmetric["orientation_fraction"] == 1.0
    assert symmetric["median_orientation_error_deg"] < 1e-4


def test_class_agnostic_picks_give_recall_per_class():
    truth = particles_table([[0, 0, 0], [10, 0, 0], [20, 0, 0]], class_number=[1, 2, 2])
    picks = particles_table([[0, 0, 1], [20, 1, 0]])
    result = evaluate_picks(picks, truth, tolerance_voxels=1.5)
    assert result["per_class"] == {"1": {"n_truth": 1, "recall": 1.0}, "2": {"n_truth": 2, "recall": 0.5}}
    assert "orientation_fraction" not in result


def _named(table, names):
    table["aitomClassName"] = names
    return table


def test_disjoint_class_names_are_mapped_by_matched_positions():
    """Templates named unlike the simulator's classes ("a"/"b" against "x"/"y"): each pick class is scored
    as the truth class its picks sit on, and a class whose picks match nothing stays unmapped."""
    truth = particles_table(
        [[10, 10, 10], [30, 10, 10], [50, 10, 10], [10, 40, 10], [30, 40, 10]],
        angles_deg=[[0, 0, 0]] * 5,
    )
    truth = _named(truth, ["x", "x", "x", "y", "y"])
    # "a": on x0, x1 and on y0; "b": on y1; "c": far from everything.
    picks = particles_table(
        [[10, 10, 11], [30, 11, 10], [10, 40, 10], [30, 40, 10.5], [90, 90, 90]],
        angles_deg=[[0, 0, 0], [0, 0, 40], [0, 0, 0], [0, 0, 5], [0, 0, 0]],
    )
    picks = _named(picks, ["a", "a", "a", "b", "c"])
    result = evaluate_picks(picks, truth, tolerance_voxels=2.0, angle_tolerance_deg=15.0)
    # Counts of matched pairs: a-x 2, a-y 1, b-y 1; c matches nothing.
    assert result["class_mapping"] == {"a": "x", "b": "y"}
    assert result["true_positives"] == 4 and result["precision"] == pytest.approx(4 / 5)
    # x: the 3 "a" picks, 2 of them on the 3 x particles; y: the 1 "b" pick, on 1 of the 2 y particles.
    assert result["per_class"]["x"] == pytest.approx(
        {"n_picked": 3, "n_truth": 3, "precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3}
    )
    assert result["per_class"]["y"] == pytest.approx(
        {"n_picked": 1, "n_truth": 2, "precision": 1.0, "recall": 0.5, "f1": 2 / 3}
    )
    assert result["per_class"]["c"] == {
        "n_picked": 1,
        "n_truth": 0,
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
    }
    assert set(result["per_class"]) == {"x", "y", "c"}
    # Orientations of the within-class matches only: a on x0 (0°), a on x1 (40°), b on y1 (5°).
    assert result["orientations_compared"] == 3
    assert result["orientation_fraction"] == pytest.approx(2 / 3)
    assert result["median_orientation_error_deg"] == pytest.approx(5.0, abs=1e-6)


def test_class_mapping_is_one_to_one_maximising_the_matches():
    """ "a" sits on 3 x and 2 y particles, "b" on 2 x: giving both to x is not one-to-one; a→y, b→x maps 4
    matched pairs, a→x, b→y only 3."""
    x_positions = [[10.0 * i, 0, 0] for i in range(1, 6)]
    y_positions = [[10.0 * i, 30, 0] for i in range(1, 4)]
    truth = _named(particles_table(x_positions + y_positions), ["x"] * 5 + ["y"] * 3)
    picks = particles_table(x_positions[:3] + y_positions[:2] + x_positions[3:])
    picks = _named(picks, ["a"] * 5 + ["b"] * 2)
    result = evaluate_picks(picks, truth, tolerance_voxels=1.0)
    assert result["class_mapping"] == {"a": "y", "b": "x"}
    assert result["per_class"]["x"] == pytest.approx(
        {"n_picked": 2, "n_truth": 5, "precision": 1.0, "recall": 2 / 5, "f1": 4 / 7}
    )
    assert result["per_class"]["y"] == pytest.approx(
        {"n_picked": 5, "n_truth": 3, "precision": 2 / 5, "recall": 2 / 3, "f1": 0.5}
    )
    # Nothing matched at all: names differ, nothing to map, every pick class unmapped.
    far = particles_table([[500.0, 500, 500]])
    nothing = evaluate_picks(_named(far, ["a"]), truth, tolerance_voxels=1.0)
    assert nothing["class_mapping"] == {} and nothing["per_class"]["a"]["n_truth"] == 0
    # Class numbers without names: mapped the same way.
    truth_numbers = particles_table(x_positions + y_positions, class_number=[1] * 5 + [2] * 3)
    picks_numbers = particles_table(x_positions[3:], class_number=[7, 7])
    by_number = evaluate_picks(picks_numbers, truth_numbers, tolerance_voxels=1.0)
    assert by_number["class_mapping"] == {"7": "1"}
    assert by_number["per_class"]["1"]["recall"] == pytest.approx(2 / 5)


def test_partly_shared_class_names_are_compared_by_name():
    """One pick class named like a truth class: names are compared as they are, nothing mapped."""
    truth = _named(particles_table([[0, 0, 0], [10, 0, 0]]), ["x", "y"])
    picks = _named(particles_table([[0, 0, 0], [10, 0, 0]]), ["x", "b"])
    result = evaluate_picks(picks, truth, tolerance_voxels=1.0)
    assert "class_mapping" not in result
    assert result["per_class"]["x"]["f1"] == 1.0
    assert result["per_class"]["y"]["recall"] == 0.0
    assert result["per_class"]["b"] == {
        "n_picked": 1,
        "n_truth": 0,
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
    }
    # The same names: nothing mapped either.
    assert "class_mapping" not in evaluate_picks(truth, truth, tolerance_voxels=1.0)
