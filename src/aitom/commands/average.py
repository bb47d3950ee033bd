"""``aitom average --particles P.star --out DIR [--iterations N] [--classes K|auto] [--method align|faml]``.

Reads the subtomograms named in the table's ``rlnImageName`` column (an MRC volume, or ``N@STACK`` for volume
N, 1-based, of an MRC stack of volumes; relative paths are resolved beside the STAR file when the file is
there, else against the working directory, as :func:`aitom.io.relion5.resolve_relative` does), runs
reference-free iterative averaging (one class; or, with ``--reference``, averaging refined from a given map or
atomic model), simultaneous classification and averaging (``--classes K`` or ``auto``) or FAML maximum
likelihood (``--method faml``), and writes DIR/average_classN.mrc (N from 1; the class's own number when
``--class-number`` selects one class averaged as one), DIR/average_classN_half1.mrc and _half2.mrc (the
averages of the even- and odd-numbered particles of the class, refined apart after the joint rounds
(``--gold-standard-iterations``), whose FSC is the half-set FSC; for classes of at least two particles),
DIR/particles.star, DIR/fsc.json and DIR/fsc.png (half-set FSC per class).

DIR/particles.star is the input table with the found rlnAngleRot/Tilt/Psi, rlnOriginX/Y/Z = −shift in voxels
(and rlnOriginX/Y/ZAngst in Å when the input has them), rlnClassNumber and aitomAlignmentScore; its
rlnImageName and rlnCtfImage are rewritten relative to DIR, and the input's data_optics is kept. fsc.json is
strict JSON: a resolution the FSC never reaches (below the threshold from the first shell on) is ``null``.
"""

from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from aitom.commands.shared import add_voxel_size_option, image_reference, relocated_names, seed_number

if TYPE_CHECKING:
    import pandas as pd
    import torch

#: the rotational search band starts here (cycles/voxel): --max-frequency must lie above it
_SEARCH_BAND_START = 0.05


#: defaults of --max-classes, --merge-threshold and --reassignment-rounds (options of --classes auto only)
_MAX_CLASSES = 6
_MERGE_THRESHOLD = 0.9
_REASSIGNMENT_ROUNDS = 3


class AverageWarning(UserWarning):
    """Odd but usable input to ``aitom average``: a particle diameter that makes the mask moot."""


def _classes(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"need at least 1 class, got {value}")
    return value


def _class_numbers(text: str) -> list[int]:
    """``--class-number`` value: comma-separated class numbers, each >= 1."""
    try:
        numbers = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected class numbers such as 2 or 1,3, got {text!r}") from None
    if min(numbers) < 1:
        raise argparse.ArgumentTypeError(f"class numbers start at 1, got {text}")
    return numbers


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from aitom.commands.align import _tilt_range

    parser = subparsers.add_parser(
        "average",
        help="reference-free subtomogram averaging, classification and FAML",
        description="Align and average subtomograms without a reference (missing-wedge compensated), "
        "optionally classifying them (PCA + k-means with the number of classes from the silhouette) or by "
        "FAML maximum likelihood. Writes DIR/average_classN.mrc, its half maps DIR/average_classN_half1.mrc "
        "and _half2.mrc (even and odd particles, refined apart: gold standard), DIR/particles.star (found "
        "angles in degrees, origins in voxels, classes), DIR/fsc.json and DIR/fsc.png.",
    )
    parser.add_argument(
        "--particles",
        type=Path,
        required=True,
        help="STAR table whose rlnImageName column names the MRC subtomograms (a file, or N@STACK for volume "
        "N, 1-based, of a stack of volumes), relative to the STAR file's folder or the working directory",
    )
    parser.add_argument(
        "--class-number",
        type=_class_numbers,
        metavar="N[,M...]",
        help="average only the particles whose rlnClassNumber is one of these (1-based; a classified table "
        "such as this command's or RELION's particles.star); the output table holds only them; one class "
        "averaged as one keeps its number (average_classN.mrc), classes found anew are numbered from 1 "
        "(default: all)",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--iterations", type=int, default=5, help="align/average rounds (default 5)")
    parser.add_argument(
        "--classes", type=_classes, default=1, help="number of classes, or 'auto' to choose it (default 1)"
    )
    parser.add_argument(
        "--method",
        choices=("align", "faml"),
        default="align",
        help="alignment-based averaging or FAML (default align)",
    )
    parser.add_argument(
        "--wedge",
        type=_tilt_range,
        default=(-60.0, 60.0),
        help="tilt range of the subtomograms' missing wedge, degrees: D for (-D, D) or MIN,MAX (default 60)",
    )
    parser.add_argument(
        "--fourier-weights",
        choices=("auto", "wedge"),
        default="auto",
        help="auto: when the table has rlnCtfImage (the 3-D CTF²·dose weights `aitom reconstruct` writes, or "
        "RELION 3/4 and Warp 3-D CTF volumes in FFTW's half layout; a signed CTF is squared), weight each "
        "particle's Fourier coefficients by √(weight / its maximum) in alignment, classification, FAML and "
        "averaging (real wedge and CTF); wedge: the --wedge mask for all (default auto)",
    )
    parser.add_argument(
        "--particle-diameter",
        type=float,
        default=None,
        help="diameter of a soft spherical mask on the reference during alignment, Å (default: no mask)",
    )
    parser.add_argument(
        "--reference",
        type=Path,
        help="start from this reference instead of a random start: a map (MRC; another voxel size or box "
        "is resampled to the subtomograms') or an atomic model (.pdb/.cif, optionally .gz; its potential "
        "built at the subtomograms' voxel size), low-passed to --lowpass. The orientations found are "
        "relative to it; the joint rounds align to it, the gold-standard half sets start from their average. "
        "Single-class averaging (--method align) only (default: no reference)",
    )
    parser.add_argument(
        "--lowpass",
        type=float,
        help="low-pass of --reference, Å (default 40, or 2.5 voxels where voxels are larger than 16 Å): "
        "coarse enough that the data, not the reference, decide the details",
    )
    parser.add_argument(
        "--invert-reference",
        choices=("auto", "yes", "no"),
        help="multiply --reference by -1? auto: when its centre-minus-surroundings contrast has the "
        "opposite sign from the mean subtomogram's (protein dark in one, bright in the other); yes/no force "
        "it (default auto)",
    )
    parser.add_argument(
        "--annealing-iterations",
        type=int,
        default=0,
        help="start from a stochastic-annealing initial model of this many iterations (about 20; each one a "
        "full rotational search) instead of the random-rotation average: for low SNR, where a random start "
        "locks on to noise; single-class averaging only (default 0: random start)",
    )
    parser.add_argument(
        "--starts",
        type=int,
        default=1,
        help="independent random (annealed, or --particle-starts) starts; the one whose poses best explain "
        "each particle by the average of the others (the highest mean leave-one-out score; with --method "
        "faml: the highest final log-likelihood) is kept, no reference needed. Each start costs a full run: "
        "use 3 or more for few, noisy particles; one class or FAML (default 1)",
    )
    parser.add_argument(
        "--particle-starts",
        action="store_true",
        help="start each of the --starts runs from one particle (drawn at random, none twice) as the "
        "reference instead of the average of randomly rotated particles, a featureless blob: for few, "
        "noisy particles of an asymmetric complex (--starts up to the number of particles); single-class "
        "averaging only, not with --annealing-iterations",
    )
    parser.add_argument(
        "--gold-standard-iterations",
        type=int,
        default=2,
        help="rounds of gold-standard refinement after the joint rounds: the even- and the odd-numbered "
        "particles of each class refined separately, from its average low-passed to --gold-standard-lowpass, "
        "so that the FSC of the two half maps measures resolution (RELION's practice). 0: the half maps "
        "come from the joint alignment and their FSC is optimistic, as noise aligned to one reference "
        "reproduces in both halves (default 2)",
    )
    parser.add_argument(
        "--gold-standard-lowpass",
        type=float,
        default=None,
        help="low-pass of the average both half sets start from, Å; their FSC is independent only at finer "
        "resolutions (default: 2 voxels / --max-frequency, half the finest frequency searched: 68.6 Å at "
        "12 Å voxels with the default --max-frequency)",
    )
    parser.add_argument(
        "--step", type=float, default=15.0, help="angular step of the rotation search, degrees (default 15)"
    )
    parser.add_argument(
        "--max-shift",
        type=float,
        default=None,
        help="largest shift searched, voxels, >= 0 (up to 4: rotations scored with phases over the integer "
        "shifts; more or unset: translation-invariant amplitude search; default: unset)",
    )
    parser.add_argument(
        "--max-frequency",
        type=float,
        default=0.35,
        help="highest frequency used in alignment, cycles/voxel, in (0.05, 0.5] (the rotational search band "
        "starts at 0.05; 0.5 = Nyquist; default 0.35)",
    )
    parser.add_argument(
        "--max-classes",
        type=int,
        help=f"with --classes auto: largest number of classes tried, at least 2 (default {_MAX_CLASSES})",
    )
    parser.add_argument(
        "--merge-threshold",
        type=float,
        help="with --classes auto: merge two classes when the estimated correlation of their noise-free "
        "structures (superposed class averages, corrected by each class's half-set reproducibility) is at "
        f"least this, dimensionless in (0, 1]; 0 disables merging (default {_MERGE_THRESHOLD:g})",
    )
    parser.add_argument(
        "--reassignment-rounds",
        type=int,
        help="with --classes auto: before merging, at most this many rounds in which every subtomogram joins "
        "the class whose average it fits best, its own class's average computed without it (classes held "
        f"together by their members' own noise dissolve); 0 disables it (default {_REASSIGNMENT_ROUNDS})",
    )
    parser.add_argument(
        "--symmetry",
        default="C1",
        help="point group of the particle, imposed on each average after every iteration with its axes "
        "found from that average: C1 (none, default), Cn, Dn (n up to 100), T, O or I (with --classes or "
        "--method faml: one point group for every class)",
    )
    parser.add_argument(
        "--seed",
        type=seed_number,
        default=0,
        help="random seed, 0 to 2^32 - 1 (initial rotations, k-means; default 0)",
    )
    add_voxel_size_option(parser, "the subtomograms")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing non-empty output folder (never one that holds the inputs)",
    )


def read_table_volume(
    name: object, star: Path, voxel_size_a: float | None, stacks: dict[Path, tuple]
) -> tuple[torch.Tensor, tuple[float, float, float], str]:
    """The 3-D volume ``(Z, Y, X)`` named by ``name`` (see :func:`image_reference`), its voxel size (Å) and
    its label; ``stacks`` caches the stacks of volumes already read (path -> (volumes, header)).

    Raises:
        InputError: a missing or unreadable file, ``N@FILE`` where FILE is not a stack of volumes (for example
            a stack of 2-D tilt images, which ``aitom reconstruct`` turns into subtomograms) or has fewer
            than N volumes.
    """
    from aitom.errors import InputError
    from aitom.io import read_volume
    from aitom.io.mrc import ImageStackError

    path, index, label = image_reference(name, star)
    if index is None:
        try:
            volume, header = read_volume(path, voxel_size_a=voxel_size_a)
        except ImageStackError as error:
            raise InputError(
                f"{error.problem}: particles as 2-D tilt series (WarpTools, RELION 5) become subtomograms "
                f"with `aitom reconstruct --particles {star} --tomograms TOMOGRAMS.star --out DIR`; then "
                "average DIR/particles.star",
                error.path,
            ) from None
        return volume, header.voxel_size_a, label
    if path not in stacks:
        stacks[path] = read_volume(path, voxel_size_a=voxel_size_a, allow_2d=True)
    volumes, header = stacks[path]
    if volumes.ndim != 4:
        raise InputError(
            f"N@FILE names volume N of a stack of 3-D volumes, but this file reads as "
            f"{'×'.join(map(str, volumes.shape))} (2-D images or one volume): 2-D tilt stacks need "
            "`aitom reconstruct` first",
            label,
        )
    if index >= volumes.shape[0]:
        raise InputError(f"the stack holds only {volumes.shape[0]} volumes", label)
    return volumes[index], header.voxel_size_a, label


def _read_subtomograms(
    star: Path, voxel_size_override: float | None, class_numbers: list[int] | None = None
) -> tuple[pd.DataFrame, torch.Tensor, float]:
    """The particle table (only the rows of ``class_numbers`` when given), its subtomograms ``(N, S, S, S)``
    and their voxel size (Å). The subtomograms' header warnings (an unset voxel size...) are collapsed
    into one line, naming the first file and how many warned.

    Raises:
        InputError: fewer than 2 particles (in the classes asked for), no rlnClassNumber column to select
            from, a volume that is missing, unreadable, not cubic, constant (nothing to align), without a
            voxel size (0 in its header) or of another size or voxel size than the first, or one listed
            twice (the same file, or another file with the same voxels).
    """
    import hashlib

    import pandas as pd
    import torch

    from aitom.errors import InputError
    from aitom.io import HeaderWarning, read_particles

    table = read_particles(star, require=("rlnImageName",))
    if len(table) == 0:
        raise InputError("the particle table is empty", star)
    if class_numbers is not None:
        if "rlnClassNumber" not in table.columns:
            raise InputError("--class-number needs an rlnClassNumber column, and the table has none", star)
        classes = pd.to_numeric(table["rlnClassNumber"], errors="coerce")
        if bool(classes.isna().any()) or bool((classes != classes.round()).any()):
            raise InputError("rlnClassNumber holds values that are not whole numbers", star)
        table = table[classes.isin(class_numbers)].reset_index(drop=True)
        if len(table) < 2:
            asked, present = (
                ", ".join(map(str, class_numbers)),
                ", ".join(map(str, sorted(set(classes.astype(int))))),
            )
            raise InputError(
                f"{len(table)} particle(s) in class(es) {asked}: need at least 2 "
                f"(the table's classes: {present})",
                star,
            )
    if len(table) < 2:
        raise InputError("need at least 2 particles to average", star)
    volumes, voxel_size_a, stacks, seen = [], None, {}, {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", HeaderWarning)
        for row, name in enumerate(table["rlnImageName"], start=1):
            volume, voxel, label = read_table_volume(name, star, voxel_size_override, stacks)
            _check_subtomogram(volume, voxel[0], label, volumes[0] if volumes else None, voxel_size_a)
            digest = hashlib.sha1(volume.numpy().tobytes()).hexdigest()
            if digest in seen:
                first_row, first_label = seen[digest]
                what = (
                    label
                    if label == first_label
                    else f"subtomograms of equal voxels ({first_label}, {label})"
                )
                raise InputError(
                    f"rows {first_row} and {row} name {what}: a particle counted twice inflates the half-set "
                    "FSC; remove the duplicate",
                    star,
                )
            seen[digest] = (row, label)
            volumes.append(volume)
            voxel_size_a = voxel_size_a or voxel[0]
    header_warnings = [warning for warning in caught if issubclass(warning.category, HeaderWarning)]
    for warning in caught:
        if warning not in header_warnings:
            warnings.warn(warning.message, stacklevel=2)
    if header_warnings:  # one line, not one per particle
        also = (
            f" (as in {len(header_warnings)} of {len(table)} subtomograms)"
            if len(header_warnings) > 1
            else ""
        )
        warnings.warn(HeaderWarning(f"{header_warnings[0].message}{also}"), stacklevel=2)
    return table, torch.stack(volumes), float(voxel_size_a)


def _check_subtomogram(
    volume: torch.Tensor,
    voxel_size_a: float,
    label: str,
    first: torch.Tensor | None,
    first_voxel_size_a: float | None,
) -> None:
    """Refuse a subtomogram that is not cubic, constant, without a voxel size, or of another size or voxel
    size than the first particle's (``first``, ``first_voxel_size_a``; None for the first itself).

    Raises:
        InputError: naming ``label`` (the file, or ``N@STACK``) and the problem.
    """
    from aitom.errors import InputError

    if first is not None and volume.shape != first.shape:
        raise InputError(
            f"size {tuple(volume.shape)} differs from the first particle's {tuple(first.shape)}", label
        )
    if len(set(volume.shape)) != 1:
        raise InputError(f"subtomogram must be cubic, got {tuple(volume.shape)}", label)
    if float(volume.max()) == float(volume.min()):
        raise InputError(
            f"subtomogram is constant ({float(volume[0, 0, 0]):g} everywhere): nothing to align", label
        )
    if not voxel_size_a > 0:
        raise InputError(
            f"voxel size {voxel_size_a:g} Å in the header is not positive; pass --voxel-size", label
        )
    if first_voxel_size_a is not None and abs(voxel_size_a - first_voxel_size_a) > 1e-3 * first_voxel_size_a:
        raise InputError(
            f"voxel size {voxel_size_a:g} Å differs from the first particle's "
            f"{first_voxel_size_a:g} Å (rescale the subtomograms to one voxel size)",
            label,
        )


def _fourier_weights(table: pd.DataFrame, star: Path, volumes: torch.Tensor) -> torch.Tensor:
    """Per-particle masks √(w / max w) from the rlnCtfImage 3-D weights, same shape as ``volumes``.

    rlnCtfImage names a file or ``N@STACK``, resolved as rlnImageName (:func:`read_table_volume`).

    Accepted layouts, as RELION reads them: a centred cube (what ``aitom reconstruct`` writes: CTF²·dose),
    FFTW's half layout ``S × S × (S/2 + 1)`` (RELION 3/4 and Warp 3-D CTF volumes), and that half layout with
    RELION 4's multiplicity stacked after it along Z (``2S × S × (S/2 + 1)``; the multiplicity is not used).
    A weight with negative values is a signed CTF (subtomograms not CTF-premultiplied) and is squared.
    """
    import torch

    from aitom.errors import InputError
    from aitom.fourier import hermitian_half_to_centered

    size = volumes.shape[-1]
    half_x = size // 2 + 1
    masks, stacks = [], {}
    for name in table["rlnCtfImage"]:
        # a weight's voxel size is not used
        weight, _, path = read_table_volume(name, star, 1.0, stacks)
        if tuple(weight.shape) in ((size, size, half_x), (2 * size, size, half_x)):
            weight = hermitian_half_to_centered(weight[:size], size)
        elif weight.shape != volumes.shape[-3:]:
            raise InputError(
                f"3-D weight of size {tuple(weight.shape)} (Z, Y, X) for subtomograms of "
                f"{tuple(volumes.shape[-3:])}: expected a centred {size}³ cube or FFTW's half layout "
                f"({size}, {size}, {half_x})",
                path,
            )
        if not bool(torch.isfinite(weight).all()) or float(weight.abs().max()) <= 0:
            raise InputError("3-D weight must be finite and not all zero", path)
        if float(weight.min()) < 0:
            weight = weight.square()
        masks.append((weight / weight.max()).sqrt())
    return torch.stack(masks)


def run(args: argparse.Namespace) -> int:
    import json

    import torch

    from aitom.commands.shared import (
        check_output_folder,
        json_ready,
        output_folder,
        refuse_inputs_inside,
        torch_device,
    )
    from aitom.errors import InputError
    from aitom.fourier import missing_wedge_mask
    from aitom.geometry import point_group_order
    from aitom.io import save_fsc_plot, write_particles, write_volume
    from aitom.io.star import read_optics
    from aitom.ops.averaging import reference_free_average, shared_start_limit
    from aitom.ops.clustering import classify_and_average, describe_merge, describe_reassignment
    from aitom.ops.faml import faml_average

    if args.iterations < 1:
        raise InputError(f"--iterations must be >= 1, got {args.iterations}")
    if not _SEARCH_BAND_START < args.max_frequency <= 0.5:
        raise InputError(
            f"--max-frequency must be in ({_SEARCH_BAND_START:g}, 0.5] cycles/voxel (the rotational search "
            f"band starts at {_SEARCH_BAND_START:g}), got {args.max_frequency}"
        )
    if not 0.0 < args.step <= 180.0:
        raise InputError(f"--step must be in (0, 180] degrees, got {args.step}")
    if args.max_shift is not None and not args.max_shift >= 0:
        raise InputError(f"--max-shift must be >= 0 voxels, got {args.max_shift}")
    if args.annealing_iterations < 0 or args.annealing_iterations == 1:
        raise InputError(f"--annealing-iterations must be 0 or at least 2, got {args.annealing_iterations}")
    if args.starts < 1:
        raise InputError(f"--starts must be >= 1, got {args.starts}")
    if args.particle_starts and args.annealing_iterations:
        raise InputError("--particle-starts and --annealing-iterations are two kinds of start: choose one")
    if args.gold_standard_iterations < 0:
        raise InputError(f"--gold-standard-iterations must be >= 0, got {args.gold_standard_iterations}")
    if args.gold_standard_lowpass is not None and not 0 < args.gold_standard_lowpass < math.inf:
        raise InputError(
            "--gold-standard-lowpass must be a positive, finite resolution in Å, "
            f"got {args.gold_standard_lowpass:g}"
        )
    for option, value in (
        ("--max-classes", args.max_classes),
        ("--merge-threshold", args.merge_threshold),
        ("--reassignment-rounds", args.reassignment_rounds),
    ):
        if value is not None and args.classes != "auto":
            raise InputError(f"{option} works with --classes auto only (it would be ignored)")
    max_classes = _MAX_CLASSES if args.max_classes is None else args.max_classes
    merge_threshold = _MERGE_THRESHOLD if args.merge_threshold is None else args.merge_threshold
    if not 0.0 <= merge_threshold <= 1.0:
        raise InputError(f"--merge-threshold must be in [0, 1] (0: no merging), got {merge_threshold}")
    reassignment_rounds = (
        _REASSIGNMENT_ROUNDS if args.reassignment_rounds is None else args.reassignment_rounds
    )
    if reassignment_rounds < 0:
        raise InputError(f"--reassignment-rounds must be >= 0 (0: none), got {reassignment_rounds}")
    if max_classes < 2:
        raise InputError(f"--max-classes must be >= 2 with --classes auto, got {max_classes}")
    if args.particle_diameter is not None and not 0 < args.particle_diameter < math.inf:
        raise InputError(
            f"--particle-diameter must be a positive, finite number of Å, got {args.particle_diameter}"
        )
    try:
        point_group_order(args.symmetry)
    except InputError as error:
        raise InputError(f"--symmetry: {error}") from None
    if args.reference is not None:
        other = (
            "--method faml"
            if args.method == "faml"
            else "--classes"
            if args.classes != 1
            else "--starts"
            if args.starts != 1
            else "--annealing-iterations"
            if args.annealing_iterations
            else "--particle-starts"
            if args.particle_starts
            else None
        )
        if other is not None:
            raise InputError(
                f"--reference starts one single-class refinement: it does not combine with {other}"
            )
        if not args.reference.is_file():
            raise InputError("reference not found", args.reference)
    elif args.lowpass is not None:
        raise InputError("--lowpass is the low-pass of --reference: give a --reference")
    elif args.invert_reference is not None:
        raise InputError("--invert-reference inverts --reference: give a --reference")
    if args.method == "faml" or args.classes != 1:
        if args.method == "faml" and args.classes == "auto":
            raise InputError("--classes auto works with --method align only: give FAML a number of classes")
        if args.particle_diameter is not None:
            raise InputError("--particle-diameter works with single-class averaging only")
        if args.annealing_iterations:
            raise InputError("--annealing-iterations works with single-class averaging only")
        if args.particle_starts:
            raise InputError("--particle-starts works with single-class averaging only")
        if args.starts != 1 and args.method != "faml":
            raise InputError("--starts works with single-class averaging or --method faml only")
    check_output_folder(args.out, args.overwrite)
    device = torch_device(args.device)
    table, volumes, voxel_size_a = _read_subtomograms(args.particles, args.voxel_size, args.class_number)
    if args.overwrite:
        columns = [column for column in ("rlnImageName", "rlnCtfImage") if column in table.columns]
        named = [image_reference(name, args.particles)[0] for c in columns for name in table[c]]
        references = [] if args.reference is None else [args.reference]
        refuse_inputs_inside(args.out, [args.particles, *named, *references])
    volumes = volumes.to(device)
    n = volumes.shape[0]
    if args.classes != "auto" and args.classes > n:
        raise InputError(f"--classes {args.classes} is more than the {n} particles")
    if args.particle_starts and args.starts > n:
        raise InputError(f"--starts {args.starts} with --particle-starts is more than the {n} particles")
    shape = tuple(volumes.shape[-3:])
    if shape[0] < 8:
        raise InputError(f"subtomograms too small to align: {shape} (at least 8³)", args.particles)
    if args.max_frequency * shape[0] < 1:
        raise InputError(
            f"--max-frequency {args.max_frequency:g} cycles/voxel is below the first Fourier shell of the "
            f"{shape[0]}³ subtomograms (1/{shape[0]} = {1 / shape[0]:.3g}): nothing to align"
        )
    if args.particle_diameter is not None:
        _check_particle_diameter(args.particle_diameter, voxel_size_a, shape[0])
    use_ctf_weights = args.fourier_weights == "auto" and "rlnCtfImage" in table.columns
    if use_ctf_weights:
        mask = _fourier_weights(table, args.particles, volumes).to(device)
        print(f"Fourier weights: rlnCtfImage (per-particle 3-D weights) for {n} particles; --wedge not used")
    else:
        mask = missing_wedge_mask(
            shape, tilt_min_deg=args.wedge[0], tilt_max_deg=args.wedge[1], device=device
        )
    initial_reference, reference_report = None, {}
    if args.reference is not None:
        initial_reference, reference_report = _initial_reference(args, volumes, voxel_size_a)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    starts_report: dict = {}
    merges_report: dict = {}
    alignment_options = {
        "angular_step_deg": args.step,
        "max_shift_voxels": args.max_shift,
        "max_frequency": args.max_frequency,
        **_gold_standard_options(args, voxel_size_a),
    }
    if args.method == "faml":
        result = faml_average(
            volumes,
            mask,
            n_classes=args.classes,
            iterations=args.iterations,
            voxel_size_a=voxel_size_a,
            starts=args.starts,
            symmetry=args.symmetry,
            generator=generator,
            progress=True,
            **alignment_options,
        )
        if args.starts > 1:
            for index, value in enumerate(result.start_log_likelihoods):
                kept = " (kept)" if index == result.kept_start else ""
                print(f"start {index + 1}: final log-likelihood {value:.1f}{kept}")
            starts_report = {
                "start_log_likelihoods": result.start_log_likelihoods,
                "kept_start": result.kept_start + 1,
            }
        averages, labels, alignment = result.averages, result.labels, result.alignment
        fsc_curves, frequency, half_averages = result.fsc, result.frequency, result.half_averages
    elif args.classes == 1:
        single = reference_free_average(
            volumes,
            mask,
            iterations=args.iterations,
            voxel_size_a=voxel_size_a,
            particle_radius_voxels=(
                None if args.particle_diameter is None else args.particle_diameter / (2 * voxel_size_a)
            ),
            annealing_iterations=args.annealing_iterations,
            generator=generator,
            progress=True,
            starts=args.starts,
            particle_starts=args.particle_starts,
            symmetry=args.symmetry,
            initial_reference=initial_reference,
            **alignment_options,
        )
        if args.starts > 1:
            for index, score in enumerate(single.start_scores):
                kept = " (kept)" if index == single.kept_start else ""
                print(f"start {index + 1}: mean leave-one-out score {score:.4f}{kept}")
            starts_report = {"start_scores": single.start_scores, "kept_start": single.kept_start + 1}
        averages, labels, alignment = single.average[None], torch.zeros(n, dtype=torch.long), single.alignment
        fsc_curves, frequency, half_averages = single.fsc[None], single.frequency, single.half_averages[None]
    else:
        result = classify_and_average(
            volumes,
            mask,
            n_classes=None if args.classes == "auto" else args.classes,
            max_classes=max_classes,
            merge_threshold=merge_threshold or None,
            reassignment_rounds=reassignment_rounds,
            rounds=args.iterations,
            symmetry=args.symmetry,
            voxel_size_a=voxel_size_a,
            generator=generator,
            progress=True,
            **alignment_options,
        )
        if result.reassignments:
            print(describe_reassignment(result))
            merges_report["reassignments"] = result.reassignments
        classes_before = result.averages.shape[0] + len(result.merges)
        for merge in result.merges:
            first, second = (k + 1 for k in merge["classes"])
            print(
                f"merged classes {first} and {second} of {classes_before} "
                f"({classes_before - 1} left): {describe_merge(merge)}"
            )
            classes_before -= 1
        if result.structural_correlations is not None:
            merges_report["merges"] = result.merges
            merges_report["structural_correlations"] = result.structural_correlations.tolist()
        averages, labels, alignment = result.averages, result.labels, result.alignment
        fsc_curves, frequency, half_averages = result.fsc, result.frequency, result.half_averages

    out_table = relocated_names(table, args.particles, args.out)
    angles = torch.rad2deg(alignment.angles_rad).cpu().double().numpy()
    shifts = alignment.shift_xyz.cpu().double().numpy()
    for column, values in zip(("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"), angles.T):
        out_table[column] = values
    for axis, values in zip("XYZ", shifts.T):
        out_table[f"rlnOrigin{axis}"] = -values
        if f"rlnOrigin{axis}Angst" in out_table.columns:  # RELION 3.1+: keep the Å origins consistent
            out_table[f"rlnOrigin{axis}Angst"] = -values * voxel_size_a
    # one class selected and averaged as one: it keeps its number; classes found here are numbered 1, 2, ...
    kept_number = args.class_number is not None and len(args.class_number) == 1 and averages.shape[0] == 1
    class_numbers = args.class_number if kept_number else list(range(1, averages.shape[0] + 1))
    out_table["rlnClassNumber"] = [class_numbers[label] for label in labels.tolist()]
    out_table["aitomAlignmentScore"] = alignment.score.cpu().double().numpy()
    from aitom.fourier import resolution_at

    report = {
        "voxel_size_a": voxel_size_a,
        "symmetry": args.symmetry,
        "frequency_per_a": (frequency.cpu() / voxel_size_a).tolist(),
        "gold_standard_iterations": args.gold_standard_iterations,
        "gold_standard_lowpass_a": (
            voxel_size_a / alignment_options["gold_standard_start_frequency"]
            if args.gold_standard_iterations
            else None
        ),
        # the start's low-pass reaches 0 only beyond its cut-off: the half sets share everything coarser
        "gold_standard_shared_to_a": (
            voxel_size_a / shared_start_limit(alignment_options["gold_standard_start_frequency"])
            if args.gold_standard_iterations
            else None
        ),
        **reference_report,
        **starts_report,
        **merges_report,
        "classes": [],
    }
    class_sizes = torch.bincount(labels.cpu(), minlength=averages.shape[0])
    for index, curve in enumerate(fsc_curves.cpu()):
        report["classes"].append(
            {
                "class": class_numbers[index],
                "particles": int(class_sizes[index]),
                "half_maps": [f"average_class{class_numbers[index]}_half{half}.mrc" for half in (1, 2)]
                if class_sizes[index] >= 2
                else None,
                "fsc": curve.tolist(),
                "fsc_0.5_a": float(resolution_at(frequency.cpu(), curve, 0.5, voxel_size_a=voxel_size_a)),
                "fsc_0.143_a": float(resolution_at(frequency.cpu(), curve, 0.143, voxel_size_a=voxel_size_a)),
            }
        )
    with output_folder(args.out) as folder:
        for index, average in enumerate(averages.cpu()):
            write_volume(folder / f"average_class{class_numbers[index]}.mrc", average, voxel_size_a)
            for name, half in zip(report["classes"][index]["half_maps"] or [], half_averages[index].cpu()):
                write_volume(folder / name, half, voxel_size_a)
        write_particles(folder / "particles.star", out_table, optics=read_optics(args.particles))
        (folder / "fsc.json").write_text(json.dumps(json_ready(report), indent=2, allow_nan=False) + "\n")
        save_fsc_plot(report, folder / "fsc.png")
    summary = ", ".join(
        f"class {c['class']}: {c['particles']} particles, FSC 0.143 "
        f"{_describe_resolution(c, report['gold_standard_shared_to_a'])}"
        for c in report["classes"]
    )
    print(f"{args.out}: {summary}")
    return 0


def _describe_resolution(class_report: dict, gold_standard_shared_to_a: float | None) -> str:
    """The FSC-0.143 resolution of one class for the summary line, saying when it is no measurement: the
    curve below 0.143 from the first shell on (``inf``), above it up to Nyquist (the resolution is limited by
    the sampling, :func:`aitom.fourier.resolution_at` gives ``2 × voxel size`` then), at or below the
    resolution the gold-standard half sets share (through their start's low-pass, soft edge included), or
    of half sets from one joint alignment (``gold_standard_shared_to_a`` None)."""
    resolution, curve = class_report["fsc_0.143_a"], class_report["fsc"]
    if not math.isfinite(resolution):
        return "not measurable (the FSC is below 0.143 from the first shell on)"
    if class_report["half_maps"] is None:
        return f"{resolution:.1f} Å"
    if gold_standard_shared_to_a is None:
        caveat = " (half maps of one joint alignment: optimistic; see --gold-standard-iterations)"
    elif resolution >= gold_standard_shared_to_a * (1 - 1e-6):
        caveat = (
            f" (not independent: the half sets share their start up to {gold_standard_shared_to_a:.1f} Å, "
            "so the FSC there says nothing about resolution)"
        )
    else:
        caveat = ""
    if min(curve[1:]) >= 0.143:
        return f"{resolution:.1f} Å = Nyquist (the FSC stays above 0.143 to the last shell: sampling-limited)"
    return f"{resolution:.1f} Å{caveat}"


def _gold_standard_options(args: argparse.Namespace, voxel_size_a: float) -> dict:
    """``gold_standard_iterations`` and ``gold_standard_start_frequency`` (cycles/voxel) of the averaging
    functions from ``--gold-standard-iterations`` and ``--gold-standard-lowpass`` (Å).

    Raises:
        InputError: a low-pass not coarser than the finest resolution searched (the half sets would share
            everything the alignment sees).
    """
    from aitom.errors import InputError

    if args.gold_standard_lowpass is None:
        frequency = args.max_frequency / 2
    else:
        frequency = voxel_size_a / args.gold_standard_lowpass
        finest_a = voxel_size_a / args.max_frequency
        if frequency >= args.max_frequency:
            raise InputError(
                f"--gold-standard-lowpass {args.gold_standard_lowpass:g} Å is not coarser than the finest "
                f"resolution searched ({finest_a:.1f} Å, --max-frequency {args.max_frequency:g} at "
                f"{voxel_size_a:g} Å voxels): the half sets would share all that the alignment sees"
            )
    return {
        "gold_standard_iterations": args.gold_standard_iterations,
        "gold_standard_start_frequency": frequency,
    }


def _check_particle_diameter(diameter_a: float, voxel_size_a: float, box: int) -> None:
    """Warn (one line) when ``--particle-diameter`` makes a mask that masks nothing (wider than the box) or
    hides the particle (under 2 voxels): a diameter in another unit (nm, voxels)?"""
    box_a = box * voxel_size_a
    if diameter_a > box_a:
        effect = f"wider than the {box}³ box ({box_a:g} Å): the mask leaves the box almost whole"
    elif diameter_a < 2 * voxel_size_a:
        effect = f"under 2 voxels ({voxel_size_a:g} Å each): the mask hides almost all of the particle"
    else:
        return
    warnings.warn(
        AverageWarning(f"--particle-diameter {diameter_a:g} Å is {effect} (is it in Å?)"), stacklevel=3
    )


def _initial_reference(
    args: argparse.Namespace, volumes: torch.Tensor, voxel_size_a: float
) -> tuple[torch.Tensor, dict]:
    """``--reference`` on the subtomograms' grid, low-passed and in their contrast, and what was done to it
    (for fsc.json); prints one line saying so.

    Raises:
        InputError: an unreadable reference, one that is constant or not finite, or an impossible --lowpass.
    """
    import torch

    from aitom.commands.shared import match_reference_contrast, read_reference
    from aitom.errors import InputError
    from aitom.fourier import lowpass

    lowpass_a = max(40.0, 2.5 * voxel_size_a) if args.lowpass is None else args.lowpass
    if not 0 < lowpass_a < float("inf"):
        raise InputError(f"--lowpass must be a positive, finite resolution in Å, got {lowpass_a:g}")
    if lowpass_a < 2 * voxel_size_a:
        raise InputError(f"--lowpass {lowpass_a:g} Å is finer than Nyquist ({2 * voxel_size_a:g} Å)")
    reference = read_reference(
        args.reference,
        voxel_size_a,
        volumes.shape[-1],
        data_voxel_size_unset=args.voxel_size is None and voxel_size_a in (0.0, 1.0),
    ).to(volumes)
    if not bool(torch.isfinite(reference).all()):
        raise InputError("the reference holds NaN or infinite values", args.reference)
    reference = lowpass(reference, lowpass_a, voxel_size_a)
    if float(reference.std()) <= 1e-6 * float(reference.abs().max().clamp(min=1e-30)):
        raise InputError(f"the reference is constant after the {lowpass_a:g} Å low-pass", args.reference)
    reference, invert, data_contrast = match_reference_contrast(
        reference, volumes.mean(dim=0), args.invert_reference
    )
    contrast = "bright" if data_contrast > 0 else "dark"
    print(
        f"reference {args.reference}: low-passed to {lowpass_a:g} Å, "
        + ("contrast inverted" if invert else "contrast as it is")
        + f" (the mean subtomogram's centre is {contrast}er than its surroundings)"
    )
    return reference, {
        "reference": str(args.reference),
        "reference_lowpass_a": lowpass_a,
        "reference_inverted": invert,
    }
