"""Template matching by FFT: locally normalised cross-correlation over a grid of rotations.

For each rotation ``R`` the template is rotated actively (``rotate_volume(template, R)``: a particle with
RELION matrix ``A`` is matched best by ``R ≈ A``), filtered in its own box like the data (missing wedge of
the tomogram's tilt range, optionally the CTF with the sign of protein-bright data, optionally the tomogram's
spectral whitening), multiplied by the footprint mask, normalised to zero mean and unit variance under the
mask, and correlated with the tomogram by FFT. The score is Roseman's fast local correlation (FLCF)::

    score(p) = Σ_y M(y) (f(p + y) − μ_M(p)) T(y) / (n σ_M(p))

with ``μ_M, σ_M`` the mean and standard deviation of the tomogram under the mask centred at ``p``, ``T``
normalised likewise under the mask and ``n = Σ M``. A soft mask (values in ``[0, 1]``, e.g. a binary mask
after trilinear rotation) is a weight: every mean and variance is weighted by ``M``, so the score is the
``M``-weighted Pearson correlation, 1 for a perfect match whatever the mask; it lies in ``[−1, 1]``.
Correlations are circular: scores within half a template of the faces are unreliable (``exclude_border``
when picking, overlapping tiles for large tomograms).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import scipy.fft
import torch

from aitom.errors import InputError
from aitom.fourier import ctf_3d, frequency_grid, missing_wedge_mask
from aitom.geometry import rotate_volume, sphere_mask
from aitom.ops.peaks import robust_mean_std

__all__ = [
    "TemplateFilter",
    "best_calibrated_template",
    "calibrate_scores",
    "crop_template",
    "match_template",
    "match_templates",
    "padded_rfftn",
    "radial_power_spectrum",
    "score_calibration",
    "spectral_whitening_filter",
    "template_filter_kernel",
    "template_signal_outside",
    "whitening_filter",
]


@dataclass(frozen=True)
class TemplateFilter:
    """How the template is filtered to look like the tomogram.

    Attributes:
        tilt_range_deg: ``(min, max)`` tilt range of the tomogram, degrees; None: no missing wedge.
        voxel_size_a: voxel size, Å (needed for the CTF).
        defocus_um: CTF defocus (positive = underfocus); None: no CTF.
        voltage_kv, cs_mm, amplitude_contrast: CTF parameters.
        lowpass_frequency: cut-off in cycles/voxel (``≤ 0.5``); None: no low-pass.
    """

    tilt_range_deg: tuple[float, float] | None = (-60.0, 60.0)
    voxel_size_a: float = 1.0
    defocus_um: float | None = None
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07
    lowpass_frequency: float | None = None


def crop_template(template: torch.Tensor, edge: int) -> torch.Tensor:
    """The central ``edge``³ voxels of a cubic template ``(N, N, N)``, ``edge <= N``: voxel ``N // 2`` (the
    template's centre, the rotation centre) lands on ``edge // 2``."""
    start = template.shape[-1] // 2 - edge // 2
    return template[..., start : start + edge, start : start + edge, start : start + edge]


def template_signal_outside(template: torch.Tensor, edge: int) -> float:
    """Share of a cubic template's signal that :func:`crop_template` to ``edge`` voxels would cut off.

    The signal is the squared deviation from the background, the median (the lower middle value) of the
    template's six faces; the result is in ``[0, 1]`` (0 for a constant template).
    """
    faces = torch.cat([template[index].reshape(-1) for axis in range(3) for index in _faces(axis)])
    signal = (template.double() - faces.double().median()).square()
    total = float(signal.sum())
    if total == 0.0:
        return 0.0
    return 1.0 - float(crop_template(signal, edge).sum()) / total


def _faces(axis: int) -> tuple[tuple[slice | int, ...], tuple[slice | int, ...]]:
    """Index tuples of the first and last plane of a 3-D array along ``axis``."""
    before = (slice(None),) * axis
    return (*before, 0), (*before, -1)


def radial_power_spectrum(volumes: torch.Tensor, n_shells: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Radially averaged power spectrum of a volume, or the mean of several (Welch's estimate).

    Args:
        volumes: ``(..., Z, Y, X)`` real tensor: one volume, or equal-sized segments of one, whose
            periodograms are averaged.
        n_shells: shells of equal width from 0 to ``√3 / 2`` cycles/voxel (the ``k = 0`` term left out: it
            is the mean, often removed, and would get a huge weight).

    Returns:
        ``(centres, power)``: ``(S,)`` centres of the shells that hold a frequency, cycles/voxel, ascending,
        and ``(S,)`` the mean ``|F(k)|²`` over each (arbitrary units: per-voxel scale of the FFT).
    """
    shape = volumes.shape[-3:]
    power = torch.fft.rfftn(volumes, dim=(-3, -2, -1)).abs().square()
    power = power.reshape(-1, *power.shape[-3:]).mean(0)
    k = frequency_grid(shape, rfft=True, centered=False, device=volumes.device, dtype=volumes.dtype).norm(
        dim=-1
    )
    k_max = math.sqrt(3) / 2
    shell = torch.clamp((k / k_max * (n_shells - 1)).round().long(), 0, n_shells - 1).reshape(-1)
    not_dc = (k.reshape(-1) > 0).to(volumes.dtype)
    sums = torch.zeros(n_shells, device=volumes.device, dtype=volumes.dtype)
    sums = sums.index_add_(0, shell, power.reshape(-1) * not_dc)
    counts = torch.zeros_like(sums).index_add_(0, shell, not_dc)
    filled = counts > 0
    centres = torch.nonzero(filled)[:, 0].to(volumes.dtype) * (k_max / (n_shells - 1))
    return centres, sums[filled] / counts[filled]


def whitening_filter(centres: torch.Tensor, power: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The radial whitening filter ``1 / sqrt(P(|k|))`` of a radial power spectrum, normalised to 1 at its
    median and interpolated linearly between the shell centres (constant beyond the first and last).

    Args:
        centres, power: ``(S,)`` shell centres (cycles/voxel, ascending, ``S >= 2``) and mean power
            (:func:`radial_power_spectrum`).

    Returns:
        ``filter(k_magnitude) -> weights`` for a tensor of frequencies in cycles/voxel (``centres``' device
        and dtype).
    """
    amplitude = torch.sqrt(power)
    weights = 1.0 / torch.clamp(amplitude, min=amplitude.max() * 1e-6)
    weights = weights / weights.median()

    def whitening(k_magnitude: torch.Tensor) -> torch.Tensor:
        position = torch.clamp(torch.searchsorted(centres, k_magnitude.contiguous()), 1, len(centres) - 1)
        left, right = centres[position - 1], centres[position]
        fraction = torch.clamp((k_magnitude - left) / (right - left), 0.0, 1.0)
        return weights[position - 1] * (1 - fraction) + weights[position] * fraction

    return whitening


def spectral_whitening_filter(
    volume: torch.Tensor, n_shells: int = 64
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The radial whitening filter of a volume (:func:`whitening_filter` of its
    :func:`radial_power_spectrum`), as a function of ``|k|`` (cycles/voxel)."""
    return whitening_filter(*radial_power_spectrum(volume, n_shells))


def template_filter_kernel(
    shape: tuple[int, int, int],
    template_filter: TemplateFilter,
    whitening: Callable[[torch.Tensor], torch.Tensor] | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Fourier filter ``(Z, Y, X // 2 + 1)`` (``rfftn`` layout, not centred) applied to the rotated template.

    Product of the missing-wedge mask, the CTF (sign flipped: the data are protein bright), the whitening
    filter and a hard low-pass, as configured; all ones when nothing is.
    """
    kernel = torch.ones(shape[0], shape[1], shape[2] // 2 + 1, device=device, dtype=dtype)
    if template_filter.tilt_range_deg is not None:
        low, high = template_filter.tilt_range_deg
        kernel = kernel * missing_wedge_mask(
            shape, tilt_min_deg=low, tilt_max_deg=high, rfft=True, centered=False, device=device, dtype=dtype
        )
    if template_filter.defocus_um is not None:
        kernel = kernel * -ctf_3d(
            shape,
            voxel_size_a=template_filter.voxel_size_a,
            defocus_um=template_filter.defocus_um,
            voltage_kv=template_filter.voltage_kv,
            cs_mm=template_filter.cs_mm,
            amplitude_contrast=template_filter.amplitude_contrast,
            device=device,
            dtype=dtype,
        )
    needs_k = whitening is not None or template_filter.lowpass_frequency is not None
    if needs_k:
        k = frequency_grid(shape, rfft=True, centered=False, device=device, dtype=dtype).norm(dim=-1)
        if whitening is not None:
            kernel = kernel * whitening(k)
        if template_filter.lowpass_frequency is not None:
            kernel = kernel * (k <= template_filter.lowpass_frequency).to(dtype)
    return kernel


_DIMS = (-3, -2, -1)


def _scipy_path(tensor: torch.Tensor) -> bool:
    """Whether the FFTs of this tensor go to ``scipy.fft`` (CPU, no autograd) rather than ``torch.fft``."""
    return tensor.device.type == "cpu" and not tensor.requires_grad


def _rfftn(volume: torch.Tensor, shape: tuple[int, int, int] | None = None) -> torch.Tensor:
    """Real 3-D FFT over the last three axes (zero-padded at the end to ``shape``).

    On the CPU this dispatches to ``scipy.fft`` (pocketfft) with one worker per torch thread, faster than
    ``torch.fft`` there (see ``scripts/bench_template_matching.py``); not differentiable on that path.
    """
    if _scipy_path(volume):
        spectrum = scipy.fft.rfftn(volume.numpy(), s=shape, axes=_DIMS, workers=torch.get_num_threads())
        return torch.from_numpy(spectrum)
    return torch.fft.rfftn(volume, s=shape, dim=_DIMS)


def _irfftn(spectrum: torch.Tensor, shape: tuple[int, int, int], *, overwrite: bool = False) -> torch.Tensor:
    """Inverse of :func:`_rfftn` to a real volume of the last three axes ``shape``.

    ``overwrite``: the input spectrum may be destroyed (saves a copy on the ``scipy.fft`` path).
    """
    if _scipy_path(spectrum):
        volume = scipy.fft.irfftn(
            spectrum.numpy(), s=shape, axes=_DIMS, workers=torch.get_num_threads(), overwrite_x=overwrite
        )
        return torch.from_numpy(volume)
    return torch.fft.irfftn(spectrum, s=shape, dim=_DIMS)


def padded_rfftn(small: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """``rfftn`` of ``small`` ``(..., a, b, c)`` zero-padded at the end to ``shape`` ``(Z, Y, X)``.

    A pruned transform: the 1-D FFTs of lines that are all zero are skipped (``rfft`` along X of the
    ``a · b`` lines of the box only, then FFT along Y of ``a`` planes, then along Z), about a third of the
    cost of a full ``rfftn`` for a small box in a large volume. Equals ``torch.fft.rfftn(small, s=shape)``.

    Returns:
        ``(..., Z, Y, X // 2 + 1)`` complex spectrum (``rfftn`` layout, not centred), device of ``small``.
    """
    if _scipy_path(small):
        workers = torch.get_num_threads()
        spectrum = scipy.fft.rfft(small.numpy(), n=shape[2], axis=-1, workers=workers)
        spectrum = scipy.fft.fft(spectrum, n=shape[1], axis=-2, workers=workers, overwrite_x=True)
        spectrum = scipy.fft.fft(spectrum, n=shape[0], axis=-3, workers=workers, overwrite_x=True)
        return torch.from_numpy(spectrum)
    spectrum = torch.fft.rfft(small, n=shape[2], dim=-1)
    spectrum = torch.fft.fft(spectrum, n=shape[1], dim=-2)
    return torch.fft.fft(spectrum, n=shape[0], dim=-3)


def _normalise_under_mask(templates: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``M (T − μ) / σ`` with the ``M``-weighted mean ``μ`` and standard deviation ``σ`` of the templates.

    The weights are the masks themselves, as for the tomogram's local statistics, so that correlating the
    result gives the ``M``-weighted Pearson correlation (the variance is ``Σ M (T − μ)² / Σ M``, not
    ``Σ M² (T − μ)² / Σ M``, which for a soft mask would push a perfect match above 1).

    Args:
        templates: ``(B, t, t, t)`` rotated, filtered templates.
        masks: ``(B, t, t, t)`` footprint masks, values in ``[0, 1]``.

    Returns:
        ``(B, t, t, t)``, zero outside the masks.
    """
    count = masks.sum(dim=(-3, -2, -1), keepdim=True)
    mean = (templates * masks).sum(dim=(-3, -2, -1), keepdim=True) / count
    deviation = templates - mean
    std = torch.sqrt((masks * deviation.square()).sum(dim=(-3, -2, -1), keepdim=True) / count)
    if bool((std <= 0).any()):
        raise InputError("the template is constant under its mask (after filtering): nothing to match")
    return deviation * masks / std


def _local_std(
    tomogram_spectrum: torch.Tensor,
    squared_spectrum: torch.Tensor,
    mask_spectrum: torch.Tensor,
    count: torch.Tensor,
    shape: tuple[int, int, int],
) -> torch.Tensor:
    """σ of the tomogram under the mask placed at every voxel (index = mask corner; rolled later)."""
    conjugate = mask_spectrum.conj()
    local_mean = _irfftn(tomogram_spectrum * conjugate, shape, overwrite=True) / count
    local_square = _irfftn(squared_spectrum * conjugate, shape, overwrite=True) / count
    variance = torch.clamp(local_square - local_mean.square(), min=0.0)
    return torch.sqrt(variance)


def _correlate(spectrum: torch.Tensor, references: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Circular cross-correlation ``(B, Z, Y, X)`` of the tomogram (its ``spectrum``) with small references.

    ``references`` ``(B, t, t, t)``; index ``p`` of the result is ``Σ_y f(p + y) r(y)`` (reference corner at
    ``p``). Per reference: one pruned forward FFT, one in-place conjugate product, one inverse FFT.
    """
    product = padded_rfftn(references, shape).conj_physical_()
    product.mul_(spectrum)
    return _irfftn(product, shape, overwrite=True)


def match_template(
    tomogram: torch.Tensor,
    template: torch.Tensor,
    rotations: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    template_filter: TemplateFilter | None = None,
    whiten: bool = False,
    whitening: Callable[[torch.Tensor], torch.Tensor] | None = None,
    rotation_batch: int = 8,
    progress: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best FLCF score and its rotation at every voxel of a tomogram.

    Args:
        tomogram: ``(Z, Y, X)`` real tensor, any device (float32 or float64).
        template: ``(t, t, t)`` cubic reference in the tomogram's contrast (protein bright), ``t`` no larger
            than any tomogram axis.
        rotations: ``(R, 3, 3)`` rotation matrices on ``(x, y, z)`` (e.g. ``so3_grid(step_deg)``).
        mask: ``(t, t, t)`` footprint mask (rotated with the template); default a sphere of radius ``t / 2``
            (rotation-invariant: the tomogram's local statistics are then computed once).
        template_filter: how to filter the template (default: missing wedge ±60°, no CTF).
        whiten: whiten the tomogram's spectrum and filter the template with the same whitening.
        whitening: with ``whiten``, the filter to whiten with, as a function of ``|k|`` in cycles/voxel
            (e.g. the whole tomogram's, when ``tomogram`` is a tile of it); None: the tomogram's own
            (:func:`spectral_whitening_filter`).
        rotation_batch: rotations correlated at once (memory ∝ ``rotation_batch · Z · Y · X``).
        progress: called with the number of rotations done after each batch.

    Returns:
        ``(score, rotation_index)``: ``(Z, Y, X)`` best score (dtype of the tomogram) and ``(Z, Y, X)`` int64
        index into ``rotations`` of the best rotation, on the tomogram's device.

    Raises:
        InputError: the template is larger than the tomogram, not cubic, or constant; the tomogram is
            constant; ``rotation_batch < 1``.
    """
    if tomogram.ndim != 3 or template.ndim != 3:
        raise ValueError(f"need (Z, Y, X) tomogram and template, got {tomogram.shape}, {template.shape}")
    if len(set(template.shape)) != 1:
        raise InputError(f"the template must be a cube, got {tuple(template.shape)} voxels")
    if any(t > n for t, n in zip(template.shape, tomogram.shape)):
        raise InputError(
            f"the template ({tuple(template.shape)} voxels) is larger than the tomogram "
            f"({tuple(tomogram.shape)} voxels)"
        )
    if rotations.ndim != 3 or rotations.shape[-2:] != (3, 3) or rotations.shape[0] == 0:
        raise ValueError(f"rotations must be (R, 3, 3) with R >= 1, got {tuple(rotations.shape)}")
    if rotation_batch < 1:
        raise InputError(f"rotation batch must be >= 1, got {rotation_batch}")
    if float(tomogram.std()) == 0.0:
        raise InputError("the tomogram is constant (empty): nothing to pick")
    device, dtype = tomogram.device, tomogram.dtype
    shape = tuple(int(n) for n in tomogram.shape)
    size = int(template.shape[0])
    template_filter = TemplateFilter() if template_filter is None else template_filter
    template = template.to(device=device, dtype=dtype)
    data = (tomogram - tomogram.mean()) / tomogram.std()
    if not whiten:
        whitening = None
    else:
        whitening = spectral_whitening_filter(data) if whitening is None else whitening
        k = frequency_grid(shape, rfft=True, centered=False, device=device, dtype=dtype).norm(dim=-1)
        data = _irfftn(_rfftn(data) * whitening(k), shape)
    kernel = template_filter_kernel((size,) * 3, template_filter, whitening, device=device, dtype=dtype)
    spectrum = _rfftn(data)
    squared_spectrum = _rfftn(data.square())

    # A mask that is rotation-invariant (the default sphere centred in the box) has the same local statistics
    # of the tomogram for every rotation: they are computed once and the division by n σ_M(p) is done once,
    # after the maximum over rotations (σ_M does not depend on the rotation, so the arg-max is unchanged).
    # Any other mask is rotated with the template and its statistics are computed per rotation.
    spherical = mask is None
    if mask is None:
        mask = sphere_mask((size,) * 3, radius_voxels=size / 2, device=device, dtype=dtype)
    mask = mask.to(device=device, dtype=dtype)
    if spherical:
        std_map = _local_std(spectrum, squared_spectrum, padded_rfftn(mask, shape), mask.sum(), shape)
        std_floor = std_map.max() * 1e-4

    best_score = torch.full(shape, -math.inf, device=device, dtype=dtype)
    best_index = torch.zeros(shape, device=device, dtype=torch.int32)
    for start in range(0, rotations.shape[0], rotation_batch):
        batch = rotations[start : start + rotation_batch].to(device=device, dtype=dtype)
        rotated = rotate_volume(template[None], batch)
        filtered = _irfftn(_rfftn(rotated) * kernel, (size,) * 3)
        rotated_masks = mask[None].expand_as(filtered) if spherical else rotate_volume(mask[None], batch)
        scores = _correlate(spectrum, _normalise_under_mask(filtered, rotated_masks), shape)
        if not spherical:
            mask_spectra = padded_rfftn(rotated_masks, shape)
            counts = rotated_masks.sum(dim=_DIMS).reshape(-1, 1, 1, 1)
            local = _local_std(spectrum, squared_spectrum, mask_spectra, counts, shape)
            scores = scores / (counts * torch.clamp(local, min=local.amax() * 1e-4))
        for offset, score in enumerate(scores):
            better = score > best_score
            best_score = torch.maximum(best_score, score, out=best_score)
            best_index.masked_fill_(better, start + offset)
        if progress is not None:
            progress(min(start + rotation_batch, rotations.shape[0]))
    if spherical:
        best_score = best_score / (mask.sum() * torch.clamp(std_map, min=std_floor))
    # Index 0 of the circular correlation is the template's corner on voxel 0: roll so that it is its centre.
    centre = size // 2
    best_score = torch.roll(best_score, shifts=(centre,) * 3, dims=_DIMS)
    best_index = torch.roll(best_index.long(), shifts=(centre,) * 3, dims=_DIMS)
    return best_score, best_index


def score_calibration(score: torch.Tensor) -> tuple[float, float]:
    """A score map's null distribution: its median and ``1.4826 · MAD``.

    Particles occupy a small fraction of a score map, so its robust mean and standard deviation
    (:func:`aitom.ops.peaks.robust_mean_std`) are those of the scores where no particle is. A strided sample
    of the map (:func:`aitom.ops.peaks.strided_sample`) gives the same statistics as the map.

    Args:
        score: score map or a sample of it, any shape and device.

    Returns:
        ``(median, spread)``, in score units.

    Raises:
        InputError: the map is constant in its bulk (zero robust spread).
    """
    median, spread = robust_mean_std(score)
    if not spread > 0:
        raise InputError("the score map has zero spread: cannot calibrate it")
    return median, spread


def calibrate_scores(score: torch.Tensor, calibration: tuple[float, float] | None = None) -> torch.Tensor:
    """A score map as z-scores against a null distribution: ``(score − median) / spread``.

    After calibration a value is "so many noise standard deviations above background" for every template
    alike, whereas raw FLCF values of different templates are not comparable (the spread of a template's
    score in noise shrinks with the number of independent voxels under its mask).

    Args:
        score: score map, any shape and device.
        calibration: ``(median, spread)`` (:func:`score_calibration`); None: the map's own.

    Returns:
        Calibrated map, same shape, dtype and device.

    Raises:
        InputError: the map is constant in its bulk (zero robust spread).
    """
    median, spread = score_calibration(score) if calibration is None else calibration
    return (score - median) / spread


def best_calibrated_template(
    template_maps: Iterable[tuple[torch.Tensor, torch.Tensor, tuple[float, float]]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Voxel-wise arg-max over templates of their calibrated scores (ties: the lower template index).

    Args:
        template_maps: per template, in order: its score map ``(...)``, its best-rotation index map ``(...)``
            and its ``(median, spread)`` (:func:`score_calibration`); consumed one at a time, so a generator
            holds one template's maps at once.

    Returns:
        ``(score, template_index, rotation_index)``: best calibrated score and the int64 indices of its
        template and rotation, each ``(...)``.

    Raises:
        InputError: no template.
    """
    best_score = best_template = best_rotation = None
    for number, (score, rotation_index, calibration) in enumerate(template_maps):
        score = calibrate_scores(score, calibration)
        rotation_index = rotation_index.long()
        if best_score is None:
            best_score, best_rotation = score, rotation_index
            best_template = torch.zeros_like(rotation_index)
            continue
        better = score > best_score
        best_score = torch.where(better, score, best_score)
        best_template = best_template.masked_fill(better, number)
        best_rotation = torch.where(better, rotation_index, best_rotation)
    if best_score is None:
        raise InputError("no template given")
    return best_score, best_template, best_rotation


def match_templates(
    tomogram: torch.Tensor,
    templates: Sequence[torch.Tensor],
    rotations: torch.Tensor,
    *,
    masks: Sequence[torch.Tensor | None] | None = None,
    template_filter: TemplateFilter | None = None,
    whiten: bool = False,
    whitening: Callable[[torch.Tensor], torch.Tensor] | None = None,
    rotation_batch: int = 8,
    progress: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Multi-template matching: which template explains each voxel best, on a calibrated score.

    Each template is matched with :func:`match_template`; its best-over-rotations FLCF map is calibrated by
    its own null distribution (:func:`score_calibration`, :func:`calibrate_scores`: a z-score), and every
    voxel takes the template with the highest calibrated score (:func:`best_calibrated_template`). Peaks of
    the result, with one shared non-maximum suppression, then carry the class of the template that explains
    them best.

    Args:
        tomogram: ``(Z, Y, X)`` real tensor, any device.
        templates: ``K`` cubic templates ``(t_k, t_k, t_k)`` (sizes may differ), protein bright.
        rotations: ``(R, 3, 3)`` rotation grid shared by all templates.
        masks: per template a footprint mask of its shape, or None (default sphere of the box).
        template_filter, whiten, whitening, rotation_batch: as :func:`match_template`.
        progress: called with the number of (template, rotation) pairs done so far.

    Returns:
        ``(score, template_index, rotation_index)``: ``(Z, Y, X)`` best calibrated score, and ``(Z, Y, X)``
        int64 indices into ``templates`` and ``rotations``, on the tomogram's device.
    """
    if len(templates) == 0:
        raise InputError("no template given")
    masks = [None] * len(templates) if masks is None else list(masks)
    if len(masks) != len(templates):
        raise ValueError(f"{len(masks)} masks for {len(templates)} templates")

    def template_maps() -> Iterator[tuple[torch.Tensor, torch.Tensor, tuple[float, float]]]:
        for number, (template, mask) in enumerate(zip(templates, masks)):
            done = number * rotations.shape[0]
            score, rotation_index = match_template(
                tomogram,
                template,
                rotations,
                mask=mask,
                template_filter=template_filter,
                whiten=whiten,
                whitening=whitening,
                rotation_batch=rotation_batch,
                progress=None if progress is None else (lambda count, done=done: progress(done + count)),
            )
            yield score, rotation_index, score_calibration(score)

    return best_calibrated_template(template_maps())
