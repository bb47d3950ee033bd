"""``aitom simulate {tomogram,subtomograms} --config RECIPE.yaml --out DIR [KEY=VALUE ...]``.

Outputs go to a hidden temporary folder beside ``DIR`` that is renamed to ``DIR`` only when everything is
written, so an interrupted run leaves no partial output; an existing non-empty ``DIR`` is refused unless
``--overwrite``. The same recipe and seed give identical files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from aitom.commands.shared import check_output_folder, output_folder, refuse_inputs_inside, torch_device

_RECIPE_HELP = (
    "YAML recipe (see simulations/*.yaml); keys it leaves out take the built-in defaults, which are "
    "simulations/{name}_default.yaml"
)
_OVERRIDES_HELP = (
    "recipe overrides as dotted KEY=VALUE, e.g. {examples} "
    "(units are in the key names: _a = Å, _deg = degrees, _um = µm, _voxels = voxels)"
)
#: override examples of each kind: keys of its own recipe (the other's are refused as unknown)
_OVERRIDE_EXAMPLES = {
    "tomogram": "snr=0.1 tilt.tilt_step_deg=2 shape_zyx_voxels=[50,128,128]",
    "subtomograms": "snr=0.1 tilt.tilt_step_deg=2 box_size_voxels=48 particles_per_class=20",
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="simulate crowded tomograms or subtomograms with ground truth",
        description="Simulate cryo-ET data from real atomic models: crowded tomograms (packing, ice, tilt "
        "series with per-tilt CTF, dose weighting and noise, weighted back-projection) or single-particle "
        "subtomograms at a target SNR. Simulated volumes are protein bright (positive density).",
    )
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)

    tomogram = kinds.add_parser(
        "tomogram",
        help="a crowded tomogram: DIR/tomogram.mrc, ground_truth.star, templates/, tomogram.png",
        description="Simulate a crowded tomogram. Writes DIR/tomogram.mrc (voxel size in the header, "
        "protein bright, zero mean, unit variance), DIR/ground_truth.star (rlnCoordinateX/Y/Z in voxels, "
        "rlnAngleRot/Tilt/Psi in degrees, rlnClassNumber, aitomClassName), DIR/templates/<class>.mrc "
        "(potential in volts), DIR/tomogram.png (slices with the truth overlaid) and DIR/recipe.yaml.",
    )
    _common_options(tomogram, "tomogram")
    tomogram.add_argument(
        "--save-clean",
        action="store_true",
        help="also write DIR/clean.mrc, the noise-free potential (volts) before imaging",
    )
    tomogram.add_argument(
        "--save-tilt-series",
        action="store_true",
        help="also write DIR/tilt_series.mrcs (recorded images, protein dark) and DIR/tilt_series.tlt "
        "(tilt angles in degrees, one per line)",
    )

    subtomograms = kinds.add_parser(
        "subtomograms",
        help="single-particle subtomograms: DIR/subtomograms/*.mrc, particles.star, montage.png",
        description="Simulate subtomograms of single particles (random orientation and shift, CTF, "
        "missing wedge, noise at the recipe's SNR). Writes DIR/subtomograms/NNNNNN.mrc, DIR/particles.star "
        "(rlnImageName relative to DIR, rlnClassNumber, aitomClassName, rlnAngleRot/Tilt/Psi in degrees, "
        "rlnOriginX/Y/Z in voxels = minus the particle's shift), DIR/templates/<class>.mrc, DIR/montage.png "
        "and DIR/recipe.yaml; with paired=true also DIR/subtomograms_pair/ (second noise realisation).",
    )
    _common_options(subtomograms, "subtomograms")


def _common_options(parser: argparse.ArgumentParser, kind: str) -> None:
    parser.add_argument("--config", type=Path, help=_RECIPE_HELP.format(name=kind))
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument(
        "--seed",
        type=int,
        help="random seed, overriding the recipe's (default: the recipe's seed, 0 in the built-in defaults)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing non-empty output folder"
    )
    parser.add_argument(
        "--device", default="cpu", help="torch device to compute on, e.g. cpu or cuda (default cpu)"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help=_OVERRIDES_HELP.format(examples=_OVERRIDE_EXAMPLES[kind]),
    )


def run(args: argparse.Namespace) -> int:
    from aitom.simulate.library import is_atomic_model_path
    from aitom.simulate.recipe import load_recipe

    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    recipe = load_recipe(args.config, overrides, kind=args.kind)
    check_output_folder(args.out, args.overwrite)
    models = [Path(name) for name in recipe.classes if is_atomic_model_path(name)]
    refuse_inputs_inside(args.out, [path for path in (args.config, *models) if path is not None])
    device = torch_device(args.device)
    if args.kind == "tomogram":
        return _run_tomogram(recipe, args, device)
    return _run_subtomograms(recipe, args, device)


def _run_tomogram(recipe, args: argparse.Namespace, device) -> int:
    import numpy as np

    from aitom.io import save_montage, write_particles, write_volume
    from aitom.simulate.library import class_radius_a
    from aitom.simulate.recipe import recipe_to_yaml
    from aitom.simulate.tomogram import simulate_tomogram

    simulation = simulate_tomogram(recipe, device=device)
    voxel = recipe.voxel_size_a
    truth = simulation.truth
    with output_folder(args.out) as folder:
        write_volume(folder / "tomogram.mrc", simulation.tomogram, voxel)
        write_particles(folder / "ground_truth.star", truth)
        for name, template in simulation.templates.items():
            write_volume(folder / "templates" / f"{name}.mrc", template, voxel)
        radius = float(np.median([class_radius_a(name) / voxel for name in recipe.classes]))
        save_montage(
            simulation.tomogram,
            folder / "tomogram.png",
            picks_xyz=truth[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy(),
            pick_classes=truth["rlnClassNumber"].to_numpy(),
            pick_radius_voxels=radius,
            title=f"simulated tomogram, {len(truth)} particles, SNR {simulation.snr:.3g}",
        )
        if args.save_clean:
            write_volume(folder / "clean.mrc", simulation.clean, voxel)
        if args.save_tilt_series:
            write_volume(folder / "tilt_series.mrcs", simulation.tilt_series, voxel)
            angles = "\n".join(f"{angle:.2f}" for angle in simulation.tilt_angles_deg.tolist())
            (folder / "tilt_series.tlt").write_text(angles + "\n")
        (folder / "recipe.yaml").write_text(recipe_to_yaml(recipe))
    print(
        f"{args.out}: tomogram {tuple(simulation.tomogram.shape)} at {voxel:g} Å, {len(truth)} particles, "
        f"SNR {simulation.snr:.3g}"
    )
    return 0


def _run_subtomograms(recipe, args: argparse.Namespace, device) -> int:
    from aitom.io import write_particles, write_volume
    from aitom.simulate.recipe import recipe_to_yaml
    from aitom.simulate.subtomograms import simulate_subtomograms

    simulation = simulate_subtomograms(recipe, device=device, progress=True)
    voxel = recipe.voxel_size_a
    table = simulation.truth.copy()
    names = [f"subtomograms/{index:06d}.mrc" for index in range(len(table))]
    table.insert(0, "rlnImageName", names)
    if simulation.paired_volumes is not None:
        table.insert(
            1, "aitomPairedImageName", [name.replace("subtomograms/", "subtomograms_pair/") for name in names]
        )
    with output_folder(args.out) as folder:
        for index, name in enumerate(names):
            write_volume(folder / name, simulation.volumes[index], voxel)
            if simulation.paired_volumes is not None:
                write_volume(
                    folder / table["aitomPairedImageName"].iloc[index],
                    simulation.paired_volumes[index],
                    voxel,
                )
        write_particles(folder / "particles.star", table)
        for name, template in simulation.templates.items():
            write_volume(folder / "templates" / f"{name}.mrc", template, voxel)
        _save_subtomogram_montage(simulation.volumes, table, folder / "montage.png")
        (folder / "recipe.yaml").write_text(recipe_to_yaml(recipe))
    print(f"{args.out}: {len(table)} subtomograms of {recipe.box_size_voxels}³ voxels at {voxel:g} Å")
    return 0


def _save_subtomogram_montage(volumes, table, path: Path, n_shown: int = 8) -> None:
    """Central XY, XZ and YZ slices of the first subtomograms, one row each, labelled by class."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from aitom.io import atomic_output

    shown = volumes[:n_shown].numpy()
    low, high = np.percentile(shown, [1.0, 99.0])
    height = 1.5 * len(shown) + 0.4
    figure = Figure(figsize=(4.5, height), dpi=100)
    FigureCanvasAgg(figure)
    figure.subplots_adjust(left=0.02, right=0.98, bottom=0.01, top=1 - 0.7 / height, hspace=0.3, wspace=0.05)
    figure.suptitle("central XY / XZ / YZ slices", fontsize=9)
    for row, volume in enumerate(shown):
        centre = [size // 2 for size in volume.shape]
        slices = (volume[centre[0]], volume[:, centre[1], :], volume[:, :, centre[2]])
        for column, image in enumerate(slices):
            axes = figure.add_subplot(len(shown), 3, 3 * row + column + 1)
            axes.imshow(image, cmap="gray", vmin=low, vmax=high, origin="lower", interpolation="nearest")
            axes.set_axis_off()
            if column == 0:
                axes.set_title(
                    f"{table['rlnImageName'].iloc[row]}: {table['aitomClassName'].iloc[row]}",
                    fontsize=6,
                    loc="left",
                )
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png")
