"""Per-tilt image formation and noise: CTF, dose weighting, shot noise, and scaling noise to a target SNR.

Image formation (weak-phase object). A tilt image's projected potential ``Φ`` (V·Å: the line integral of the
potential in volts along the beam, in Å) shifts the electron wave's phase by ``σ_e Φ``, with the interaction
constant ``σ_e = 2π m e λ / h²`` (6.53·10⁻⁴ rad/(V·Å) at 300 kV). The recorded intensity relative to its mean
is the contrast image ``c = F⁻¹[2 · CTF(k) · D(k) · F[σ_e Φ]]`` with the CTF of :mod:`aitom.fourier.ctf`
(its sign makes a dense object dark in underfocus, ``CTF(0) = −A``) and the radiation-damage filter ``D`` of
Grant & Grigorieff for the exposure already received (:func:`aitom.fourier.dose_weights`). Images are
therefore recorded PROTEIN DARK, as a microscope records them; the simulator's tomograms negate the
reconstruction so that particles are bright.

Shot noise. A pixel of ``p`` Å receives on average ``N = dose · p²`` electrons; the counts are Poisson with
mean ``N (1 + c)``. Divided by ``N`` this is the contrast plus a noise of variance ``(1 + c) / N``, drawn
here as a Gaussian (the normal approximation of Poisson counts, accurate for the tens to hundreds of
electrons per pixel of cryo-ET at 2–10 Å/pixel).

SNR. Where a target signal-to-noise ratio is asked for instead of a physical dose, the noise is scaled so
that ``var(signal) / var(noise) = snr`` over a stated region (:func:`noise_scale_for_snr`), the definition
AITom uses for subtomograms (signal and noise measured separately on the final volume: exact because every
step after the noise is added is linear).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from aitom.fourier import ctf_2d, dose_weights, electron_wavelength_a, frequency_grid

__all__ = [
    "electrons_per_pixel",
    "form_tilt_images",
    "interaction_constant_rad_per_v_a",
    "noise_scale_for_snr",
    "shot_noise",
    "tilt_transfer",
]

_ELECTRON_REST_ENERGY_KEV = 510.99895


def interaction_constant_rad_per_v_a(voltage_kv: float) -> float:
    """Electron interaction constant ``σ_e = (2π / (λ V)) · (m c² + e V) / (2 m c² + e V)``, rad/(V·Å).

    Args:
        voltage_kv: accelerating voltage, kV.

    Returns:
        ``σ_e`` (0.000653 at 300 kV, 0.000729 at 200 kV).
    """
    wavelength_a = float(electron_wavelength_a(voltage_kv))
    relativistic = (_ELECTRON_REST_ENERGY_KEV + voltage_kv) / (2 * _ELECTRON_REST_ENERGY_KEV + voltage_kv)
    return 2 * math.pi / (wavelength_a * voltage_kv * 1e3) * relativistic


def electrons_per_pixel(dose_e_per_a2: float | torch.Tensor, pixel_size_a: float) -> float | torch.Tensor:
    """Mean electron count of a pixel: ``dose · pixel_size²``."""
    return dose_e_per_a2 * pixel_size_a**2


def tilt_transfer(
    shape_yx: Sequence[int],
    *,
    pixel_size_a: float,
    defocus_u_um: torch.Tensor,
    defocus_v_um: torch.Tensor | None = None,
    astigmatism_angle_deg: float = 0.0,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.07,
    b_factor_a2: float = 0.0,
    exposure_e_per_a2: torch.Tensor | None = None,
    ctf: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Per-tilt Fourier transfer ``2 · CTF(k) · D(k)`` of the weak-phase image formation (``rfft2`` layout).

    Args:
        shape_yx: tilt image shape ``(Y, X)``.
        pixel_size_a: pixel size, Å.
        defocus_u_um, defocus_v_um: ``(n,)`` per-tilt defoci, µm, positive = underfocus (``v`` = ``u`` when
            None: no astigmatism).
        astigmatism_angle_deg: angle of the U axis from +x, degrees.
        voltage_kv, cs_mm, amplitude_contrast, b_factor_a2: microscope, see :func:`aitom.fourier.ctf_1d`.
        exposure_e_per_a2: ``(n,)`` exposure at each tilt for dose weighting, e⁻/Å² (None: no weighting).
        ctf: False replaces ``2 · CTF`` by ``−1`` (an ideal inverting detector: no CTF, same sign).
        device, dtype: of the result.

    Returns:
        ``(n, Y, X // 2 + 1)`` real transfer to multiply ``torch.fft.rfft2`` of the phase images.
    """
    defocus_u = torch.as_tensor(defocus_u_um, dtype=torch.float64).reshape(-1)
    n_tilts = defocus_u.numel()
    if ctf:
        transfer = 2.0 * ctf_2d(
            tuple(shape_yx),
            pixel_size_a=pixel_size_a,
            defocus_u_um=defocus_u.to(dtype),
            defocus_v_um=None
            if defocus_v_um is None
            else torch.as_tensor(defocus_v_um).reshape(-1).to(dtype),
            astigmatism_angle_deg=astigmatism_angle_deg,
            voltage_kv=voltage_kv,
            cs_mm=cs_mm,
            amplitude_contrast=amplitude_contrast,
            b_factor_a2=b_factor_a2,
            rfft=True,
            centered=False,
            device=device,
            dtype=dtype,
        )
    else:
        transfer = -torch.ones((n_tilts, shape_yx[0], shape_yx[1] // 2 + 1), device=device, dtype=dtype)
    if exposure_e_per_a2 is not None:
        grid = frequency_grid(
            tuple(shape_yx), voxel_size_a=pixel_size_a, rfft=True, centered=False, device=device, dtype=dtype
        )
        exposure = torch.as_tensor(exposure_e_per_a2, device=device, dtype=dtype).reshape(-1, 1, 1)
        transfer = transfer * dose_weights(torch.linalg.vector_norm(grid, dim=-1), exposure, voltage_kv)
    return transfer


def form_tilt_images(
    projected_potential_v_a: torch.Tensor, transfer: torch.Tensor, *, voltage_kv: float = 300.0
) -> torch.Tensor:
    """Contrast images ``c = F⁻¹[transfer · F[σ_e Φ]]`` of projected potentials (weak-phase approximation).

    Args:
        projected_potential_v_a: ``(..., n, Y, X)`` projected potential, V·Å.
        transfer: ``(n, Y, X // 2 + 1)`` from :func:`tilt_transfer`.
        voltage_kv: accelerating voltage (for the interaction constant).

    Returns:
        ``(..., n, Y, X)`` intensity contrast (relative to the mean intensity; protein dark).
    """
    size_y, size_x = projected_potential_v_a.shape[-2:]
    phase = interaction_constant_rad_per_v_a(voltage_kv) * projected_potential_v_a
    spectrum = torch.fft.rfft2(phase) * transfer
    return torch.fft.irfft2(spectrum, s=(size_y, size_x))


def shot_noise(
    contrast: torch.Tensor,
    electrons_per_pixel: torch.Tensor | float,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Gaussian approximation of the Poisson shot noise of images with the given contrast.

    Args:
        contrast: ``(..., n, Y, X)`` intensity contrast ``c`` (mean intensity 1 + c).
        electrons_per_pixel: mean count ``N`` of a pixel at contrast 0: a number or ``(n,)`` per tilt.
        generator: random generator on the device of ``contrast``.

    Returns:
        Noise of the same shape, variance ``max(1 + c, 0) / N`` per pixel (add it to ``contrast``).
    """
    count = torch.as_tensor(electrons_per_pixel, device=contrast.device, dtype=contrast.dtype)
    if count.ndim:
        count = count.reshape(-1, 1, 1)
    if not bool(torch.all(count > 0)):
        raise ValueError("electrons per pixel must be positive")
    gaussian = torch.randn(contrast.shape, generator=generator, device=contrast.device, dtype=contrast.dtype)
    return gaussian * torch.sqrt((1 + contrast).clamp(min=0) / count)


def noise_scale_for_snr(
    signal: torch.Tensor, noise: torch.Tensor, snr: float, *, dim: Sequence[int] = (-3, -2, -1)
) -> torch.Tensor:
    """Factor ``λ`` such that ``var(signal) / var(λ · noise) = snr`` over the axes ``dim``.

    Args:
        signal: ``(...)`` noise-free part of the final data.
        noise: same shape, the noise-only part.
        snr: target signal-to-noise variance ratio, ``> 0``.
        dim: axes over which the variances are taken (default: each volume of a batch).

    Returns:
        ``λ`` with the reduced axes kept as size 1 (broadcasts against ``noise``); 0 where the noise is 0.
    """
    if not snr > 0:
        raise ValueError(f"snr must be positive, got {snr}")
    dim = tuple(dim)
    signal_variance = signal.var(dim=dim, keepdim=True, unbiased=False)
    noise_variance = noise.var(dim=dim, keepdim=True, unbiased=False)
    safe = torch.where(noise_variance > 0, noise_variance, torch.ones_like(noise_variance))
    return torch.where(noise_variance > 0, torch.sqrt(signal_variance / (snr * safe)), 0.0)
