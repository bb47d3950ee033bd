"""Fourier-space tools: centred FFTs, frequency grids, band-pass filters, missing wedge, CTF, FSC.

All transforms use ``torch.fft``; every function works batched on the device and dtype of its input. Layouts
(full or half ``rfft`` spectrum, centred or not) and frequency units are described in
:mod:`aitom.fourier.fft`; the missing-wedge geometry in :mod:`aitom.fourier.wedge`; the CTF sign convention
in :mod:`aitom.fourier.ctf`.
"""

from __future__ import annotations

from aitom.fourier.ctf import (
    ctf_1d,
    ctf_2d,
    ctf_3d,
    ctf_zeros_a_inv,
    dose_weights,
    electron_wavelength_a,
    phase_flip,
    wiener_filter,
)
from aitom.fourier.fft import (
    fftn_centered,
    frequency_grid,
    hermitian_half_to_centered,
    ifftn_centered,
    irfftn_centered,
    nyquist_samples,
    radial_average,
    radial_frequency,
    rfftn_centered,
    shell_index,
)
from aitom.fourier.filters import apply_fourier_filter, bandpass, bandpass_filter_kernel, lowpass
from aitom.fourier.fsc import fourier_shell_correlation, fsc_resolutions, resolution_at, ssnr_from_fsc
from aitom.fourier.wedge import apply_missing_wedge, missing_wedge_mask, wedge_observed_fraction

__all__ = [
    "apply_fourier_filter",
    "apply_missing_wedge",
    "bandpass",
    "bandpass_filter_kernel",
    "ctf_1d",
    "ctf_2d",
    "ctf_3d",
    "ctf_zeros_a_inv",
    "dose_weights",
    "electron_wavelength_a",
    "fftn_centered",
    "fourier_shell_correlation",
    "frequency_grid",
    "fsc_resolutions",
    "hermitian_half_to_centered",
    "ifftn_centered",
    "irfftn_centered",
    "lowpass",
    "missing_wedge_mask",
    "nyquist_samples",
    "phase_flip",
    "radial_average",
    "radial_frequency",
    "resolution_at",
    "rfftn_centered",
    "shell_index",
    "ssnr_from_fsc",
    "wedge_observed_fraction",
    "wiener_filter",
]
