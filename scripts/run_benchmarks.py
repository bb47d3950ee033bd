"""Run every ``scripts/bench_*.py`` and collect their figures and Markdown tables into one Markdown file.

Each benchmark runs in its own subprocess as ``python scripts/bench_NAME.py --out TMP.md [--json TMP.json]
[--quick]`` (same Python, same environment, so ``OMP_NUM_THREADS`` carries over). The report starts with the
machine (CPU count, torch version and threads, Python, platform), then a summary table of every benchmark's
headline figures with their baselines and ratios, then one section per benchmark: its tables, or, when it
fails, its exit code (or its time-out, ``--timeout``) and the end of its error output. A failing benchmark
does not stop the others; the exit code is 1 when any failed.

The contract a ``bench_*.py`` script follows:

* ``--out FILE`` (required): write its Markdown tables to FILE and exit 0.
* ``--json FILE`` (optional; passed when the script's source mentions ``"--json"``): write its headline
  figures to FILE as a JSON list of objects ``{"benchmark": str, "figure": str, "value": float, "unit": str,
  "baseline": str, "baseline_value": float | null, "ratio": float | null}``: ``figure`` says what was
  measured and on what, ``baseline`` names the reference measured in the same run (``""`` if none) and
  ``ratio = value / baseline_value`` (null without a baseline). :func:`figure_row` makes one row and
  :func:`write_figures` writes them (``from run_benchmarks import figure_row, write_figures`` works in a
  script of this folder: Python puts the script's folder on ``sys.path``). Non-finite numbers become null.
* ``--quick`` (optional; passed with ``run_benchmarks.py --quick`` when the source mentions ``"--quick"``):
  a reduced run of a minute or two, for smoke-testing the benchmark.

The scripts of this folder share the checks of their options and outputs from here: :func:`whole_number` and
:func:`real_number` (``type=`` of an option: an impossible value is a usage error, exit code 2),
:func:`check_outputs` (an output path that can never be written is refused before any work),
:func:`write_output` (written atomically: an interrupted run leaves no half-written file) and
:func:`reports_input_errors` (an :class:`aitom.errors.InputError` becomes one line on stderr and exit code 2).

    python scripts/run_benchmarks.py --out bench_results.md       # what `make bench` runs
    python scripts/run_benchmarks.py --only simulate --out bench_simulate.md
    python scripts/run_benchmarks.py --quick --out bench_quick.md
"""

from __future__ import annotations

import argparse
import datetime
import functools
import inspect
import json
import math
import operator
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aitom.commands.shared import refuse_path_under_a_file
from aitom.errors import InputError
from aitom.io import atomic_output, check_output_path

SCRIPTS = Path(__file__).resolve().parent
ERROR_TAIL_LINES = 30
FIGURE_KEYS = ("benchmark", "figure", "value", "unit", "baseline", "baseline_value", "ratio")


def whole_number(minimum: int = 1, maximum: int | None = None) -> Callable[[str], int]:
    """An option's ``type``: a whole number in ``[minimum, maximum]`` (argparse reports anything else)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            limits = f"at least {minimum}" if maximum is None else f"from {minimum} to {maximum}"
            raise argparse.ArgumentTypeError(f"must be {limits}, got {value}")
        return value

    return parse


def real_number(
    above: float | None = None, at_least: float | None = None, at_most: float | None = None
) -> Callable[[str], float]:
    """An option's ``type``: a finite number ``> above``, ``>= at_least`` and ``<= at_most`` (those given)."""
    rules = [
        (bound, sign, test)
        for bound, sign, test in (
            (above, ">", operator.gt),
            (at_least, ">=", operator.ge),
            (at_most, "<=", operator.le),
        )
        if bound is not None
    ]
    wanted = "".join(f" and {sign} {bound:g}" for bound, sign, _ in rules).removeprefix(" and")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not math.isfinite(value) or not all(test(value, bound) for bound, _, test in rules):
            raise argparse.ArgumentTypeError(f"must be a finite number{wanted}, got {text}")
        return value

    return parse


def check_outputs(*paths: Path | None) -> None:
    """Refuse, before any work, an output file that is a folder or lies under a file (None: not asked for).

    Raises:
        InputError: naming the path.
    """
    for path in paths:
        if path is not None:
            check_output_path(path, overwrite=True)
            refuse_path_under_a_file(path)


def write_output(path: Path | None, text: str) -> None:
    """Write ``text`` to ``path`` (None: nothing) atomically, replacing it; its folders are created."""
    if path is None:
        return
    with atomic_output(path, overwrite=True) as temporary:
        temporary.write_text(text)


def reports_input_errors(main: Callable[..., int]) -> Callable[..., int]:
    """Decorate a script's ``main``: an :class:`InputError` becomes ``SCRIPT: error: message`` on stderr and
    exit code 2, without a traceback."""

    @functools.wraps(main)
    def guarded(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except InputError as error:
            print(f"{Path(inspect.getfile(main)).name}: error: {error}", file=sys.stderr)
            return 2

    return guarded


def mean_and_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value) of a benchmark's repeated runs."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def figure_row(
    benchmark: str,
    figure: str,
    value: float,
    unit: str,
    baseline: str = "",
    baseline_value: float | None = None,
) -> dict:
    """One headline figure of a benchmark (the ``--json`` contract); ``ratio = value / baseline_value``."""
    value = float(value)
    baseline_value = None if baseline_value is None else float(baseline_value)
    ratio = None
    if baseline_value is not None and baseline_value != 0 and math.isfinite(baseline_value):
        ratio = value / baseline_value
    return {
        "benchmark": benchmark,
        "figure": figure,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "baseline_value": baseline_value,
        "ratio": ratio,
    }


def _finite_or_none(value: object) -> object:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_figures(path: Path | None, rows: Sequence[dict]) -> None:
    """Write the headline-figure rows (:func:`figure_row`) as a JSON list to ``path`` (None: do nothing)."""
    if path is None:
        return
    clean = [{key: _finite_or_none(value) for key, value in row.items()} for row in rows]
    write_output(path, json.dumps(clean, indent=2, ensure_ascii=False) + "\n")


def read_figures(path: Path) -> list[dict]:
    """The rows of a ``--json`` file, checked against the contract; ValueError if it breaks it."""
    rows = json.loads(path.read_text())
    if not isinstance(rows, list):
        raise ValueError(f"expected a JSON list of figures, got {type(rows).__name__}")
    for row in rows:
        if not isinstance(row, dict) or not {"benchmark", "figure", "value", "unit"} <= row.keys():
            raise ValueError(f"a figure needs benchmark, figure, value and unit, got {row!r}")
        if row["value"] is not None and not isinstance(row["value"], int | float):
            raise ValueError(f"value must be a number or null, got {row['value']!r}")
    return [{key: row.get(key, "" if key == "baseline" else None) for key in FIGURE_KEYS} for row in rows]


def benchmark_scripts(folder: Path = SCRIPTS) -> dict[str, Path]:
    """Benchmark name (``bench_NAME.py`` -> ``NAME``) -> script path, sorted by name."""
    return {path.stem.removeprefix("bench_"): path for path in sorted(folder.glob("bench_*.py"))}


def machine_description() -> str:
    import torch

    threads = torch.get_num_threads()
    return (
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC\n"
        f"- CPUs: {os.cpu_count()} ({platform.processor() or platform.machine()})\n"
        f"- torch {torch.__version__}, {threads} CPU threads (OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}), CUDA: "
        f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}\n"
        f"- Python {platform.python_version()}, {platform.platform()}\n"
    )


@dataclass
class BenchmarkResult:
    """What one benchmark run gave: success, its Markdown section body and its headline figures."""

    ok: bool
    body: str
    figures: list[dict] = field(default_factory=list)


def run_benchmark(name: str, script: Path, timeout_s: float, quick: bool = False) -> BenchmarkResult:
    """Run one benchmark (killed after ``timeout_s`` seconds) and collect its tables and figures."""
    source = script.read_text()
    with tempfile.TemporaryDirectory() as folder:
        table_path = Path(folder) / f"{name}.md"
        json_path = Path(folder) / f"{name}.json"
        command = [sys.executable, str(script), "--out", str(table_path)]
        if '"--json"' in source:
            command += ["--json", str(json_path)]
        if quick and '"--quick"' in source:
            command.append("--quick")
        start = time.perf_counter()
        # a session of its own, so that a time-out stops the benchmark's own subprocesses too
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        try:
            stdout, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            return BenchmarkResult(False, failure(f"timed out after {timeout_s:g} s", stderr or stdout))
        seconds = time.perf_counter() - start
        if process.returncode == 0 and table_path.exists():
            figures = []
            if json_path.exists():
                try:
                    figures = read_figures(json_path)
                except ValueError as error:  # json.JSONDecodeError is a ValueError
                    return BenchmarkResult(False, failure(f"its --json file is invalid: {error}", ""))
            note = "" if not quick or "--quick" in command else " (no --quick: full run)"
            body = f"{table_path.read_text().rstrip()}\n\n_{script.name}: {seconds:.0f} s{note}._\n"
            return BenchmarkResult(True, body, figures)
    problem = (
        f"exit code {process.returncode}"
        if process.returncode != 0
        else "exited 0 but wrote no table to --out"
    )
    return BenchmarkResult(False, failure(f"{problem}, after {seconds:.0f} s", stderr or stdout))


def failure(problem: str, output: str) -> str:
    """The Markdown section body of a failed benchmark: the problem and the end of its output."""
    tail = "\n".join(output.rstrip().splitlines()[-ERROR_TAIL_LINES:])
    return f"**FAILED** ({problem}). End of its output:\n\n```\n{tail}\n```\n"


def _number(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3g}" if abs(value) < 1e5 else f"{value:.3e}"


def summary_table(figures: Sequence[dict]) -> str:
    """One Markdown table of every headline figure: value, baseline, baseline value and ratio."""
    lines = [
        "| benchmark | figure | value | unit | baseline (same run) | baseline value "
        "| ratio (value / baseline) |",
        "|---|---|---:|---|---|---:|---:|",
    ]
    for row in figures:
        cells = [
            row["benchmark"],
            row["figure"],
            _number(row["value"]),
            row["unit"] or "",
            row["baseline"] or "—",
            _number(row["baseline_value"]),
            _number(row["ratio"]),
        ]
        lines.append("| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


@reports_input_errors
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench_results.md"),
        help="Markdown report (default bench_results.md)",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="run only this benchmark (scripts/bench_NAME.py); may be repeated",
    )
    parser.add_argument(
        "--timeout",
        type=real_number(above=0.0),
        default=900.0,
        help="seconds before a benchmark is stopped (default 900)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="pass --quick to the benchmarks that support it (smoke test)"
    )
    parser.add_argument(
        "--scripts", type=Path, default=SCRIPTS, help="folder of the bench_*.py scripts (default: this one)"
    )
    args = parser.parse_args(argv)
    check_outputs(args.out)
    scripts = benchmark_scripts(args.scripts)
    if not scripts:
        raise InputError("no bench_*.py script in this folder (--scripts)", args.scripts)
    unknown = sorted(set(args.only or ()) - scripts.keys())
    if unknown:
        parser.error(f"no benchmark {', '.join(unknown)}; choose from {', '.join(scripts)}")
    selected = {name: scripts[name] for name in args.only} if args.only else scripts

    sections = []
    figures: list[dict] = []
    failed = []
    for name, script in selected.items():
        print(f"running {script.name} ...", flush=True)
        result = run_benchmark(name, script, args.timeout, quick=args.quick)
        if not result.ok:
            failed.append(name)
            print(f"{script.name} FAILED", flush=True)
        figures += result.figures
        sections.append(f"## {name} (`{script.name}`)\n\n{result.body}")
    summary = summary_table(figures) if figures else "No benchmark reported figures (`--json`).\n"
    header = ["# Benchmarks\n", machine_description(), "## Summary\n", summary]
    if failed:
        header.append(f"**{len(failed)} of {len(selected)} benchmarks failed:** {', '.join(failed)}\n")

    write_output(args.out, "\n".join(header + sections))
    print(f"wrote {args.out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
