"""Gaussian, difference-of-Gaussians and band-pass filters of volumes.

Boundary. Both Gaussian methods extend the volume by half-sample symmetric reflection, scipy.ndimage's
default ``mode="reflect"`` (``d c b a | a b c d | d c b a``, the edge voxel repeated), and use scipy's sampled
kernel (``exp(-x² / 2σ²)`` on ``|x| <= int(truncate σ + 0.5)``, normalised to sum 1), so that both agree with
``scipy.ndimage.gaussian_filter(volume, sigma, truncate=truncate)`` to float round-off. (PyTorch's
``F.pad(mode="reflect")`` is scipy's ``"mirror"`` -- ``d c b | a b c d``, edge not repeated -- and is *not*
used.)

Methods. ``"separable"`` correlates with the 1-D kernel along X, Y and Z in turn, without permuting the
volume: short kernels (radius <= 9 voxels, σ <= 2.2 at truncate 4) as a sum of shifted slices, on CPU in
cache-sized chunks; longer ones as banded matrix products (64 outputs per block, the ``64 + 2r`` inputs
times a Toeplitz matrix, in BLAS). ``"fourier"`` pads each axis by the kernel radius (reflect, as above),
multiplies the padded volume's ``rfftn`` by the exact transfer function of the truncated sampled kernel and
crops: the circular wrap-around only touches the padding, so it is the same filter. ``"auto"`` picks the
cheapest by a cost model measured on CPU; as the padding grows with σ too, that is the separable method for
any σ on the volumes of cryo-ET (the FFT would need σ of hundreds of voxels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from aitom.errors import InputError
from aitom.fourier import bandpass

__all__ = ["bandpass_filter", "difference_of_gaussians", "gaussian_filter3d", "gaussian_kernel1d"]

#: Elements per chunk of the separable filter on CPU (512 KiB of float32: stays in L2 cache).
_CPU_CHUNK_ELEMENTS = 1 << 17
#: Kernels up to this radius are applied as shifted slices, longer ones as banded matrix products.
_MAX_SHIFTED_SLICE_RADIUS = 9
#: Output block of the banded matrix products (voxels).
_BANDED_BLOCK = 64
#: Costs per voxel, ns on one core of a Xeon (measured on 256³ float32): a shifted-slice tap, a banded axis
#: (constant + per unit of radius), and an FFT pair with padding and product per padded voxel. "auto" picks
#: the cheaper method.
_COST_SHIFTED_TAP = 0.27
_COST_BANDED = (4.4, 0.09)
_COST_FFT = 27.0

SigmaLike = float | Sequence[float]


def gaussian_kernel1d(
    sigma_voxels: float,
    *,
    truncate: float = 4.0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """scipy.ndimage's sampled Gaussian: ``exp(-x² / 2σ²)`` for ``|x| <= int(truncate σ + 0.5)``, sum 1.

    Args:
        sigma_voxels: standard deviation in voxels, ``>= 0`` (0 gives the identity kernel ``[1]``).
        truncate: kernel radius in standard deviations.
        dtype, device: of the result.

    Returns:
        Tensor ``(2 r + 1,)``, symmetric, centre at index ``r``.
    """
    radius = int(truncate * sigma_voxels + 0.5)
    if sigma_voxels == 0 or radius == 0:
        return torch.ones(1, dtype=dtype, device=device)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (x / sigma_voxels) ** 2)
    return (weights / weights.sum()).to(dtype=dtype, device=device)


def _sigma_zyx(sigma_voxels: SigmaLike, name: str = "sigma") -> tuple[float, float, float]:
    """Validate a scalar or (x, y, z) sigma and return it in axis order (z, y, x)."""
    if isinstance(sigma_voxels, int | float):
        values = (float(sigma_voxels),) * 3
    else:
        values = tuple(float(s) for s in sigma_voxels)
        if len(values) != 3:
            raise InputError(f"{name} must be one number or three (x, y, z), got {len(values)} values")
    if not all(math.isfinite(s) and s >= 0 for s in values):
        raise InputError(f"{name} must be finite and >= 0 voxels, got {sigma_voxels}")
    return values[2], values[1], values[0]


def _check_volume(volume: torch.Tensor) -> None:
    if not isinstance(volume, torch.Tensor) or volume.ndim < 3:
        raise ValueError(f"volume must be a tensor (..., Z, Y, X), got {getattr(volume, 'shape', volume)}")
    if not volume.is_floating_point():
        raise ValueError(f"volume must be floating point, got {volume.dtype}")


def _reflect_index(length: int, before: int, total: int, device: torch.device) -> torch.Tensor:
    """Indices of a half-sample symmetric extension: position ``i - before`` for ``i < total``."""
    position = torch.arange(-before, total - before, device=device)
    folded = torch.remainder(position, 2 * length)
    return torch.where(folded >= length, 2 * length - 1 - folded, folded)


def _reflect_pad(volume: torch.Tensor, dim: int, before: int, total: int, odd: bool = False) -> torch.Tensor:
    """Extend ``volume`` along ``dim`` to ``total`` samples, ``before`` of them in front, by reflection.

    ``odd``: the antisymmetric extension (each reflection flips the sign), for quantities that change sign
    under the mirror, e.g. the off-diagonal structure-tensor components across their axes. Borders no longer
    than the axis are copied as flipped slices (a gather along the contiguous axis is an order of magnitude
    slower than a copy); longer ones, which reflect more than once, are gathered.
    """
    dim = dim % volume.ndim
    length = volume.shape[dim]
    after = total - before - length
    if before == 0 and after == 0:
        return volume
    if before > length or after > length:
        index = _reflect_index(length, before, total, volume.device)
        padded = volume.index_select(dim, index)
        if odd:
            position = torch.remainder(
                torch.arange(-before, total - before, device=volume.device), 2 * length
            )
            sign = torch.where(position >= length, -1.0, 1.0).to(volume.dtype)
            padded = padded * sign.reshape([-1] + [1] * (volume.ndim - dim - 1))
        return padded
    shape = list(volume.shape)
    shape[dim] = total
    padded = volume.new_empty(shape)
    padded.narrow(dim, before, length).copy_(volume)
    left = volume.narrow(dim, 0, before).flip(dim)
    right = volume.narrow(dim, length - after, after).flip(dim)
    padded.narrow(dim, 0, before).copy_(-left if odd else left)
    padded.narrow(dim, before + length, after).copy_(-right if odd else right)
    return padded


def _correlate_axis(volume: torch.Tensor, weights: torch.Tensor, dim: int, odd: bool = False) -> torch.Tensor:
    """Correlate a contiguous tensor with a symmetric odd-length 1-D kernel along ``dim`` (reflect boundary,
    antisymmetric when ``odd``): shifted slices for short kernels, banded matrix products for long ones."""
    radius = (weights.numel() - 1) // 2
    if radius > _MAX_SHIFTED_SLICE_RADIUS:
        return _correlate_axis_banded(volume, weights, dim, odd)
    return _correlate_axis_shifted(volume, weights.tolist(), dim, odd)


def _correlate_axis_shifted(volume: torch.Tensor, weights: list[float], dim: int, odd: bool) -> torch.Tensor:
    """Sum of ``2r + 1`` weighted shifted slices; on CPU in cache-sized chunks."""
    shape = volume.shape
    length = shape[dim]
    radius = (len(weights) - 1) // 2
    outer = math.prod(shape[:dim])
    inner = math.prod(shape[dim + 1 :])
    flat = volume.reshape(outer, length, inner)

    def correlate(block: torch.Tensor) -> torch.Tensor:
        padded = _reflect_pad(block, 1, radius, length + 2 * radius, odd)
        result = padded[:, 0:length] * weights[0]
        for tap in range(1, len(weights)):
            result.add_(padded[:, tap : tap + length], alpha=weights[tap])
        return result

    if volume.device.type != "cpu" or outer * length * inner <= _CPU_CHUNK_ELEMENTS:
        return correlate(flat).reshape(shape)
    # CPU: chunks small enough that the 2r + 1 passes over each stay in cache.
    out = torch.empty_like(flat)
    if length * inner <= _CPU_CHUNK_ELEMENTS:
        rows = max(1, _CPU_CHUNK_ELEMENTS // (length * inner))
        for start in range(0, outer, rows):
            out[start : start + rows] = correlate(flat[start : start + rows])
    else:
        columns = max(1, _CPU_CHUNK_ELEMENTS // (length + 2 * radius))
        for row in range(outer):
            for start in range(0, inner, columns):
                out[row : row + 1, :, start : start + columns] = correlate(
                    flat[row : row + 1, :, start : start + columns]
                )
    return out.reshape(shape)


def _correlate_axis_banded(volume: torch.Tensor, weights: torch.Tensor, dim: int, odd: bool) -> torch.Tensor:
    """The axis in blocks of ``b`` outputs, each a matrix product of its ``b + 2r`` inputs with a banded
    (Toeplitz) ``(b + 2r, b)`` matrix: ``2 (b + 2r)`` flops per output, all in BLAS."""
    shape = volume.shape
    length = shape[dim]
    radius = (weights.numel() - 1) // 2
    block = min(_BANDED_BLOCK, length)
    n_blocks = -(-length // block)
    outer = math.prod(shape[:dim])
    inner = math.prod(shape[dim + 1 :])
    padded = _reflect_pad(volume, dim, radius, n_blocks * block + 2 * radius, odd)
    offset = torch.arange(block + 2 * radius, device=volume.device)[:, None] - torch.arange(
        block, device=volume.device
    )
    taps = weights.to(device=volume.device, dtype=volume.dtype)[offset.clamp(0, 2 * radius)]
    band = torch.where((offset >= 0) & (offset <= 2 * radius), taps, 0.0)  # (b + 2r, b)
    if inner == 1:  # the contiguous axis: rows @ band
        rows = padded.reshape(outer, -1)
        pieces = [rows[:, j * block : j * block + block + 2 * radius] @ band for j in range(n_blocks)]
        return torch.cat(pieces, dim=1)[:, :length].reshape(shape)
    columns = padded.reshape(outer, -1, inner)
    band_t = band.t()
    pieces = [
        torch.matmul(band_t, columns[:, j * block : j * block + block + 2 * radius]) for j in range(n_blocks)
    ]
    return torch.cat(pieces, dim=1)[:, :length].reshape(shape)


def _fast_fft_length(n: int) -> int:
    """Smallest integer >= n whose prime factors are 2, 3, 5 and 7."""
    while True:
        m = n
        for p in (2, 3, 5, 7):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def _transfer_function(weights: torch.Tensor, n: int, half: bool) -> torch.Tensor:
    """DFT (length ``n``, real since the kernel is symmetric) of a centred kernel, float64."""
    radius = (weights.numel() - 1) // 2
    frequency = (
        torch.fft.rfftfreq(n, dtype=torch.float64) if half else torch.fft.fftfreq(n, dtype=torch.float64)
    )
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    phase = 2 * math.pi * frequency[:, None] * offsets[None, :]
    return (torch.cos(phase) * weights.to(torch.float64)[None, :]).sum(-1)


def _fourier_gaussians(
    volume: torch.Tensor,
    terms: Sequence[tuple[float, tuple[float, float, float]]],
    truncate: float,
    odd_axes: Sequence[int] = (),
) -> torch.Tensor:
    """``Σ coefficient · G_sigma * volume`` by one padded FFT; ``terms`` = [(coefficient, sigma_zyx)].

    ``odd_axes``: spatial axes (0, 1, 2 = Z, Y, X) extended antisymmetrically instead of symmetrically.
    """
    spatial = volume.shape[-3:]
    kernels = [[gaussian_kernel1d(s, truncate=truncate) for s in sigma] for _, sigma in terms]
    radii = [max((k[axis].numel() - 1) // 2 for k in kernels) for axis in range(3)]
    padded_shape = [_fast_fft_length(n + 2 * r) for n, r in zip(spatial, radii)]
    padded = volume
    for axis, (r, m) in enumerate(zip(radii, padded_shape)):
        padded = _reflect_pad(padded, axis - 3, r, m, axis in odd_axes)
    spectrum = torch.fft.rfftn(padded, dim=(-3, -2, -1))
    transfers = []
    for (coefficient, _), kernel in zip(terms, kernels):
        hz = _transfer_function(kernel[0], padded_shape[0], half=False)
        hy = _transfer_function(kernel[1], padded_shape[1], half=False)
        hx = _transfer_function(kernel[2], padded_shape[2], half=True)
        hzy = (coefficient * hz[:, None, None] * hy[None, :, None]).to(
            device=volume.device, dtype=volume.dtype
        )
        transfers.append((hzy, hx.to(device=volume.device, dtype=volume.dtype)))
    if len(transfers) == 1:  # separable transfer function: two broadcast products, no full-size array
        hzy, hx = transfers[0]
        spectrum = spectrum * hzy * hx
    else:
        spectrum = spectrum * sum(hzy * hx for hzy, hx in transfers)
    filtered = torch.fft.irfftn(spectrum, s=padded_shape, dim=(-3, -2, -1))
    (z, y, x), (rz, ry, rx) = spatial, radii
    return filtered[..., rz : rz + z, ry : ry + y, rx : rx + x].contiguous()


def _separable_gaussian(
    volume: torch.Tensor,
    sigma_zyx: tuple[float, float, float],
    truncate: float,
    odd_axes: Sequence[int] = (),
) -> torch.Tensor:
    result = volume.reshape(-1, *volume.shape[-3:]).contiguous()
    filtered = False
    for axis in (3, 2, 1):  # X first: the contiguous axis
        kernel = gaussian_kernel1d(sigma_zyx[axis - 1], truncate=truncate)
        if kernel.numel() > 1:
            result = _correlate_axis(result, kernel, axis, axis - 1 in odd_axes)
            filtered = True
    return result.reshape(volume.shape) if filtered else volume.clone()


def _separable_cost(radius: int) -> float:
    """Cost model (ns per voxel) of one axis of :func:`_correlate_axis`."""
    if radius == 0:
        return 0.0
    if radius <= _MAX_SHIFTED_SLICE_RADIUS:
        return _COST_SHIFTED_TAP * (2 * radius + 1)
    return _COST_BANDED[0] + _COST_BANDED[1] * radius


def _choose_method(
    spatial: Sequence[int], sigmas_zyx: Sequence[tuple[float, float, float]], truncate: float
) -> str:
    radii = [[int(truncate * s + 0.5) for s in sigma] for sigma in sigmas_zyx]
    separable = math.prod(spatial) * sum(_separable_cost(r) for rs in radii for r in rs)
    padded = math.prod(n + 2 * max(rs[axis] for rs in radii) for axis, n in enumerate(spatial))
    return "separable" if separable <= _COST_FFT * padded else "fourier"


def _check_method(method: str, truncate: float) -> None:
    if method not in ("auto", "separable", "fourier"):
        raise ValueError(f"method must be 'auto', 'separable' or 'fourier', got {method!r}")
    if not truncate > 0:
        raise InputError(f"truncate must be positive (standard deviations), got {truncate}")


def _gaussian(
    volume: torch.Tensor,
    sigma_zyx: tuple[float, float, float],
    truncate: float = 4.0,
    method: str = "auto",
    odd_axes: Sequence[int] = (),
) -> torch.Tensor:
    """Gaussian blur, ``sigma_zyx`` validated and in (z, y, x) order; ``odd_axes`` as in
    :func:`_fourier_gaussians`."""
    if method == "auto":
        method = _choose_method(volume.shape[-3:], [sigma_zyx], truncate)
    if method == "fourier":
        return _fourier_gaussians(volume, [(1.0, sigma_zyx)], truncate, odd_axes)
    return _separable_gaussian(volume, sigma_zyx, truncate, odd_axes)


def gaussian_filter3d(
    volume: torch.Tensor,
    sigma_voxels: SigmaLike,
    *,
    truncate: float = 4.0,
    method: str = "auto",
) -> torch.Tensor:
    """Gaussian blur of a volume, equal to ``scipy.ndimage.gaussian_filter`` (default mode ``"reflect"``).

    Args:
        volume: real tensor ``(..., Z, Y, X)`` (float32 or float64), any device; leading dims are a batch.
        sigma_voxels: standard deviation in voxels, one number or ``(σx, σy, σz)`` in (x, y, z) order;
            0 on an axis leaves that axis unfiltered.
        truncate: kernel radius ``int(truncate σ + 0.5)`` voxels, as scipy.
        method: ``"separable"``, ``"fourier"`` or ``"auto"`` (see the module docstring; same result).

    Returns:
        Tensor of the shape, dtype and device of ``volume``. Differentiable.

    Example:
        >>> volume = torch.zeros(9, 9, 9); volume[4, 4, 4] = 1.0
        >>> round(float(gaussian_filter3d(volume, 1.0).sum()), 6)
        1.0
    """
    _check_volume(volume)
    _check_method(method, truncate)
    return _gaussian(volume, _sigma_zyx(sigma_voxels, "sigma_voxels"), truncate, method)


def difference_of_gaussians(
    volume: torch.Tensor,
    sigma1_voxels: SigmaLike,
    sigma2_voxels: SigmaLike | None = None,
    *,
    truncate: float = 4.0,
    method: str = "auto",
) -> torch.Tensor:
    """Band-pass by the difference of two Gaussian blurs: ``G(σ1) * volume - G(σ2) * volume``.

    The same as scikit-image's ``difference_of_gaussians(image, low_sigma=σ1, high_sigma=σ2)`` with
    scipy's reflect boundary; positive where the volume has a bright blob, most at the centre of a ball of
    radius ≈ ``√(3 σ1 σ2)`` (1.82 σ1 for σ2 = 1.1 σ1, 2.19 σ1 for the default 1.6 σ1).

    Args:
        volume: real tensor ``(..., Z, Y, X)``.
        sigma1_voxels: the smaller standard deviation (voxels), number or ``(σx, σy, σz)``.
        sigma2_voxels: the larger one; default ``1.6 σ1``. Must be ``>= σ1`` on every axis and larger on one.
        truncate, method: as in :func:`gaussian_filter3d`; the Fourier method does both blurs with one FFT.

    Returns:
        Tensor of the shape, dtype and device of ``volume``.
    """
    _check_volume(volume)
    _check_method(method, truncate)
    sigma1 = _sigma_zyx(sigma1_voxels, "sigma1_voxels")
    sigma2 = (
        tuple(1.6 * s for s in sigma1)
        if sigma2_voxels is None
        else _sigma_zyx(sigma2_voxels, "sigma2_voxels")
    )
    if not (all(b >= a for a, b in zip(sigma1, sigma2)) and any(b > a for a, b in zip(sigma1, sigma2))):
        raise InputError(
            f"sigma2 must be larger than sigma1 (voxels), got {sigma1_voxels} and {sigma2_voxels}"
        )
    if method == "auto":
        method = _choose_method(volume.shape[-3:], [sigma1, sigma2], truncate)
    if method == "fourier":
        return _fourier_gaussians(volume, [(1.0, sigma1), (-1.0, sigma2)], truncate)
    return _separable_gaussian(volume, sigma1, truncate) - _separable_gaussian(volume, sigma2, truncate)


def bandpass_filter(
    volume: torch.Tensor,
    voxel_size_a: float,
    highpass_a: float | None = None,
    lowpass_a: float | None = None,
    edge_width_frac: float = 0.05,
) -> torch.Tensor:
    """Radial Fourier band-pass with raised-cosine edges (periodic boundary); :func:`aitom.fourier.bandpass`.

    Args:
        volume: real tensor ``(..., Z, Y, X)``.
        voxel_size_a: voxel size, Å.
        highpass_a: remove structure coarser than this (Å); None keeps the low frequencies.
        lowpass_a: remove structure finer than this (Å, >= 2 voxel sizes); None keeps the high frequencies.
        edge_width_frac: width of each soft edge, fraction of Nyquist.

    Returns:
        Tensor of the shape, dtype and device of ``volume``.
    """
    _check_volume(volume)
    return bandpass(
        volume,
        voxel_size_a=voxel_size_a,
        highpass_a=highpass_a,
        lowpass_a=lowpass_a,
        edge_width_frac=edge_width_frac,
    )
