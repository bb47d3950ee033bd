"""Contrast transfer function, its zeros, CTF correction and dose (exposure) weighting.

Sign convention (physical, raw images): with the wave aberration

    χ(k) = π λ Δf k² − (π/2) Cs λ³ k⁴        (Δf > 0: underfocus)

the CTF is

    CTF(k) = −[ sqrt(1 − A²) sin(χ + φ) + A cos(χ + φ) ] · exp(−B k² / 4)  =  −sin(χ + φ + asin A) · E(k)

with amplitude contrast A and phase-plate shift φ. At k = 0 it is ``−A``: a positive (dense) object is dark
in an underfocused bright-field image. RELION's ``CTF::getCTF`` (src/ctf.h) returns the negative of this,
because RELION works on contrast-inverted particle images (protein white); multiply by −1 to compare.

Units: frequencies in cycles/Å (``frequency_a_inv``), defocus in µm, Cs in mm, voltage in kV, B in Å²,
wavelength in Å. Parameters given as tensors broadcast as documented per function (one CTF per batch item).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from aitom.errors import InputError
from aitom.fourier.fft import frequency_grid, nyquist_samples
from aitom.fourier.filters import apply_fourier_filter

__all__ = [
    "ctf_1d",
    "ctf_2d",
    "ctf_3d",
    "ctf_zeros_a_inv",
    "dose_weights",
    "electron_wavelength_a",
    "phase_flip",
    "wiener_filter",
]

# CODATA 2018: h c in eV·Å and the electron rest energy m c² in eV (well-scaled in float32, unlike SI units).
_HC_EV_A = 12398.419843320026
_ELECTRON_REST_ENERGY_EV = 510998.95000

TensorLike = float | torch.Tensor


def electron_wavelength_a(voltage_kv: TensorLike) -> TensorLike:
    """Relativistic electron wavelength ``λ = h / sqrt(2 m e V (1 + e V / (2 m c²)))``, in Å.

    Evaluated as ``h c / sqrt(E (E + 2 m c²))`` with the kinetic energy ``E = e V`` in eV.

    Args:
        voltage_kv: accelerating voltage, kV (float or tensor).

    Returns:
        Wavelength in Å, same type as the input (0.019687 Å at 300 kV, 0.025079 Å at 200 kV).
    """
    energy_ev = voltage_kv * 1e3
    return _HC_EV_A / (energy_ev * (energy_ev + 2 * _ELECTRON_REST_ENERGY_EV)) ** 0.5


def _check_ctf_parameters(voltage_kv: TensorLike, cs_mm: TensorLike, amplitude_contrast: TensorLike) -> None:
    if not bool(torch.all(torch.as_tensor(voltage_kv) > 0)):
        raise InputError(f"voltage must be positive, got {voltage_kv} kV")
    if not bool(torch.all(torch.as_tensor(cs_mm) >= 0)):
        raise InputError(f"spherical aberration must be >= 0, got {cs_mm} mm")
    contrast = torch.as_tensor(amplitude_contrast)
    if not bool(torch.all((contrast >= 0) & (contrast < 1))):
        raise InputError(f"amplitude contrast must be in [0, 1), got {amplitude_contrast}")


def _ctf_of_k_squared(
    k_squared: torch.Tensor,
    defocus_um: torch.Tensor,
    voltage_kv: TensorLike,
    cs_mm: TensorLike,
    amplitude_contrast: TensorLike,
    b_factor_a2: TensorLike,
    phase_shift_deg: TensorLike,
) -> torch.Tensor:
    """CTF at squared frequencies (Å⁻²); every parameter broadcasts against ``k_squared``."""
    _check_ctf_parameters(voltage_kv, cs_mm, amplitude_contrast)

    def as_tensor(value: TensorLike) -> torch.Tensor:
        return torch.as_tensor(value, device=k_squared.device, dtype=k_squared.dtype)

    voltage = torch.as_tensor(voltage_kv, device=k_squared.device, dtype=torch.float64)
    wavelength_a = electron_wavelength_a(voltage).to(k_squared.dtype)
    defocus_a = defocus_um * 1e4
    cs_a = as_tensor(cs_mm) * 1e7
    chi = (
        math.pi * wavelength_a * defocus_a * k_squared - 0.5 * math.pi * cs_a * wavelength_a**3 * k_squared**2
    )
    phase = chi + torch.deg2rad(as_tensor(phase_shift_deg)) + torch.asin(as_tensor(amplitude_contrast))
    envelope = torch.exp(-as_tensor(b_factor_a2) * k_squared / 4.0)
    return -torch.sin(phase) * envelope


def ctf_1d(
    frequency_a_inv: torch.Tensor,
    *,
    defocus_um: TensorLike,
    voltage_kv: TensorLike = 300.0,
    cs_mm: TensorLike = 2.7,
    amplitude_contrast: TensorLike = 0.07,
    b_factor_a2: TensorLike = 0.0,
    phase_shift_deg: TensorLike = 0.0,
) -> torch.Tensor:
    """CTF at given spatial-frequency magnitudes (convention in the module docstring).

    Args:
        frequency_a_inv: ``|k|`` in cycles/Å, any shape ``(...)``.
        defocus_um: defocus, µm, positive = underfocus.
        voltage_kv: accelerating voltage, kV.
        cs_mm: spherical aberration, mm (>= 0).
        amplitude_contrast: fraction A in [0, 1).
        b_factor_a2: envelope ``exp(-B k² / 4)``, Å².
        phase_shift_deg: phase-plate phase shift, degrees.

    Every parameter may be a tensor that broadcasts against ``frequency_a_inv`` as is (e.g. defocus
    ``(B, 1)`` with frequencies ``(N,)`` gives ``(B, N)``).

    Returns:
        CTF values, broadcast shape, dtype and device of ``frequency_a_inv``; differentiable in every tensor.
    """
    k_squared = frequency_a_inv**2
    defocus = torch.as_tensor(defocus_um, device=k_squared.device, dtype=k_squared.dtype)
    return _ctf_of_k_squared(
        k_squared, defocus, voltage_kv, cs_mm, amplitude_contrast, b_factor_a2, phase_shift_deg
    )


def _with_trailing_dims(value: TensorLike, n_dims: int, like: torch.Tensor) -> torch.Tensor:
    tensor = torch.as_tensor(value, device=like.device, dtype=like.dtype)
    return tensor.reshape(*tensor.shape, *([1] * n_dims))


def ctf_2d(
    shape: Sequence[int],
    *,
    pixel_size_a: float,
    defocus_u_um: TensorLike,
    defocus_v_um: TensorLike | None = None,
    astigmatism_angle_deg: TensorLike = 0.0,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.07,
    b_factor_a2: TensorLike = 0.0,
    phase_shift_deg: TensorLike = 0.0,
    rfft: bool = True,
    centered: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Astigmatic 2-D CTF of an image (RELION's rlnDefocusU/V/Angle convention).

    The defocus along the direction at angle θ from the +x axis (counter-clockwise towards +y) is
    ``(Δf_u + Δf_v)/2 + (Δf_u − Δf_v)/2 · cos(2 (θ − astigmatism_angle))``, so ``defocus_u_um`` applies
    along ``astigmatism_angle_deg`` and ``defocus_v_um`` perpendicular to it. On the Nyquist line of an
    even axis, where a sample stands for two mirror directions, the astigmatic term is their average (keeps
    the CTF Friedel symmetric on the grid).

    Args:
        shape: image shape ``(Y, X)``.
        pixel_size_a: pixel size, Å.
        defocus_u_um, defocus_v_um: defoci, µm (positive = underfocus); ``defocus_v_um=None`` means no
            astigmatism.
        astigmatism_angle_deg: angle of the U axis from +x, degrees.
        voltage_kv, cs_mm, amplitude_contrast, b_factor_a2, phase_shift_deg: as in :func:`ctf_1d`.
        rfft, centered: layout (see :mod:`aitom.fourier.fft`); the default multiplies ``rfftn`` output.
        device, dtype: of the result.

    Defocus, angle, B-factor and phase shift may be tensors of a batch shape ``(...)`` (e.g. one per tilt).

    Returns:
        Tensor ``(..., Y, X // 2 + 1)`` (``rfft``) or ``(..., Y, X)``.
    """
    if len(shape) != 2:
        raise ValueError(f"shape must be (Y, X), got {tuple(shape)}")
    grid = frequency_grid(
        shape, voxel_size_a=pixel_size_a, rfft=rfft, centered=centered, device=device, dtype=dtype
    )
    kx, ky = grid[..., 0], grid[..., 1]
    defocus_u = _with_trailing_dims(defocus_u_um, 2, kx)
    defocus_v = defocus_u if defocus_v_um is None else _with_trailing_dims(defocus_v_um, 2, kx)
    direction = torch.atan2(ky, kx)
    astigmatism_angle = torch.deg2rad(_with_trailing_dims(astigmatism_angle_deg, 2, kx))
    astigmatism = torch.cos(2.0 * (direction - astigmatism_angle))
    # A sample on the Nyquist line of an even axis stands for both signs of that frequency component, i.e.
    # for the directions θ and -θ (or π - θ): average cos(2(θ - α)) over them to stay Friedel symmetric.
    on_nyquist = nyquist_samples(shape, rfft=rfft, centered=centered, device=kx.device).any(dim=-1)
    nyquist_astigmatism = torch.cos(2.0 * direction) * torch.cos(2.0 * astigmatism_angle)
    astigmatism = torch.where(on_nyquist, nyquist_astigmatism, astigmatism)
    defocus = 0.5 * (defocus_u + defocus_v) + 0.5 * (defocus_u - defocus_v) * astigmatism
    return _ctf_of_k_squared(
        kx**2 + ky**2,
        defocus,
        voltage_kv,
        cs_mm,
        amplitude_contrast,
        _with_trailing_dims(b_factor_a2, 2, kx),
        _with_trailing_dims(phase_shift_deg, 2, kx),
    )


def ctf_3d(
    shape: Sequence[int],
    *,
    voxel_size_a: float,
    defocus_um: TensorLike,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.07,
    b_factor_a2: TensorLike = 0.0,
    phase_shift_deg: TensorLike = 0.0,
    rfft: bool = True,
    centered: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Isotropic 3-D CTF of a subtomogram: ``ctf_1d(|k|)`` on the 3-D grid.

    The approximation AITom uses for subtomograms (one defocus for the whole particle, no astigmatism, no
    defocus gradient across tilts); combine with :func:`aitom.fourier.missing_wedge_mask` for the wedge.

    Args:
        shape: volume shape ``(Z, Y, X)``.
        voxel_size_a: voxel size, Å.
        defocus_um, b_factor_a2, phase_shift_deg: may be tensors of a batch shape ``(...)``.
        voltage_kv, cs_mm, amplitude_contrast: as in :func:`ctf_1d`.
        rfft, centered, device, dtype: layout and type of the result.

    Returns:
        Tensor ``(..., Z, Y, X // 2 + 1)`` (``rfft``) or ``(..., Z, Y, X)``.
    """
    if len(shape) != 3:
        raise ValueError(f"shape must be (Z, Y, X), got {tuple(shape)}")
    grid = frequency_grid(
        shape, voxel_size_a=voxel_size_a, rfft=rfft, centered=centered, device=device, dtype=dtype
    )
    k_squared = (grid**2).sum(dim=-1)
    return _ctf_of_k_squared(
        k_squared,
        _with_trailing_dims(defocus_um, 3, k_squared),
        voltage_kv,
        cs_mm,
        amplitude_contrast,
        _with_trailing_dims(b_factor_a2, 3, k_squared),
        _with_trailing_dims(phase_shift_deg, 3, k_squared),
    )


def ctf_zeros_a_inv(
    n_zeros: int,
    *,
    defocus_um: float,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.07,
    phase_shift_deg: float = 0.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The first ``n_zeros`` frequencies ``k > 0`` (cycles/Å) where :func:`ctf_1d` is zero, analytically.

    The CTF vanishes where ``χ(k) + φ = nπ`` (``φ = asin A + phase shift``). With ``u = k²`` this is the
    quadratic ``(π/2) Cs λ³ u² − π λ Δf u + (nπ − φ) = 0``, solved on the rising branch of χ (below its
    maximum at ``u = Δf / (Cs λ²)``) and then on the falling branch, in increasing order of k.

    Returns:
        Tensor ``(n_zeros,)``, increasing, in cycles/Å.

    Raises:
        InputError: bad parameters, or a CTF with fewer zeros than asked (no defocus and no Cs).
    """
    _check_ctf_parameters(voltage_kv, cs_mm, amplitude_contrast)
    if n_zeros < 0:
        raise InputError(f"number of zeros must be >= 0, got {n_zeros}")
    wavelength_a = electron_wavelength_a(float(voltage_kv))
    linear = math.pi * wavelength_a * defocus_um * 1e4  # χ = linear·u − quadratic·u²
    quadratic = 0.5 * math.pi * cs_mm * 1e7 * wavelength_a**3
    offset = math.asin(amplitude_contrast) + math.radians(phase_shift_deg)
    zeros_u: list[float] = []
    if quadratic > 0:
        chi_top = linear**2 / (4 * quadratic) if linear > 0 else 0.0
        if linear > 0:  # rising branch: targets 0 < t < chi_top, n increasing
            n = math.floor(offset / math.pi) + 1
            while len(zeros_u) < n_zeros and (target := n * math.pi - offset) < chi_top:
                zeros_u.append(2 * target / (linear + math.sqrt(linear**2 - 4 * quadratic * target)))
                n += 1
        n = math.ceil((chi_top + offset) / math.pi) - 1  # falling branch: targets t < chi_top, n decreasing
        while len(zeros_u) < n_zeros:
            target = n * math.pi - offset
            root = math.sqrt(linear**2 - 4 * quadratic * target)
            # the larger root of quadratic·u² − linear·u + target = 0, in the form without cancellation
            zeros_u.append((linear + root) / (2 * quadratic) if linear >= 0 else 2 * target / (linear - root))
            n -= 1
    elif linear != 0:  # no Cs: χ = linear·u, zeros where t has the sign of linear
        step = 1 if linear > 0 else -1
        n = math.floor(offset / math.pi) + 1 if linear > 0 else math.ceil(offset / math.pi) - 1
        while len(zeros_u) < n_zeros:
            zeros_u.append((n * math.pi - offset) / linear)
            n += step
    elif n_zeros > 0:
        raise InputError("a CTF with zero defocus and zero Cs is constant and has no zeros")
    return torch.tensor(zeros_u, dtype=torch.float64).sqrt().to(device=device, dtype=dtype)


def phase_flip(data: torch.Tensor, ctf: torch.Tensor, *, spatial_dims: int = 3) -> torch.Tensor:
    """Correct the CTF's sign: multiply the spectrum by ``sign(ctf)`` (+1 where the CTF is 0).

    Args:
        data: real volume ``(..., Z, Y, X)`` or image ``(..., Y, X)`` (``spatial_dims=2``).
        ctf: CTF in the half, non-centred layout (as :func:`ctf_2d`/:func:`ctf_3d` return by default),
            ``(..., Z, Y, X // 2 + 1)``, broadcastable against the spectrum of ``data``.
        spatial_dims: 3 for volumes, 2 for images.

    Returns:
        Real tensor of ``data``'s shape: its spectrum is that of ``data`` times ``sign(ctf)``, so after
        phase flipping, the spectrum of an image of ``F`` formed with ``ctf`` is ``|ctf| F``.
    """
    sign = torch.where(ctf < 0, -torch.ones_like(ctf), torch.ones_like(ctf))
    return apply_fourier_filter(data, sign, spatial_dims=spatial_dims)


def wiener_filter(
    data: torch.Tensor, ctf: torch.Tensor, *, snr: TensorLike, spatial_dims: int = 3
) -> torch.Tensor:
    """Wiener CTF correction: multiply the spectrum by ``ctf / (ctf² + 1 / snr)``.

    Args:
        data: real volume ``(..., Z, Y, X)`` or image ``(..., Y, X)`` (``spatial_dims=2``).
        ctf: CTF in the half, non-centred layout, as in :func:`phase_flip`.
        snr: signal-to-noise ratio (> 0), a number or a tensor broadcastable against ``ctf`` (e.g. a
            spectral SNR per frequency); ``1 / snr`` is the Wiener constant.
        spatial_dims: 3 for volumes, 2 for images.

    Returns:
        Real tensor of ``data``'s shape.
    """
    snr = torch.as_tensor(snr, device=ctf.device, dtype=ctf.dtype)
    if not bool(torch.all(snr > 0)):
        raise InputError("Wiener filter SNR must be positive")
    kernel = ctf / (ctf**2 + 1.0 / snr)
    return apply_fourier_filter(data, kernel, spatial_dims=spatial_dims)


def dose_weights(
    frequency_a_inv: torch.Tensor, dose_e_per_a2: TensorLike, voltage_kv: float = 300.0
) -> torch.Tensor:
    """Radiation-damage (exposure) filter of Grant & Grigorieff (2015, eLife 4:e06980).

    The signal at frequency k decays as ``exp(−N / (2 N_e(k)))`` after an accumulated exposure N, with the
    critical exposure ``N_e(k) = 0.245 k^−1.665 + 2.81`` e⁻/Å² measured at 300 kV (scaled by 0.8 at 200 kV,
    as in their software). The zero frequency is never damped.

    Args:
        frequency_a_inv: ``|k|`` in cycles/Å, any shape.
        dose_e_per_a2: accumulated exposure before (or at the middle of) the image, e⁻/Å²; a number or a
            tensor broadcastable against ``frequency_a_inv`` (e.g. ``(n_tilts, 1, 1)`` for per-tilt weights).
        voltage_kv: 300 or 200.

    Returns:
        Weights in (0, 1], broadcast shape, dtype of ``frequency_a_inv``.
    """
    if abs(voltage_kv - 300.0) < 1.0:
        voltage_scaling = 1.0
    elif abs(voltage_kv - 200.0) < 1.0:
        voltage_scaling = 0.8
    else:
        raise InputError(f"dose weighting is calibrated for 200 and 300 kV only, got {voltage_kv} kV")
    dose = torch.as_tensor(dose_e_per_a2, device=frequency_a_inv.device, dtype=frequency_a_inv.dtype)
    if not bool(torch.all(dose >= 0)):
        raise InputError(f"exposure must be >= 0 e/A^2, got {dose_e_per_a2}")
    positive = frequency_a_inv > 0
    safe_frequency = torch.where(positive, frequency_a_inv, torch.ones_like(frequency_a_inv))
    critical_exposure = (0.245 * safe_frequency**-1.665 + 2.81) * voltage_scaling
    weights = torch.exp(-dose / (2.0 * critical_exposure))
    return torch.where(positive, weights, torch.ones_like(weights))
