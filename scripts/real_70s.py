"""Real-data evaluation on 40 M. pneumoniae 70S ribosomes (RELION 5 / WarpTools 2-D tilt stacks, 12 Å).

Steps (all numbers printed as one Markdown table and written to OUT/real_70s.json / OUT/real_70s.md):

1. ``aitom reconstruct``: one subtomogram (32³) and its 3-D CTF² × dose weight per particle.
2. Known-pose average: the subtomograms averaged with the STAR file's refined angles, each Fourier
   coefficient weighted by its 3-D weight (:func:`aitom.ops.handedness.known_pose_average`).
3. Hand check against RELION's reconstruction (``warptools_test_box-32_angpix-12_reconstruct.mrc``): each
   hand of RELION's map superposed on the average (best rotation and shift), masked correlation after a
   40 Å low-pass and FSC-0.5 / 0.143 (:func:`aitom.ops.handedness.hand_check`).
4. Control: the same average with uniformly random orientations (fixed seed), correlated with RELION's map
   in the right hand in the same frame. A ribosome is roughly globular, so any average that is a centred blob
   of the right size correlates with it; the correlation of the non-spherical part (each map minus its
   radial profile about the box centre) is reported beside the plain one and is the one that must vanish.
5. Reference-free averaging (:func:`aitom.ops.averaging.reference_free_average`, no poses, no reference;
   each particle's missing wedge = where its 3-D weight is non-zero): correlation with RELION's map (best
   over hands and rotations); the global rotation between the reference-free average and the STAR frame from
   superposing it on the known-pose average; the fraction of particles whose recovered orientation lies
   within 20° of the STAR orientation.
6. Alignment against one reference, RELION's map in the right hand superposed on the STAR frame (so the
   found rotations compare with the STAR ones directly), for the first ``--baseline-particles`` particles:
   aitom's aligner (amplitude rotational search + FFT translation + refinement) against a plain exhaustive
   search over ~6,000 rotations (``so3_grid(12.5°)``: real-space rotation of the reference + FFT translation
   cross-correlation for every rotation): fraction within 20° of the STAR orientation and wall time of each.
   (The reference-free average is not used as this reference: on these 40 particles it does not converge to
   the ribosome, see step 5.)

Figures: OUT/real_70s_averages.png (central slices: known-pose average, RELION's map in the right hand,
reference-free average) and OUT/real_70s_fsc.png (FSC against RELION's map).

Usage: ``python scripts/real_70s.py --out real70s/ [--data ../shared/data/real/tomodrgn_70S]
[--iterations 5] [--seed 0] [--baseline-particles 8] [--docs-images docs/images]``. The reconstruction
(OUT/reconstruction/) and the reference-free result (OUT/reference_free.pt) are reused when present.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

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
from aitom.ops.averaging import reference_free_average
from aitom.ops.handedness import (
    hand_check,
    known_pose_average,
    masked_correlation,
    mirror_volume,
    superpose_map,
)

PARTICLES = "warptools_test_4-tomos_10-ptcls_box-32_angpix-12.star"
TOMOGRAMS = "warptools_test_4-tomos_10-ptcls_box-32_angpix-12_tomograms.star"
RELION_MAP = "warptools_test_box-32_angpix-12_reconstruct.mrc"
LOWPASS_A = 40.0
WITHIN_DEG = 20.0
EXHAUSTIVE_STEP_DEG = 12.5  # so3_grid(12.5) has 6,140 rotations
MAX_SHIFT_VOXELS = 4.0


def _default_data() -> Path:
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "tomodrgn_70S"


def reconstruct(data: Path, out: Path) -> None:
    """Run ``aitom reconstruct`` (Wiener, contrast decided automatically) unless OUT already holds it."""
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
    chunk: int = 24,
) -> torch.Tensor:
    """Best rotation per particle: every grid rotation of the reference, FFT translation search (shifts up to
    MAX_SHIFT_VOXELS), constrained correlation on each particle's mask. Returns (P, 3, 3)."""
    size = volumes.shape[-1]
    offsets = torch.fft.fftfreq(size, 1.0 / size)
    distance = (
        offsets[:, None, None] ** 2 + offsets[None, :, None] ** 2 + offsets[None, None, :] ** 2
    ).sqrt()
    too_far = distance > MAX_SHIFT_VOXELS
    best_score = torch.full((volumes.shape[0],), -math.inf)
    best_rotation = torch.zeros(volumes.shape[0], 3, 3)
    for part in rotations.split(chunk):
        rotated = rotate_volume(reference, part)  # (C, S, S, S)
        rotated_mask = rotate_volume(reference_mask, part).clamp(0.0, 1.0)
        maps = constrained_correlation_map(
            rotated[:, None], volumes[None], rotated_mask[:, None], masks[None], max_frequency=max_frequency
        )  # (C, P, S, S, S)
        scores = maps.masked_fill(too_far, -math.inf).flatten(-3).amax(-1)  # (C, P)
        score, index = scores.max(0)
        better = score > best_score
        best_score = torch.where(better, score, best_score)
        best_rotation[better] = part[index[better]]
    return best_rotation


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


def reference_free(volumes, masks, args, voxel_size_a: float) -> tuple[dict, float]:
    """Reference-free averaging, cached in OUT/reference_free.pt (average, coverage, poses, wall time)."""
    cache = args.out / "reference_free.pt"
    if cache.exists():
        saved = torch.load(cache)
        return saved, saved["seconds"]
    started = time.perf_counter()
    free = reference_free_average(
        volumes,
        masks,
        iterations=args.iterations,
        voxel_size_a=voxel_size_a,
        angular_step_deg=args.step,
        max_shift_voxels=MAX_SHIFT_VOXELS,
        max_frequency=min(0.5, voxel_size_a / 30.0),
        generator=torch.Generator().manual_seed(args.seed),
        progress=True,
    )
    seconds = time.perf_counter() - started
    saved = {
        "average": free.average,
        "coverage": free.coverage,
        "rotation": free.alignment.rotation,
        "shift_xyz": free.alignment.shift_xyz,
        "iterations": len(free.history),
        "seconds": seconds,
    }
    torch.save(saved, cache)
    return saved, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, required=True, help="output folder (reconstruction reused if there)"
    )
    parser.add_argument("--data", type=Path, default=_default_data(), help="the tomodrgn_70S data folder")
    parser.add_argument("--iterations", type=int, default=5, help="reference-free averaging rounds")
    parser.add_argument("--step", type=float, default=15.0, help="reference-free angular step, degrees")
    parser.add_argument(
        "--seed", type=int, default=0, help="random rotations of the control and initial poses"
    )
    parser.add_argument(
        "--baseline-particles", type=int, default=8, help="particles aligned by both aligners (first N)"
    )
    parser.add_argument("--docs-images", type=Path, default=None, help="also copy the figures here")
    args = parser.parse_args(argv)
    if not (args.data / PARTICLES).is_file():
        parser.error(f"{args.data}: no {PARTICLES} (pass --data with the tomodrgn_70S folder)")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    started = time.perf_counter()
    reconstruct(args.data, args.out / "reconstruction")
    seconds_reconstruct = time.perf_counter() - started
    volumes, weights, star_rotations, voxel_size_a = load(args.out / "reconstruction")
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
    random_average, _ = known_pose_average(volumes, random_rotations(n, generator), weights)
    random_plain, random_shape = correlations(random_average, relion_right)
    results["correlation_plain_and_non_spherical"] = {
        "star_weighted": [star_plain, star_shape],
        "star_unweighted": [unweighted_plain, unweighted_shape],
        "random_orientations": [random_plain, random_shape],
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
    ]
    print(_report(args.out, rows, results), flush=True)

    # 5. reference-free averaging (no poses, no reference)
    masks = (weights > 0).float()
    free, seconds_free = reference_free(volumes, masks, args, voxel_size_a)
    free_hand = hand_check(free["average"], relion, sphere, voxel_size_a=voxel_size_a, lowpass_a=LOWPASS_A)
    free_best = max(free_hand["correlation_as_is"], free_hand["correlation_mirrored"])
    free_on_star, global_alignment = superpose_map(
        free["average"], star_average, voxel_size_a=voxel_size_a, lowpass_a=LOWPASS_A
    )
    global_rotation = global_alignment.rotation[0]
    free_within, free_median = fraction_within(free["rotation"], global_rotation, star_rotations)
    free_plain, free_shape = correlations(free_on_star, relion_right)
    results["reference_free"] = {
        "seconds": seconds_free,
        "iterations": free["iterations"],
        "correlation_best_hand": free_best,
        "better_hand": free_hand["better"],
        "correlation_right_hand_in_star_frame": [free_plain, free_shape],
        "fraction_within_20_deg": free_within,
        "median_error_deg": free_median,
        "fsc_0.5_a": free_hand[f"fsc_0.5_a_{free_hand['better']}"],
    }
    rows += [
        (
            f"reference-free ({free['iterations']} iterations, {args.step:g}° grid): wall time",
            f"{seconds_free:.0f} s",
        ),
        (
            "  correlation with RELION's map (best hand and rotation)",
            f"{free_best:.3f} ({free_hand['better']}); "
            f"FSC-0.5 {results['reference_free']['fsc_0.5_a']:.1f} Å",
        ),
        ("  in the STAR frame: correlation / non-spherical part", f"{free_plain:.3f} / {free_shape:.3f}"),
        ("  orientations within 20° of STAR (median error)", f"{free_within:.0%} ({free_median:.1f}°)"),
    ]

    print(_report(args.out, rows, results), flush=True)

    # 6. aitom's aligner vs exhaustive search against the same reference (RELION's map in the right hand,
    # superposed on the STAR frame, so no global rotation), on the first N particles
    subset = slice(0, min(n, args.baseline_particles))
    n_subset = subset.stop
    identity = torch.eye(3)
    max_frequency = min(0.5, voxel_size_a / 30.0)
    started = time.perf_counter()
    fast = align_subtomograms(
        relion_right,
        volumes[subset],
        None,
        masks[subset],
        angular_step_deg=args.step,
        max_shift_voxels=MAX_SHIFT_VOXELS,
        max_frequency=max_frequency,
    )
    seconds_fast = time.perf_counter() - started
    fast_within, fast_median = fraction_within(fast.rotation, identity, star_rotations[subset])
    grid = so3_grid(EXHAUSTIVE_STEP_DEG)
    started = time.perf_counter()
    exhaustive = exhaustive_search(
        relion_right,
        volumes[subset],
        torch.ones_like(relion_right),
        masks[subset],
        grid,
        max_frequency=max_frequency,
    )
    seconds_exhaustive = time.perf_counter() - started
    exhaustive_within, exhaustive_median = fraction_within(exhaustive, identity, star_rotations[subset])
    results["alignment_to_relion_map"] = {
        "particles": n_subset,
        "aitom": {
            "seconds": seconds_fast,
            "fraction_within_20_deg": fast_within,
            "median_error_deg": fast_median,
        },
        "exhaustive": {
            "rotations": grid.shape[0],
            "seconds": seconds_exhaustive,
            "fraction_within_20_deg": exhaustive_within,
            "median_error_deg": exhaustive_median,
        },
    }
    rows += [
        (
            f"aitom aligner ({args.step:g}° grid + refinement), first {n_subset} particles vs RELION's map "
            "(right hand): within 20° of STAR (median error), wall time",
            f"{fast_within:.0%} ({fast_median:.1f}°), {seconds_fast:.1f} s",
        ),
        (
            f"exhaustive search ({grid.shape[0]} rotations), same particles and map: within 20° "
            "(median error), wall time",
            f"{exhaustive_within:.0%} ({exhaustive_median:.1f}°), {seconds_exhaustive:.1f} s",
        ),
    ]
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
