"""``aitom reconstruct --particles P.star --tomograms T.star --out DIR [--mode wiener|phase_flip]``.

Reconstructs one subtomogram per particle of a RELION 5 / WarpTools particle set whose particles are 2-D
stacks of tilt images (``rlnImageName`` names a ``.mrcs`` with one image per frame of the tilt series, or one
per visible frame). Each particle's visible frames are inserted in Fourier space with the tilt series'
projection matrices (:func:`aitom.ops.reconstruction.reconstruct_subtomogram`), CTF-corrected with the
per-tilt defocus of the tomogram set (Wiener or phase flip; images flagged ``rlnCtfDataAreCtfPremultiplied``
are treated as already multiplied by their CTF) and dose-weighted (``rlnMicrographPreExposure``).

Writes DIR/subtomograms/NNNNNN.mrc (the volume, voxel size = the images' pixel size), DIR/weights/NNNNNN.mrc
(the 3-D Fourier weight Σ (dose·CTF)², full centred layout, zero frequency at voxel S//2: the particle's real
missing wedge and CTF weighting) and DIR/particles.star (aitom table: rlnCoordinateX/Y/Z in voxels of the
tomogram at the images' pixel size, rlnAngleRot/Tilt/Psi, rlnTomoName, rlnImageName and rlnCtfImage
relative to DIR) that ``aitom average`` reads. NNNNNN is the particle's 1-based row in the input table.
With ``--average``, also DIR/average.mrc and DIR/average_weight.mrc: every particle inserted in its own frame
(rotated by its rlnAngleRot/Tilt/Psi) into one Fourier volume, divided once (RELION's ``reconstruct``).

Contrast: ``--invert auto`` (default) reconstructs the first particles, compares the mean density of the
central sphere (radius S/4) with the shell around it (S/4 to S/2) and multiplies everything by −1 when the
centre is darker, i.e. when the particle (protein, denser than ice) came out negative; ``yes`` and ``no``
force it. Before that sign, images flagged premultiplied keep their contrast, while images that are not are
divided by aitom's CTF, which has the physical sign (negative at low frequency): RELION-style images with
protein bright come out dark, raw ones bright. So with ``--invert no`` the same particles written
premultiplied and not come out with opposite signs; ``auto`` settles both.

Hand: ``--flip-hand`` mirrors every output along Z (subtomograms, weights and the average) and changes each
particle's matrix ``A`` to ``M A M`` with ``M = diag(1, 1, -1)``, so the angles still bring the mirrored
reference onto the mirrored particle. Use it when ``aitom hand`` says the data's hand is the mirror of the
reference's.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch

    from aitom.ops.reconstruction import FourierSums

#: particles reconstructed at once (they are batched on the device)
_DEFAULT_BATCH = 8
#: largest --padding: each particle's padded Fourier volumes hold (padding · box)³ samples
_MAX_PADDING = 4
#: particles whose reconstructions decide the contrast sign with --invert auto
_SIGN_SAMPLE = 32
#: a tilt series whose defoci are all smaller (Å) was not written in Å, or has no CTF estimate
_MIN_DEFOCUS_A = 100.0
#: largest plausible rlnMicrographPreExposure (e⁻/Å²); beyond it dose weighting leaves almost no signal
_MAX_PRE_EXPOSURE = 1000.0


class ReconstructWarning(UserWarning):
    """Odd but usable input to ``aitom reconstruct``: stacks without a pixel size, overfocus, an option
    that the table makes moot."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reconstruct",
        help="subtomograms from RELION 5 / WarpTools 2-D particle tilt stacks",
        description="Reconstruct a subtomogram and its 3-D CTF/missing-wedge weight per particle of a "
        "RELION 5 particle set of 2-D tilt stacks (rlnTomoSubTomosAre2DStacks), by Fourier insertion with "
        "the tilt series' projection matrices, CTF and dose weighting. Writes DIR/subtomograms/NNNNNN.mrc, "
        "DIR/weights/NNNNNN.mrc and DIR/particles.star (voxel coordinates, for `aitom average`).",
    )
    parser.add_argument("--particles", type=Path, help="RELION 5 particles STAR file (2-D stacks)")
    parser.add_argument("--tomograms", type=Path, help="RELION 5 tomograms STAR file (projection matrices)")
    parser.add_argument(
        "--optimisation-set",
        type=Path,
        help="RELION 5 optimisation set naming the particles and tomograms files (instead of both)",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument(
        "--mode",
        choices=("wiener", "phase_flip"),
        default="wiener",
        help="CTF correction: Wiener (divide by Σ CTF² + constant) or phase flip (default wiener)",
    )
    parser.add_argument(
        "--wiener-constant",
        type=float,
        default=0.1,
        help="Wiener constant relative to the mean Fourier weight of the sampled voxels (default 0.1)",
    )
    parser.add_argument(
        "--in-particle-frame",
        action="store_true",
        help="reconstruct in the particle's frame (rotated by its rlnAngleRot/Tilt/Psi, as RELION's "
        "reconstruct does); the output angles are then 0",
    )
    parser.add_argument(
        "--average",
        action="store_true",
        help="also write DIR/average.mrc (and average_weight.mrc): all particles merged in their particle "
        "frames (Fourier sums divided once), as RELION's reconstruct does",
    )
    parser.add_argument(
        "--invert",
        choices=("auto", "yes", "no"),
        default="auto",
        help="multiply the reconstructions by -1: auto (when the particle centre comes out darker than its "
        "surroundings), yes or no (default auto; with no, premultiplied images keep their contrast and the "
        "others are divided by the physical CTF, negative at low frequency: protein-bright images turn dark)",
    )
    parser.add_argument(
        "--flip-hand",
        action="store_true",
        help="mirror the outputs along Z and the angles with them (when `aitom hand` finds the other hand)",
    )
    parser.add_argument("--no-ctf", action="store_true", help="ignore the CTF (no correction, no CTF weight)")
    parser.add_argument("--no-dose-weighting", action="store_true", help="ignore the exposure of each tilt")
    parser.add_argument(
        "--coordinate-pixel-size",
        type=float,
        default=None,
        help="pixel size (Å) of rlnCoordinateX/Y/Z when the file has no rlnCenteredCoordinate*Angst "
        "(default: the tilt-series pixel size, RELION's convention; WarpTools 2-D stack exports may use the "
        "particles' pixel size)",
    )
    parser.add_argument(
        "--padding",
        type=int,
        default=2,
        help=f"Fourier oversampling factor of the insertion, 1 to {_MAX_PADDING} (default 2)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=_DEFAULT_BATCH, help="particles reconstructed at once (default 8)"
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing non-empty output folder"
    )


def _input_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    from aitom.errors import InputError
    from aitom.io.relion5 import read_optimisation_set

    if args.optimisation_set is not None:
        files = read_optimisation_set(args.optimisation_set)
        return args.particles or files["particles"], args.tomograms or files["tomograms"]
    if args.particles is None or args.tomograms is None:
        raise InputError("give --particles and --tomograms, or --optimisation-set")
    return args.particles, args.tomograms


def _visible_frames(row, n_frames: int) -> np.ndarray:
    import numpy as np

    visible = row.get("rlnTomoVisibleFrames")
    return np.ones(n_frames, dtype=bool) if visible is None else np.asarray(visible, dtype=bool)


def _check_particle_stack(path: Path, row, series, image_size: int, pixel_size_a: float) -> bool:
    """Check a stack's header (no data read): image size, pixel size, one image per frame or visible frame.

    Returns:
        True when the header's pixel size looks unset (0 or 1 Å) and differs from ``pixel_size_a``
        (``rlnImagePixelSize``, which then stands, as in RELION); the header's own warning is dropped.
    """
    from aitom.errors import InputError
    from aitom.io import open_volume_mmap
    from aitom.io.relion5 import PIXEL_SIZE_TOLERANCE

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stack, header = open_volume_mmap(path, allow_2d=True)
    shape = (1, *stack.shape) if stack.ndim == 2 else stack.shape
    if shape[-1] != image_size or shape[-2] != image_size:
        raise InputError(f"images are {tuple(shape[-2:])}, rlnImageSize says {image_size}", path)
    header_pixel = header.voxel_size_a[0]
    unset = header_pixel <= 0 or header_pixel == 1.0
    if abs(header_pixel - pixel_size_a) <= PIXEL_SIZE_TOLERANCE * pixel_size_a:
        unset = False
        for warning in caught:  # the header's other quirks
            warnings.warn(warning.message, stacklevel=2)
    elif not unset:
        raise InputError(
            f"pixel size {header_pixel:g} Å in the header, rlnImagePixelSize {pixel_size_a:g} Å", path
        )
    visible = _visible_frames(row, series.n_tilts)
    if shape[0] != series.n_tilts and not (shape[0] == int(visible.sum()) < series.n_tilts):
        raise InputError(
            f"holds {shape[0]} images but the tilt series {series.name} has {series.n_tilts} frames "
            f"({int(visible.sum())} visible)",
            path,
        )
    return unset


def _read_particle_stack(
    path: Path, row, n_frames: int, pixel_size_a: float
) -> tuple[torch.Tensor, np.ndarray]:
    """The particle's tilt images ``(T, S, S)`` (all frames; invisible ones zero) and its visible mask.

    The stack holds one image per frame, or one per visible frame (checked by :func:`_check_particle_stack`,
    which also compared its header's pixel size with ``pixel_size_a``, the one used here).

    Raises:
        InputError: the visible images hold one value everywhere (a particle cut from outside its images).
    """
    import torch

    from aitom.errors import InputError
    from aitom.io import read_stack

    stack, _ = read_stack(path, voxel_size_a=pixel_size_a)
    visible = _visible_frames(row, n_frames)
    shown = stack[torch.tensor(visible)] if stack.shape[0] == n_frames else stack
    if float(shown.max()) == float(shown.min()):
        raise InputError(
            f"the visible tilt images are constant ({float(shown.flatten()[0]):g} everywhere): nothing to "
            "reconstruct (remove the particle from the table)",
            path,
        )
    if stack.shape[0] == n_frames:
        return stack, visible
    images = stack.new_zeros((n_frames, *stack.shape[-2:]))
    images[torch.tensor(visible)] = stack
    return images, visible


def _centred_on_origin(
    images: torch.Tensor, rotations: np.ndarray, origin_a: np.ndarray, pixel_size_a: float
) -> torch.Tensor:
    """Tilt images ``(T, S, S)`` shifted so that a particle offset by ``rlnOrigin*Angst`` sits at the centre.

    RELION puts the particle at its coordinate minus its origin (``origin_a``, Å, (x, y, z) along the
    tomogram's axes) while the images were cut about the coordinate: in tilt ``t`` the particle lies at
    ``-(R_t o)[:2]`` from the centre (``rotations`` ``(T, 3, 3)``, tomogram axes to image x, y and beam), so
    each image moves by ``+(R_t o)[:2] / pixel_size_a`` pixels (Fourier phase ramp). No origin: unchanged.
    """
    import numpy as np
    import torch

    from aitom.geometry import fourier_shift

    if not np.any(origin_a):
        return images
    shift_xy = torch.tensor(rotations[:, :2, :] @ origin_a / pixel_size_a, dtype=images.dtype)  # (T, 2)
    shift_xyz = torch.cat([shift_xy, shift_xy.new_zeros(shift_xy.shape[0], 1)], dim=-1)
    return fourier_shift(images[:, None], shift_xyz)[:, 0]


def _dose_filters(series, image_size: int, pixel_size_a: float, use_dose: bool) -> torch.Tensor:
    """Per-frame dose filter ``(T, S, S)``, full centred layout (ones with ``use_dose`` false)."""
    import torch

    from aitom.fourier import dose_weights, radial_frequency

    shape = (image_size, image_size)
    if not use_dose:
        return torch.ones((series.n_tilts, *shape))
    frequency = radial_frequency(shape, voxel_size_a=pixel_size_a, dtype=torch.float64)
    exposure = torch.tensor(series.pre_exposure_e_per_a2)[:, None, None]
    return dose_weights(frequency, exposure, series.voltage_kv).float()


def _particle_ctfs(series, centered_a: np.ndarray, image_size: int, pixel_size_a: float) -> torch.Tensor:
    """CTF ``(B, T, S, S)`` (full centred) of particles at ``centered_a (B, 3)`` Å in one tilt series.

    Per-tilt defocus of the tomogram set plus RELION's depth-dependent offset, times ``rlnCtfScalefactor``.
    """
    import torch

    from aitom.fourier import ctf_2d

    offsets_a = torch.tensor(series.defocus_offsets_a(centered_a))  # (B, T)
    ctf = ctf_2d(
        (image_size, image_size),
        pixel_size_a=pixel_size_a,
        defocus_u_um=(torch.tensor(series.defocus_u_a) + offsets_a) / 1e4,
        defocus_v_um=(torch.tensor(series.defocus_v_a) + offsets_a) / 1e4,
        astigmatism_angle_deg=torch.tensor(series.defocus_angle_deg),
        voltage_kv=series.voltage_kv,
        cs_mm=series.cs_mm,
        amplitude_contrast=series.amplitude_contrast,
        rfft=False,
        centered=True,
        dtype=torch.float64,
    )
    return (ctf * torch.tensor(series.ctf_scale_factor)[:, None, None]).float()


@dataclass
class _Inputs:
    """The validated particle set: table, tilt series, stack paths and the particles' image geometry."""

    particles: pd.DataFrame
    tomograms: dict
    image_paths: list[Path]
    image_size: int
    pixel_size_a: float
    ctf_premultiplied: bool
    angles_deg: np.ndarray
    centered_a: np.ndarray
    origins_a: np.ndarray
    dose_filters: dict[str, torch.Tensor]


def _load_inputs(args: argparse.Namespace) -> _Inputs:
    import numpy as np

    from aitom.errors import InputError
    from aitom.io.relion5 import (
        ANGLE_COLUMNS,
        CENTERED_COLUMNS,
        check_particles_against_tomograms,
        particle_optics,
        particle_origins_a,
        particle_positions_centered_a,
        read_relion5_particles,
        read_tomograms_star,
        resolve_relative,
    )
    from aitom.io.star import table_angles_deg

    particles_path, tomograms_path = _input_paths(args)
    tomograms = read_tomograms_star(tomograms_path)
    particles, optics, general = read_relion5_particles(particles_path)
    if str(general.get("rlnTomoSubTomosAre2DStacks", 1)) == "0":
        raise InputError(
            "rlnTomoSubTomosAre2DStacks is 0: rlnImageName names 3-D subtomograms, not 2-D tilt stacks",
            particles_path,
        )
    if len(particles) == 0:
        raise InputError("the particle table is empty", particles_path)
    if "rlnImageName" not in particles.columns:
        raise InputError("data_particles lacks column rlnImageName (the 2-D tilt stacks)", particles_path)
    if (args.in_particle_frame or args.average) and not set(ANGLE_COLUMNS) <= set(particles.columns):
        raise InputError("--in-particle-frame and --average need rlnAngleRot/Tilt/Psi", particles_path)
    check_particles_against_tomograms(particles, optics, tomograms, particles_path=particles_path)
    rows = particle_optics(particles, optics, particles_path)
    missing = [column for column in ("rlnImagePixelSize", "rlnImageSize") if column not in rows.columns]
    if missing:
        raise InputError(f"data_optics lacks column(s) {', '.join(missing)}", particles_path)
    pixel_sizes = rows["rlnImagePixelSize"].to_numpy(dtype=np.float64)
    image_sizes = rows["rlnImageSize"].to_numpy(dtype=np.int64)
    if len(set(image_sizes)) > 1 or np.ptp(pixel_sizes) > 1e-3 * pixel_sizes[0]:
        raise InputError(
            "particles of several image or pixel sizes: reconstruct them separately", particles_path
        )
    premultiplied = np.asarray(rows.get("rlnCtfDataAreCtfPremultiplied", 0), dtype=np.int64).reshape(-1)
    if len(set(premultiplied.tolist())) > 1:
        raise InputError("some optics groups are CTF-premultiplied and some not", particles_path)
    angles_deg = table_angles_deg(particles)  # composed with RELION 4 pseudo-subtomogram angles when given
    if not (image_sizes[0] > 0 and pixel_sizes[0] > 0):
        raise InputError(
            f"rlnImageSize {image_sizes[0]} and rlnImagePixelSize {pixel_sizes[0]:g} Å must be positive",
            particles_path,
        )
    image_paths = [resolve_relative(str(name), particles_path) for name in particles["rlnImageName"]]
    unset_pixel = []
    for number, (path, (_, row)) in enumerate(zip(image_paths, particles.iterrows()), start=1):
        if not path.is_file():
            raise InputError(f"particle stack {path} (rlnImageName) not found", particles_path)
        series = tomograms[str(row["rlnTomoName"])]
        visible = _visible_frames(row, series.n_tilts)
        if not visible.any():
            raise InputError(
                f"particle {number} ({path.name}) has no visible frame in rlnTomoVisibleFrames: nothing to "
                "reconstruct (remove it from the table)",
                particles_path,
            )
        if not args.no_ctf and not (series.ctf_scale_factor[visible] != 0).any():
            raise InputError(
                f"particle {number} ({path.name}): rlnCtfScalefactor of tilt series {series.name} is 0 in "
                "every visible frame: nothing to reconstruct (remove it from the table, or pass --no-ctf)",
                particles_path,
            )
        if _check_particle_stack(path, row, series, int(image_sizes[0]), float(pixel_sizes[0])):
            unset_pixel.append(path)
    if unset_pixel:
        warnings.warn(
            ReconstructWarning(
                f"{unset_pixel[0]}: the header's pixel size looks unset (0 or 1 Å), as in "
                f"{len(unset_pixel)} of {len(image_paths)} particle stacks: rlnImagePixelSize "
                f"{float(pixel_sizes[0]):g} Å is used"
            ),
            stacklevel=2,
        )
    used = {str(name): tomograms[str(name)] for name in particles["rlnTomoName"]}
    _check_ctf_and_dose(used, args, tomograms_path)
    if args.coordinate_pixel_size is not None and set(CENTERED_COLUMNS) <= set(particles.columns):
        warnings.warn(
            ReconstructWarning(
                f"{particles_path}: --coordinate-pixel-size is not used: the positions are "
                "rlnCenteredCoordinateX/Y/ZAngst (Å from the tomogram centre)"
            ),
            stacklevel=2,
        )
    centered_a = particle_positions_centered_a(
        particles, tomograms, coordinate_pixel_size_a=args.coordinate_pixel_size
    )
    _check_inside_tomograms(
        centered_a, particles, tomograms, int(image_sizes[0]) * float(pixel_sizes[0]), particles_path
    )
    if args.coordinate_pixel_size is None and not set(CENTERED_COLUMNS) <= set(particles.columns):
        _warn_if_in_one_corner(centered_a, particles, tomograms, float(pixel_sizes[0]), particles_path)
    return _Inputs(
        particles=particles,
        tomograms=tomograms,
        image_paths=image_paths,
        image_size=int(image_sizes[0]),
        pixel_size_a=float(pixel_sizes[0]),
        ctf_premultiplied=bool(premultiplied[0]),
        angles_deg=angles_deg,
        centered_a=centered_a,
        origins_a=particle_origins_a(particles),
        dose_filters=_series_dose_filters(
            used, int(image_sizes[0]), float(pixel_sizes[0]), args, tomograms_path
        ),
    )


def _check_ctf_and_dose(tomograms: dict, args: argparse.Namespace, path: Path) -> None:
    """Refuse defoci that cannot be Å (all below :data:`_MIN_DEFOCUS_A`) unless ``--no-ctf``, and doses
    beyond :data:`_MAX_PRE_EXPOSURE` unless ``--no-dose-weighting``; warn about overfocus (negative defocus).

    Raises:
        InputError: naming the tomograms file ``path``, the tilt series and the problem.
    """
    import numpy as np

    from aitom.errors import InputError

    for name, series in tomograms.items():
        exposure = float(series.pre_exposure_e_per_a2.max())
        if not args.no_dose_weighting and exposure > _MAX_PRE_EXPOSURE:
            raise InputError(
                f"tilt series {name}: rlnMicrographPreExposure reaches {exposure:g} e⁻/Å², beyond "
                f"{_MAX_PRE_EXPOSURE:g}: dose weighting would leave no signal (e⁻/nm² instead of e⁻/Å²?); "
                "pass --no-dose-weighting to ignore the exposure",
                path,
            )
        if args.no_ctf:
            continue
        defocus_a = np.concatenate((series.defocus_u_a, series.defocus_v_a))
        if np.abs(defocus_a).max() < _MIN_DEFOCUS_A:
            raise InputError(
                f"tilt series {name}: every rlnDefocusU/V is below {_MIN_DEFOCUS_A:g} Å (largest "
                f"{np.abs(defocus_a).max():g}): RELION writes defocus in Å (2 µm = 20000 Å); pass --no-ctf "
                "if the CTF is unknown",
                path,
            )
        overfocus = int((np.minimum(series.defocus_u_a, series.defocus_v_a) < 0).sum())
        if overfocus:
            warnings.warn(
                ReconstructWarning(
                    f"{path}: tilt series {name}: negative rlnDefocusU/V (overfocus) in {overfocus} of "
                    f"{series.n_tilts} tilts; RELION's defocus is positive for underfocus: check the sign"
                ),
                stacklevel=2,
            )


def _series_dose_filters(
    tomograms: dict, image_size: int, pixel_size_a: float, args: argparse.Namespace, path: Path
) -> dict[str, torch.Tensor]:
    """Per tilt series, its per-frame dose filter (:func:`_dose_filters`).

    Raises:
        InputError: naming the tomograms file ``path`` and the tilt series whose voltage the dose model
            does not know.
    """
    from aitom.errors import InputError

    filters = {}
    for name, series in tomograms.items():
        try:
            filters[name] = _dose_filters(series, image_size, pixel_size_a, not args.no_dose_weighting)
        except InputError as error:
            raise InputError(
                f"tilt series {name}: {error.problem} (pass --no-dose-weighting)", path
            ) from None
    return filters


def _check_inside_tomograms(
    centered_a: np.ndarray, particles: pd.DataFrame, tomograms: dict, box_a: float, path: Path
) -> None:
    """Every particle centre (``centered_a (N, 3)``, Å from its tomogram's centre) must lie inside its
    tomogram, give or take one particle box (``box_a`` Å): a centre further out means coordinates in other
    units (``--coordinate-pixel-size``) or another tomogram, and a meaningless depth-dependent defocus."""
    import numpy as np

    from aitom.errors import InputError

    for number, (position, name) in enumerate(zip(centered_a, particles["rlnTomoName"]), start=1):
        series = tomograms[str(name)]
        half_a = np.asarray(series.size_xyz, dtype=np.float64) * series.pixel_size_a / 2
        if (np.abs(position) > half_a + box_a).any():
            where, span = (", ".join(f"{value:.0f}" for value in values) for values in (position, half_a))
            raise InputError(
                f"particle {number} lies outside tomogram {name}: ({where}) Å from its centre, the tomogram "
                f"spans ±({span}) Å "
                "(check the coordinates' pixel size, --coordinate-pixel-size)",
                path,
            )


#: fewest particles, and largest share of each tomogram axis they all lie within from its first voxel, for
#: which :func:`_warn_if_in_one_corner` suspects coordinates in larger pixels than the tilt series'
CORNER_PARTICLES, CORNER_SHARE = 5, 0.3


def _warn_if_in_one_corner(
    centered_a: np.ndarray, particles: pd.DataFrame, tomograms: dict, particle_pixel_a: float, path: Path
) -> None:
    """Warn when at least :data:`CORNER_PARTICLES` particles all lie within the first :data:`CORNER_SHARE` of
    their tomograms along every axis (``centered_a (N, 3)``, Å from each tomogram's centre): picks spread
    over a sample do not, but coordinates written in larger pixels than the tilt series' (as WarpTools
    writes them, in the particles' pixels) and read in the tilt series' pixels do."""
    import numpy as np

    if len(particles) < CORNER_PARTICLES:
        return
    shares = []
    for position, name in zip(centered_a, particles["rlnTomoName"]):
        series = tomograms[str(name)]
        extent_a = np.asarray(series.size_xyz, dtype=np.float64) * series.pixel_size_a
        shares.append((position + extent_a / 2) / extent_a)
    furthest = np.max(shares, axis=0)
    if (furthest < CORNER_SHARE).all():
        pixel_a = next(iter(tomograms.values())).pixel_size_a
        warnings.warn(
            ReconstructWarning(
                f"{path}: all {len(particles)} particles lie within the first "
                f"{', '.join(f'{100 * share:.0f}' for share in furthest)} % of their tomograms along x, y, "
                "z, "
                f"with the coordinates read in the tilt series' {pixel_a:g} Å pixels: if they are in other "
                f"pixels (the particles' {particle_pixel_a:g} Å?), pass --coordinate-pixel-size"
            ),
            stacklevel=3,
        )


def _reconstructions(
    inputs: _Inputs, args: argparse.Namespace, device, merged: FourierSums | None
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(particle index, volume, weight)`` for every particle, in order, reconstructed in batches.

    With ``merged`` (zeroed accumulators), every particle's insertion in its particle frame is added to it.
    """
    import torch

    from aitom.geometry import relion_angles_to_matrix
    from aitom.ops.reconstruction import finish_reconstruction, insert_for_reconstruction

    size, pixel = inputs.image_size, inputs.pixel_size_a
    series_of = [inputs.tomograms[str(name)] for name in inputs.particles["rlnTomoName"]]
    for start in range(0, len(series_of), args.batch_size):
        batch = range(start, min(start + args.batch_size, len(series_of)))
        for n_tilts in dict.fromkeys(series_of[index].n_tilts for index in batch):
            group = [index for index in batch if series_of[index].n_tilts == n_tilts]
            images, tomogram_frame, particle_frame, ctfs, doses = [], [], [], [], []
            for index in group:
                series = series_of[index]
                stack, visible = _read_particle_stack(
                    inputs.image_paths[index], inputs.particles.iloc[index], n_tilts, pixel
                )
                images.append(_centred_on_origin(stack, series.rotations, inputs.origins_a[index], pixel))
                # per-tilt projection rotation: R (tomogram frame) or R A (particle frame, A: RELION's)
                tomogram_frame.append(torch.tensor(series.rotations))
                particle_frame.append(
                    tomogram_frame[-1] @ relion_angles_to_matrix(torch.tensor(inputs.angles_deg[index]))
                )
                # invisible frames get dose weight 0: they add nothing to data or weights
                doses.append(inputs.dose_filters[series.name] * torch.tensor(visible).float()[:, None, None])
                if not args.no_ctf:
                    ctfs.append(_particle_ctfs(series, inputs.centered_a[index : index + 1], size, pixel)[0])
            images_batch = torch.stack(images).to(device)
            ctf_batch = torch.stack(ctfs).to(device) if ctfs else None
            dose_batch = torch.stack(doses).to(device)
            options = {
                "mode": args.mode,
                "ctf_premultiplied": inputs.ctf_premultiplied,
                "padding_factor": args.padding,
            }
            rotations = torch.stack(particle_frame if args.in_particle_frame else tomogram_frame)
            sums = insert_for_reconstruction(
                images_batch, rotations.float().to(device), ctf_batch, dose_batch, **options
            )
            if merged is not None:
                merged_part = sums
                if not args.in_particle_frame:
                    merged_part = insert_for_reconstruction(
                        images_batch,
                        torch.stack(particle_frame).float().to(device),
                        ctf_batch,
                        dose_batch,
                        **options,
                    )
                for total, part in zip(merged, merged_part):
                    total += part.sum(dim=0)
            volumes, weights = finish_reconstruction(
                sums, size, wiener_constant=args.wiener_constant, padding_factor=args.padding
            )
            for i, index in enumerate(group):
                yield index, volumes[i].cpu(), weights[i].cpu()


def _output_table(inputs: _Inputs, names: list[str], args: argparse.Namespace) -> pd.DataFrame:
    import numpy as np

    from aitom.io import particles_table
    from aitom.io.relion5 import ANGLE_COLUMNS, centered_angstrom_to_voxels

    tomo_names = [str(name) for name in inputs.particles["rlnTomoName"]]
    centered = inputs.centered_a
    voxels = np.stack(
        [
            centered_angstrom_to_voxels(
                centered[row], inputs.tomograms[name].size_voxels(inputs.pixel_size_a), inputs.pixel_size_a
            )
            for row, name in enumerate(tomo_names)
        ]
    )
    extra: dict[str, object] = {
        "rlnTomoName": np.asarray(tomo_names, dtype=object),
        "rlnImageName": np.asarray([f"subtomograms/{name}" for name in names], dtype=object),
        "rlnCtfImage": np.asarray([f"weights/{name}" for name in names], dtype=object),
    }
    angles = mirrored_angles_deg(inputs.angles_deg) if args.flip_hand else inputs.angles_deg
    if args.in_particle_frame:  # the subtomograms are already in the reference's orientation
        extra.update(
            {f"aitomSource{column[3:]}": angles[:, axis] for axis, column in enumerate(ANGLE_COLUMNS)}
        )
        angles = np.zeros_like(angles)
    return particles_table(voxels, angles, extra=extra)


def mirrored_angles_deg(angles_deg: np.ndarray) -> np.ndarray:
    """RELION angles ``(N, 3)``, degrees, of ``M A M`` with ``M = diag(1, 1, -1)``: the particle mirrored."""
    import torch

    from aitom.geometry import matrix_to_relion_angles, relion_angles_to_matrix

    mirror = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    matrices = relion_angles_to_matrix(torch.tensor(angles_deg, dtype=torch.float64))
    return matrix_to_relion_angles(mirror @ matrices @ mirror).numpy()


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from aitom.commands.shared import check_output_folder, output_folder, refuse_inputs_inside, torch_device
    from aitom.errors import InputError
    from aitom.io import write_particles, write_volume
    from aitom.ops.handedness import mirror_volume
    from aitom.ops.reconstruction import FourierSums, centre_contrast, finish_reconstruction

    if not 0 < args.wiener_constant < float("inf"):
        raise InputError(f"--wiener-constant must be positive and finite, got {args.wiener_constant}")
    if not 1 <= args.padding <= _MAX_PADDING:
        raise InputError(
            f"--padding must be 1 to {_MAX_PADDING} (2 is RELION's; the Fourier volumes grow with its cube), "
            f"got {args.padding}"
        )
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.coordinate_pixel_size is not None and not 0 < args.coordinate_pixel_size < float("inf"):
        raise InputError(
            "--coordinate-pixel-size must be a positive, finite number of Å, got "
            f"{args.coordinate_pixel_size}"
        )
    check_output_folder(args.out, args.overwrite)
    device = torch_device(args.device)
    inputs = _load_inputs(args)
    if args.overwrite:
        named = [path for path in (args.optimisation_set, *_input_paths(args)) if path is not None]
        refuse_inputs_inside(args.out, [*named, *inputs.image_paths])
    n = len(inputs.particles)
    names = [f"{index + 1:06d}.mrc" for index in range(n)]
    sign = {"yes": -1.0, "no": 1.0}.get(args.invert)

    def hand(volume: torch.Tensor) -> torch.Tensor:
        return mirror_volume(volume, "z") if args.flip_hand else volume

    merged = None
    if args.average:
        padded = (args.padding * inputs.image_size,) * 3
        merged = FourierSums(
            torch.zeros(padded, dtype=torch.complex64, device=device),
            torch.zeros(padded, device=device),
            torch.zeros(padded, device=device),
        )
    with output_folder(args.out) as folder:
        pending, contrast = [], []
        for index, volume, weight in tqdm(
            _reconstructions(inputs, args, device, merged), total=n, desc="reconstructing", unit="particle"
        ):
            pending.append((index, volume, weight))
            if sign is None:
                contrast.append(float(centre_contrast(volume)))
                if len(contrast) < min(_SIGN_SAMPLE, n):
                    continue
                sign = -1.0 if float(np.median(contrast)) < 0 else 1.0
                print(
                    f"aitom reconstruct: the particle centres came out "
                    f"{'darker' if sign < 0 else 'brighter'} than their surroundings in {len(contrast)} "
                    f"particles: {'inverting' if sign < 0 else 'keeping'} the contrast",
                    file=sys.stderr,
                )
            for done, done_volume, done_weight in pending:
                write_volume(
                    folder / "subtomograms" / names[done], hand(done_volume) * sign, inputs.pixel_size_a
                )
                write_volume(folder / "weights" / names[done], hand(done_weight), inputs.pixel_size_a)
            pending = []
        write_particles(folder / "particles.star", _output_table(inputs, names, args))
        if merged is not None:
            average, average_weight = finish_reconstruction(
                merged, inputs.image_size, wiener_constant=args.wiener_constant, padding_factor=args.padding
            )
            write_volume(folder / "average.mrc", hand(average.cpu()) * sign, inputs.pixel_size_a)
            write_volume(folder / "average_weight.mrc", hand(average_weight.cpu()), inputs.pixel_size_a)
    size, pixel = inputs.image_size, inputs.pixel_size_a
    print(f"aitom reconstruct: {n} subtomograms of {size}³ at {pixel:g} Å in {args.out}")
    return 0
