"""Slice montages of a volume (like AITom's ``cub_img``), with picked particles drawn as circles; FSC plots.

Layout: a top row with the central XY, XZ and YZ slices, then a grid of XY slices evenly spaced through Z.
Slices are shown with ``origin="lower"`` (y, or z, grows upwards) and a grey scale from the 1st to the 99th
percentile of the displayed voxels. A pick at (x, y, z) with radius r appears on every slice within r of
its centre as a circle of radius ``sqrt(r**2 - d**2)`` (the sphere's cross-section at distance d).
matplotlib is imported inside the function and drawn with its Agg canvas (no display needed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from aitom.errors import InputError
from aitom.io.atomic import atomic_output, check_output_path

PANEL_INCHES = 2.2
DPI = 100
PICK_COLOUR = "#ff2f2f"


def slice_positions(n_sections: int, n_slices: int) -> list[int]:
    """Indices of ``min(n_slices, n_sections)`` sections evenly spaced through ``n_sections``.

    Slice k is the centre of the k-th of n equal parts: ``floor((k + 0.5) * n_sections / n)``.

    Example:
        >>> slice_positions(32, 4)
        [4, 12, 20, 28]
    """
    if n_slices < 1:
        raise ValueError(f"n_slices must be at least 1, got {n_slices}")
    n = min(n_slices, n_sections)
    return [int((k + 0.5) * n_sections / n) for k in range(n)]


def save_montage(
    volume: torch.Tensor | np.ndarray,
    path: str | Path,
    *,
    picks_xyz: np.ndarray | torch.Tensor | Sequence[Sequence[float]] | None = None,
    pick_radius_voxels: float = 8.0,
    pick_classes: np.ndarray | torch.Tensor | Sequence[int] | None = None,
    n_slices: int = 16,
    title: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Save a slice montage of a volume ``(Z, Y, X)`` as an image (format from the suffix, e.g. ``.png``).

    Args:
        volume: the volume, ``(Z, Y, X)``.
        path: output image; written atomically, parent folders created.
        picks_xyz: ``(N, 3)`` particle centres (x, y, z) in voxels, drawn as circles.
        pick_radius_voxels: radius of the sphere drawn around each pick, voxels.
        pick_classes: ``(N,)`` class of each pick: one colour per class and a legend.
        n_slices: number of XY slices in the grid (at most Z).
        title: figure title.
        overwrite: replace an existing file.

    Returns:
        The path written.

    Raises:
        InputError: the output exists and ``overwrite`` is false, or its format is not an image format.
        ValueError: the volume is not 3-D, the picks are not ``(N, 3)``, or the classes do not match them.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    array = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
    if array.ndim != 3:
        raise ValueError(f"expected a (Z, Y, X) volume, got shape {array.shape}")
    if pick_radius_voxels <= 0:
        raise ValueError(f"pick_radius_voxels must be positive, got {pick_radius_voxels}")
    picks, classes = _picks(picks_xyz, pick_classes)
    path = check_output_path(path, overwrite)
    image_format = path.suffix.lstrip(".").lower()
    if image_format not in FigureCanvasAgg.get_supported_filetypes():
        raise InputError(
            f"cannot write images of type '{path.suffix}' (use .png, .jpg, .tif, .pdf or .svg)", path
        )

    nz, ny, nx = array.shape
    cz, cy, cx = nz // 2, ny // 2, nx // 2
    z_positions = slice_positions(nz, n_slices)
    # (image, title, axis normal to the slice (0 x, 1 y, 2 z), slice index, pick axes shown across, up)
    panels = [
        (array[cz], f"XY  z={cz}", 2, cz, (0, 1)),
        (array[:, cy, :], f"XZ  y={cy}", 1, cy, (0, 2)),
        (array[:, :, cx], f"YZ  x={cx}", 0, cx, (1, 2)),
    ] + [(array[z], f"z={z}", 2, z, (0, 1)) for z in z_positions]
    vmin, vmax = _contrast_limits([panel[0] for panel in panels])
    class_values = sorted(set(classes.tolist())) if classes is not None else []
    colours = _class_colours(class_values)

    n_columns = math.ceil(math.sqrt(len(z_positions)))
    n_rows = math.ceil(len(z_positions) / n_columns)
    width = max(3, n_columns) * PANEL_INCHES
    figure = Figure(figsize=(width, (n_rows + 1) * PANEL_INCHES + (0.4 if title else 0.0)), dpi=DPI)
    FigureCanvasAgg(figure)
    layout = figure.add_gridspec(
        2, 1, height_ratios=[1, n_rows], left=0.02, right=0.98, bottom=0.02, top=0.9 if title else 0.96
    )
    top = layout[0].subgridspec(1, 3)
    grid = layout[1].subgridspec(n_rows, n_columns)
    cells = [top[0, i] for i in range(3)]
    cells += [grid[i // n_columns, i % n_columns] for i in range(len(z_positions))]
    for cell, (image, label, fixed_axis, index, plane_axes) in zip(cells, panels):
        axes = figure.add_subplot(cell)
        axes.imshow(image, cmap="gray", vmin=vmin, vmax=vmax, origin="lower", interpolation="nearest")
        axes.set_title(label, fontsize=8)
        axes.set_axis_off()
        if picks is not None:
            _draw_picks(axes, picks, classes, colours, pick_radius_voxels, fixed_axis, index, plane_axes)
    if title:
        figure.suptitle(title, fontsize=10)
    if class_values:
        from matplotlib.lines import Line2D

        handles = [
            Line2D([], [], linestyle="none", marker="o", mfc="none", color=colours[k], label=f"class {k}")
            for k in class_values
        ]
        figure.legend(handles=handles, loc="upper right", fontsize=8, frameon=False)
    with atomic_output(path, overwrite) as temporary:
        figure.savefig(temporary, format=image_format, dpi=DPI)
    return path


def _picks(
    picks_xyz: np.ndarray | torch.Tensor | Sequence[Sequence[float]] | None,
    pick_classes: np.ndarray | torch.Tensor | Sequence[int] | None,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    if picks_xyz is None:
        if pick_classes is not None:
            raise ValueError("pick_classes given without picks_xyz")
        return None, None
    picks = _numpy(picks_xyz).astype(np.float64)
    if picks.size == 0:
        picks = picks.reshape(0, 3)
    if picks.ndim != 2 or picks.shape[1] != 3:
        raise ValueError(f"picks_xyz must be (N, 3), got {picks.shape}")
    if pick_classes is None:
        return picks, None
    classes = _numpy(pick_classes).astype(np.int64)
    if classes.shape != (picks.shape[0],):
        raise ValueError(f"pick_classes must have shape ({picks.shape[0]},), got {classes.shape}")
    return picks, classes


def _numpy(values: np.ndarray | torch.Tensor | Sequence) -> np.ndarray:
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


def _contrast_limits(images: list[np.ndarray]) -> tuple[float, float]:
    """1st and 99th percentiles of the finite displayed voxels (a flat image gets a unit-wide window)."""
    values = np.concatenate([np.ravel(image) for image in images]).astype(np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(values, [1.0, 99.0])
    if high <= low:
        return float(low) - 0.5, float(low) + 0.5
    return float(low), float(high)


def _class_colours(class_values: list[int]) -> dict[int, tuple[float, ...]]:
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    return {value: palette(i % 10) for i, value in enumerate(class_values)}


def _draw_picks(
    axes,
    picks: np.ndarray,
    classes: np.ndarray | None,
    colours: dict[int, tuple[float, ...]],
    radius: float,
    fixed_axis: int,
    index: int,
    plane_axes: tuple[int, int],
) -> None:
    """Circles where the pick spheres cut this slice (the plane ``picks[:, fixed_axis] == index``)."""
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Circle

    distance = picks[:, fixed_axis] - index
    visible = np.flatnonzero(np.abs(distance) < radius)
    if visible.size == 0:
        return
    circles = [
        Circle((picks[i, plane_axes[0]], picks[i, plane_axes[1]]), math.sqrt(radius**2 - distance[i] ** 2))
        for i in visible
    ]
    edge = [PICK_COLOUR if classes is None else colours[int(classes[i])] for i in visible]
    collection = PatchCollection(circles, facecolors="none", edgecolors=edge, linewidths=1.2)
    axes.add_collection(collection, autolim=False)


def save_fsc_plot(report: dict, path: Path, *, ylabel: str = "half-set FSC", overwrite: bool = False) -> None:
    """PNG of the FSC of every class against frequency (1/Å), with the 0.5 and 0.143 thresholds.

    Args:
        report: ``{"frequency_per_a": [...], "classes": [{"class", "particles", "fsc": [...]}, ...]}`` (the
            ``fsc.json`` of ``aitom average`` and ``aitom pipeline``); an entry with a ``label`` is named by
            it instead of its class and particle count. With ``gold_standard_shared_to_a`` (Å; or else
            ``gold_standard_lowpass_a``) the frequencies below it, where gold-standard half sets share their
            start, are shaded.
        path: the PNG file, written atomically.
        ylabel: label of the FSC axis.
        overwrite: replace an existing file (otherwise InputError).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 3.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for entry in report["classes"]:
        label = entry.get("label") or f"class {entry['class']} ({entry['particles']})"
        # from the first shell: the k = 0 "shell" is one coefficient, the maps' means, whose FSC is ±1
        start = 1 if report["frequency_per_a"][0] == 0 else 0
        axes.plot(report["frequency_per_a"][start:], entry["fsc"][start:], label=label)
    for threshold in (0.5, 0.143):
        axes.axhline(threshold, color="grey", linestyle=":", linewidth=0.8)
    shared_to_a = report.get("gold_standard_shared_to_a") or report.get("gold_standard_lowpass_a")
    if shared_to_a:
        axes.axvspan(
            0.0,
            1.0 / shared_to_a,
            color="0.9",
            zorder=0,
            label="half sets' shared start",
        )
    axes.set_xlabel("frequency (1/Å)")
    axes.set_ylabel(ylabel)
    axes.set_ylim(-0.1, 1.05)
    axes.legend(fontsize=7)
    figure.tight_layout()
    with atomic_output(path, overwrite) as temporary:
        figure.savefig(temporary, format="png")
