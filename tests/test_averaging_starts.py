"""Reference-free starts: the leave-one-out score that compares them, and starts from single particles."""

from __future__ import annotations

import json

import pytest
import torch

from aitom.commands import average as average_command
from aitom.fourier import apply_missing_wedge, missing_wedge_mask
from aitom.geometry import fourier_shift, random_rotations, rotate_volume, soft_sphere_mask
from aitom.ops.alignment import constrained_correlation
from aitom.ops.averaging import leave_one_out_scores, reference_free_average, wedge_compensated_average
from tests.align_fixtures import blob_volume, posed_subtomograms
from tests.test_align_cli import _main, _write_particle_set

MASK = missing_wedge_mask((16,) * 3)
OPTIONS = {"iterations": 2, "angular_step_deg": 30.0, "max_shift_voxels": 1, "refine_steps": 4}


def test_leave_one_out_scores_equal_one_average_of_the_others_per_subtomogram():
    """Independent reference: for every subtomogram the wedge-compensated average of the other P − 1
    (computed afresh), masked, turned and shifted into its frame, correlated on its mask in the band."""
    volumes, rotations, shifts = posed_subtomograms(blob_volume(16), 6, seed=1, max_shift=1.5, snr=0.5)
    masks = torch.stack([MASK * (0.5 + 0.1 * k) for k in range(6)]).clamp(max=1.0)
    sphere = soft_sphere_mask((16,) * 3, 6.0, 3.0)
    scores = leave_one_out_scores(
        volumes, rotations, shifts, masks, min_frequency=0.05, max_frequency=0.4, particle_radius_voxels=6.0
    )
    for i in range(6):
        others = [j for j in range(6) if j != i]
        average, _ = wedge_compensated_average(
            volumes[others], rotations[others], shifts[others], masks[others]
        )
        in_frame = fourier_shift(rotate_volume(average * sphere, rotations[i]), shifts[i])
        expected = constrained_correlation(
            in_frame, volumes[i], None, masks[i], min_frequency=0.05, max_frequency=0.4
        )
        assert float(scores[i]) == pytest.approx(float(expected), abs=1e-4)


def test_leave_one_out_score_ranks_the_true_poses_above_random_ones():
    volumes, rotations, shifts = posed_subtomograms(blob_volume(16), 12, seed=3, max_shift=1.0, snr=0.5)
    wrong = random_rotations(12, generator=torch.Generator().manual_seed(2))
    band = {"min_frequency": 0.05, "max_frequency": 0.35}
    right = leave_one_out_scores(volumes, rotations, shifts, MASK, **band)
    random = leave_one_out_scores(volumes, wrong, shifts, MASK, **band)
    # measured 0.85 (every subtomogram >= 0.83) against 0.36
    assert float(right.min()) > 0.75 and float(right.mean()) > float(random.mean()) + 0.3


def test_the_starts_score_leaves_out_the_noise_a_subtomogram_put_in_the_average():
    """Pure noise, aligned reference-free: each subtomogram's alignment score against an average that holds
    it rewards its own noise (0.37); against the others' average that part is gone (0.13)."""
    noise = apply_missing_wedge(
        torch.randn(12, 16, 16, 16, generator=torch.Generator().manual_seed(0)), -60, 60
    )
    result = reference_free_average(
        noise, MASK, gold_standard_iterations=0, generator=torch.Generator().manual_seed(1), **OPTIONS
    )
    assert result.start_scores[0] < float(result.alignment.score.mean()) - 0.15


def test_particle_starts_start_from_particles_drawn_without_repeats():
    """``particle_starts`` = runs from single subtomograms as initial references, drawn by a permutation from
    the generator; the start with the best leave-one-out score is kept."""
    volumes, _, _ = posed_subtomograms(blob_volume(16), 8, seed=3, max_shift=1.0, snr=0.3)
    options = {**OPTIONS, "gold_standard_iterations": 0}
    best = reference_free_average(
        volumes, MASK, starts=3, particle_starts=True, generator=torch.Generator().manual_seed(5), **options
    )
    generator = torch.Generator().manual_seed(5)
    drawn = torch.randperm(8, generator=generator)[:3].tolist()
    assert len(set(drawn)) == 3
    singles = [
        reference_free_average(volumes, MASK, initial_reference=volumes[i], generator=generator, **options)
        for i in drawn
    ]
    scores = [single.start_scores[0] for single in singles]
    assert best.start_scores == pytest.approx(scores, abs=1e-6)
    assert best.kept_start == max(range(3), key=scores.__getitem__)
    torch.testing.assert_close(best.average, singles[best.kept_start].average)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"starts": 9}, "9 particle starts"),
        ({"starts": 2, "initial_reference": torch.zeros(16, 16, 16)}, "initial_reference"),
        ({"annealing_iterations": 3}, "annealing"),
    ],
)
def test_particle_starts_refuse_impossible_settings(options, message):
    volumes, _, _ = posed_subtomograms(blob_volume(16), 8, seed=3, max_shift=1.0, snr=0.3)
    with pytest.raises(ValueError, match=message):
        reference_free_average(volumes, MASK, particle_starts=True, **{"starts": 1, **options})


def test_average_command_particle_starts(tmp_path, capsys):
    volumes, _, _ = posed_subtomograms(blob_volume(16), 6, seed=5, max_shift=1.0, snr=0.5)
    _write_particle_set(tmp_path / "data", volumes)
    arguments = ["average", "--particles", str(tmp_path / "data" / "particles.star"), "--particle-starts"]
    options = ["--iterations", "1", "--step", "30", "--max-shift", "2", "--gold-standard-iterations", "0"]
    assert _main(average_command, [*arguments, *options, "--starts", "2", "--out", str(tmp_path / "o")]) == 0
    report = json.loads((tmp_path / "o" / "fsc.json").read_text())
    assert len(report["start_scores"]) == 2
    assert report["kept_start"] == 1 + max(range(2), key=report["start_scores"].__getitem__)
    assert "mean leave-one-out score" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--starts", "7"], "--starts 7 with --particle-starts is more than the 6 particles"),
        (["--annealing-iterations", "5"], "choose one"),
        (["--classes", "2"], "single-class averaging only"),
    ],
)
def test_average_command_refuses_impossible_particle_starts(tmp_path, capsys, options, message):
    volumes, _, _ = posed_subtomograms(blob_volume(16), 6, seed=5, max_shift=1.0, snr=0.5)
    _write_particle_set(tmp_path / "data", volumes)
    out = tmp_path / "o"
    argv = ["average", "--particles", str(tmp_path / "data" / "particles.star"), "--particle-starts"]
    assert _main(average_command, [*argv, *options, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
