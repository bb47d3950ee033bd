"""Real-data evaluation on 40 M. pneumoniae 70S ribosomes (RELION 5 / WarpTools 2-D tilt stacks, 12 Å).

Steps (all numbers printed as one Markdown table and written to OUT/real_70s.json / OUT/real_70s.md):

1. ``aitom reconstruct``: one subtomogram (32³) and its 3-D CTF² × dose weight per particle.
2. Known-pose average: the subtomograms averaged with the STAR file's refined angles, each Fourier
   coefficient weighted by its 3-D weight (:func:`aitom.ops.handedness.known_pose_average`).
3. Hand check against RELION's reconstruction (``warptools_test_box-32_angpix-12_reconstruct.mrc``): each
   hand of RELION's map superposed on the average (best rotation and shift), masked correlation after a
   40 Å low-pass and FSC-0.5 / 0.143 (:func:`aitom.ops.handedness.hand_check`).
4. Control: the same average with uniformly random orientations (fixed seed), correlated with RELION's map
   in the right hand in the same frame, and again after superposing it on the known-pose average as the
   reference-free averages are. A ribosome is roughly globular, so any average that is a centred blob of the
   right size correlates with it; the correlation of the non-spherical part (each map minus its radial
   profile about the box centre) is reported beside the plain one and is the one that must vanish.
5. Reference-free averaging (:func:`aitom.ops.averaging.reference_free_average`, no poses, no reference;
   masks √(3-D weight / max), rotations scored with phases over shifts ≤ 3 voxels, reference masked by a
   soft sphere of ``--particle-diameter``, band limit ``--max-frequency``) from ``--starts`` random starts
   (``--particle-starts``: from single particles as references, drawn without repeats); the start with the
   best mean leave-one-out score is kept (the method's own criterion, no reference). For each:
   the global rotation to the STAR frame from superposing it on the known-pose average, the fraction of
   particles whose recovered orientation lies within 20° of the STAR orientation, the correlation with
   RELION's map. The baseline: the same loop (first random start, same masks and iterations) with every
   alignment an exhaustive search over ``so3_grid(12.5°)`` (6,140 rotations: real-space rotation of the
   reference + FFT translation cross-correlation for every rotation). A check that is not reference-free:
   the same loop started from the known-pose average (does the truth stay a fixed point?).
6. Alignment of all particles against one reference, RELION's map in the right hand superposed on the STAR
   frame (so the found rotations compare with the STAR ones directly): aitom's aligner with the phase search
   and with the amplitude search, and the exhaustive search: fraction within 20° and wall time of each;
   for the phase search also the count within 20° in each tomogram (the particles' quality differs by
   tomogram).

Figures: OUT/real_70s_averages.png (central slices: known-pose average, RELION's map in the right hand,
reference-free average) and OUT/real_70s_fsc.png (FSC against RELION's map).

Usage: ``python scripts/real_70s.py --out real70s/ [--data ../shared/data/real/tomodrgn_70S]
[--iterations 5] [--starts 3] [--particle-starts] [--seed 0] [--docs-images docs/images]``. The reconstruction
(OUT/reconstruction/) is reused when present.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from aitom.commands.shared import refuse_path_under_a_file, seed_number, torch_device
from aitom.errors import InputError
from aitom.fourier import fourier_shell_correlation, lowpass, radial_average, shell_index
from aitom.geometry import (
    random_rotations,
    relion_angles_to_matrix,
    rotate_volume,
    rotation_angle_between,
    so3_grid,
    soft_sphere_mask,
)
from aitom.io import read_particles, read_volume
from aitom.ops.alignment import align_subtomograms, constrained_correlation_map
from aitom.ops.averaging import reference_free_average, wedge_compensated_average
from aitom.ops.handedness import (
    hand_check,
    known_pose_average,
    masked_correlation,
    mirror_volume,
    superpose_map,
)
from run_benchmarks import real_number, reports_input_errors, whole_number

PARTICLES = "warptools_test_4-tomos_10-ptcls_box-32_angpix-12.star"
TOMOGRAMS = "warptools_test_4-tomos_10-ptcls_box-32_angpix-12_tomograms.star"
RELION_MAP = "warptools_test_box-32_angpix-12_reconstruct.mrc"
LOWPASS_A = 40.0
WITHIN_DEG = 20.0
EXHAUSTIVE_STEP_DEG = 12.5  # so3_grid(12.5) has 6,140 rotations


def _default_data() -> Path:
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "tomodrgn_70S"


def check_data(data: Path) -> None:
    """Refuse a ``--data`` folder that lacks one of the files this evaluation reads (InputError naming it)."""
    for name in (PARTICLES, TOMOGRAMS, RELION_MAP):
        if not (data / name).is_file():
            raise InputError(f"no {name} (pass --data with the tomodrgn_70S folder)", data)


def check_output_folder(folder: Path | None, option: str) -> None:
    """Refuse an output folder that is a file or lies under one (InputError naming it)."""
    if folder is None:
        return
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{option}: exists and is not a folder", folder)
    refuse_path_under_a_file(folder)


#: unit of the particle STAR's rlnCoordinateX/Y/Z, Å (the export's particle pixels)
COORDINATE_PIXEL_SIZE_A = 12.0


def reconstruct(data: Path, out: Path) -> None:
    """Run ``aitom reconstruct`` (Wiener, contrast decided automatically) unless OUT already holds it.

    The WarpTools export counts ``rlnCoordinateX/Y/Z`` in its 12 Å particle pixels, not in the 1.667 Å
    tilt-series pixels RELION's convention assumes (tests/data/README.md), hence ``--coordinate-pixel-size``.
    """
    from aitom.commands import reconstruct as command

    if (out / "particles.star").exists():
        return
    parser = argparse.ArgumentParser(prog="aitom")
    command.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "reconstruct",
            *("--particles", str(data / PARTICLES)),
            *("--tomograms", str(data / TOMOGRAMS)),
            *("--out", str(out)),
            *("--coordinate-pixel-size", str(COORDINATE_PIXEL_SIZE_A)),
        ]
    )
    if command.run(args) != 0:
        raise SystemExit(f"aitom reconstruct failed for {data}")


def load(folder: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Subtomograms (P, S, S, S), 3-D weights (P, S, S, S), STAR rotations (P, 3, 3), voxel size (Å)."""
    table = read_particles(folder / "particles.star", require=("rlnImageName", "rlnCtfImage"))
    volumes, weights, voxel_size_a = [], [], 0.0
    for image, weight in zip(table["rlnImageName"], table["rlnCtfImage"]):
        volume, header = read_volume(folder / str(image))
        volumes.append(volume)
        weights.append(read_volume(folder / str(weight))[0])
        voxel_size_a = header.voxel_size_a[0]
    angles = torch.tensor(
        table[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(), dtype=torch.float32
    )
    return torch.stack(volumes), torch.stack(weights), relion_angles_to_matrix(angles), float(voxel_size_a)


def within_by_tomogram(
    found: torch.Tensor, star: torch.Tensor, tomograms: list[str]
) -> dict[str, tuple[int, int]]:
    """Per tomogram: (particles whose found rotation is within WITHIN_DEG of the STAR one, particles)."""
    right = torch.rad2deg(rotation_angle_between(found, star)) <= WITHIN_DEG
    return {
        name: (int(sum(right[i] for i, t in enumerate(tomograms) if t == name)), tomograms.count(name))
        for name in dict.fromkeys(tomograms)
    }


def tomogram_names(folder: Path) -> list[str]:
    """rlnTomoName of every particle of FOLDER/particles.star, in the order :func:`load` returns them."""
    table = read_particles(folder / "particles.star", require=("rlnTomoName",))
    return [str(name) for name in table["rlnTomoName"]]


def without_radial_profile(volume: torch.Tensor) -> torch.Tensor:
    """The volume minus its spherical average about the box centre (its non-spherical part)."""
    index = shell_index(volume.shape, centered=True, device=volume.device)
    profile = radial_average(volume, int(index.max()) + 1, centered=True)
    return volume - profile[index]


def exhaustive_search(
    reference: torch.Tensor,
    volumes: torch.Tensor,
    reference_mask: torch.Tensor,
    masks: torch.Tensor,
    rotations: torch.Tensor,
    *,
    max_frequency: float,
    max_shift_voxels: float,
    chunk: int = 24,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plain exhaustive search: every grid rotation of the reference (real-space rotation), FFT translation
    search (shifts up to ``max_shift_voxels``), constrained correlation on each particle's mask.

    Returns ``(rotations (P, 3, 3), shifts_xyz (P, 3), scores (P,))``."""
    size, device = volumes.shape[-1], volumes.device
    offsets = torch.fft.fftfreq(size, 1.0 / size, device=device)
    distance = (
        offsets[:, None, None] ** 2 + offsets[None, :, None] ** 2 + offsets[None, None, :] ** 2
    ).sqrt()
    too_far = distance > max_shift_voxels
    best_score = torch.full((volumes.shape[0],), -math.inf, device=device)
    best_rotation = torch.zeros(volumes.shape[0], 3, 3, device=device)
    best_index = torch.zeros(volumes.shape[0], dtype=torch.long, device=device)
    for part in rotations.to(device).split(chunk):
        rotated = rotate_volume(reference, part)  # (C, S, S, S)
        rotated_mask = rotate_volume(reference_mask, part).clamp(0.0, 1.0)
        maps = constrained_correlation_map(
            rotated[:, None], volumes[None], rotated_mask[:, None], masks[None], max_frequency=max_frequency
        )  # (C, P, S, S, S)
        scores, where = maps.masked_fill(too_far, -math.inf).flatten(-3).max(-1)  # (C, P)
        score, index = scores.max(0)
        better = score > best_score
        best_score = torch.where(better, score, best_score)
        best_rotation[better] = part[index[better]]
        best_index[better] = where[index, torch.arange(volumes.shape[0], device=device)][better]
    z, y, x = (best_index // (size * size), (best_index // size) % size, best_index % size)
    shifts = torch.stack((x, y, z), dim=-1).float()
    shifts = torch.where(shifts > size // 2, shifts - size, shifts)
    return best_rotation, shifts, best_score


def fraction_within(
    found: torch.Tensor, global_rotation: torch.Tensor, star: torch.Tensor
) -> tuple[float, float]:
    """Fraction of particles with angle(found_i G, star_i) <= WITHIN_DEG, and the median angle (degrees)."""
    error = torch.rad2deg(rotation_angle_between(found @ global_rotation, star))
    return float((error <= WITHIN_DEG).float().mean()), float(error.median())


def save_figures(
    maps: dict[str, torch.Tensor], curves: dict[str, torch.Tensor], frequency, voxel_size_a, out
):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(2.2 * len(maps), 6.6), dpi=110)
    FigureCanvasAgg(figure)
    size = next(iter(maps.values())).shape[-1]
    centre = size // 2
    planes = {
        "XY (z = c)": lambda v: v[centre],
        "XZ (y = c)": lambda v: v[:, centre],
        "YZ (x = c)": lambda v: v[:, :, centre],
    }
    for column, (title, volume) in enumerate(maps.items()):
        volume = lowpass(volume, LOWPASS_A / 1.5, voxel_size_a)
        for row, (plane, cut) in enumerate(planes.items()):
            axes = figure.add_subplot(3, len(maps), row * len(maps) + column + 1)
            image = cut(volume).numpy()
            axes.imshow(image, cmap="gray", origin="lower")
            axes.set_xticks([])
            axes.set_yticks([])
            if row == 0:
                axes.set_title(title, fontsize=8)
            if column == 0:
                axes.set_ylabel(plane, fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "real_70s_averages.png")

    figure = Figure(figsize=(5.5, 3.8), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for label, curve in curves.items():
        axes.plot((frequency / voxel_size_a).numpy(), curve.numpy(), label=label)
    for threshold in (0.5, 0.143):
        axes.axhline(threshold, color="grey", linestyle=":", linewidth=0.8)
    axes.set_xlabel("frequency (1/Å)")
    axes.set_ylabel("FSC with RELION's map")
    axes.set_ylim(-0.2, 1.02)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out / "real_70s_fsc.png")


def _report(out: Path, rows: list[tuple[str, str]], results: dict) -> str:
    """Write the table and the numbers so far (OUT/real_70s.md, OUT/real_70s.json); return the table."""
    table = "| quantity | value |\n|---|---|\n" + "\n".join(f"| {name} | {value} |" for name, value in rows)
    (out / "real_70s.md").write_text(table + "\n")
    (out / "real_70s.json").write_text(json.dumps(results, indent=2) + "\n")
    return table


def reference_free(
    volumes, masks, args, voxel_size_a: float, generator: torch.Generator, initial_reference=None
) -> dict:
    """One reference-free run (random start drawn from ``generator``, or ``initial_reference``): average,
    poses, scores, time. Runs drawn one after another from one generator seeded ``--seed`` are the starts of
    ``aitom average --starts N --seed S --gold-standard-iterations 0`` (the same options; with
    ``--particle-starts`` a permutation of the particles drawn first), which keeps the one with
    the best mean leave-one-out score."""
    started = time.perf_counter()
    free = reference_free_average(
        volumes,
        masks,
        iterations=args.iterations,
        voxel_size_a=voxel_size_a,
        angular_step_deg=args.step,
        max_shift_voxels=args.max_shift,
        max_frequency=args.max_frequency,
        particle_radius_voxels=args.particle_diameter / (2 * voxel_size_a),
        annealing_iterations=0 if initial_reference is not None else args.annealing_iterations,
        generator=generator,
        initial_reference=None if initial_reference is None else initial_reference.to(volumes.device),
        progress=True,
        gold_standard_iterations=0,  # the starts' joint rounds and their score, as --starts compares them
    )
    return {
        "average": free.average.cpu(),
        "rotation": free.alignment.rotation.cpu(),
        "mean_score": float(free.alignment.score.mean()),
        "leave_one_out_score": free.start_scores[0],
        "iterations": len(free.history),
        "seconds": time.perf_counter() - started,
    }


def exhaustive_reference_free(volumes, masks, args, voxel_size_a: float, seed: int) -> dict:
    """The baseline: the same reference-free loop (same random start, masks, reference mask, iterations) with
    every alignment done by :func:`exhaustive_search` over ``so3_grid(EXHAUSTIVE_STEP_DEG)``."""
    n, size, device = volumes.shape[0], volumes.shape[-1], volumes.device
    grid = so3_grid(EXHAUSTIVE_STEP_DEG, device=device)
    sphere = soft_sphere_mask((size,) * 3, args.particle_diameter / (2 * voxel_size_a), 3.0, device=device)
    started = time.perf_counter()
    rotations = random_rotations(n, torch.Generator().manual_seed(seed), device=device)
    shifts = torch.zeros(n, 3, device=device)
    average, coverage = wedge_compensated_average(volumes, rotations, shifts, masks)
    for _ in range(args.iterations):
        rotations, shifts, scores = exhaustive_search(
            average * sphere,
            volumes,
            (coverage / 0.05).clamp(max=1.0),
            masks,
            grid,
            max_frequency=args.max_frequency,
            max_shift_voxels=args.max_shift,
        )
        average, coverage = wedge_compensated_average(volumes, rotations, shifts, masks)
    return {
        "average": average.cpu(),
        "rotation": rotations.cpu(),
        "mean_score": float(scores.mean()),
        "iterations": args.iterations,
        "rotations_searched": grid.shape[0],
        "seconds": time.perf_counter() - started,
    }


@reports_input_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, required=True, help="output folder (reconstruction reused if there)"
    )
    parser.add_argument("--data", type=Path, default=_default_data(), help="the tomodrgn_70S data folder")
    parser.add_argument(
        "--iterations", type=whole_number(1), default=5, help="reference-free averaging rounds (default 5)"
    )
    parser.add_argument(
        "--starts",
        type=whole_number(1),
        default=3,
        help="reference-free random starts, best score kept (default 3)",
    )
    parser.add_argument(
        "--particle-starts",
        action="store_true",
        help="start each reference-free run from one particle as the reference (aitom average "
        "--particle-starts); --starts at most the number of particles",
    )
    parser.add_argument(
        "--annealing-iterations",
        type=whole_number(0),
        default=0,
        help="start each reference-free run from a stochastic-annealing initial model (0: random start)",
    )
    parser.add_argument(
        "--max-frequency",
        type=real_number(above=0.0, at_most=0.5),
        default=0.45,
        help="alignment band limit, cycles/voxel (0.45 at 12 Å: 27 Å)",
    )
    parser.add_argument(
        "--max-shift",
        type=real_number(at_least=0.0),
        default=3.0,
        help="largest shift searched, voxels (default 3 = 36 Å; 0: the particles are taken as centred)",
    )
    parser.add_argument(
        "--particle-diameter",
        type=real_number(above=0.0),
        default=260.0,
        help="reference mask diameter, Å (70S: ~260 Å)",
    )
    parser.add_argument(
        "--step",
        type=real_number(above=0.0, at_most=180.0),
        default=15.0,
        help="reference-free angular step, degrees (default 15)",
    )
    parser.add_argument(
        "--seed", type=seed_number, default=0, help="random rotations of the control and initial poses"
    )
    parser.add_argument(
        "--skip-exhaustive",
        action="store_true",
        help="leave out the two exhaustive-search baselines (about 19 minutes on 2 CPU cores; they do not "
        "depend on the starts)",
    )
    parser.add_argument("--docs-images", type=Path, default=None, help="also copy the figures here")
    parser.add_argument(
        "--device", default="cpu", help="torch device of steps 5 and 6 (cpu or cuda; default cpu)"
    )
    args = parser.parse_args(argv)
    check_data(args.data)
    check_output_folder(args.out, "--out")
    check_output_folder(args.docs_images, "--docs-images")
    device = torch_device(args.device)
    torch.manual_seed(args.seed)

    started = time.perf_counter()
    reconstruct(args.data, args.out / "reconstruction")
    seconds_reconstruct = time.perf_counter() - started
    volumes, weights, star_rotations, voxel_size_a = load(args.out / "reconstruction")
    tomograms = tomogram_names(args.out / "reconstruction")
    relion, _ = read_volume(args.data / RELION_MAP)
    size = volumes.shape[-1]
    sphere = soft_sphere_mask((size,) * 3, 0.4 * size, 0.08 * size)
    n = volumes.shape[0]
    rows: list[tuple[str, str]] = [
        ("particles, box, voxel", f"{n}, {size}³, {voxel_size_a:g} Å"),
        ("reconstruction wall time (0 if reused)", f"{seconds_reconstruct:.0f} s"),
    ]
    results: dict = {"particles": n, "box": size, "voxel_size_a": voxel_size_a}

    def filtered(volume: torch.Tensor) -> torch.Tensor:
        return lowpass(volume, LOWPASS_A, voxel_size_a)

    def correlations(volume: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
        plain = masked_correlation(filtered(volume), filtered(target), sphere)
        shape_only = masked_correlation(
            without_radial_profile(filtered(volume)), without_radial_profile(filtered(target)), sphere
        )
        return float(plain), float(shape_only)

    # 2-3. known-pose average and the hand check
    star_average, _ = known_pose_average(volumes, star_rotations, weights)
    unweighted_average, _ = known_pose_average(volumes, star_rotations)
    hand = hand_check(star_average, relion, sphere, voxel_size_a=voxel_size_a, lowpass_a=LOWPASS_A)
    right = hand["better"]
    relion_right, _ = superpose_map(
        mirror_volume(relion) if right == "mirrored" else relion,
        star_average,
        voxel_size_a=voxel_size_a,
        lowpass_a=LOWPASS_A,
    )
    relion_wrong, _ = superpose_map(
        relion if right == "mirrored" else mirror_volume(relion),
        star_average,
        voxel_size_a=voxel_size_a,
        lowpass_a=LOWPASS_A,
    )
    results["hand_check"] = {k: v for k, v in hand.items() if not k.startswith(("rotation", "shift"))}
    rows += [
        ("hand check: better hand of RELION's map", f"{hand['better']} (mirror along Z)"),
        (
            "  correlation as-is / mirrored (40 Å, masked, superposed)",
            f"{hand['correlation_as_is']:.3f} / {hand['correlation_mirrored']:.3f} "
            f"(margin {hand['margin']:.3f})",
        ),
        ("  FSC-0.5 / 0.143 as-is", f"{hand['fsc_0.5_a_as_is']:.1f} / {hand['fsc_0.143_a_as_is']:.1f} Å"),
        (
            "  FSC-0.5 / 0.143 mirrored",
            f"{hand['fsc_0.5_a_mirrored']:.1f} / {hand['fsc_0.143_a_mirrored']:.1f} Å",
        ),
    ]
    star_plain, star_shape = correlations(star_average, relion_right)
    unweighted_plain, unweighted_shape = correlations(unweighted_average, relion_right)

    # 4. control: random orientations
    generator = torch.Generator().manual_seed(args.seed)
    control_rotations = random_rotations(n, generator)
    random_average, _ = known_pose_average(volumes, control_rotations, weights)
    random_plain, random_shape = correlations(random_average, relion_right)
    # the reference-free averages below are superposed on the known-pose average before they are compared,
    # which lets their noise match it; the same superposition of the control is the fair comparison
    random_on_star, control_global = superpose_map(
        random_average, star_average, voxel_size_a=voxel_size_a, lowpass_a=LOWPASS_A
    )
    random_superposed_plain, random_superposed_shape = correlations(random_on_star, relion_right)
    # chance level of "within 20°": uniformly random rotations put (θ - sin θ)/π of them within θ of any
    # given rotation; the control, superposed like the reference-free runs, measures it on these particles
    chance = (math.radians(WITHIN_DEG) - math.sin(math.radians(WITHIN_DEG))) / math.pi
    control_within, control_median = fraction_within(
        control_rotations, control_global.rotation[0], star_rotations
    )
    results["correlation_plain_and_non_spherical"] = {
        "star_weighted": [star_plain, star_shape],
        "star_unweighted": [unweighted_plain, unweighted_shape],
        "random_orientations": [random_plain, random_shape],
        "random_orientations_superposed": [random_superposed_plain, random_superposed_shape],
    }
    results["chance_within_20_deg"] = {
        "uniform_rotations": chance,
        "control_superposed": control_within,
        "control_superposed_median_error_deg": control_median,
    }
    rows += [
        ("STAR poses, 3-D weights: correlation / non-spherical part", f"{star_plain:.3f} / {star_shape:.3f}"),
        (
            "STAR poses, unweighted: correlation / non-spherical part",
            f"{unweighted_plain:.3f} / {unweighted_shape:.3f}",
        ),
        (
            "CONTROL random orientations: correlation / non-spherical part",
            f"{random_plain:.3f} / {random_shape:.3f}",
        ),
        (
            "CONTROL random orientations, superposed like the reference-free averages",
            f"{random_superposed_plain:.3f} / {random_superposed_shape:.3f}",
        ),
        (
            f"CHANCE: within {WITHIN_DEG:g}° of STAR for uniformly random rotations / the control superposed",
            f"{chance:.2%} / {control_within:.0%} (median {control_median:.0f}°)",
        ),
    ]
    print(_report(args.out, rows, results), flush=True)

    # 5. reference-free averaging (no poses, no reference): --starts random starts, the one with the best mean
    # alignment score kept (the method's own criterion); the same loop with exhaustive alignment as baseline
    masks = (weights / weights.amax(dim=(1, 2, 3), keepdim=True)).sqrt().to(device)
    volumes_on_device = volumes.to(device)

    def evaluate(run: dict) -> dict:
        on_star, global_alignment = superpose_map(
            run["average"], star_average, voxel_size_a=voxel_size_a, lowpass_a=LOWPASS_A
        )
        within, median = fraction_within(run["rotation"], global_alignment.rotation[0], star_rotations)
        plain, shape = correlations(on_star, relion_right)
        return {
            "seconds": run["seconds"],
            "iterations": run["iterations"],
            "mean_alignment_score": run["mean_score"],
            "leave_one_out_score": run.get("leave_one_out_score"),
            "correlation_right_hand_in_star_frame": [plain, shape],
            "fraction_within_20_deg": within,
            "median_error_deg": median,
            "on_star": on_star,
        }

    starts_generator = torch.Generator().manual_seed(args.seed)  # CPU: the same starts on every device
    if args.particle_starts:
        if args.starts > n:
            raise InputError(f"--starts {args.starts} with --particle-starts is more than the {n} particles")
        # as reference_free_average(particle_starts=True) draws them: a permutation, then the starts
        drawn = torch.randperm(n, generator=starts_generator)[: args.starts].tolist()
        initial_references = [volumes_on_device[index] for index in drawn]
    else:
        drawn, initial_references = [], [None] * args.starts
    runs = [
        evaluate(reference_free(volumes_on_device, masks, args, voxel_size_a, starts_generator, start))
        for start in initial_references
    ]
    for run, index in zip(runs, drawn):
        run["start_particle"] = index
    chosen = max(range(args.starts), key=lambda k: runs[k]["leave_one_out_score"])
    free_on_star = runs[chosen]["on_star"]
    from_star = evaluate(
        reference_free(volumes_on_device, masks, args, voxel_size_a, torch.Generator(), star_average)
    )
    exhaustive_free = (
        None
        if args.skip_exhaustive
        else evaluate(exhaustive_reference_free(volumes_on_device, masks, args, voxel_size_a, args.seed))
    )
    results["reference_free"] = {
        "annealing_iterations": args.annealing_iterations,
        "particle_starts": args.particle_starts,
        "starts": [{k: v for k, v in run.items() if k != "on_star"} for run in runs],
        "chosen_start": chosen,
        "started_from_star_average": {k: v for k, v in from_star.items() if k != "on_star"},
        "exhaustive_baseline_same_start": None
        if exhaustive_free is None
        else {k: v for k, v in exhaustive_free.items() if k != "on_star"},
        "settings": {
            "iterations": args.iterations,
            "angular_step_deg": args.step,
            "max_shift_voxels": args.max_shift,
            "max_frequency": args.max_frequency,
            "particle_diameter_a": args.particle_diameter,
            "masks": "sqrt(3-D weight / max)",
        },
    }

    def free_row(label: str, run: dict) -> tuple[str, str]:
        plain, shape = run["correlation_right_hand_in_star_frame"]
        return (
            label,
            f"{run['fraction_within_20_deg']:.0%} ({run['median_error_deg']:.1f}°); "
            f"{plain:.3f} / {shape:.3f}; score {run['mean_alignment_score']:.3f}"
            + (
                ""
                if run["leave_one_out_score"] is None
                else f", leave-one-out {run['leave_one_out_score']:.4f}"
            )
            + f"; {run['seconds']:.0f} s",
        )

    rows.append(
        (
            f"reference-free runs ({args.iterations} iterations, {args.step:g}° grid, phases, shifts ≤ "
            f"{args.max_shift:g} voxels, reference masked at {args.particle_diameter:g} Å"
            + (
                f", annealed starts of {args.annealing_iterations} iterations)"
                if args.annealing_iterations
                else ")"
            ),
            "within 20° of STAR (median error); correlation / non-spherical part with RELION's map; "
            "mean alignment score, mean leave-one-out score; wall time",
        )
    )
    kind = "particle" if args.particle_starts else "annealed" if args.annealing_iterations else "random"
    shown = sorted({*range(min(3, args.starts)), chosen})
    rows += [
        free_row(
            f"  {kind} start {k + 1}"
            + (f" (particle {drawn[k] + 1})" if drawn else "")
            + (" (kept: best leave-one-out score)" if k == chosen else ""),
            runs[k],
        )
        for k in shown
    ]
    if args.starts > len(shown):
        within_all = torch.tensor([run["fraction_within_20_deg"] for run in runs])
        shape_all = torch.tensor([run["correlation_right_hand_in_star_frame"][1] for run in runs])
        rows.append(
            (
                f"  all {args.starts} {kind} starts: within 20° (max / median); non-spherical part (max)",
                f"{within_all.max():.0%} / {within_all.median():.0%}; {shape_all.max():.3f}",
            )
        )
    if exhaustive_free is not None:
        rows.append(
            free_row(
                f"  BASELINE: same loop, exhaustive search ({EXHAUSTIVE_STEP_DEG:g}°, "
                f"{so3_grid(EXHAUSTIVE_STEP_DEG).shape[0]} rotations), random start 1",
                exhaustive_free,
            )
        )
    rows.append(
        free_row("  CHECK (not reference-free): same loop started from the STAR-pose average", from_star)
    )
    print(_report(args.out, rows, results), flush=True)

    # 6. alignment against one reference, RELION's map in the right hand superposed on the STAR frame (so the
    # found rotations compare with the STAR ones directly): aitom (phase search), aitom (amplitude search),
    # plain exhaustive search, all particles, same masks and band
    identity = torch.eye(3)
    results["alignment_to_relion_map"] = {"particles": n}
    searches = {"aitom, phase search": "phase", "aitom, amplitude search": "amplitude"}
    for label, search in searches.items():
        started = time.perf_counter()
        found = align_subtomograms(
            relion_right.to(device),
            volumes_on_device,
            None,
            masks,
            angular_step_deg=args.step,
            max_shift_voxels=args.max_shift,
            max_frequency=args.max_frequency,
            search_band=(0.05, args.max_frequency),
            rotation_search=search,
        )
        seconds = time.perf_counter() - started
        within, median = fraction_within(found.rotation.cpu(), identity, star_rotations)
        results["alignment_to_relion_map"][label] = {
            "seconds": seconds,
            "fraction_within_20_deg": within,
            "median_error_deg": median,
        }
        rows.append(
            (
                f"{label} ({args.step:g}° grid + refinement) vs RELION's map (right hand), {n} particles: "
                "within 20° of STAR (median error), wall time",
                f"{within:.0%} ({median:.1f}°), {seconds:.1f} s",
            )
        )
        if search == "phase":
            by_tomogram = within_by_tomogram(found.rotation.cpu(), star_rotations, tomograms)
            results["alignment_to_relion_map"][label]["within_20_deg_by_tomogram"] = by_tomogram
            rows.append(
                (
                    "  the same by tomogram: particles within 20° of STAR / particles",
                    ", ".join(f"{name} {right}/{count}" for name, (right, count) in by_tomogram.items()),
                )
            )
    if not args.skip_exhaustive:
        grid = so3_grid(EXHAUSTIVE_STEP_DEG)
        started = time.perf_counter()
        exhaustive, _, _ = exhaustive_search(
            relion_right.to(device),
            volumes_on_device,
            torch.ones_like(relion_right, device=device),
            masks,
            grid,
            max_frequency=args.max_frequency,
            max_shift_voxels=args.max_shift,
        )
        exhaustive = exhaustive.cpu()
        seconds_exhaustive = time.perf_counter() - started
        exhaustive_within, exhaustive_median = fraction_within(exhaustive, identity, star_rotations)
        results["alignment_to_relion_map"]["exhaustive"] = {
            "rotations": grid.shape[0],
            "seconds": seconds_exhaustive,
            "fraction_within_20_deg": exhaustive_within,
            "median_error_deg": exhaustive_median,
        }
        rows.append(
            (
                f"BASELINE exhaustive search ({grid.shape[0]} rotations), same particles and map: within 20° "
                "(median error), wall time",
                f"{exhaustive_within:.0%} ({exhaustive_median:.1f}°), {seconds_exhaustive:.1f} s",
            )
        )
    _report(args.out, rows, results)

    # figures
    frequency, fsc_right = fourier_shell_correlation(star_average, relion_right, mask=sphere)
    _, fsc_wrong = fourier_shell_correlation(star_average, relion_wrong, mask=sphere)
    _, fsc_free = fourier_shell_correlation(free_on_star, relion_right, mask=sphere)
    _, fsc_random = fourier_shell_correlation(random_average, relion_right, mask=sphere)
    save_figures(
        {
            "STAR poses (aitom)": star_average,
            f"RELION ({'mirrored' if right == 'mirrored' else 'as is'})": relion_right,
            "reference-free (aitom)": free_on_star,
        },
        {
            "STAR poses vs RELION, right hand": fsc_right,
            "STAR poses vs RELION, wrong hand": fsc_wrong,
            "reference-free vs RELION, right hand": fsc_free,
            "random orientations (control)": fsc_random,
        },
        frequency,
        voxel_size_a,
        args.out,
    )
    if args.docs_images is not None:
        args.docs_images.mkdir(parents=True, exist_ok=True)
        for name in ("real_70s_averages.png", "real_70s_fsc.png"):
            (args.docs_images / name).write_bytes((args.out / name).read_bytes())
    print(_report(args.out, rows, results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
