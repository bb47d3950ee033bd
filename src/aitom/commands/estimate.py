"""``aitom estimate {snr,wedge,fsc} ...``: a data set's SNR, a tomogram's tilt range, or the FSC of two maps;
prints JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aitom.commands.shared import (
    add_voxel_size_option,
    read_real_space_mask,
    seed_number,
    warnings_dropped_on_refusal,
)

#: volume files found in an ``estimate snr`` folder: MRC names, plain or compressed as the reader accepts
VOLUME_SUFFIXES = tuple(
    f"{name}{compression}" for name in (".mrc", ".map", ".rec") for compression in ("", ".gz", ".bz2")
)
#: most candidate tilt ranges ``estimate wedge`` scores (2000 limits with min and max free: ~0.5 GB)
MAX_CANDIDATE_RANGES = 4_000_000


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "estimate",
        help="estimate the SNR of paired subtomograms, the tilt range (missing wedge) of a tomogram, or the "
        "FSC resolution of two maps",
        description="Estimates printed to stdout as one JSON object.",
    )
    kinds = parser.add_subparsers(dest="estimate", metavar="WHAT", required=True)

    snr = kinds.add_parser(
        "snr",
        help="SNR from pairs of aligned copies with independent noise: SNR = cc / (1 - cc)",
        description="SNR of paired volumes (same structure and pose, independent noise; e.g. the two noise "
        "realisations of `aitom simulate subtomograms ... paired=true`) from the mean correlation "
        "coefficient over pairs (Frank & Al-Ali 1975), with a bootstrap 95% interval over pairs (for a "
        "single pair, e.g. two half maps: a Fisher-z interval counting every voxel as independent, too "
        "narrow when the noise is correlated between voxels, as after filtering or averaging), and the "
        "spectral SNR per Fourier shell from the mean FSC. Each of --pairs-a/--pairs-b is either one volume "
        "file or a folder of volume files, paired by sorted file name.",
    )
    snr.add_argument(
        "--pairs-a", type=Path, required=True, help="first copies: a volume file or a folder of them"
    )
    snr.add_argument("--pairs-b", type=Path, required=True, help="second copies, same layout as --pairs-a")
    snr.add_argument(
        "--mask",
        type=Path,
        help="real-space mask volume (same box, weights in [0, 1]) selecting the voxels used",
    )
    snr.add_argument(
        "--bootstrap",
        type=int,
        default=2000,
        help="bootstrap resamples for the interval, with two or more pairs (default 2000)",
    )
    snr.add_argument(
        "--seed", type=seed_number, default=0, help="seed of the bootstrap, 0 to 2^32 - 1 (default 0)"
    )
    add_voxel_size_option(snr, "the volumes (for the frequencies in 1/Å)")

    wedge = kinds.add_parser(
        "wedge",
        help="tilt range of a tomogram from the missing wedge in its Fourier amplitudes",
        description="Correlate the whitened log-amplitude spectrum with the missing-wedge masks of "
        "candidate tilt ranges and report the best (tilt axis Y, beam along Z, unless --try-x-axis finds X "
        "fits better). half_angle_deg is half the tilt range, missing_wedge_deg the wedge's opening angle.",
    )
    wedge.add_argument("volume", type=Path, help="tomogram or subtomogram (MRC), at least 16 voxels per axis")
    wedge.add_argument(
        "--symmetric", action="store_true", help="only symmetric ranges (-t, +t) (default: min and max free)"
    )
    wedge.add_argument(
        "--min-angle-deg",
        type=float,
        default=30.0,
        help="smallest candidate |tilt| limit, degrees (default 30)",
    )
    wedge.add_argument(
        "--max-angle-deg",
        type=float,
        default=90.0,
        help="largest candidate |tilt| limit, degrees (default 90)",
    )
    wedge.add_argument("--step-deg", type=float, default=1.0, help="candidate spacing, degrees (default 1)")
    wedge.add_argument(
        "--band",
        type=float,
        nargs=2,
        default=(0.05, 0.4),
        metavar=("LOW", "HIGH"),
        help="Fourier shells used, cycles/voxel (default 0.05 0.4; Nyquist is 0.5)",
    )
    wedge.add_argument(
        "--try-x-axis",
        action="store_true",
        help="also try X as the tilt axis (without it, a warning says when X fits the spectrum better)",
    )
    wedge.add_argument(
        "--crop",
        type=int,
        default=256,
        metavar="VOXELS",
        help="estimate from the central crop of at most this many voxels per axis, read alone from the file "
        "(the wedge is the same everywhere; the estimate needs about 50 bytes per voxel); 0: the whole "
        "volume (default 256)",
    )
    add_voxel_size_option(
        wedge, "the volume (reported in the JSON; anisotropic header voxels set the frame of the tilt angles)"
    )

    fsc = kinds.add_parser(
        "fsc",
        help="Fourier shell correlation of two maps on one grid: resolution at FSC 0.5 and 0.143, Å",
        description="FSC between two maps of the same box and voxel size, in the frame they are in (no "
        "alignment: superpose them first, e.g. `aitom hand A B --mirrored-out` writes B superposed on A). "
        "The maps are multiplied by --mask (a real-space weight map) or a soft sphere (--mask-diameter); "
        "with neither, unmasked. Prints the resolutions where the curve first drops below 0.5 (a map "
        "against a reference) and 0.143 (independent half maps, the gold standard), and the curve.",
    )
    fsc.add_argument("map_a", type=Path, help="first map (MRC), e.g. half map 1")
    fsc.add_argument("map_b", type=Path, help="second map (MRC), same box and voxel size")
    masking = fsc.add_mutually_exclusive_group()
    masking.add_argument(
        "--mask", type=Path, help="real-space mask (MRC, same box as the maps, weights in [0, 1])"
    )
    masking.add_argument(
        "--mask-diameter",
        type=float,
        metavar="Å",
        help="soft spherical mask about the box centre: diameter of its plateau, Å (e.g. 1.2 × the particle)",
    )
    fsc.add_argument(
        "--mask-edge",
        type=float,
        metavar="Å",
        help="width of the soft sphere's raised-cosine edge, Å, at most the box (default 3 voxels)",
    )
    fsc.add_argument("--plot", type=Path, help="also draw the curve to this PNG file")
    fsc.add_argument("--overwrite", action="store_true", help="replace an existing --plot file")
    add_voxel_size_option(fsc, "both maps")


def _volume_files(path: Path) -> list[Path]:
    from aitom.errors import InputError

    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name.lower().endswith(VOLUME_SUFFIXES))
        if not files:
            raise InputError(f"holds no volume files ({', '.join(VOLUME_SUFFIXES)})", path)
        return files
    if not path.exists():
        raise InputError("does not exist", path)
    return [path]


def _check_pairing_by_name(files_a: list[Path], files_b: list[Path], folder_a: Path, folder_b: Path) -> None:
    """Refuse two folders that share some file names but not all: paired by sorted name, a file missing
    on one side and another extra one would pair different particles (an SNR biased towards 0).

    Raises:
        InputError: naming the folder that lacks a file of the other and that file.
    """
    from aitom.errors import InputError

    names_a, names_b = [file.name for file in files_a], [file.name for file in files_b]
    if names_a == names_b or not set(names_a) & set(names_b):
        return
    for names, other_names, folder, other in (
        (names_a, names_b, folder_b, folder_a),
        (names_b, names_a, folder_a, folder_b),
    ):
        missing = next((name for name in names if name not in other_names), None)
        if missing is not None:
            raise InputError(
                f"has no {missing} to pair with {other / missing}: the folders share some file names but not "
                "all, so pairing by sorted name would mix particles",
                folder,
            )


def _run_snr(args: argparse.Namespace) -> dict:
    import torch

    from aitom.errors import InputError
    from aitom.io import read_volume
    from aitom.ops import snr_from_pairs, ssnr_from_pairs

    if args.bootstrap < 1:
        raise InputError(f"--bootstrap must be >= 1 resample, got {args.bootstrap}")
    files_a, files_b = _volume_files(args.pairs_a), _volume_files(args.pairs_b)
    if len(files_a) != len(files_b):
        raise InputError(
            f"{args.pairs_a} holds {len(files_a)} volumes but {args.pairs_b} holds {len(files_b)}"
        )
    _check_pairing_by_name(files_a, files_b, args.pairs_a, args.pairs_b)
    volumes_a, volumes_b, voxel_size = [], [], None
    for file_a, file_b in zip(files_a, files_b):
        a, header = read_volume(file_a, voxel_size_a=args.voxel_size)
        b, header_b = read_volume(file_b, voxel_size_a=args.voxel_size)
        first_shape = volumes_a[0].shape if volumes_a else a.shape
        for volume, file in ((a, file_a), (b, file_b)):
            if volume.shape != first_shape:
                raise InputError(
                    f"shape {tuple(volume.shape)} (Z, Y, X voxels) differs from {files_a[0]}'s "
                    f"{tuple(first_shape)}: the copies must share one box",
                    file,
                )
        first_voxel = header.voxel_size_a[0] if voxel_size is None else voxel_size
        for size, file in ((header.voxel_size_a[0], file_a), (header_b.voxel_size_a[0], file_b)):
            if abs(size - first_voxel) > 1e-3 * max(abs(size), abs(first_voxel)):
                raise InputError(
                    f"voxel size {size:g} Å differs from the first volume's {first_voxel:g} Å: the copies "
                    "must share one grid (aitom convert IN OUT --resample Å, or --voxel-size if a header is "
                    "wrong)",
                    file,
                )
        for volume, file in ((a, file_a), (b, file_b)):
            if float(volume.std()) == 0.0:  # its correlation with the pair is undefined (not an SNR of 0)
                raise InputError("is constant: no correlation with its pair, no SNR", file)
        if torch.equal(a, b):  # the same noise twice: cc = 1, an infinite SNR
            raise InputError(
                f"is identical to its pair {file_a}: the SNR needs two copies with independent noise", file_b
            )
        volumes_a.append(a)
        volumes_b.append(b)
        voxel_size = header.voxel_size_a[0]
    mask = None
    if args.mask is not None:
        mask = read_real_space_mask(args.mask, tuple(volumes_a[0].shape), voxel_size, "the volumes'")
        if float(mask.min()) < 0 or not float(mask.max()) > 0:
            raise InputError(
                f"mask weights must be >= 0 (1 inside, 0 outside) and select some voxels, got values in "
                f"[{float(mask.min()):g}, {float(mask.max()):g}]",
                args.mask,
            )
        inside = mask > 0
        for volume, file in zip(volumes_a + volumes_b, files_a + files_b):
            values = volume[inside]
            if float(values.max()) == float(values.min()):  # no correlation inside the mask: not an SNR of 0
                raise InputError(
                    f"is constant inside the mask {args.mask} ({int(inside.sum())} voxels): no correlation "
                    "with its pair, no SNR",
                    file,
                )
    a, b = torch.stack(volumes_a), torch.stack(volumes_b)
    result = snr_from_pairs(a, b, mask, n_bootstrap=args.bootstrap, seed=args.seed)
    frequency, ssnr = ssnr_from_pairs(a, b, mask)
    result["shell_frequency_per_voxel"] = [round(float(f), 6) for f in frequency]
    # a header voxel size of 0 (unset, warned) gives no frequencies in 1/Å: null, not a division by zero
    result["shell_frequency_per_a"] = (
        [round(float(f) / voxel_size, 6) for f in frequency] if voxel_size > 0 else None
    )
    result["ssnr"] = [float(s) for s in ssnr]
    result["voxel_size_a"] = voxel_size if voxel_size > 0 else None
    result["region_zyx_voxels"] = list(volume.shape)
    return result


def _candidate_tilts_deg(args: argparse.Namespace) -> list[float]:
    """``--min-angle-deg``, then steps of ``--step-deg`` up to ``--max-angle-deg`` (degrees), without the
    rounding drift of repeated float steps (0.1° steps must end at 90, not 90.00000000000085).

    Raises:
        InputError: impossible limits or step, or so many candidate ranges that the search would not fit
            in memory.
    """
    import math

    from aitom.errors import InputError

    low, high, step = args.min_angle_deg, args.max_angle_deg, args.step_deg
    if not (0 < low <= high <= 90 and 0 < step < math.inf):
        raise InputError(
            "need 0 < --min-angle-deg <= --max-angle-deg <= 90 and a finite --step-deg > 0 (degrees), got "
            f"{low}, {high}, {step}"
        )
    count = math.floor((high - low) / step + 1e-9) + 1
    ranges = count if args.symmetric else count**2
    if ranges > MAX_CANDIDATE_RANGES:
        most_limits = MAX_CANDIDATE_RANGES if args.symmetric else math.isqrt(MAX_CANDIDATE_RANGES)
        finest = (high - low) / (most_limits - 1)
        raise InputError(
            f"--step-deg {step:g} gives {count} candidate tilt limits between {low:g} and {high:g}° "
            f"({ranges} ranges to score, at most {MAX_CANDIDATE_RANGES}): use a step of at least "
            f"{math.ceil(finest * 1000) / 1000:g}°"
        )
    return [min(round(low + k * step, 9), high) for k in range(count)]


def _run_wedge(args: argparse.Namespace) -> dict:
    import warnings

    import numpy as np
    import torch

    from aitom.errors import InputError
    from aitom.io import central_crop, open_volume_mmap
    from aitom.ops import estimate_missing_wedge
    from aitom.ops.wedge_estimation import MIN_SIZE, TiltAxisWarning

    candidates = _candidate_tilts_deg(args)
    if args.crop != 0 and args.crop < MIN_SIZE:
        raise InputError(
            f"--crop must be 0 (the whole volume) or at least {MIN_SIZE} voxels, got {args.crop}"
        )
    array, header = open_volume_mmap(args.volume, voxel_size_a=args.voxel_size)
    region = central_crop(array.shape, args.crop) if args.crop else (slice(None),) * 3
    volume = torch.from_numpy(np.array(array[region], dtype=np.float32))
    sizes = header.voxel_size_a
    # anisotropic voxels: the tilt angles are those of the physical frequencies
    anisotropic = all(v > 0 for v in sizes) and max(sizes) - min(sizes) > 1e-3 * max(sizes)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TiltAxisWarning)
            result = estimate_missing_wedge(
                volume,
                candidate_tilt_max_deg=candidates,
                asymmetric=not args.symmetric,
                frequency_band=tuple(args.band),
                axes=("y", "x") if args.try_x_axis else ("y",),
                voxel_size_xyz_a=sizes if anisotropic else None,
            )
    except InputError as error:
        raise InputError(error.problem, args.volume) from None
    for warning in caught:  # told again with the file and the option that searches the other axis
        message = warning.message
        if isinstance(message, TiltAxisWarning):
            message = TiltAxisWarning(f"{args.volume}: {message}; pass --try-x-axis")
        warnings.warn_explicit(message, warning.category, warning.filename, warning.lineno)
    # a header voxel size of 0 or below (unset, warned) is not a voxel size: null, as for estimate snr
    voxel_size = header.voxel_size_a[0]
    result["voxel_size_a"] = voxel_size if voxel_size > 0 else None
    if anisotropic:
        result["voxel_size_xyz_a"] = [float(v) for v in sizes]
    result["region_zyx_voxels"] = list(volume.shape)
    return result


def _fsc_mask(args: argparse.Namespace, shape: tuple[int, ...], voxel_size: float):
    """The real-space mask of ``estimate fsc`` (``(Z, Y, X)`` weights, or None) and its description."""
    import math

    from aitom.errors import InputError
    from aitom.geometry import soft_sphere_mask

    if args.mask is not None:
        mask = read_real_space_mask(args.mask, shape, voxel_size)
        if float(mask.min()) < 0 or float(mask.max()) > 1 or not float(mask.max()) > 0:
            raise InputError(
                f"mask weights must lie in [0, 1] (1 inside) and select some voxels, got values in "
                f"[{float(mask.min()):g}, {float(mask.max()):g}]",
                args.mask,
            )
        return mask, str(args.mask)
    if args.mask_diameter is None:
        if args.mask_edge is not None:
            raise InputError("--mask-edge needs --mask-diameter")
        return None, "none"
    edge = 3 * voxel_size if args.mask_edge is None else args.mask_edge
    if not 0 < args.mask_diameter < math.inf:
        raise InputError(f"--mask-diameter must be a positive number of Å, got {args.mask_diameter}")
    if not 0 <= edge < math.inf:
        raise InputError(f"--mask-edge must be a number of Å >= 0, got {edge}")
    box_a = min(shape) * voxel_size
    if args.mask_diameter > box_a:
        raise InputError(
            f"--mask-diameter {args.mask_diameter:g} Å is larger than the box ({min(shape)} voxels of "
            f"{voxel_size:g} Å = {box_a:g} Å)"
        )
    if edge > box_a:
        raise InputError(
            f"--mask-edge {edge:g} Å is wider than the box ({min(shape)} voxels of {voxel_size:g} Å = "
            f"{box_a:g} Å): the mask would be close to 1 everywhere (is it in Å?)"
        )
    mask = soft_sphere_mask(shape, args.mask_diameter / 2 / voxel_size, edge / voxel_size)
    return mask, f"soft sphere, diameter {args.mask_diameter:g} Å, edge {edge:g} Å"


def _run_fsc(args: argparse.Namespace) -> dict:
    from aitom.commands.shared import refuse_path_under_a_file
    from aitom.errors import InputError
    from aitom.fourier import fourier_shell_correlation, resolution_at
    from aitom.io import read_volume, save_fsc_plot
    from aitom.io.atomic import check_output_path

    if args.plot is not None:
        if args.plot.suffix.lower() != ".png":
            raise InputError("--plot must name a .png file", args.plot)
        check_output_path(args.plot, args.overwrite)
        refuse_path_under_a_file(args.plot)
    with warnings_dropped_on_refusal():  # a map refused for its header or grid: the error line alone
        a, header_a = read_volume(args.map_a, voxel_size_a=args.voxel_size)
        b, header_b = read_volume(args.map_b, voxel_size_a=args.voxel_size)
        shape = tuple(a.shape)
        if tuple(b.shape) != shape:
            raise InputError(
                f"shape {tuple(b.shape)} (Z, Y, X voxels) differs from {args.map_a}'s {shape}: the FSC "
                "compares two maps on one grid",
                args.map_b,
            )
        if min(shape) < 4:
            raise InputError(
                f"is {shape} voxels (Z, Y, X): the FSC needs at least 4 voxels per axis", args.map_a
            )
        for header, path in ((header_a, args.map_a), (header_b, args.map_b)):
            sizes = header.voxel_size_a
            if not min(sizes) > 0:
                raise InputError("has no voxel size (0 Å in the header): pass --voxel-size in Å", path)
            if max(sizes) / min(sizes) - 1 > 1e-3:
                raise InputError(
                    f"anisotropic voxels {tuple(sizes)} Å (x, y, z): make them cubic with aitom convert IN "
                    "OUT --resample Å",
                    path,
                )
        voxel_size = header_a.voxel_size_a[0]
        if abs(header_b.voxel_size_a[0] - voxel_size) > 1e-3 * voxel_size:
            raise InputError(
                f"voxel size {header_b.voxel_size_a[0]:g} Å differs from {args.map_a}'s {voxel_size:g} Å: "
                "the maps must share one grid (aitom convert IN OUT --resample Å, or --voxel-size if a "
                "header is wrong)",
                args.map_b,
            )
    mask, mask_description = _fsc_mask(args, shape, voxel_size)
    for volume, path in ((a, args.map_a), (b, args.map_b)):
        values = volume if mask is None else volume[mask > 0]
        if float(values.max()) == float(values.min()):
            raise InputError(f"is constant{'' if mask is None else ' inside the mask'}: no FSC", path)
    mask = None if mask is None else mask.double()
    frequency, curve = fourier_shell_correlation(a.double(), b.double(), mask=mask)
    result = {
        "map_a": str(args.map_a),
        "map_b": str(args.map_b),
        "voxel_size_a": voxel_size,
        "box_zyx_voxels": list(shape),
        "mask": mask_description,
        "nyquist_a": 2 * voxel_size,
        **{
            f"fsc_{threshold}_a": float(resolution_at(frequency, curve, threshold, voxel_size_a=voxel_size))
            for threshold in (0.5, 0.143)
        },
        "frequency_per_a": [round(float(f) / voxel_size, 6) for f in frequency],
        "fsc": [round(float(value), 6) for value in curve],
    }
    if args.plot is not None:
        entry = {"label": f"{args.map_a.name} vs {args.map_b.name}", "fsc": result["fsc"]}
        report = {"frequency_per_a": result["frequency_per_a"], "classes": [entry]}
        save_fsc_plot(report, args.plot, ylabel="FSC", overwrite=args.overwrite)
    return result


def run(args: argparse.Namespace) -> int:
    from aitom.commands.shared import json_ready

    runs = {"snr": _run_snr, "wedge": _run_wedge, "fsc": _run_fsc}
    result = json_ready(runs[args.estimate](args))
    print(json.dumps(result, allow_nan=False))
    return 0
