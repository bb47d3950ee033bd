"""The command line on real inputs and real mistakes: ``aitom hand`` with EMDB maps whose headers carry an
origin, ``aitom convert --resample`` beyond memory, ``aitom filter`` with scales in the wrong unit, ``aitom
estimate fsc`` with a mask edge wider than the box, ``aitom estimate ... | head``; each checked against an
independent expectation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from aitom.cli import EXIT_BROKEN_PIPE, main
from aitom.io import write_volume

DATA = Path(__file__).parent / "data"
EMD_3197 = DATA / "maps" / "EMD-3197.map"  # 20³ at 11.4 Å, nxstart -2: its first voxel lies at x = -22.8 Å


def _error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("aitom: error:")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def blob(tmp_path: Path) -> Path:
    """A 16³ volume at 10 Å: a Gaussian blob on a little noise."""
    z, y, x = np.mgrid[:16, :16, :16] - 7.5
    volume = np.exp(-(x**2 + y**2 + z**2) / 8.0) + 0.01 * np.random.default_rng(0).standard_normal(
        (16, 16, 16)
    )
    return write_volume(tmp_path / "blob.mrc", volume.astype(np.float32), 10.0)


def test_hand_mirrored_out_lies_where_the_average_lies(tmp_path: Path) -> None:
    """The reference written "superposed on the average" must carry the average's position: EMD-3197's
    header places its first voxel at nxstart × voxel size = -2 × 11.4 Å along x, and a viewer overlays two
    maps by their origins. It was written at origin 0, 22.8 Å away from the average."""
    with mrcfile.open(EMD_3197, permissive=True) as mrc:
        header = mrc.header
        voxel = float(mrc.voxel_size.x)
        expected = (int(header.nxstart) * voxel, int(header.nystart) * voxel, int(header.nzstart) * voxel)
    assert expected[0] == pytest.approx(-22.8, abs=1e-4)  # the quirk under test is in the file
    out = tmp_path / "superposed.mrc"
    argv = ["hand", str(EMD_3197), str(EMD_3197), "--mirrored-out", str(out), "--step", "30"]
    assert main(argv) == 0
    with mrcfile.open(out) as mrc:
        origin = (float(mrc.header.origin.x), float(mrc.header.origin.y), float(mrc.header.origin.z))
        assert float(mrc.voxel_size.x) == pytest.approx(voxel, rel=1e-6)
        starts = (int(mrc.header.nxstart), int(mrc.header.nystart), int(mrc.header.nzstart))
    position = tuple(o + s * voxel for o, s in zip(origin, starts))
    assert position == pytest.approx(expected, abs=1e-3)


def test_convert_resample_beyond_memory_is_refused_before_allocating(tmp_path, blob, capsys, monkeypatch):
    """``--resample 0.001`` on a real crop tried to build a 10¹⁷-voxel volume and was killed by the kernel
    (exit 137); a resample whose result cannot fit in memory must be one error line, exit 2, no output."""
    from aitom import io

    out = tmp_path / "fine.mrc"
    # 16³ at 10 Å to 5 Å is 32³ voxels: 32³ × 4 bytes alone exceed a "machine" of 100 kB
    monkeypatch.setattr(io, "physical_memory_bytes", lambda: 100_000)
    assert main(["convert", str(blob), str(out), "--resample", "5"]) == 2
    line = _error_line(capsys)
    assert str(blob) in line and "--resample 5" in line and "32x32x32" in line and "memory" in line
    assert not out.exists()
    # with memory enough, the same resample runs and keeps the extent: 16 × 10 Å = 32 × 5 Å
    monkeypatch.setattr(io, "physical_memory_bytes", lambda: 10**12)
    assert main(["convert", str(blob), str(out), "--resample", "5"]) == 0
    with mrcfile.open(out) as mrc:
        assert mrc.data.shape == (32, 32, 32)
        assert float(mrc.voxel_size.x) == pytest.approx(5.0)


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["gaussian", "--sigma-voxels", "100"], "--sigma-voxels 100"),
        (["gaussian", "--sigma-a", "20", "--voxel-size", "0.01"], "--sigma-a 20 Å"),  # 2000 voxels
        (["dog", "--sigma-voxels", "1", "--sigma2-voxels", "40"], "--sigma2-voxels 40"),
        (["diffusion", "--rho-voxels", "30", "--iterations", "1"], "--rho-voxels 30"),
    ],
)
def test_filter_refuses_a_scale_wider_than_the_volume(tmp_path, blob, capsys, argv, option) -> None:
    """A Gaussian scale far beyond the volume (--sigma-a 1e9 typed for a real crop, or a voxel size 1e-9)
    padded each axis by 4 sigma and was killed for memory or ended in a torch allocation traceback; a scale
    wider than the longest axis (here 16 voxels) must be one error line naming the input, exit 2."""
    out = tmp_path / "out.mrc"
    assert main(["filter", argv[0], str(blob), str(out), *argv[1:]]) == 2
    line = _error_line(capsys)
    assert str(blob) in line and option in line and "16 voxels" in line
    assert not out.exists()


def test_filter_accepts_a_scale_as_wide_as_the_volume(tmp_path, blob) -> None:
    """The bound is the longest axis itself: sigma = 16 voxels on a 16³ volume still blurs, as scipy does."""
    from scipy.ndimage import gaussian_filter

    out = tmp_path / "out.mrc"
    assert main(["filter", "gaussian", str(blob), str(out), "--sigma-voxels", "16"]) == 0
    with mrcfile.open(blob) as mrc:
        expected = gaussian_filter(mrc.data.astype(np.float64), 16.0, mode="reflect", truncate=4.0)
    with mrcfile.open(out) as mrc:
        np.testing.assert_allclose(mrc.data, expected, atol=1e-5)


def test_json_piped_into_head_ends_quietly(tmp_path: Path) -> None:
    """``aitom estimate fsc A B | head -c 100`` printed a BrokenPipeError traceback when head stopped
    reading; a closed standard output must end the command silently with SIGPIPE's exit status 141."""
    command = [sys.executable, "-m", "aitom", "estimate", "fsc", str(EMD_3197), str(EMD_3197)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    process.stdout.close()  # the reader goes away before the command prints (it is still importing torch)
    stderr = process.stderr.read().decode()
    process.stderr.close()
    assert process.wait(timeout=120) == EXIT_BROKEN_PIPE == 141
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr


def test_fsc_refuses_a_mask_edge_wider_than_the_box(tmp_path, blob, capsys) -> None:
    """``aitom estimate fsc --mask-diameter 100 --mask-edge 1e9`` reported a "soft sphere" mask that is 1 to
    within 1e-14 over the whole box (an unmasked FSC under a masked label); an edge wider than the box
    (here 16 × 10 Å = 160 Å) must be refused, and an edge within it accepted."""
    other = write_volume(tmp_path / "other.mrc", mrcfile.read(blob) + 0.01, 10.0)
    argv = ["estimate", "fsc", str(blob), str(other), "--mask-diameter", "50"]
    assert main([*argv, "--mask-edge", "1e9"]) == 2
    line = _error_line(capsys)
    assert "--mask-edge 1e+09" in line and "160 Å" in line
    assert main([*argv, "--mask-edge", "100"]) == 0
    assert json.loads(capsys.readouterr().out)["mask"] == "soft sphere, diameter 50 Å, edge 100 Å"
