"""``aitom reconstruct`` + known-pose averaging on synthetic WarpTools / RELION 5 exports of a known map.

Each export is written as WarpTools writes its 2-D particle export (the files of tests/data/relion5, column
by column and in their value formats): a tomogram set (``data_global`` + one ``data_<rlnTomoName>`` block of
``rlnTomoProjX/Y/Z/W`` matrices, defoci, CTF scale factors and exposures per tilt), a particle set
(``data_general``, ``data_optics``, ``data_particles``), an optimisation set and one ``.mrcs`` stack per
particle with one image per frame of its tilt series. The images are made without aitom: exact line
integrals of a chiral map of Gaussian blobs turned by each particle's RELION matrix ``A`` (reference ->
particle) and each tilt's rotation ``R`` (tomogram -> image x, image y, beam): ``image(u) = ∫ map(Aᵀ Rᵀ (u,
w)) dw`` about pixel ``S // 2``; then, in NumPy, RELION's CTF (``ctf.h``, positive at low frequency) at the
particle's depth-dependent defocus (``+ rlnTomoHand · depth``) times ``rlnCtfScalefactor``, and Grant &
Grigorieff's dose filter. Premultiplied stacks hold ``dose · CTF² · projection``, the others ``dose · CTF ·
projection``; "not inverted" stacks are these times −1. Frames marked 0 in ``rlnTomoVisibleFrames`` hold
junk. ``rlnOriginX/Y/ZAngst`` follow RELION: the particle sits at ``coordinate − origin`` (tomogram axes, Å)
while its stack is cut about ``coordinate``.

The average with the STAR poses, both ways README and docs/real_70s.md give (``aitom reconstruct
--average`` and :func:`aitom.ops.handedness.known_pose_average` of the written subtomograms and 3-D
weights), must match the truth as the visible tilts sample it, every subtomogram its own particle, the
written positions the true centres, and :func:`aitom.ops.handedness.hand_check` must call the right hand.
Controls show that the checks fail on a wrong pose convention, a wrong rlnTomoHand and junk frames used.

Measured (noise-free, --wiener-constant 0.01; FSC of the average with the sampled truth; "particle": lowest
correlation of a subtomogram with its particle; hand: correlation with the truth as it is / mirrored):

=================================================  ==============  =========  ===========  ===========
export                                             FSC min ≤ 0.4    corr.      particle     hand
=================================================  ==============  =========  ===========  ===========
warptools_like (28², 8 Å, f16, hand −1, premult.)  0.953           0.989      0.973        0.982/0.842
warptools_like_hand_plus (hand +1)                 0.969           0.996      0.966        0.992/0.851
odd_box_15A_float32_raw_not_inverted_asymmetric    0.999           0.998      0.947        0.994/0.868
two_schemes_invisible_frames_centered              0.960           0.994      0.960        0.991/0.875
premultiplied_not_inverted_particle_frame          0.951           0.994      0.969        0.991/0.876
origin_shifts (rlnOrigin*Angst of about 20 Å)      0.952           0.993      0.966        —
=================================================  ==============  =========  ===========  ===========

known_pose_average: FSC ≥ 0.970 up to 0.3 and ≥ 0.922 up to 0.35 cycles/voxel, correlation ≥ 0.986. With
the default Wiener constant (0.1): FSC 0.954 up to 0.3, 0.888 up to 0.4, correlation 0.963.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch

from aitom.cli import main
from aitom.commands.hand import hand_verdict
from aitom.fourier import fourier_shell_correlation
from aitom.geometry import relion_angles_to_matrix
from aitom.io import read_particles, read_volume
from aitom.ops.handedness import hand_check, known_pose_average, mirror_volume

#: the exports are reconstructed with --wiener-constant 0.01: noise-free data need little regularisation,
#: and the default (0.1) damps the frequencies few tilts sample, which the comparison would take for errors
WIENER_CONSTANT = 0.01
#: the average with the STAR poses against the truth as the visible tilts sample it (the Fourier voxels
#: within half a voxel of a tilt's central plane; 92-100 % of the sphere here): FSC above the tolerance in
#: every shell up to the band (cycles/voxel), and Pearson correlation. Measured: FSC >= 0.951 up to 0.4,
#: correlation >= 0.989.
FSC_BANDS = ((0.4, 0.9),)
MIN_CORRELATION = 0.97
#: known_pose_average of the subtomograms (turning each one interpolates: the last shells go first).
#: Measured: FSC >= 0.970 up to 0.3, >= 0.922 up to 0.35, correlation >= 0.986.
KNOWN_POSE_BANDS = ((0.3, 0.9), (0.35, 0.85))
#: the default Wiener constant (0.1), warptools_like export. Measured: FSC >= 0.954 up to 0.3, >= 0.888 up
#: to 0.4; correlation 0.963.
DEFAULT_WIENER_BANDS, DEFAULT_WIENER_CORRELATION = ((0.3, 0.9), (0.4, 0.8)), 0.93
#: correlation of every subtomogram with its particle as its own visible tilts sample it (measured >= 0.947)
MIN_PARTICLE_CORRELATION = 0.9
#: correlation margin between the right and the wrong hand in the hand check (measured >= 0.115)
MIN_HAND_MARGIN = 0.05
#: mean FSC (0.25 to 0.45 cycles/voxel) lost when the STAR file gives the wrong rlnTomoHand (measured 0.057)
MIN_HAND_FSC_LOSS = 0.02
#: 300 kV, Cs 2.7 mm, amplitude contrast 0.07 (the real export's microscope)
VOLTAGE_KV, CS_MM, AMPLITUDE_CONTRAST = 300.0, 2.7, 0.07


# ---------------------------------------------------------------------------------------------------------
# geometry and the ground truth, in NumPy (independent of aitom)


def relion_matrix(rot: float, tilt: float, psi: float) -> np.ndarray:
    """RELION's ``Euler_angles2matrix`` (src/euler.cpp): rotates the reference onto the particle."""
    a, b, g = np.radians([rot, tilt, psi])
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    return np.array(
        [
            [cg * cb * ca - sg * sa, cg * cb * sa + sg * ca, -cg * sb],
            [-sg * cb * ca - cg * sa, -sg * cb * sa + cg * ca, sg * sb],
            [sb * ca, sb * sa, cb],
        ]
    )


def _about(axis: int, degrees: float) -> np.ndarray:
    """Active right-handed rotation about x (0), y (1) or z (2)."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    matrix = np.eye(3)
    matrix[i, i], matrix[i, j], matrix[j, i], matrix[j, j] = c, -s, s, c
    return matrix


def chiral_blobs(box: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A right-handed helix of 9 Gaussian blobs of falling weight plus a side arm: ``(centres (n, 3) x, y, z
    voxels from the box centre, sigmas, amplitudes)``, inside a radius of about box / 4."""
    scale = box / 32
    turn = np.linspace(0.0, 1.6 * 2 * np.pi, 9)
    centres = np.stack((3.2 * np.cos(turn), 3.2 * np.sin(turn), np.linspace(-5.0, 5.0, 9)), axis=1)
    centres = np.vstack((centres, [[6.0, -1.5, 1.0], [0.0, 0.0, 0.0]])) * scale
    sigmas = np.array([1.6, 1.5, 1.5, 1.4, 1.4, 1.3, 1.3, 1.3, 1.3, 1.4, 2.0]) * max(scale, 0.8)
    amplitudes = np.array([1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.9, 0.5])
    return centres, sigmas, amplitudes


def blob_map(blobs, box: int) -> np.ndarray:
    """The blobs sampled on a ``box³`` grid ``(Z, Y, X)``, centre at voxel ``box // 2``."""
    centres, sigmas, amplitudes = blobs
    axis = np.arange(box) - box // 2
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    volume = np.zeros((box,) * 3)
    for (cx, cy, cz), sigma, amplitude in zip(centres, sigmas, amplitudes):
        volume += amplitude * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma**2))
    return volume


def blob_projection(blobs, matrix: np.ndarray, offset_xy: np.ndarray, box: int) -> np.ndarray:
    """Exact line integrals along the beam of the blobs turned by ``matrix`` (map -> image x, y, beam) and
    moved by ``offset_xy`` pixels: ``(box, box)`` image ``(Y, X)``, centre at pixel ``box // 2``."""
    centres, sigmas, amplitudes = blobs
    projected = centres @ matrix.T[:, :2] + offset_xy
    axis = np.arange(box) - box // 2
    v, u = np.meshgrid(axis, axis, indexing="ij")
    image = np.zeros((box, box))
    for (px, py), sigma, amplitude in zip(projected, sigmas, amplitudes):
        image += (
            amplitude
            * math.sqrt(2 * math.pi)
            * sigma
            * np.exp(-((u - px) ** 2 + (v - py) ** 2) / (2 * sigma**2))
        )
    return image


def relion_ctf(
    box: int, pixel_a: float, defocus_u_a: float, defocus_v_a: float, angle_deg: float
) -> np.ndarray:
    """RELION's ``CTF::getCTF`` (src/ctf.h) on the unshifted ``fft2`` grid ``(Y, X)``: ``sin(χ + asin Q0)``
    with ``χ = π λ Δf k² − π/2 Cs λ³ k⁴``, Δf along the azimuth ``atan2(ky, kx)`` (positive at k = 0)."""
    volts = VOLTAGE_KV * 1e3
    wavelength = 12.2643247 / math.sqrt(volts * (1 + volts * 0.978466e-6))
    ky, kx = np.meshgrid(np.fft.fftfreq(box, pixel_a), np.fft.fftfreq(box, pixel_a), indexing="ij")
    k2 = kx**2 + ky**2
    azimuth = np.arctan2(ky, kx) - math.radians(angle_deg)
    defocus = 0.5 * (defocus_u_a + defocus_v_a) + 0.5 * (defocus_u_a - defocus_v_a) * np.cos(2 * azimuth)
    chi = math.pi * wavelength * defocus * k2 - 0.5 * math.pi * CS_MM * 1e7 * wavelength**3 * k2**2
    return np.sin(chi + math.asin(AMPLITUDE_CONTRAST))


def dose_filter(box: int, pixel_a: float, exposure: float) -> np.ndarray:
    """Grant & Grigorieff (2015) exposure filter at 300 kV on the unshifted ``fft2`` grid."""
    ky, kx = np.meshgrid(np.fft.fftfreq(box, pixel_a), np.fft.fftfreq(box, pixel_a), indexing="ij")
    k = np.hypot(kx, ky)
    k[0, 0] = 1.0
    weights = np.exp(-exposure / (2 * (0.245 * k**-1.665 + 2.81)))
    weights[0, 0] = 1.0
    return weights


def filtered(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``image`` (centre at pixel S // 2) times ``kernel`` in Fourier space (unshifted ``fft2`` grid)."""
    spectrum = np.fft.fft2(np.fft.ifftshift(image))
    return np.fft.fftshift(np.fft.ifft2(spectrum * kernel)).real


# ---------------------------------------------------------------------------------------------------------
# the export, written as WarpTools writes it


@dataclass(frozen=True)
class TiltScheme:
    """One tilt series: tilt angles (degrees, about the tomogram's y), in-plane rotation of the tilt axis,
    defocus (Å), a dose-symmetric order of acquisition."""

    name: str
    tilts: tuple[float, ...]
    z_rotation: float = 85.0
    x_tilt: float = 1.5
    defocus_a: float = 32000.0
    astigmatism_a: float = 1500.0
    dose_per_tilt: float = 3.0
    invisible: tuple[int, ...] = ()  # frame indices (rows of the tilt table) that show no particle

    def rotations(self) -> np.ndarray:
        """``(T, 3, 3)``: tomogram (x, y, z) -> (image x, image y, beam), Rz(zrot) Ry(tilt) Rx(xtilt)."""
        return np.stack(
            [_about(2, self.z_rotation) @ _about(1, t) @ _about(0, self.x_tilt) for t in self.tilts]
        )

    def exposures(self) -> np.ndarray:
        """Pre-exposure (e⁻/Å²) of each tilt, dose-symmetric from the smallest |tilt|."""
        order = np.argsort([abs(t) + (0.01 if t < 0 else 0.0) for t in self.tilts], kind="stable")
        exposure = np.empty(len(self.tilts))
        exposure[order] = np.arange(len(self.tilts)) * self.dose_per_tilt
        return exposure

    def defoci(self) -> np.ndarray:
        """``(T, 3)`` rlnDefocusU, rlnDefocusV (Å), rlnDefocusAngle (degrees)."""
        t = np.arange(len(self.tilts))
        u = self.defocus_a + 2000.0 * np.sin(0.7 * t)
        return np.stack((u, u - self.astigmatism_a, (37.0 * t) % 180.0 - 90.0), axis=1)


def _angles(start: float, stop: float, step: float) -> tuple[float, ...]:
    return tuple(float(a) for a in np.round(np.arange(start, stop + step / 2, step), 3))


SYMMETRIC_25 = TiltScheme("TS_01", _angles(-60.0, 60.0, 5.0))
SYMMETRIC_41 = TiltScheme("TS_01", _angles(-60.0, 60.0, 3.0))
ASYMMETRIC_25 = TiltScheme(
    "TS_02", _angles(-50.0, 64.0, 4.75), z_rotation=-93.0, x_tilt=-2.0, defocus_a=41000.0
)


@dataclass(frozen=True)
class Variant:
    """One synthetic export. ``coordinates``: "particle_pixels" (rlnCoordinate* in the particles' pixels, as
    WarpTools writes them; read with --coordinate-pixel-size), "tilt_series_pixels" (rlnCoordinate*, RELION's
    unit) or "centered_a" (rlnCenteredCoordinate*Angst, RELION 5). ``options``: more reconstruct options."""

    box: int = 28
    pixel_a: float = 8.0
    tilt_series_pixel_a: float = 2.0
    dtype: str = "float16"
    hand: float = -1.0
    star_hand: float | None = None  # rlnTomoHand written in the STAR file (None: ``hand``, the data's)
    premultiplied: int = 1
    inverted: bool = True
    coordinates: str = "particle_pixels"
    schemes: tuple[TiltScheme, ...] = (SYMMETRIC_25,)
    origin_a: float = 0.0  # length of the rlnOriginX/Y/ZAngst shift of every particle
    all_marked_visible: bool = False  # write rlnTomoVisibleFrames all 1 (the junk frames then look visible)
    optimisation_set: bool = False  # reconstruct from the optimisation set WarpTools writes beside the two
    wiener_constant: float | None = WIENER_CONSTANT  # --wiener-constant (None: the default, 0.1)
    n_particles: int = 5
    tomogram_a: tuple[float, float, float] = (8000.0, 7000.0, 3000.0)  # extent x, y, z
    seed: int = 0
    options: tuple[str, ...] = field(default=())


VARIANTS = {
    # the real export's layout (rlnCoordinate* in the particles' pixels, float16, CTF-premultiplied,
    # contrast-inverted, rlnTomoHand -1) at another pixel size and box
    "warptools_like": Variant(),
    "warptools_like_hand_plus": Variant(hand=1.0, seed=5),
    "odd_box_15A_float32_raw_not_inverted_asymmetric": Variant(
        box=25,
        pixel_a=15.0,
        tilt_series_pixel_a=2.5,
        dtype="float32",
        hand=1.0,
        premultiplied=0,
        inverted=False,
        coordinates="tilt_series_pixels",
        schemes=(replace(ASYMMETRIC_25, name="TS_01"),),
        seed=1,
    ),
    "two_schemes_invisible_frames_centered": Variant(
        box=24,
        hand=1.0,
        premultiplied=0,
        coordinates="centered_a",
        schemes=(
            replace(SYMMETRIC_41, invisible=(0, 1, 20, 39, 40)),
            replace(ASYMMETRIC_25, invisible=(0, 24)),
        ),
        seed=2,
        optimisation_set=True,
    ),
    "premultiplied_not_inverted_particle_frame": Variant(
        box=24, inverted=False, coordinates="tilt_series_pixels", seed=3, options=("--in-particle-frame",)
    ),
    "origin_shifts": Variant(box=24, coordinates="centered_a", origin_a=20.0, seed=4),
}
#: other exports, for the controls and the default Wiener constant
OTHER_EXPORTS = {
    # must fail: the data's defocus gradient goes one way (rlnTomoHand -1), the STAR file says the other
    "mislabelled_hand": replace(VARIANTS["warptools_like"], star_hand=1.0),
    # must fail: the junk in the frames that show no particle, marked visible
    "junk_frames_marked_visible": replace(
        VARIANTS["two_schemes_invisible_frames_centered"], all_marked_visible=True
    ),
    # must pass: the origin_shifts export without its origins (the same particles, poses and positions)
    "origin_shifts_without_origins": replace(VARIANTS["origin_shifts"], origin_a=0.0),
    # the warptools_like export reconstructed with the default Wiener constant (0.1)
    "default_wiener_constant": replace(VARIANTS["warptools_like"], wiener_constant=None),
}


#: the columns of the real export's files, in their order
GLOBAL_COLUMNS = (
    *("rlnTomoName", "rlnTomoTiltSeriesName", "rlnTomoFrameCount", "rlnTomoSizeX", "rlnTomoSizeY"),
    *("rlnTomoSizeZ", "rlnTomoHand", "rlnOpticsGroupName", "rlnTomoTiltSeriesPixelSize", "rlnVoltage"),
    *("rlnSphericalAberration", "rlnAmplitudeContrast", "rlnTomoImportFractionalDose"),
)
TILT_COLUMNS = (
    *("rlnTomoProjX", "rlnTomoProjY", "rlnTomoProjZ", "rlnTomoProjW", "rlnDefocusU", "rlnDefocusV"),
    *("rlnDefocusAngle", "rlnCtfScalefactor", "rlnMicrographPreExposure"),
)
OPTICS_COLUMNS = (
    *("rlnOpticsGroup", "rlnOpticsGroupName", "rlnSphericalAberration", "rlnVoltage"),
    *("rlnTomoTiltSeriesPixelSize", "rlnCtfDataAreCtfPremultiplied", "rlnImageDimensionality"),
    *("rlnTomoSubtomogramBinning", "rlnImagePixelSize", "rlnImageSize", "rlnAmplitudeContrast"),
)
#: the particle columns without the three position columns (inserted after the second)
PARTICLE_COLUMNS = (
    *("rlnTomoName", "rlnTomoParticleId", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"),
    *("rlnTomoParticleName", "rlnOpticsGroup", "rlnImageName", "rlnOriginXAngst", "rlnOriginYAngst"),
    *("rlnOriginZAngst", "rlnTomoVisibleFrames"),
)


def _f32(value: float) -> str:
    """A number as WarpTools writes matrix entries: float32, shortest repr (``-6.929598e-05``)."""
    text = repr(float(np.float32(value)))
    return text[:-2] if text.endswith(".0") else text


def _vector(row: np.ndarray) -> str:
    return "[" + ",".join(_f32(value) for value in row) + "]"


def _loop(name: str, columns, rows: list[list[str]]) -> str:
    header = [f"data_{name}", "", "loop_", *(f"_{column} #{i + 1}" for i, column in enumerate(columns))]
    return "\n".join([*header, *("  ".join(row) for row in rows), "", "", ""])


@dataclass
class Export:
    """The files of one synthetic export and what they should give."""

    variant: Variant
    particles: Path
    optimisation_set: Path
    tomograms: Path
    truth: torch.Tensor  # (S, S, S) the map, voxel = the particles' pixel
    angles_deg: np.ndarray  # (N, 3) as written
    centered_a: np.ndarray  # (N, 3) true particle centres, Å from their tomogram's centre
    tomo_names: list[str]
    size_voxels: dict[str, np.ndarray]  # tomogram size (x, y, z) in particle pixels
    beams: list[np.ndarray]  # per particle (T_visible, 3): beam direction of each visible tilt, tomogram axes

    def sampled(self, volume: torch.Tensor, particles=None, *, particle_frame: bool = True) -> torch.Tensor:
        """``volume`` (the map in the reference frame, or one particle's, tomogram frame) cut down to the
        Fourier voxels that the visible tilts of ``particles`` (default all) sample: within half a voxel of
        the central plane normal to each beam direction, inside Nyquist (what an exact insertion can give)."""
        box = volume.shape[-1]
        axis = np.arange(box) - box // 2
        kz, ky, kx = np.meshgrid(axis, axis, axis, indexing="ij")
        k = np.stack((kx, ky, kz), axis=-1).reshape(-1, 3).astype(float)
        seen = np.zeros(len(k), dtype=bool)
        for index in range(len(self.beams)) if particles is None else particles:
            matrix = relion_matrix(*self.angles_deg[index]) if particle_frame else np.eye(3)
            for beam in self.beams[index] @ matrix:  # (R A)ᵀ ẑ: the beam in the reference frame
                seen |= np.abs(k @ beam) <= 0.5
        seen &= np.linalg.norm(k, axis=1) < box / 2
        mask = torch.from_numpy(seen.reshape(volume.shape)).to(volume.dtype)
        spectrum = torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(volume)))
        return torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(spectrum * mask))).real


def write_export(variant: Variant, folder: Path) -> Export:
    """Project the chiral map for every particle and tilt; write the stacks and the three STAR files."""
    rng = np.random.default_rng(variant.seed)
    box, pixel, ts_pixel = variant.box, variant.pixel_a, variant.tilt_series_pixel_a
    blobs = chiral_blobs(box)
    size_ts = {
        s.name: np.round(np.asarray(variant.tomogram_a) / ts_pixel).astype(int) for s in variant.schemes
    }
    stem = f"synthetic_{box}_{pixel:g}A"
    folder.mkdir(parents=True, exist_ok=True)

    global_rows, tilt_blocks, optics_rows = [], [], []
    written_hand = variant.hand if variant.star_hand is None else variant.star_hand
    for group, scheme in enumerate(variant.schemes, start=1):
        size = size_ts[scheme.name]
        global_rows.append(
            [
                *(f"{scheme.name}.tomostar", "dummy_tiltseries.mrc", str(len(scheme.tilts)), *map(str, size)),
                *(f"{written_hand:.1f}", f"opticsGroup{group}", f"{ts_pixel:.5f}", f"{VOLTAGE_KV:.3f}"),
                *(f"{CS_MM:.3f}", f"{AMPLITUDE_CONTRAST:.3f}", f"{scheme.dose_per_tilt:.3f}"),
            ]
        )
        rotations, defoci, exposure = scheme.rotations(), scheme.defoci(), scheme.exposures()
        rows = []
        for t in range(len(scheme.tilts)):
            scale = 0.0 if scheme.invisible[:1] == (t,) else math.cos(math.radians(scheme.tilts[t]))
            matrix = np.zeros((4, 4))
            matrix[:3, :3], matrix[3, 3] = rotations[t], 1.0  # WarpTools writes no translation
            rows.append(
                [
                    *(_vector(matrix[i]) for i in range(4)),
                    *(f"{defoci[t, 0]:.1f}", f"{defoci[t, 1]:.1f}", f"{defoci[t, 2]:.3f}"),
                    *(f"{scale:.3f}", f"{exposure[t]:.3f}"),
                ]
            )
        tilt_blocks.append(_loop(f"{scheme.name}.tomostar", TILT_COLUMNS, rows))
        optics_rows.append(
            [
                *(str(group), f"opticsGroup{group}", f"{CS_MM:.3f}", f"{VOLTAGE_KV:.3f}", f"{ts_pixel:.5f}"),
                *(str(variant.premultiplied), "2", f"{pixel / ts_pixel:.5f}", f"{pixel:.5f}", str(box)),
                f"{AMPLITUDE_CONTRAST:.3f}",
            ]
        )
    tomograms = folder / f"{stem}_tomograms.star"
    tomograms.write_text("\n" + _loop("global", GLOBAL_COLUMNS, global_rows) + "\n".join(tilt_blocks))

    positions = "rlnCenteredCoordinate{}Angst" if variant.coordinates == "centered_a" else "rlnCoordinate{}"
    columns = [*PARTICLE_COLUMNS[:2], *(positions.format(axis) for axis in "XYZ"), *PARTICLE_COLUMNS[2:]]
    rows, all_angles, all_centres, names, beams = [], [], [], [], []
    for index in range(variant.n_particles):
        group = index % len(variant.schemes)
        scheme = variant.schemes[group]
        size = size_ts[scheme.name]
        number = index // len(variant.schemes) + 1
        angles = np.round(
            [rng.uniform(-180, 180), math.degrees(math.acos(rng.uniform(-1, 1))), rng.uniform(-180, 180)], 3
        )
        extent = np.asarray(variant.tomogram_a)
        # the particle's true centre, Å from the tomogram centre; away from the central plane, so that the
        # depth-dependent defocus (RELION: hand · depth) matters
        centre = rng.uniform(-0.35, 0.35, 3) * extent
        centre[2] = rng.choice([-1.0, 1.0]) * rng.uniform(0.25, 0.45) * extent[2]
        direction = rng.normal(size=3)  # drawn for every variant: origin_a changes nothing else
        origin = np.round(variant.origin_a * direction / np.linalg.norm(direction), 3)
        # RELION: position = coordinate − origin; the stack is cut about the coordinate
        coordinate_a = centre + origin
        if variant.coordinates == "centered_a":
            written = np.round(coordinate_a, 3)
            coordinate_a = written
        else:
            unit = ts_pixel if variant.coordinates == "tilt_series_pixels" else pixel
            written = np.round(coordinate_a / unit + size * ts_pixel / unit / 2, 3)
            coordinate_a = (written - size * ts_pixel / unit / 2) * unit
        centre = coordinate_a - origin
        visible = np.ones(len(scheme.tilts), dtype=bool)
        visible[list(scheme.invisible)] = False
        if scheme.invisible and index % 2:
            visible[(5 + 3 * index) % len(scheme.tilts)] = False  # one more, per particle
        stack = _tilt_stack(variant, scheme, blobs, relion_matrix(*angles), centre, origin, visible)
        marked = np.ones_like(visible) if variant.all_marked_visible else visible
        short = scheme.name
        image_name = f"{stem}/{short}/{short}_{pixel:.2f}A_{number:06d}.mrcs"
        path = folder / image_name
        path.parent.mkdir(parents=True, exist_ok=True)
        with mrcfile.new(path, overwrite=True) as mrc:
            mrc.set_data(stack.astype(variant.dtype))
            mrc.voxel_size = pixel
        rows.append(
            [
                *(f"{short}.tomostar", str(number), *(f"{value:.3f}" for value in written)),
                *(f"{value:.3f}" for value in angles),
                *(f"{short}/{number}", str(group + 1), image_name, *(f"{value:.3f}" for value in origin)),
                "[" + ",".join(str(int(v)) for v in marked) + "]",
            ]
        )
        all_angles.append(angles)
        all_centres.append(centre)
        names.append(f"{short}.tomostar")
        beams.append(scheme.rotations()[visible, 2, :])
    particles = folder / f"{stem}.star"
    particles.write_text(
        "\ndata_general\n\n_rlnTomoSubTomosAre2DStacks   1\n\n\n\n"
        + _loop("optics", OPTICS_COLUMNS, optics_rows)
        + _loop("particles", columns, rows)
    )
    optimisation_set = folder / f"{stem}_optimisation_set.star"
    optimisation_set.write_text(
        f"\ndata_\n\n_rlnTomoParticlesFile   {particles.name}\n_rlnTomoTomogramsFile   {tomograms.name}\n"
    )
    return Export(
        variant=variant,
        particles=particles,
        optimisation_set=optimisation_set,
        tomograms=tomograms,
        truth=torch.from_numpy(blob_map(blobs, box)).float(),
        angles_deg=np.asarray(all_angles),
        centered_a=np.asarray(all_centres),
        tomo_names=names,
        size_voxels={f"{name}.tomostar": size * ts_pixel / pixel for name, size in size_ts.items()},
        beams=beams,
    )


def _tilt_stack(variant: Variant, scheme: TiltScheme, blobs, particle_matrix, centre_a, origin_a, visible):
    """``(T, S, S)`` tilt images of one particle (float64), one per frame, junk where it is not visible."""
    box, pixel = variant.box, variant.pixel_a
    rotations, defoci, exposure = scheme.rotations(), scheme.defoci(), scheme.exposures()
    junk = ([[box / 4, -box / 5, 0.0]], [box / 5], [4.0])
    stack = np.empty((len(scheme.tilts), box, box))
    for t, rotation in enumerate(rotations):
        if not visible[t]:
            stack[t] = blob_projection([np.asarray(a, dtype=float) for a in junk], rotation, np.zeros(2), box)
            continue
        offset = -(rotation @ origin_a)[:2] / pixel  # the particle sits at coordinate − origin
        projection = blob_projection(blobs, rotation @ particle_matrix, offset, box)
        depth = variant.hand * float(rotation[2] @ centre_a)  # RELION: Δf += hand · slope · depth (Å)
        scale = 0.0 if scheme.invisible[:1] == (t,) else math.cos(math.radians(scheme.tilts[t]))
        ctf = scale * relion_ctf(box, pixel, defoci[t, 0] + depth, defoci[t, 1] + depth, defoci[t, 2])
        kernel = dose_filter(box, pixel, exposure[t]) * (ctf**2 if variant.premultiplied else ctf)
        stack[t] = filtered(projection, kernel) * (1.0 if variant.inverted else -1.0)
    return stack


# ---------------------------------------------------------------------------------------------------------
# aitom reconstruct --average, once per export


@dataclass
class Reconstruction:
    export: Export
    folder: Path
    average: torch.Tensor  # DIR/average.mrc
    table: object  # DIR/particles.star (a pandas DataFrame)
    subtomograms: torch.Tensor  # (N, S, S, S)
    weights: torch.Tensor  # (N, S, S, S)


@pytest.fixture(scope="module")
def reconstructed(tmp_path_factory):
    """``name -> Reconstruction``: each export written and reconstructed once (with --average)."""
    cache: dict[str, Reconstruction] = {}

    def get(name: str) -> Reconstruction:
        if name not in cache:
            variant = VARIANTS[name] if name in VARIANTS else OTHER_EXPORTS[name]
            folder = tmp_path_factory.mktemp(name)
            export = write_export(variant, folder / "export")
            out = folder / "reconstruction"
            if variant.optimisation_set:
                argv = ["reconstruct", "--optimisation-set", str(export.optimisation_set)]
            else:
                argv = [
                    "reconstruct",
                    "--particles",
                    str(export.particles),
                    "--tomograms",
                    str(export.tomograms),
                ]
            argv += ["--out", str(out), "--average", *variant.options]
            if variant.wiener_constant is not None:
                argv += ["--wiener-constant", str(variant.wiener_constant)]
            if variant.coordinates == "particle_pixels":  # WarpTools' unit, as for the real export
                argv += ["--coordinate-pixel-size", str(variant.pixel_a)]
            assert main(argv) == 0
            table = read_particles(out / "particles.star", require=("rlnImageName", "rlnCtfImage"))
            average, header = read_volume(out / "average.mrc")
            assert header.voxel_size_a == pytest.approx((variant.pixel_a,) * 3)
            cache[name] = Reconstruction(
                export=export,
                folder=out,
                average=average,
                table=table,
                subtomograms=torch.stack([read_volume(out / name)[0] for name in table["rlnImageName"]]),
                weights=torch.stack([read_volume(out / name)[0] for name in table["rlnCtfImage"]]),
            )
        return cache[name]

    return get


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.double().flatten().numpy(), b.double().flatten().numpy())[0, 1])


def _fsc_failures(a: torch.Tensor, b: torch.Tensor, bands) -> list[tuple[float, float, float]]:
    """``(band, tolerance, lowest FSC)`` of each ``(band, tolerance)`` where the FSC of ``a`` and ``b`` is not
    above the tolerance in some shell up to ``band`` cycles/voxel."""
    frequency, fsc = fourier_shell_correlation(a, b)
    lowest = [(band, tolerance, float(fsc[frequency <= band].min())) for band, tolerance in bands]
    return [(band, tolerance, fsc) for band, tolerance, fsc in lowest if fsc <= tolerance]


def _worst_particle_correlation(result: Reconstruction) -> float:
    """The lowest correlation of a subtomogram with its particle (the truth turned by the particle's RELION
    matrix; as it is with --in-particle-frame) cut down to the Fourier voxels the particle's tilts sample."""
    export, variant = result.export, result.export.variant
    blobs = chiral_blobs(variant.box)
    in_particle_frame = "--in-particle-frame" in variant.options
    worst = 1.0
    for index, subtomogram in enumerate(result.subtomograms):
        matrix = np.eye(3) if in_particle_frame else relion_matrix(*export.angles_deg[index])
        particle = torch.from_numpy(blob_map((blobs[0] @ matrix.T, *blobs[1:]), variant.box)).float()
        expected = export.sampled(particle, [index], particle_frame=in_particle_frame)
        worst = min(worst, _correlation(subtomogram, expected))
    return worst


# ---------------------------------------------------------------------------------------------------------
# tests


@pytest.mark.parametrize("name", list(VARIANTS))
def test_average_with_the_star_poses_matches_the_truth(reconstructed, name):
    """``reconstruct --average`` (all particles inserted at their STAR poses) = the ground-truth map."""
    result = reconstructed(name)
    truth = result.export.sampled(result.export.truth)
    failures = _fsc_failures(result.average, truth, FSC_BANDS)
    correlation = _correlation(result.average, truth)
    assert not failures and correlation > MIN_CORRELATION, (name, failures, correlation)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_known_pose_average_of_the_subtomograms_matches_the_truth(reconstructed, name):
    """:func:`known_pose_average` of the written subtomograms, angles and 3-D weights = the ground truth."""
    result = reconstructed(name)
    angles = torch.tensor(result.table[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(float))
    average, _ = known_pose_average(
        result.subtomograms, relion_angles_to_matrix(angles).float(), result.weights
    )
    truth = result.export.sampled(result.export.truth)
    failures = _fsc_failures(average, truth, KNOWN_POSE_BANDS)
    correlation = _correlation(average, truth)
    assert not failures and correlation > MIN_CORRELATION, (name, failures, correlation)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_subtomogram_is_its_particle(reconstructed, name):
    """Each subtomogram = the map turned by its own STAR pose (tomogram frame; the map itself with
    --in-particle-frame), seen through its own 3-D weight: a particle given another tilt series, frame order,
    visible frames or pose would not match."""
    worst = _worst_particle_correlation(reconstructed(name))
    assert worst > MIN_PARTICLE_CORRELATION, (name, worst)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_output_positions_and_angles(reconstructed, name):
    """particles.star: the true centre in voxels of the particles' pixel size from the tomogram corner
    (RELION: coordinate − origin), the STAR angles (0 with --in-particle-frame, the STAR ones kept aside)."""
    result = reconstructed(name)
    export, variant = result.export, result.export.variant
    expected = np.stack(
        [
            c / variant.pixel_a + export.size_voxels[t] / 2
            for c, t in zip(export.centered_a, export.tomo_names)
        ]
    )
    written = result.table[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy(float)
    np.testing.assert_allclose(written, expected, atol=1e-3)
    assert list(result.table["rlnTomoName"]) == export.tomo_names
    columns = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
    if "--in-particle-frame" in variant.options:
        assert np.all(result.table[columns].to_numpy(float) == 0.0)
        columns = ["aitomSourceAngleRot", "aitomSourceAngleTilt", "aitomSourceAnglePsi"]
    np.testing.assert_allclose(result.table[columns].to_numpy(float), export.angles_deg, atol=1e-6)


@pytest.mark.parametrize("name", [name for name in VARIANTS if not VARIANTS[name].origin_a])
def test_hand_check_finds_the_hand_of_the_truth(reconstructed, name):
    """The chiral truth fits the known-pose average as it is and its mirror image (along Z) fits worse, by
    correlation and FSC, whatever rlnTomoHand says (+1 or −1: the direction of the defocus gradient only)."""
    result = reconstructed(name)
    truth = result.export.truth
    pixel_a = result.export.variant.pixel_a
    check = {"voxel_size_a": pixel_a, "lowpass_a": max(20.0, 2.5 * pixel_a)}
    search = {"angular_step_deg": 25.0, "refine_steps": 10, "max_shift_voxels": 2.0}
    as_is = hand_check(result.average, truth, **check, **search)
    assert as_is["better"] == "as_is" and as_is["margin"] > MIN_HAND_MARGIN, (name, as_is)
    assert as_is["fsc_0.5_a_as_is"] < as_is["fsc_0.5_a_mirrored"], (name, as_is)
    assert hand_verdict(as_is, "z").startswith("the reference matches AS IT IS"), hand_verdict(as_is, "z")
    mirrored = hand_check(result.average, mirror_volume(truth, "z"), **check, **search)
    assert mirrored["better"] == "mirrored" and mirrored["margin"] > MIN_HAND_MARGIN, (name, mirrored)


def test_controls_wrong_poses_fail_the_tolerances(reconstructed):
    """The same subtomograms and weights averaged with the inverse (transposed) STAR rotations, or with the
    poses of the next particle, do not pass: the average checks see a wrong pose convention."""
    result = reconstructed("warptools_like")
    angles = torch.tensor(result.table[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(float))
    rotations = relion_angles_to_matrix(angles).float()
    for wrong in (rotations.transpose(-1, -2), rotations.roll(1, dims=0)):
        average, _ = known_pose_average(result.subtomograms, wrong, result.weights)
        truth = result.export.sampled(result.export.truth)
        failures = _fsc_failures(average, truth, KNOWN_POSE_BANDS)
        assert failures and _correlation(average, truth) < MIN_CORRELATION - 0.1


def test_controls_a_mislabelled_tomo_hand_lowers_the_fsc(reconstructed):
    """rlnTomoHand only sets the direction of the depth-dependent defocus; with it flipped in the STAR file
    the average loses FSC where the CTF oscillates fast (0.25 to 0.45 cycles/voxel) and fails the tolerance,
    so the ±1 variants do test that direction (measured: mean FSC there 0.959 with the right hand, 0.902 with
    the wrong one, whose FSC falls to 0.84 at 0.32 cycles/voxel)."""
    export = reconstructed("warptools_like").export
    truth = export.sampled(export.truth)
    means = []
    for name in ("warptools_like", "mislabelled_hand"):
        frequency, fsc = fourier_shell_correlation(reconstructed(name).average, truth)
        means.append(float(fsc[(frequency > 0.25) & (frequency <= 0.45)].mean()))
    assert means[0] - means[1] > MIN_HAND_FSC_LOSS, means
    assert _fsc_failures(reconstructed("mislabelled_hand").average, truth, FSC_BANDS)


def test_controls_junk_in_frames_marked_visible_is_seen(reconstructed):
    """The frames that show no particle hold junk; marked visible, they spoil the subtomograms, so the
    invisible-frames variant does test that rlnTomoVisibleFrames is honoured."""
    result = reconstructed("junk_frames_marked_visible")
    assert _worst_particle_correlation(result) <= MIN_PARTICLE_CORRELATION
    truth = result.export.sampled(result.export.truth)
    assert _fsc_failures(result.average, truth, FSC_BANDS) and _correlation(result.average, truth) < 0.5


def test_average_with_the_default_wiener_constant(reconstructed):
    """The warptools_like export as users run it (--wiener-constant 0.1): the same average, a little damped
    where few tilts sample (FSC dips near CTF zeros, 0.89 at 0.4 cycles/voxel)."""
    result = reconstructed("default_wiener_constant")
    truth = result.export.sampled(result.export.truth)
    failures = _fsc_failures(result.average, truth, DEFAULT_WIENER_BANDS)
    correlation = _correlation(result.average, truth)
    assert not failures and correlation > DEFAULT_WIENER_CORRELATION, (failures, correlation)


def test_origin_shifts_give_the_reconstruction_of_particles_cut_about_their_centres(reconstructed):
    """The origin_shifts export (stacks cut about the coordinate, the particle at coordinate − origin) and its
    twin cut about the particles' centres without rlnOrigin*Angst give the same average (measured: 0.14 % of
    its maximum apart; with the origins ignored the average correlated 0.66 with the truth, FSC −0.44)."""
    shifted = reconstructed("origin_shifts")
    centred = reconstructed("origin_shifts_without_origins")
    truth = centred.export.sampled(centred.export.truth)
    assert not _fsc_failures(centred.average, truth, FSC_BANDS)
    difference = (shifted.average - centred.average).abs().max() / centred.average.abs().max()
    assert difference < 0.005, difference
    assert _worst_particle_correlation(centred) > MIN_PARTICLE_CORRELATION
