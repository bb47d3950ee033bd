"""``run_pipeline``: tomogram in, structural map out (denoise → pick → extract → classify → average → report).

The tomogram is memory-mapped and never loaded whole: denoising and picking run tile by tile
(``pick.tile_voxels``), subtomograms are read box by box. Everything is written to a hidden temporary folder
beside the output folder, renamed to it only when complete (:func:`aitom.commands.shared.output_folder`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from aitom.pipeline.config import PipelineConfig, box_size_voxels, config_to_yaml, validate_config

__all__ = ["PipelineResult", "PipelineWarning", "run_pipeline"]

#: the smallest box the pipeline extracts, voxels (alignment and FSC need a few Fourier shells)
MIN_BOX_VOXELS = 8
#: relative difference of the header's x, y, z voxel sizes above which voxels count as anisotropic
ANISOTROPY_TOLERANCE = 1e-3


class PipelineWarning(UserWarning):
    """A doubtful result of ``aitom pipeline`` (few particles, classes of one particle, a box larger than the
    tomogram ...): warned about as it happens and listed under "Warnings" in the report."""


@dataclasses.dataclass
class PipelineResult:
    """What :func:`run_pipeline` produced.

    Attributes:
        out_dir: the output folder.
        particles: the written ``particles.star`` table (empty when no particles were found).
        classes: per class ``{"class", "particles", "fsc_0.5_a", "fsc_0.143_a"}`` (1-based class numbers;
            the resolutions in Å, None where undefined: one particle, or an FSC below the threshold from the
            lowest frequency on), and ``"template"`` (its file) when the classes come from template matching.
        voxel_size_a: voxel size, Å; box_size: subtomogram box edge, voxels.
        tilt_range_deg: missing-wedge tilt range used, degrees.
        n_pick_tiles: tiles the picker (and the denoiser) processed.
        timings_s: seconds per step.
        summary: everything in ``summary.json``; ``summary["warnings"]`` lists the doubtful results.
    """

    out_dir: Path
    particles: pd.DataFrame
    classes: list[dict]
    voxel_size_a: float
    box_size: int
    tilt_range_deg: tuple[float, float]
    n_pick_tiles: int
    timings_s: dict[str, float]
    summary: dict


def _empty_table() -> pd.DataFrame:
    from aitom.io import particles_table

    return particles_table(
        np.zeros((0, 3)), angles_deg=np.zeros((0, 3)), class_number=np.zeros(0), score=np.zeros(0)
    )


def _voxel_size(header_voxel_a: tuple[float, float, float], given_a: float | None, path: Path) -> float:
    """The voxel size to use, Å: ``given_a`` when set, else the header's unless it looks unset (0 or 1 Å) or
    differs between x, y and z (the pipeline's filters, boxes and rotations assume cubic voxels)."""
    from aitom.errors import InputError

    if given_a is not None:
        return float(given_a)
    if min(header_voxel_a) <= 0 or all(v == 1.0 for v in header_voxel_a):
        raise InputError(
            f"voxel size {header_voxel_a[0]:g} Å in the header looks unset; give it as voxel_size_a=<Å>", path
        )
    if max(header_voxel_a) / min(header_voxel_a) - 1 > ANISOTROPY_TOLERANCE:
        raise InputError(
            f"anisotropic voxels ({', '.join(f'{v:g}' for v in header_voxel_a)} Å along x, y, z): the "
            "pipeline needs cubic voxels; resample the tomogram (aitom convert IN OUT --resample Å), or give "
            "voxel_size_a=<Å> to use one size",
            path,
        )
    return float(header_voxel_a[0])


def _check_particle_fits(
    config: PipelineConfig, shape_zyx: tuple[int, ...], voxel_size_a: float, box: int, path: Path
) -> None:
    """Refuse a particle diameter larger than the tomogram's smallest dimension, or a border exclusion that
    leaves no position inside it: either would end in an empty table with exit code 0. Refuse a particle so
    small that its box (``box`` voxels) is under :data:`MIN_BOX_VOXELS`: its FSC would be meaningless.

    Raises:
        InputError: naming the setting, the sizes in voxels and the tomogram.
    """
    from aitom.errors import InputError

    shown = f"{'×'.join(map(str, shape_zyx))} voxels (Z×Y×X) at {voxel_size_a:g} Å"
    diameter = config.pick.particle_diameter_a / voxel_size_a
    if box < MIN_BOX_VOXELS:
        raise InputError(
            f"pick.particle_diameter_a: {config.pick.particle_diameter_a:g} Å is {diameter:.1f} voxels at "
            f"{voxel_size_a:g} Å, a box of {box} voxels (extract.box_factor {config.extract.box_factor:g}), "
            f"fewer than {MIN_BOX_VOXELS}: is the diameter in Å, and the voxel size right?",
            path,
        )
    if diameter > min(shape_zyx):
        raise InputError(
            f"pick.particle_diameter_a: {config.pick.particle_diameter_a:g} Å is {diameter:.0f} voxels, "
            f"larger than the tomogram ({shown}): is the diameter in Å, and the voxel size right?",
            path,
        )
    border = config.pick.exclude_border_voxels
    if border is not None and math.ceil(border) > min(shape_zyx) - 1 - border:
        raise InputError(
            f"pick.exclude_border_voxels: {border:g} voxels leaves no position inside the tomogram "
            f"({shown}): use at most {(min(shape_zyx) - 1) // 2}",
            path,
        )


def run_pipeline(
    tomogram_path: str | Path,
    out_dir: str | Path,
    config: PipelineConfig | None = None,
    *,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> PipelineResult:
    """Run the whole pipeline on one tomogram (MRC) and write the results to ``out_dir``.

    Outputs: ``particles.star`` (rlnCoordinateX/Y/Z voxels, rlnClassNumber, rlnAngleRot/Tilt/Psi degrees and
    rlnOriginX/Y/Z voxels from the alignment, rlnAutopickFigureOfMerit, aitomAlignmentScore),
    ``class_NN_average.mrc``, ``class_NN_half1.mrc`` / ``class_NN_half2.mrc`` (the even- and odd-numbered
    members' averages behind the half-set FSC; classes of two or more particles), ``class_NN_fsc.json``
    (naming the half maps), ``class_NN_montage.png``, ``fsc.png``,
    ``tomogram_classes.png``, ``report.md``, ``report.html``, ``summary.json`` and ``pipeline.yaml`` (the
    settings). A tomogram with no particles gives an empty ``particles.star`` and a report saying so.
    Doubtful results (no particles, the ``pick.max_particles`` cap reached, fewer particles than classes,
    classes of one particle, an irreproducible average, a box larger than the tomogram) are warned about
    (:class:`PipelineWarning`) and listed under "Warnings" in the report and in ``summary["warnings"]``.

    The tomogram is read with the header's voxel size, or ``voxel_size_a`` when set; a header voxel size of 0
    or 1 Å (unset), or anisotropic, without ``voxel_size_a`` is an InputError. ``contrast: dark`` negates the
    raw data as read.

    Raises:
        InputError: not an MRC volume, an unset or anisotropic voxel size, impossible settings, bad
            templates, a particle too small for a box, or ``out_dir`` not empty without ``overwrite`` — before
            anything is written.
    """
    from aitom.io import HeaderWarning

    with warnings.catch_warnings():
        # the tomogram's unset or anisotropic header voxel size is either replaced by voxel_size_a or refused
        # with that key's name (a template's is still reported)
        warnings.filterwarnings(
            "ignore",
            message=re.escape(f"{Path(tomogram_path)}: ") + ".*(looks unset|anisotropic voxels)",
            category=HeaderWarning,
        )
        return _run_pipeline(Path(tomogram_path), Path(out_dir), config, overwrite, log)


def _run_pipeline(
    tomogram_path: Path,
    out_dir: Path,
    config: PipelineConfig | None,
    overwrite: bool,
    log: Callable[[str], None],
) -> PipelineResult:
    from aitom.commands.shared import (
        check_output_folder,
        json_ready,
        output_folder,
        refuse_inputs_inside,
        torch_device,
    )
    from aitom.data.tomogram import count_tiles
    from aitom.fourier import missing_wedge_mask, resolution_at
    from aitom.geometry import matrix_to_euler_zyz
    from aitom.io import open_volume_mmap, save_fsc_plot, save_montage, write_particles, write_volume
    from aitom.ops.averaging import align_to_reference_frame, shared_start_limit
    from aitom.ops.extraction import extract_subvolumes
    from aitom.pipeline.report import count_of, save_class_montage, write_report
    from aitom.pipeline.steps import (
        MIN_PARTICLES_TO_CLASSIFY,
        build_pickers,
        check_templates,
        class_limit,
        classify_subtomograms,
        denoise_tiled,
        estimate_tilt_range,
        pick_overlap_voxels,
        pick_particles,
        tomogram_value_range,
    )
    from aitom.tasks.pick import TemplateCroppedWarning, TemplateRescaledWarning

    config = PipelineConfig() if config is None else config
    validate_config(config)
    check_output_folder(out_dir, overwrite)
    refuse_inputs_inside(out_dir, [tomogram_path, *config.pick.templates])
    device = torch_device(config.device)
    array, header = open_volume_mmap(tomogram_path)
    voxel_size = _voxel_size(header.voxel_size_a, config.voxel_size_a, tomogram_path)
    shape = tuple(int(n) for n in array.shape)
    box = box_size_voxels(config, voxel_size)
    _check_particle_fits(config, shape, voxel_size, box, tomogram_path)
    check_templates(config, shape, voxel_size, tomogram_path)
    # the pickers without the wedge (estimated below) give the tile overlap, refused now if too large
    with warnings.catch_warnings():  # said when the pick step builds them
        warnings.simplefilter("ignore", TemplateRescaledWarning)
        warnings.simplefilter("ignore", TemplateCroppedWarning)
        pickers = build_pickers(config, voxel_size, None, shape)
    overlap = pick_overlap_voxels(config, pickers, shape)
    n_tiles = count_tiles(shape, config.pick.tile_voxels, overlap, pickers[0].tile_boundary)
    steps: list[dict] = []
    summary: dict = {
        "tomogram": str(tomogram_path),
        "shape_zyx": list(shape),
        "voxel_size_a": voxel_size,
        "box_size": box,
        "steps": steps,
        "classes": [],
        "n_particles": 0,
        "warnings": [],
    }

    def doubt(message: str) -> None:
        """A doubtful result: warned about now (naming the tomogram), listed in the report."""
        summary["warnings"].append(message)
        warnings.warn(PipelineWarning(f"{tomogram_path}: {message}"), stacklevel=2)

    diameter_voxels = config.pick.particle_diameter_a / voxel_size
    if box < diameter_voxels:
        doubt(
            f"the box ({box} voxels, extract.max_box_voxels) is smaller than the particle "
            f"({diameter_voxels:.0f} voxels): the averages are cut off"
        )
    thin = [f"{axis} ({n} voxels)" for axis, n in zip("ZYX", shape) if n < box]
    if thin:
        doubt(
            f"the box ({box} voxels) is larger than the tomogram along {', '.join(thin)}: every box is "
            f"padded there (extract.padding {config.extract.padding})"
        )

    @contextmanager
    def step(name: str) -> Iterator[dict]:
        record = {"step": name, "result": ""}
        log(f"[pipeline] {name} ...")
        start = time.perf_counter()
        yield record
        record["seconds"] = time.perf_counter() - start
        steps.append(record)
        log(f"[pipeline] {name}: {record['result']} ({record['seconds']:.1f} s)")

    with output_folder(out_dir) as folder:
        work = folder / ".work"
        work.mkdir()
        with step("read") as record:
            low, high = tomogram_value_range(array, config.pick.tile_voxels, tomogram_path)
            record["result"] = f"{' × '.join(map(str, shape))} voxels at {voxel_size:g} Å, {n_tiles} tile(s)"
        with step("missing wedge") as record:
            tilt_range, source = estimate_tilt_range(array, config, tomogram_path)
            record["result"] = f"{tilt_range[0]:g}° to {tilt_range[1]:g}° ({source})"
        summary["tilt_range_deg"] = list(tilt_range)
        pick_path = tomogram_path
        dark = config.contrast == "dark"
        if high > low and (config.denoise.method != "none" or dark):
            with step("denoise") as record:
                pick_path = denoise_tiled(array, voxel_size, config, work / "denoised.mrc", device)
                inverted = ", protein-dark tomogram negated" if dark else ""
                record["result"] = f"{config.denoise.method}{inverted} (used for picking and figures)"
        with step("pick") as record:
            if high > low:
                picks = pick_particles(pick_path, voxel_size, config, tilt_range, work)
                record["result"] = f"{len(picks)} particles ({config.pick.method})"
            else:
                picks = _empty_table()
                record["result"] = "constant tomogram: nothing to pick"
        display, _ = open_volume_mmap(pick_path)
        radius_voxels = config.pick.particle_diameter_a / 2 / voxel_size
        summary["n_particles"] = len(picks)
        if config.pick.max_particles is not None and len(picks) >= config.pick.max_particles:
            doubt(f"the picks reached pick.max_particles ({config.pick.max_particles}): there may be more")
        if config.pick.method == "template" and len(picks) > 0:
            matched = set(picks["rlnClassNumber"].astype(int))
            for number, template in enumerate(config.pick.templates, start=1):
                if number not in matched:
                    doubt(f"template {template} (pick.templates) matched no particle: it has no class")
        if len(picks) == 0:
            threshold = (
                f"pick.threshold {config.pick.threshold:g}"
                if config.pick.threshold is not None
                else f"pick.false_alarm_rate {config.pick.false_alarm_rate:g}"
            )
            doubt(
                "no particles found: check pick.particle_diameter_a "
                f"({config.pick.particle_diameter_a:g} Å), the threshold ({threshold}) and the contrast "
                f"(contrast {config.contrast}: protein {config.contrast} in the tomogram)"
            )
            log("[pipeline] no particles found: writing an empty particles.star")
            # the columns of a table with particles, so that scripts reading them need no special case
            empty = np.zeros(0)
            table = _empty_table().assign(
                rlnOriginX=empty,
                rlnOriginY=empty,
                rlnOriginZ=empty,
                rlnTomoName=tomogram_path.stem,
                rlnMicrographName=tomogram_path.stem,
                aitomAlignmentScore=empty,
            )
            write_particles(folder / "particles.star", table)
            save_montage(display, folder / "tomogram_classes.png", title="no particles found")
        else:
            coordinates = picks[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy(np.float64)
            with step("extract") as record:
                volumes = extract_subvolumes(array, coordinates, box, padding=config.extract.padding)
                if dark:
                    volumes = -volumes
                std, mean = torch.std_mean(volumes, dim=(-3, -2, -1), keepdim=True)
                volumes = ((volumes - mean) / std.clamp(min=1e-12)).to(device)
                record["result"] = f"{len(volumes)} boxes of {box}³ voxels from the raw tomogram"
            mask = missing_wedge_mask(
                (box,) * 3, tilt_min_deg=tilt_range[0], tilt_max_deg=tilt_range[1], device=device
            )
            with step("classify and average") as record:
                pick_classes = None
                if config.pick.method == "template":
                    pick_classes = torch.as_tensor(picks["rlnClassNumber"].to_numpy() - 1, device=device)
                classes = classify_subtomograms(volumes, mask, config, voxel_size, pick_classes)
                record["result"] = f"{count_of(classes.averages.shape[0], 'class')} ({classes.method})"
            summary["classify_method"] = classes.method
            requested = config.classify.n_classes
            n_picks = len(picks)
            if config.pick.method != "template" and config.classify.method == "clustering" and requested != 1:
                if n_picks < MIN_PARTICLES_TO_CLASSIFY:
                    doubt(
                        f"only {count_of(n_picks, 'particle')}: too few to classify (at least "
                        f"{MIN_PARTICLES_TO_CLASSIFY}), averaged as one class"
                    )
                elif requested != "auto" and requested > class_limit(n_picks):
                    doubt(
                        f"classify.n_classes {requested} with {n_picks} particles: at most "
                        f"{class_limit(n_picks)} classes made (2 particles per class for a half-set FSC)"
                    )
                elif classes.averages.shape[0] == 1:
                    doubt(
                        f"all {n_picks} particles are in one class (classify.n_classes {requested}): one "
                        "structure, or structures too alike or too noisy to separate"
                    )
            if classes.structural_correlations is not None and classes.averages.shape[0] > 1:
                summary["structural_correlations"] = classes.structural_correlations.tolist()
                summary["merge_threshold"] = config.classify.merge_threshold
            labels = classes.labels.cpu().numpy()
            angles = torch.rad2deg(matrix_to_euler_zyz(classes.rotations.cpu().double())).numpy()
            shifts = classes.shifts_xyz.cpu().double().numpy()
            table = picks.copy()
            for column, values in zip(("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"), angles.T):
                table[column] = values
            for column, values in zip(("rlnOriginX", "rlnOriginY", "rlnOriginZ"), shifts.T):
                table[column] = -values
            table["rlnClassNumber"] = labels + 1
            table["rlnTomoName"] = table["rlnMicrographName"] = tomogram_path.stem
            table["aitomAlignmentScore"] = classes.scores.cpu().double().numpy()
            with step("write") as record:
                write_particles(folder / "particles.star", table)
                frequency = classes.frequency.cpu()
                fsc_report = {
                    "voxel_size_a": voxel_size,
                    "frequency_per_a": (frequency / voxel_size).tolist(),
                    "gold_standard_lowpass_a": voxel_size / (config.average.max_frequency / 2)
                    if config.average.gold_standard_iterations
                    else None,
                    "gold_standard_shared_to_a": voxel_size
                    / shared_start_limit(config.average.max_frequency / 2)
                    if config.average.gold_standard_iterations
                    else None,
                }
                fsc_report["classes"] = []
                shared_to_a = fsc_report["gold_standard_shared_to_a"]
                per_class = zip(classes.averages.cpu(), classes.fsc.cpu(), classes.half_averages.cpu())
                for k, (average, curve, halves) in enumerate(per_class):
                    members = np.flatnonzero(labels == k)
                    name = f"class_{k + 1:02d}"
                    entry = {"class": k + 1, "particles": int(members.size)}
                    if config.pick.method == "template":
                        number = int(picks["rlnClassNumber"].iloc[members[0]])
                        entry["template"] = str(config.pick.templates[number - 1])
                    for threshold in (0.5, 0.143):
                        value = float(resolution_at(frequency, curve, threshold, voxel_size_a=voxel_size))
                        entry[f"fsc_{threshold}_a"] = value if math.isfinite(value) else None
                    if members.size < 2:
                        doubt(f"class {k + 1} has 1 particle: no half-set FSC")
                    elif entry["fsc_0.143_a"] is None:
                        doubt(
                            f"class {k + 1}: its half-set FSC is below 0.143 from the lowest frequency on: "
                            "the average is not reproducible"
                        )
                    elif shared_to_a is not None and entry["fsc_0.143_a"] >= shared_to_a * (1 - 1e-6):
                        doubt(
                            f"class {k + 1}: its half-set FSC crosses 0.143 at {entry['fsc_0.143_a']:.1f} Å, "
                            "where the gold-standard half sets share their start "
                            f"(up to {shared_to_a:.1f} Å): not an independent resolution"
                        )
                    summary["classes"].append(entry)
                    fsc_report["classes"].append({**entry, "fsc": curve.tolist()})
                    write_volume(folder / f"{name}_average.mrc", average, voxel_size)
                    half_maps = [f"{name}_half{half}.mrc" for half in (1, 2)] if members.size >= 2 else None
                    for half_name, half in zip(half_maps or [], halves):
                        write_volume(folder / half_name, half, voxel_size)
                    (folder / f"{name}_fsc.json").write_text(
                        json.dumps(
                            json_ready(
                                {
                                    **entry,
                                    "half_maps": half_maps,
                                    "voxel_size_a": voxel_size,
                                    "frequency_per_a": fsc_report["frequency_per_a"],
                                    "fsc": curve.tolist(),
                                }
                            ),
                            indent=2,
                            allow_nan=False,
                        )
                        + "\n"
                    )
                    shown = torch.as_tensor(members[:15], device=classes.rotations.device)
                    aligned = align_to_reference_frame(
                        volumes[shown], classes.rotations[shown], classes.shifts_xyz[shown]
                    )
                    save_class_montage(
                        average,
                        aligned,
                        folder / f"{name}_montage.png",
                        title=f"class {k + 1}: {members.size} particles",
                    )
                save_fsc_plot(fsc_report, folder / "fsc.png")
                save_montage(
                    display,
                    folder / "tomogram_classes.png",
                    picks_xyz=coordinates,
                    pick_radius_voxels=max(1.0, radius_voxels),
                    pick_classes=labels + 1,
                    title=f"{len(table)} picks coloured by class",
                )
                record["result"] = f"{len(classes.averages)} class averages, FSC curves, figures"
        del display
        summary["timings_s"] = {s["step"]: s["seconds"] for s in steps}
        write_report(summary, folder)
        (folder / "summary.json").write_text(
            json.dumps(json_ready(summary), indent=2, allow_nan=False) + "\n"
        )
        (folder / "pipeline.yaml").write_text(config_to_yaml(config))
        shutil.rmtree(work)
    return PipelineResult(
        out_dir=out_dir,
        particles=table,
        classes=summary["classes"],
        voxel_size_a=voxel_size,
        box_size=box,
        tilt_range_deg=tilt_range,
        n_pick_tiles=n_tiles,
        timings_s=summary["timings_s"],
        summary=summary,
    )
