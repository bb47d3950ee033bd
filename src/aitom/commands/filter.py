"""``aitom filter {gaussian,dog,diffusion,bandpass} IN.mrc OUT.mrc [options]``: filter a volume.

The output keeps the input's voxel size and position (its origin, or its ``nstart`` folded into the origin);
it is written atomically and never over an existing file without ``--overwrite``. Bad input (not a volume,
NaN voxels, a non-positive sigma, ...) is one line on stderr and exit code 2, and nothing is written.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

_SIGMA_HELP = "standard deviation of the {which} Gaussian in Å (converted with the voxel size)"
_SIGMA_VOXELS_HELP = "standard deviation of the {which} Gaussian in voxels"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "filter",
        help="Gaussian, difference-of-Gaussians, anisotropic diffusion or band-pass filter of a volume",
        description="Filter a volume (MRC) and write the result (MRC, float32) with the input's voxel size.",
    )
    filters = parser.add_subparsers(dest="filter", metavar="FILTER", required=True)

    gaussian = filters.add_parser(
        "gaussian",
        help="Gaussian blur (scipy.ndimage.gaussian_filter's reflect boundary)",
        description="Gaussian blur; separable for small sigma, FFT for large, same result either way.",
    )
    _io_options(gaussian)
    sigma = gaussian.add_mutually_exclusive_group(required=True)
    sigma.add_argument("--sigma-a", type=float, help=_SIGMA_HELP.format(which="blurring"))
    sigma.add_argument("--sigma-voxels", type=float, help=_SIGMA_VOXELS_HELP.format(which="blurring"))
    _method_option(gaussian)

    dog = filters.add_parser(
        "dog",
        help="difference of Gaussians G(sigma1) - G(sigma2): a band-pass that enhances blobs",
        description="Difference of Gaussians G(sigma1) * v - G(sigma2) * v, positive on bright blobs of "
        "radius about sqrt(3 * sigma1 * sigma2) (2.2 sigma1 with the default sigma2 = 1.6 sigma1).",
    )
    _io_options(dog)
    sigma1 = dog.add_mutually_exclusive_group(required=True)
    sigma1.add_argument("--sigma-a", type=float, help=_SIGMA_HELP.format(which="smaller (sigma1)"))
    sigma1.add_argument(
        "--sigma-voxels", type=float, help=_SIGMA_VOXELS_HELP.format(which="smaller (sigma1)")
    )
    sigma2 = dog.add_mutually_exclusive_group()
    sigma2.add_argument("--sigma2-a", type=float, help=_SIGMA_HELP.format(which="larger (sigma2)"))
    sigma2.add_argument(
        "--sigma2-voxels", type=float, help=_SIGMA_VOXELS_HELP.format(which="larger (sigma2)")
    )
    _method_option(dog)

    diffusion = filters.add_parser(
        "diffusion",
        help="anisotropic nonlinear diffusion (Fernández & Li 2003): edge- or coherence-enhancing",
        description="Anisotropic nonlinear diffusion, explicit scheme u <- u + tau div(D grad u), the "
        "diffusion tensor D from the structure tensor. 'edge' (EED) smooths everywhere except across "
        "edges; 'coherence' (CED) smooths along filaments. Large volumes are processed in tiles (exact: "
        "each iteration reads a halo of one step's reach).",
    )
    _io_options(diffusion)
    diffusion.add_argument(
        "--mode",
        choices=("edge", "coherence"),
        default="edge",
        help="edge-enhancing (EED, default) or coherence-enhancing (CED) diffusion",
    )
    diffusion.add_argument("--iterations", type=int, default=10, help="number of explicit steps (default 10)")
    diffusion.add_argument(
        "--time-step", type=float, default=0.1, help="time step tau per iteration, in (0, 1/6] (default 0.1)"
    )
    diffusion.add_argument(
        "--sigma-voxels",
        type=float,
        default=1.0,
        help="presmoothing of the gradient (noise scale), voxels (default 1)",
    )
    diffusion.add_argument(
        "--rho-voxels",
        type=float,
        default=1.0,
        help="integration scale of the structure tensor, voxels (default 1)",
    )
    diffusion.add_argument(
        "--contrast-k",
        type=float,
        help="EED edge contrast K, a gradient magnitude in the volume's intensity units per voxel "
        "(default: the 90th percentile of the smoothed gradient magnitude in the central 64^3 crop)",
    )
    diffusion.add_argument(
        "--alpha", type=float, default=0.001, help="CED minimal diffusivity, in (0, 1] (default 0.001)"
    )
    diffusion.add_argument(
        "--coherence-c",
        type=float,
        help="CED coherence threshold C, in (intensity per voxel)^4 (default 0.001 K^4)",
    )
    diffusion.add_argument(
        "--tile-size",
        type=int,
        default=128,
        help="edge of the cubic tiles, voxels; volumes larger than one tile are processed in tiles to "
        "bound memory (default 128)",
    )

    bandpass = filters.add_parser(
        "bandpass",
        help="radial Fourier band-pass with raised-cosine edges",
        description="Keep the spatial frequencies between 1/highpass and 1/lowpass (cycles/Å); each edge is "
        "a raised cosine. Periodic boundary (FFT).",
    )
    _io_options(bandpass)
    bandpass.add_argument(
        "--highpass-a",
        type=float,
        help="remove structure coarser than this, Å (default: keep low frequencies)",
    )
    bandpass.add_argument(
        "--lowpass-a",
        type=float,
        help="remove structure finer than this, Å, at least 2 voxel sizes (default: keep high frequencies)",
    )
    bandpass.add_argument(
        "--edge-width-frac",
        type=float,
        default=0.05,
        help="width of each soft edge, as a fraction of Nyquist, in [0, 1] (default 0.05)",
    )


def _io_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, metavar="IN", help="input volume (MRC/.map/.rec, optionally .gz)")
    parser.add_argument("output", type=Path, metavar="OUT", help="output volume (MRC, float32)")
    parser.add_argument(
        "--voxel-size",
        type=float,
        help="voxel size in Å, replacing the input header's (also written to the output)",
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def _method_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--method",
        choices=("auto", "separable", "fourier"),
        default="auto",
        help="separable 1-D convolutions or FFT; same result, 'auto' picks the faster (default)",
    )


def _sigma_voxels(
    sigma_a: float | None, sigma_voxels: float | None, voxel_size_a: tuple[float, float, float], option: str
) -> tuple[float, float, float] | float:
    """A sigma in voxels, per axis (x, y, z) when given in Å (voxels may be anisotropic)."""
    from aitom.errors import InputError

    value = sigma_a if sigma_a is not None else sigma_voxels
    unit = "Å" if sigma_a is not None else "voxels"
    if not value > 0:
        raise InputError(
            f"--{option}-{'a' if sigma_a is not None else 'voxels'} must be positive, got {value} {unit}"
        )
    if sigma_a is None:
        return sigma_voxels
    return tuple(sigma_a / size for size in voxel_size_a)


def _typed(option: str, value_a: float | None, value_voxels: float | None) -> str:
    """``--OPTION-a VALUE Å`` or ``--OPTION-voxels VALUE``, whichever was given, for messages."""
    if value_a is not None:
        return f"--{option}-a {value_a:g} Å"
    return f"--{option}-voxels {value_voxels:g}"


def _widest(sigma_voxels: tuple[float, float, float] | float) -> float:
    """The largest of a scale given as one number or per axis (x, y, z)."""
    return max(sigma_voxels) if isinstance(sigma_voxels, tuple) else sigma_voxels


def _check_scale(
    option: str, sigma_voxels: tuple[float, float, float] | float, shape_zyx: tuple[int, ...], path: Path
) -> None:
    """Refuse a Gaussian scale wider than the volume's longest axis (a sigma in Å taken for nm, or a wrong
    voxel size): the blur would leave little but the mean, and its kernel (4 sigma each side, reflected)
    would take many times the volume's memory.

    Args:
        option: the option as typed, with its unit, e.g. ``"--sigma-a 1e+06 Å"``.
        sigma_voxels: the scale in voxels, one number or (x, y, z).
        shape_zyx: the volume's shape ``(Z, Y, X)``, voxels.
        path: the input volume, named in the error.

    Raises:
        InputError: the scale exceeds the longest axis (NaN is left to the filter's own checks).
    """
    from aitom.errors import InputError

    widest = _widest(sigma_voxels)
    longest = max(shape_zyx)
    if widest > longest:
        raise InputError(
            f"{option} is {widest:.4g} voxels, wider than the volume's longest axis ({longest} voxels): "
            "the filter would leave little but the mean; is the value (or the voxel size) right?",
            path,
        )


def run(args: argparse.Namespace) -> int:
    import math

    from aitom.commands.shared import check_volume_output, torch_device, warnings_dropped_on_refusal
    from aitom.errors import InputError
    from aitom.io import read_volume, voxels_are_cubic, write_volume
    from aitom.ops import (
        anisotropic_diffusion,
        anisotropic_diffusion_tiled,
        bandpass_filter,
        difference_of_gaussians,
        gaussian_filter3d,
    )

    if args.voxel_size is not None and not 0 < args.voxel_size < math.inf:
        raise InputError(f"--voxel-size must be a positive number of Å, got {args.voxel_size}")
    check_volume_output(args.output, args.input, args.overwrite)

    device = torch_device(args.device)
    with warnings_dropped_on_refusal():  # refused for its voxel size: the error line alone
        volume, header = read_volume(args.input, voxel_size_a=args.voxel_size)
        voxel_size = header.voxel_size_a
        if min(voxel_size) <= 0:
            raise InputError(
                f"voxel size {voxel_size} Å in the header is not positive; pass --voxel-size", args.input
            )
        if args.filter == "bandpass" and not voxels_are_cubic(voxel_size):
            raise InputError(
                f"band-pass needs isotropic voxels, got {voxel_size} Å (x, y, z); make them cubic with "
                "aitom convert IN OUT --resample Å, or pass --voxel-size if the header is wrong",
                args.input,
            )
    shape = tuple(volume.shape)
    if args.filter == "gaussian":
        sigma = _sigma_voxels(args.sigma_a, args.sigma_voxels, voxel_size, "sigma")
        _check_scale(_typed("sigma", args.sigma_a, args.sigma_voxels), sigma, shape, args.input)
        result = gaussian_filter3d(volume.to(device), sigma, method=args.method)
    elif args.filter == "dog":
        sigma1 = _sigma_voxels(args.sigma_a, args.sigma_voxels, voxel_size, "sigma")
        _check_scale(_typed("sigma", args.sigma_a, args.sigma_voxels), sigma1, shape, args.input)
        sigma2 = None
        if args.sigma2_a is not None or args.sigma2_voxels is not None:
            sigma2 = _sigma_voxels(args.sigma2_a, args.sigma2_voxels, voxel_size, "sigma2")
            _check_scale(_typed("sigma2", args.sigma2_a, args.sigma2_voxels), sigma2, shape, args.input)
            if _widest(sigma2) <= _widest(sigma1):
                raise InputError(
                    f"{_typed('sigma2', args.sigma2_a, args.sigma2_voxels)} must be larger than "
                    f"{_typed('sigma', args.sigma_a, args.sigma_voxels)} "
                    "(G(sigma) - G(sigma2) is positive on blobs only then)"
                )
        result = difference_of_gaussians(volume.to(device), sigma1, sigma2, method=args.method)
    elif args.filter == "diffusion":
        if args.tile_size < 16:
            raise InputError(f"--tile-size must be at least 16 voxels, got {args.tile_size}")
        for name in ("sigma_voxels", "rho_voxels"):
            value = getattr(args, name)
            _check_scale(f"--{name.replace('_', '-')} {value:g}", value, shape, args.input)
        options = {
            "mode": args.mode,
            "n_iterations": args.iterations,
            "time_step": args.time_step,
            "sigma_voxels": args.sigma_voxels,
            "rho_voxels": args.rho_voxels,
            "contrast_k": args.contrast_k,
            "alpha": args.alpha,
            "coherence_c": args.coherence_c,
            "progress": True,
        }
        if max(volume.shape) > args.tile_size:
            result = anisotropic_diffusion_tiled(
                volume, tile_shape=(args.tile_size,) * 3, device=device, **options
            )
        else:
            result = anisotropic_diffusion(volume.to(device), **options)
    else:
        if args.highpass_a is None and args.lowpass_a is None:
            raise InputError("give --highpass-a and/or --lowpass-a (Å)")
        _check_band(args.highpass_a, args.lowpass_a, voxel_size[0], args.input)
        result = bandpass_filter(
            volume.to(device), voxel_size[0], args.highpass_a, args.lowpass_a, args.edge_width_frac
        )
    origin = header.grid_origin_a
    write_volume(args.output, result.cpu(), voxel_size, overwrite=args.overwrite, origin_a=origin)
    print(args.output)
    return 0


def _check_band(highpass_a: float | None, lowpass_a: float | None, voxel_size_a: float, path: str) -> None:
    """Refuse, naming the option and the input, a band edge that is not a positive number of Å, a low-pass
    finer than Nyquist (2 voxels) or a high-pass not coarser than the low-pass."""
    from aitom.errors import InputError

    for option, value in (("--highpass-a", highpass_a), ("--lowpass-a", lowpass_a)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise InputError(f"{option} must be a positive resolution in Å, got {value:g}")
    if lowpass_a is not None and lowpass_a < 2 * voxel_size_a:
        raise InputError(
            f"--lowpass-a {lowpass_a:g} Å is finer than Nyquist at this voxel size ({2 * voxel_size_a:g} Å)",
            path,
        )
    if highpass_a is not None and lowpass_a is not None and highpass_a <= lowpass_a:
        raise InputError(
            f"--highpass-a ({highpass_a:g} Å) must be coarser (larger) than --lowpass-a ({lowpass_a:g} Å)"
        )
