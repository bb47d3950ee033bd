"""`scripts/run_benchmarks.py` (`make bench`) on fake `bench_*.py` scripts: tables, figures, failures."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "run_benchmarks.py"


def load_runner():
    spec = importlib.util.spec_from_file_location("run_benchmarks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("run_benchmarks", module)
    spec.loader.exec_module(module)
    return module


runner = load_runner()

# A benchmark that follows the contract through the runner's own helpers, with --quick.
FAST = """
import argparse, sys
from pathlib import Path
sys.path.insert(0, {runner_folder!r})
from run_benchmarks import figure_row, write_figures

parser = argparse.ArgumentParser()
parser.add_argument("--out", type=Path)
parser.add_argument("--json", type=Path)
parser.add_argument("--quick", action="store_true")
args = parser.parse_args()
args.out.write_text("| a | b |\\n|---|---|\\n| 1 | 2 |\\n")
speed = 30.0 if args.quick else 40.0
write_figures(args.json, [
    figure_row("fast", "items/s", speed, "items/s", "naive loop", 10.0),
    figure_row("fast", "error", float("nan"), "°"),
])
"""

# An older benchmark: only --out, no figures.
PLAIN = """
import argparse
from pathlib import Path
parser = argparse.ArgumentParser()
parser.add_argument("--out", type=Path)
args = parser.parse_args()
args.out.write_text("plain table\\n")
"""

BROKEN = """
import sys
print("something went wrong", file=sys.stderr)
sys.exit(3)
"""


@pytest.fixture
def scripts(tmp_path) -> Path:
    folder = tmp_path / "scripts"
    folder.mkdir()
    (folder / "bench_fast.py").write_text(FAST.format(runner_folder=str(SCRIPT.parent)))
    (folder / "bench_plain.py").write_text(PLAIN)
    return folder


def test_figure_row_ratio_is_value_over_baseline():
    row = runner.figure_row("b", "f", 6.0, "s", "reference", 4.0)
    assert row == {
        "benchmark": "b",
        "figure": "f",
        "value": 6.0,
        "unit": "s",
        "baseline": "reference",
        "baseline_value": 4.0,
        "ratio": 1.5,
    }
    assert runner.figure_row("b", "f", 6.0, "s")["ratio"] is None
    assert runner.figure_row("b", "f", 6.0, "s", "zero", 0.0)["ratio"] is None


def test_mean_and_sd_of_repeated_runs_match_numpy():
    import numpy as np

    mean_and_sd = runner.mean_and_sd
    values = [0.617, 0.987, 0.823]
    mean, sd = mean_and_sd(values)
    assert math.isclose(mean, np.mean(values)) and math.isclose(sd, np.std(values, ddof=1))
    assert mean_and_sd([0.5]) == (0.5, 0.0)


def test_collects_every_table_and_one_summary_of_the_figures(scripts, tmp_path):
    out = tmp_path / "results.md"
    assert runner.main(["--scripts", str(scripts), "--out", str(out)]) == 0
    text = out.read_text()
    summary = text[text.index("## Summary") : text.index("## fast")]
    assert "| fast | items/s | 40 | items/s | naive loop | 10 | 4 |" in summary
    # a NaN figure is written as null and shown as a dash, without a baseline or ratio
    assert "| fast | error | — | ° | — | — | — |" in summary
    assert "| 1 | 2 |" in text and "plain table" in text
    assert text.index("## fast") < text.index("## plain")


def test_quick_is_passed_only_to_the_scripts_that_take_it(scripts, tmp_path):
    out = tmp_path / "results.md"
    assert runner.main(["--scripts", str(scripts), "--out", str(out), "--quick"]) == 0
    text = out.read_text()
    assert "| fast | items/s | 30 |" in text
    assert "bench_plain.py" in text and "(no --quick: full run)" in text


def test_a_failing_benchmark_is_reported_and_does_not_stop_the_others(scripts, tmp_path):
    (scripts / "bench_broken.py").write_text(BROKEN)
    out = tmp_path / "results.md"
    assert runner.main(["--scripts", str(scripts), "--out", str(out)]) == 1
    text = out.read_text()
    assert "**FAILED** (exit code 3" in text and "something went wrong" in text
    assert "1 of 3 benchmarks failed:** broken" in text
    assert "| fast | items/s | 40 |" in text


def test_an_invalid_figures_file_fails_that_benchmark(scripts, tmp_path):
    (scripts / "bench_fast.py").write_text(
        textwrap.dedent(
            """
            import argparse
            from pathlib import Path
            parser = argparse.ArgumentParser()
            parser.add_argument("--out", type=Path)
            parser.add_argument("--json", type=Path)
            args = parser.parse_args()
            args.out.write_text("table")
            args.json.write_text('[{"figure": "no benchmark name", "value": 1}]')
            """
        )
    )
    out = tmp_path / "results.md"
    assert runner.main(["--scripts", str(scripts), "--out", str(out), "--only", "fast"]) == 1
    assert "its --json file is invalid" in out.read_text()


def test_unknown_benchmark_name_is_a_usage_error(scripts, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        runner.main(["--scripts", str(scripts), "--out", str(tmp_path / "r.md"), "--only", "nope"])
    assert exit_info.value.code == 2


def test_write_and_read_figures_round_trip(tmp_path):
    path = tmp_path / "figures.json"
    rows = [runner.figure_row("b", "f", 2.0, "s", "base", 8.0), runner.figure_row("b", "g", math.inf, "s")]
    runner.write_figures(path, rows)
    assert json.loads(path.read_text())[1]["value"] is None
    assert runner.read_figures(path)[0]["ratio"] == 0.25
    runner.write_figures(None, rows)  # no path: nothing written, no error


def test_every_project_benchmark_takes_out():
    for name, script in runner.benchmark_scripts().items():
        source = script.read_text()
        assert '"--out"' in source, name


# A benchmark that leaves a mark when it runs.
MARKER = """
import argparse
from pathlib import Path
parser = argparse.ArgumentParser()
parser.add_argument("--out", type=Path)
args = parser.parse_args()
(Path(__file__).parent / "ran").write_text("yes")
args.out.write_text("table")
"""


@pytest.mark.parametrize("where", ["under_a_file", "a_folder"])
def test_an_unwritable_report_is_refused_before_any_benchmark_runs(tmp_path, capsys, where):
    folder = tmp_path / "scripts"
    folder.mkdir()
    (folder / "bench_mark.py").write_text(MARKER)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    out = blocker / "results.md" if where == "under_a_file" else tmp_path
    assert runner.main(["--scripts", str(folder), "--out", str(out)]) == 2
    assert not (folder / "ran").exists()
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"run_benchmarks.py: error: {out}: ") and "\n" not in error
    assert ("is a file" if where == "under_a_file" else "is a folder") in error


def test_number_options_refuse_impossible_values():
    import argparse

    count = runner.whole_number(2, 10)
    assert count("3") == 3
    for text in ("1", "11", "2.5", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            count(text)
    fraction = runner.real_number(above=0.0, at_most=1.0)
    assert fraction("1") == 1.0
    for text in ("0", "1.01", "nan", "inf", "-inf", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match="must be a"):
            fraction(text)
    with pytest.raises(argparse.ArgumentTypeError, match="finite number > 0 and <= 1, got 2"):
        fraction("2")


def test_write_output_replaces_the_file_whole(tmp_path):
    path = tmp_path / "new" / "table.md"
    runner.write_output(path, "first")
    runner.write_output(path, "second")
    runner.write_output(None, "nothing")
    assert path.read_text() == "second"
    assert [p.name for p in path.parent.iterdir()] == ["table.md"]  # no temporary file left
