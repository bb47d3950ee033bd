"""``aitom estimate fsc``: the curve against a plain NumPy FSC, resolutions against a band-limited signal,
masks, the plot, and bad input (one line, exit 2, no plot written)."""

from __future__ import annotations

import json
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from aitom.cli import main
from aitom.io import write_volume

VOXEL_A = 10.0


def _band_limited(shape: tuple[int, int, int], cutoff: float, seed: int) -> np.ndarray:
    """White noise with every Fourier component above ``cutoff`` cycles/voxel removed."""
    noise = np.random.default_rng(seed).normal(size=shape)
    frequency = np.sqrt(sum(k**2 for k in np.meshgrid(*[np.fft.fftfreq(n) for n in shape], indexing="ij")))
    return np.fft.ifftn(np.fft.fftn(noise) * (frequency <= cutoff)).real


def _numpy_fsc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """FSC over the full spectrum, shells round(|k| N) of 1/N cycles/voxel (cubic box)."""
    n = a.shape[0]
    k = np.meshgrid(*[np.fft.fftfreq(n)] * 3, indexing="ij")
    shell = np.rint(np.sqrt(sum(axis**2 for axis in k)) * n).astype(int).ravel()
    fa, fb = np.fft.fftn(a).ravel(), np.fft.fftn(b).ravel()
    keep = shell <= n // 2
    cross = np.bincount(shell[keep], (fa * fb.conj()).real[keep], n // 2 + 1)
    power_a = np.bincount(shell[keep], np.abs(fa[keep]) ** 2, n // 2 + 1)
    power_b = np.bincount(shell[keep], np.abs(fb[keep]) ** 2, n // 2 + 1)
    return cross / np.sqrt(power_a * power_b)


def _estimate(argv: list[str], capsys) -> dict:
    assert main(["estimate", "fsc", *argv]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def half_maps(tmp_path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """Two 'half maps': one signal band-limited to 0.25 cycles/voxel (40 Å at 10 Å) plus independent noise
    20 times weaker than it."""
    signal = _band_limited((32, 32, 32), 0.25, seed=0)
    rng = np.random.default_rng(1)
    a = signal + 0.05 * signal.std() * rng.normal(size=signal.shape)
    b = signal + 0.05 * signal.std() * rng.normal(size=signal.shape)
    return write_volume(tmp_path / "a.mrc", a, VOXEL_A), write_volume(tmp_path / "b.mrc", b, VOXEL_A), a, b


def test_curve_matches_numpy_and_resolution_is_the_signal_band(half_maps, tmp_path, capsys) -> None:
    path_a, path_b, a, b = half_maps
    plot = tmp_path / "fsc.png"
    result = _estimate([str(path_a), str(path_b), "--plot", str(plot)], capsys)
    np.testing.assert_allclose(
        result["fsc"], _numpy_fsc(a.astype(np.float32), b.astype(np.float32)), atol=1e-5
    )
    assert result["frequency_per_a"][1] == pytest.approx(1 / (32 * VOXEL_A), rel=1e-4)
    # the signal stops at 0.25 cycles/voxel = 1/40 Å: both crossings lie within one shell (±1/320 Å⁻¹) of it
    for key in ("fsc_0.5_a", "fsc_0.143_a"):
        assert 1 / result[key] == pytest.approx(1 / 40.0, abs=1 / 320), key
    assert result["mask"] == "none" and result["voxel_size_a"] == VOXEL_A and result["nyquist_a"] == 20.0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_masks_multiply_both_maps(half_maps, tmp_path, capsys) -> None:
    """A soft sphere (plateau 200 Å, edge 30 Å) and the same weights as a mask file give the NumPy FSC of the
    masked maps."""
    from aitom.geometry import soft_sphere_mask

    path_a, path_b, a, b = half_maps
    weights = soft_sphere_mask((32, 32, 32), 10.0, 3.0).numpy()
    expected = _numpy_fsc(a.astype(np.float32) * weights, b.astype(np.float32) * weights)
    sphere = _estimate([str(path_a), str(path_b), "--mask-diameter", "200", "--mask-edge", "30"], capsys)
    assert sphere["mask"] == "soft sphere, diameter 200 Å, edge 30 Å"
    np.testing.assert_allclose(sphere["fsc"], expected, atol=1e-5)
    mask_file = write_volume(tmp_path / "mask.mrc", weights, VOXEL_A)
    from_file = _estimate([str(path_a), str(path_b), "--mask", str(mask_file)], capsys)
    np.testing.assert_allclose(from_file["fsc"], expected, atol=1e-5)


def test_a_map_against_its_negative_has_no_resolution(half_maps, tmp_path, capsys) -> None:
    """Contrast inverted: the FSC is -1 in every shell, below both thresholds from the first shell on, so
    neither resolution is defined (null in the JSON)."""
    path_a, _, a, _ = half_maps
    negative = write_volume(tmp_path / "negative.mrc", -a, VOXEL_A)
    result = _estimate([str(path_a), str(negative)], capsys)
    np.testing.assert_allclose(result["fsc"][1:], -1.0, atol=1e-5)
    assert result["fsc_0.5_a"] is None and result["fsc_0.143_a"] is None


@pytest.mark.parametrize(
    "case",
    [
        "shape",
        "voxel_size",
        "anisotropic",
        "constant",
        "mask_values",
        "mask_shape",
        "mask_too_large",
        "edge_without_mask",
        "plot_exists",
        "plot_not_png",
        "nan",
    ],
)
def test_bad_input_is_one_line_and_exit_2(half_maps, tmp_path, case, capsys) -> None:
    path_a, path_b, a, _ = half_maps
    plot = tmp_path / "out.png"
    argv = [str(path_a), str(path_b), "--plot", str(plot)]
    if case == "shape":
        argv[1] = str(write_volume(tmp_path / "small.mrc", a[:30], VOXEL_A))
    elif case == "voxel_size":
        argv[1] = str(write_volume(tmp_path / "coarse.mrc", a, 11.0))
    elif case == "anisotropic":
        argv[1] = str(write_volume(tmp_path / "skewed.mrc", a, (10.0, 10.0, 12.0)))
    elif case == "constant":
        argv[1] = str(write_volume(tmp_path / "flat.mrc", np.ones_like(a), VOXEL_A))
    elif case == "mask_values":
        argv += ["--mask", str(write_volume(tmp_path / "m.mrc", 2 * np.ones_like(a), VOXEL_A))]
    elif case == "mask_shape":
        argv += ["--mask", str(write_volume(tmp_path / "m.mrc", np.ones((16, 16, 16)), VOXEL_A))]
    elif case == "mask_too_large":
        argv += ["--mask-diameter", "400"]
    elif case == "edge_without_mask":
        argv += ["--mask-edge", "20"]
    elif case == "plot_exists":
        plot.write_bytes(b"keep")
    elif case == "plot_not_png":
        argv[-1] = str(tmp_path / "out.pdf")
    else:
        broken = a.astype(np.float32)
        broken[3, 4, 5] = np.nan
        with mrcfile.new(tmp_path / "nan.mrc") as mrc:
            mrc.set_data(broken)
            mrc.voxel_size = VOXEL_A
        argv[1] = str(tmp_path / "nan.mrc")
    assert main(["estimate", "fsc", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("aitom: error:") and captured.err.count("\n") == 1, captured.err
    if case == "plot_exists":
        assert plot.read_bytes() == b"keep"
    else:
        assert not plot.exists()
