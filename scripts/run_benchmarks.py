"""Run every ``scripts/bench_*.py`` and collect their Markdown tables into one Markdown file.

Each benchmark runs in its own subprocess as ``python scripts/bench_NAME.py --out TMPFILE`` (same Python,
same environment, so ``OMP_NUM_THREADS`` carries over). The report starts with the machine (CPU count, torch
version and threads, Python, platform) and has one section per benchmark: its table, or, when it fails,
its exit code (or its time-out, ``--timeout``) and the end of its error output. A failing benchmark does not
stop the others; the exit code is 1 when any failed.

    python scripts/run_benchmarks.py --out bench_results.md       # what `make bench` runs
    python scripts/run_benchmarks.py --only simulate --out bench_simulate.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
ERROR_TAIL_LINES = 30


def benchmark_scripts() -> dict[str, Path]:
    """Benchmark name (``bench_NAME.py`` -> ``NAME``) -> script path, sorted by name."""
    return {path.stem.removeprefix("bench_"): path for path in sorted(SCRIPTS.glob("bench_*.py"))}


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


def run_benchmark(name: str, script: Path, timeout_s: float) -> tuple[bool, str]:
    """Run one benchmark (killed after ``timeout_s`` seconds); return (success, the Markdown section body)."""
    with tempfile.TemporaryDirectory() as folder:
        table_path = Path(folder) / f"{name}.md"
        start = time.perf_counter()
        # a session of its own, so that a time-out stops the benchmark's own subprocesses too
        process = subprocess.Popen(
            [sys.executable, str(script), "--out", str(table_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            return False, failure(f"timed out after {timeout_s:g} s", stderr or stdout)
        seconds = time.perf_counter() - start
        if process.returncode == 0 and table_path.exists():
            return True, f"{table_path.read_text().rstrip()}\n\n_{script.name}: {seconds:.0f} s._\n"
    problem = (
        f"exit code {process.returncode}"
        if process.returncode != 0
        else "exited 0 but wrote no table to --out"
    )
    return False, failure(f"{problem}, after {seconds:.0f} s", stderr or stdout)


def failure(problem: str, output: str) -> str:
    """The Markdown section body of a failed benchmark: the problem and the end of its output."""
    tail = "\n".join(output.rstrip().splitlines()[-ERROR_TAIL_LINES:])
    return f"**FAILED** ({problem}). End of its output:\n\n```\n{tail}\n```\n"


def main(argv: Sequence[str] | None = None) -> int:
    scripts = benchmark_scripts()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench_results.md"),
        help="Markdown report (default bench_results.md)",
    )
    parser.add_argument(
        "--only",
        choices=sorted(scripts),
        action="append",
        help="run only this benchmark (scripts/bench_NAME.py); may be repeated",
    )
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="seconds before a benchmark is stopped (default 900)"
    )
    args = parser.parse_args(argv)
    selected = {name: scripts[name] for name in args.only} if args.only else scripts

    sections = ["# Benchmarks\n", machine_description()]
    failed = []
    for name, script in selected.items():
        print(f"running {script.name} ...", flush=True)
        ok, body = run_benchmark(name, script, args.timeout)
        if not ok:
            failed.append(name)
            print(f"{script.name} FAILED", flush=True)
        sections.append(f"## {name} (`scripts/{script.name}`)\n\n{body}")
    if failed:
        sections.append(f"**{len(failed)} of {len(selected)} benchmarks failed:** {', '.join(failed)}\n")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.out.with_name(f".{args.out.name}.part")
    temporary.write_text("\n".join(sections))
    os.replace(temporary, args.out)
    print(f"wrote {args.out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
