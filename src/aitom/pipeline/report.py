"""The pipeline's figures and report: class montages, FSC curves, report.md and report.html."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import torch

__all__ = ["count_of", "save_class_montage", "write_report"]


def count_of(number: int, noun: str) -> str:
    """``"1 class"``, ``"3 classes"``: the number and the noun, plural unless 1 (+es after s, else +s)."""
    plural = noun + ("es" if noun.endswith("s") else "s")
    return f"{number} {noun if number == 1 else plural}"


MONTAGE_MEMBERS = 15


def _resolution(value: float | None) -> str:
    """A resolution in Å with one decimal, or "–" where it is undefined (None)."""
    return "–" if value is None else f"{value:.1f}"


def _legend(summary: dict) -> str:
    """What the class table's numbers mean, with their units."""
    return (
        "particles: picks in the class. FSC 0.5 / FSC 0.143: resolution in Å (smaller is better) where the "
        "Fourier shell correlation of the averages of the class's even and odd particles (unmasked) first "
        f"drops below 0.5 / 0.143; at best Nyquist, {2 * summary['voxel_size_a']:g} Å; – where undefined (a "
        "class of one particle, or a correlation below the threshold from the lowest frequency on)."
    )


def save_class_montage(
    average: torch.Tensor, members: torch.Tensor, path: Path, *, title: str, n_members: int = MONTAGE_MEMBERS
) -> Path:
    """PNG: the average's central XY, XZ and YZ slices, then the central XY slices of up to ``n_members``
    members (``(M, S, S, S)``, already brought to the average's frame)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from aitom.io import atomic_output

    average = average.detach().cpu().numpy()
    members = members[:n_members].detach().cpu().numpy()
    c = average.shape[-1] // 2
    top = [(average[c], "average XY"), (average[:, c, :], "average XZ"), (average[:, :, c], "average YZ")]
    below = [(member[c], f"member {i + 1}") for i, member in enumerate(members)]
    columns = 5
    rows = 1 + -(-len(below) // columns)
    figure = Figure(figsize=(columns * 1.4, rows * 1.5 + 0.3), dpi=100)
    FigureCanvasAgg(figure)
    cells = [(0, i) for i in range(3)] + [(1 + i // columns, i % columns) for i in range(len(below))]
    for (row, column), (image, label) in zip(cells, top + below):
        axes = figure.add_subplot(rows, columns, row * columns + column + 1)
        low, high = np.percentile(image, [1, 99]) if image.std() > 0 else (image.min() - 1, image.max() + 1)
        axes.imshow(image, cmap="gray", origin="lower", vmin=low, vmax=high, interpolation="nearest")
        axes.set_title(label, fontsize=7)
        axes.set_axis_off()
    figure.suptitle(title, fontsize=9)
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png")
    return path


def _markdown(summary: dict) -> str:
    lines = [
        "# aitom pipeline report",
        "",
        f"Tomogram: `{summary['tomogram']}` — {' × '.join(map(str, summary['shape_zyx']))} voxels (Z, Y, X) "
        f"at {summary['voxel_size_a']:g} Å.",
        "",
        "| step | result | time (s) |",
        "|---|---|---:|",
    ]
    lines += [f"| {step['step']} | {step['result']} | {step['seconds']:.1f} |" for step in summary["steps"]]
    lines += ["", "Times are wall-clock seconds. Settings: [pipeline.yaml](pipeline.yaml).", ""]
    if summary.get("warnings"):  # absent from the summaries of older versions
        lines += ["**Warnings** (doubtful results):", ""]
        lines += [f"- {warning}" for warning in summary["warnings"]]
        lines.append("")
    if summary["n_particles"] == 0:
        lines += ["**No particles were found**: `particles.star` is an empty table.", ""]
        return "\n".join(lines)
    lines += [
        f"{summary['n_particles']} particles in {count_of(len(summary['classes']), 'class')} "
        f"({summary['classify_method']}), "
        f"box {summary['box_size']}³ voxels ({summary['box_size'] * summary['voxel_size_a']:g} Å), missing "
        f"wedge {summary['tilt_range_deg'][0]:g}° to {summary['tilt_range_deg'][1]:g}° (tilt axis Y).",
        "",
    ]
    templates = "template" in summary["classes"][0]
    lines += [
        "| class |" + (" template |" if templates else "") + " particles | FSC 0.5 (Å) | FSC 0.143 (Å) "
        "| average | montage |",
        "|---:|" + ("---|" if templates else "") + "---:|---:|---:|---|---|",
    ]
    for entry in summary["classes"]:
        name = f"class_{entry['class']:02d}"
        template = f" `{entry['template']}` |" if templates else ""
        lines.append(
            f"| {entry['class']} |{template} {entry['particles']} | {_resolution(entry['fsc_0.5_a'])} "
            f"| {_resolution(entry['fsc_0.143_a'])} "
            f"| [{name}_average.mrc]({name}_average.mrc) | [{name}_montage.png]({name}_montage.png) |"
        )
    lines += ["", _legend(summary)]
    if "structural_correlations" in summary:
        matrix = summary["structural_correlations"]
        lines += [
            "",
            "Estimated correlation of the classes' noise-free structures (superposed averages corrected by "
            "each class's half-set reproducibility; pairs at or above "
            f"{summary['merge_threshold']:g} were merged):",
            "",
            "| class | " + " | ".join(str(k + 1) for k in range(len(matrix))) + " |",
            "|---:|" + "---:|" * len(matrix),
        ]
        lines += [
            f"| {k + 1} | " + " | ".join(f"{value:.2f}" for value in row) + " |"
            for k, row in enumerate(matrix)
        ]
    lines += [
        "",
        "Half-set FSC of each class average (even/odd halves, unmasked):",
        "",
        "![FSC](fsc.png)",
        "",
        "Picks coloured by class on the (denoised) tomogram:",
        "",
        "![tomogram with picks](tomogram_classes.png)",
        "",
    ]
    for entry in summary["classes"]:
        name = f"class_{entry['class']:02d}"
        lines += [
            f"Class {entry['class']}: average and aligned members",
            "",
            f"![{name}]({name}_montage.png)",
            "",
        ]
    return "\n".join(lines)


def _html(summary: dict) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(s['step'])}</td><td>{html.escape(s['result'])}</td><td>{s['seconds']:.1f}</td></tr>"
        for s in summary["steps"]
    )
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>aitom pipeline report</title></head><body>",
        "<h1>aitom pipeline report</h1>",
        f"<p>Tomogram: <code>{html.escape(summary['tomogram'])}</code>, "
        f"voxel {summary['voxel_size_a']:g} Å</p>",
        f"<table border='1'><tr><th>step</th><th>result</th><th>time (s)</th></tr>{rows}</table>",
        "<p>Times are wall-clock seconds. Settings: <a href='pipeline.yaml'>pipeline.yaml</a>.</p>",
    ]
    if summary.get("warnings"):  # absent from the summaries of older versions
        items = "".join(f"<li>{html.escape(warning)}</li>" for warning in summary["warnings"])
        parts.append(f"<p><b>Warnings</b> (doubtful results):</p><ul>{items}</ul>")
    if summary["n_particles"] == 0:
        parts.append("<p><b>No particles were found</b>: particles.star is an empty table.</p>")
    else:
        templates = "template" in summary["classes"][0]
        class_rows = "".join(
            f"<tr><td>{c['class']}</td>"
            + (f"<td>{html.escape(c['template'])}</td>" if templates else "")
            + f"<td>{c['particles']}</td><td>{_resolution(c['fsc_0.5_a'])}</td>"
            f"<td>{_resolution(c['fsc_0.143_a'])}</td></tr>"
            for c in summary["classes"]
        )
        parts += [
            "<table border='1'><tr><th>class</th>"
            + ("<th>template</th>" if templates else "")
            + "<th>particles</th><th>FSC 0.5 (Å)</th><th>FSC 0.143 (Å)</th>"
            f"</tr>{class_rows}</table>",
            f"<p>{html.escape(_legend(summary))}</p>",
        ]
        if "structural_correlations" in summary:
            matrix = summary["structural_correlations"]
            header = "".join(f"<th>{k + 1}</th>" for k in range(len(matrix)))
            body = "".join(
                f"<tr><th>{k + 1}</th>" + "".join(f"<td>{value:.2f}</td>" for value in row) + "</tr>"
                for k, row in enumerate(matrix)
            )
            parts += [
                "<p>Estimated correlation of the classes' noise-free structures (pairs at or above "
                f"{summary['merge_threshold']:g} were merged):</p>",
                f"<table border='1'><tr><th>class</th>{header}</tr>{body}</table>",
            ]
        parts.append("<img src='fsc.png' alt='FSC'><br><img src='tomogram_classes.png' alt='picks by class'>")
        parts += [
            f"<h3>Class {c['class']}</h3><img src='class_{c['class']:02d}_montage.png'>"
            for c in summary["classes"]
        ]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(summary: dict, folder: Path) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` (relative links to the figures) from the run's summary."""
    markdown, page = folder / "report.md", folder / "report.html"
    markdown.write_text(_markdown(summary) + "\n")
    page.write_text(_html(summary))
    return markdown, page
