"""Bugs met on a structural biologist's journey with real data (microtubule tomogram crops, EMDB maps with
awkward headers): each test reproduces one on small data made here and checks the command's behaviour."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

from aitom.cli import main
from aitom.commands.shared import ReferenceResampledWarning, read_reference
from aitom.io import read_volume, write_particles, write_volume


def _blob(size: int, voxel_a: float, radius_a: float = 25.0) -> torch.Tensor:
    """A ``size``³ Gaussian blob of σ ``radius_a / 2`` Å, centred on voxel ``size // 2``, at ``voxel_a`` Å."""
    z, y, x = torch.meshgrid(*[(torch.arange(float(size)) - size // 2) * voxel_a] * 3, indexing="ij")
    return torch.exp(-(x**2 + y**2 + z**2) / (2 * (radius_a / 2) ** 2))


def _copies(n: int, size: int = 12, noise: float = 1e-3) -> list[torch.Tensor]:
    """``n`` copies of a round blob (any rotation aligns them), each with its own faint noise (identical
    files are refused as duplicates)."""
    generator = torch.Generator().manual_seed(0)
    return [_blob(size, 10.0) + noise * torch.randn(size, size, size, generator=generator) for _ in range(n)]


def _particle_set(folder: Path, volumes: list[torch.Tensor], voxel_a: float = 10.0) -> Path:
    names = [f"subtomograms/{index:06d}.mrc" for index in range(len(volumes))]
    for name, volume in zip(names, volumes, strict=True):
        write_volume(folder / name, volume, voxel_a)
    return write_particles(folder / "particles.star", pd.DataFrame({"rlnImageName": names}))


def test_negative_tilt_range_min_max_is_read_as_a_value(tmp_path, capsys):
    """The wedge of a real tomogram is asymmetric (``aitom estimate wedge`` gave -67..58 for the 13-pf
    microtubule crop); ``--wedge-a -67,58`` stopped with "argument --wedge-a: expected one argument" (argparse
    took the value for an option name). Both wedges must reach the alignment as (MIN, MAX)."""
    a = write_volume(tmp_path / "a.mrc", _blob(16, 10.0), 10.0)
    b = write_volume(tmp_path / "b.mrc", torch.roll(_blob(16, 10.0), 1, dims=-1), 10.0)
    argv = ["align", str(a), str(b), "--wedge-a", "-67,58", "--wedge-b", "-45.5,60", "--step", "45", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    # B is A shifted by one voxel along x: found whatever the wedges
    assert report["shift_xyz_voxels"] == pytest.approx([1.0, 0.0, 0.0], abs=0.25)


def test_one_line_for_a_template_whose_voxel_size_looks_unset(tmp_path):
    """emd_5592_21A.mrc (EMD-5592, 21 Å voxels, header 1 Å) as a template for a 10 Å tomogram: the run printed
    "warning: ...: voxel size 1 Å in header looks unset; pass --voxel-size" and then the error "write the
    template's into its header (aitom convert ...)". The warning's advice is wrong here (--voxel-size of
    `aitom pick` sets the tomogram's voxel size too: picks at the wrong scale); the contract is one line."""
    tomogram = write_volume(
        tmp_path / "tomogram.mrc", torch.randn(24, 24, 24, generator=torch.Generator().manual_seed(0)), 10.0
    )
    template = write_volume(tmp_path / "template.mrc", _blob(8, 21.0, radius_a=60.0), 1.0)
    out = tmp_path / "picks.star"
    argv = ["pick", "template", "--tomogram", str(tomogram), "--template", str(template), "--out", str(out)]
    result = subprocess.run(
        [sys.executable, "-m", "aitom", *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"aitom: error: {template}: voxel size 1 Å in the header looks unset")
    assert "aitom convert" in lines[0]
    assert not out.exists()


def test_refused_reference_gives_no_contradicting_warning(tmp_path, capsys):
    """``aitom average --reference`` with a map whose header voxel size is 1 Å warned "pass --voxel-size"
    (which sets the subtomograms' voxel size, not the reference's) before refusing the reference; only the
    error may be said, and nothing written."""
    particles = _particle_set(tmp_path / "data", _copies(4))
    reference = write_volume(tmp_path / "reference.mrc", _blob(12, 10.0), 1.0)
    out = tmp_path / "avg"
    argv = ["average", "--particles", str(particles), "--out", str(out), "--reference", str(reference)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([*argv, "--iterations", "1", "--step", "45"]) == 2
    assert [str(w.message) for w in caught] == []
    assert capsys.readouterr().err.startswith(f"aitom: error: {reference}: voxel size 1 Å in the header")
    assert not out.exists()


def test_reference_warnings_are_kept_when_the_reference_is_used(tmp_path):
    """The helper that drops warnings on a refusal keeps them otherwise: a reference of another voxel size is
    resampled, with its one warning, to the data's grid (same extent in Å: 8 voxels of 20 Å = 16 of 10 Å)."""
    path = write_volume(tmp_path / "reference.mrc", _blob(8, 20.0, radius_a=40.0), 20.0)
    with pytest.warns(ReferenceResampledWarning, match="reference resampled from 8×8×8 voxels of 20 Å"):
        reference = read_reference(path, 10.0, 16)
    assert reference.shape == (16, 16, 16)
    # the centre voxel 4 of the 8³ map lands on the centre voxel 8 of the 16³ one
    assert torch.nonzero(reference == reference.max())[0].tolist() == [8, 8, 8]


def test_average_summary_says_when_the_fsc_resolution_is_only_nyquist(tmp_path, capsys):
    """Identical particles give identical half maps (half sets of the joint poses), FSC 1 in every shell:
    the summary line said "FSC 0.143 20.0 Å" as if 20 Å were measured; it is the sampling limit (2 × 10 Å),
    and must say so."""
    particles = _particle_set(tmp_path / "data", _copies(4))
    out = tmp_path / "avg"
    argv = ["average", "--particles", str(particles), "--out", str(out), "--wedge", "-67,58"]
    argv += ["--gold-standard-iterations", "0"]
    assert main([*argv, "--iterations", "1", "--step", "45", "--max-shift", "0"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "fsc.json").read_text())
    assert min(report["classes"][0]["fsc"]) > 0.99
    assert "FSC 0.143 20.0 Å = Nyquist" in printed and "sampling-limited" in printed
    average, _ = read_volume(out / "average_class1.mrc")
    assert torch.corrcoef(torch.stack([average.flatten(), _blob(12, 10.0).flatten()]))[0, 1] > 0.95


def test_snr_help_says_what_the_interval_of_a_single_pair_is(tmp_path, capsys):
    """Two half maps are one pair: the help promised "a bootstrap 95% interval over pairs", but one pair has
    no bootstrap; the interval printed (a Fisher-z interval over the voxels, here ±0.02 in cc for 10³ voxels)
    must be described where the interval is."""
    generator = torch.Generator().manual_seed(0)
    signal = torch.randn(10, 10, 10, generator=generator)
    a = write_volume(tmp_path / "half1.mrc", signal + torch.randn(10, 10, 10, generator=generator), 10.0)
    b = write_volume(tmp_path / "half2.mrc", signal + torch.randn(10, 10, 10, generator=generator), 10.0)
    assert main(["estimate", "snr", "--pairs-a", str(a), "--pairs-b", str(b)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_pairs"] == 1 and report["ci_low"] < report["snr"] < report["ci_high"]
    with pytest.raises(SystemExit):
        main(["estimate", "snr", "--help"])
    described = " ".join(capsys.readouterr().out.split())
    assert "single pair, e.g. two half maps: a Fisher-z interval" in described
