"""The whole-tomogram power spectrum behind ``aitom pick template --whiten``: Welch's estimate over
segments against a plain NumPy version; the whitening filter it gives flattens a coloured spectrum; bad data
refused."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aitom.data.tomogram import tomogram_power_spectrum
from aitom.errors import InputError
from aitom.fourier import frequency_grid
from aitom.io import open_volume_mmap, write_volume
from aitom.ops.filters import gaussian_filter3d
from aitom.ops.template_matching import radial_power_spectrum, whitening_filter

N_SHELLS = 64


def numpy_radial_power(segments: list[np.ndarray]) -> dict[int, float]:
    """Mean |FFT|² per shell (shell = round(|k| / (√3/2) · 63)), k = 0 left out, over the segments' half
    (real-input) spectra, by NumPy."""
    edge = segments[0].shape[0]
    kz, ky, kx = np.meshgrid(np.fft.fftfreq(edge), np.fft.fftfreq(edge), np.fft.rfftfreq(edge), indexing="ij")
    k = np.sqrt(kz**2 + ky**2 + kx**2)
    shell = np.clip(np.round(k / (math.sqrt(3) / 2) * (N_SHELLS - 1)), 0, N_SHELLS - 1).astype(int)
    power = np.mean([np.abs(np.fft.rfftn(segment)) ** 2 for segment in segments], axis=0)
    return {int(s): float(power[(shell == s) & (k > 0)].mean()) for s in np.unique(shell[k > 0])}


@pytest.fixture
def coloured_tomogram(tmp_path):
    """A 40×70×90 tomogram of smoothed noise plus white noise (a spectrum falling about 40-fold to a floor,
    as a tomogram's does), written as MRC."""
    generator = torch.Generator().manual_seed(2)
    volume = gaussian_filter3d(torch.randn(40, 70, 90, generator=generator, dtype=torch.float64), 1.0)
    volume = volume + 0.1 * torch.randn(40, 70, 90, generator=generator, dtype=torch.float64)
    path = tmp_path / "tomogram.mrc"
    write_volume(path, volume.float(), 10.0)
    return path, volume.float().double()


def test_welch_segments_and_shells_match_numpy(coloured_tomogram):
    """Segments of 20³ on a grid from voxel 0 (2 × 3 × 4, the remainders left out), read from the memory
    map, give NumPy's shell means."""
    path, volume = coloured_tomogram
    array, _ = open_volume_mmap(path)
    centres, power = tomogram_power_spectrum(array, segment_voxels=20)
    corners = [(z, y, x) for z in (0, 20) for y in (0, 20, 40) for x in (0, 20, 40, 60)]
    expected = numpy_radial_power([volume[z : z + 20, y : y + 20, x : x + 20].numpy() for z, y, x in corners])
    shells = torch.round(centres / (math.sqrt(3) / 2) * (N_SHELLS - 1)).long().tolist()
    assert shells == sorted(expected)
    np.testing.assert_allclose(power.numpy(), [expected[s] for s in shells], rtol=1e-6)


def test_segments_are_spread_evenly_when_there_are_too_many(coloured_tomogram):
    """max_segments 5 of the 24: the estimate is that of 5 of them (the first, the last and 3 between)."""
    _, volume = coloured_tomogram
    centres, power = tomogram_power_spectrum(volume, segment_voxels=20, max_segments=5)
    corners = [(z, y, x) for z in (0, 20) for y in (0, 20, 40) for x in (0, 20, 40, 60)]
    chosen = [corners[i] for i in (0, 6, 12, 17, 23)]  # round(linspace(0, 23, 5))
    segments = torch.stack([volume[z : z + 20, y : y + 20, x : x + 20] for z, y, x in chosen])
    expected_centres, expected_power = radial_power_spectrum(segments, N_SHELLS)
    torch.testing.assert_close(centres, expected_centres)
    torch.testing.assert_close(power, expected_power)


def test_the_whole_tomogram_whitening_flattens_its_spectrum(coloured_tomogram):
    """The filter from the segments' spectrum (default: 40³, the shortest axis) whitens the whole tomogram:
    its radial power over four bands within 15 % (measured 5.5 %; unwhitened: a factor 44). Smaller segments
    leak more power from their edges into the high frequencies (32³: 18 %)."""
    _, volume = coloured_tomogram
    whitening = whitening_filter(*tomogram_power_spectrum(volume))
    k = frequency_grid(tuple(volume.shape), rfft=True, centered=False, dtype=torch.float64).norm(dim=-1)
    spectrum = torch.fft.rfftn(volume)
    bands = [(k > low) & (k <= low + 0.05) for low in (0.05, 0.15, 0.25, 0.35)]

    def spread(power: torch.Tensor) -> float:
        means = [float(power[band].mean()) for band in bands]
        return max(means) / min(means)

    assert spread(spectrum.abs().square()) > 40
    assert spread((spectrum * whitening(k)).abs().square()) < 1.15


def test_non_finite_values_are_refused_with_the_file_named(coloured_tomogram, tmp_path):
    _, volume = coloured_tomogram
    volume = volume.clone()
    volume[30, 50, 70] = float("nan")
    with pytest.raises(InputError, match=r"^bad\.mrc: holds NaN or Inf values$"):
        tomogram_power_spectrum(volume, segment_voxels=20, path="bad.mrc")
