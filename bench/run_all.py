"""Run the throughput and index benchmarks, print one combined table, append it to the benchmark history.

The combined table puts each of our layers next to the bare thing it wraps: the daemon next to
the bare model (bench_throughput.py), our index wrapper next to hnswlib alone (bench_index.py).
The detailed tables of both follow. The entry, appended to docs/benchmarks-history.md, starts
with the machine: CPUs, CPU model, GPU, model id, date, load average (other processes skew every
number). docs/benchmarks.md keeps today's figures: a run that replaces one is copied there by hand,
with its machine, date and command.

    nice -n 10 .venv/bin/python bench/run_all.py                    # both at their defaults
    nice -n 10 .venv/bin/python bench/run_all.py --preset large     # 1000 images; 10k, 100k, 1M vectors
    nice -n 10 .venv/bin/python bench/run_all.py --preset smoke --no-append
    nice -n 10 .venv/bin/python bench/run_all.py --throughput-args="--seconds 120" \
        --index-args="--sizes 1000000"
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import common  # first: puts the repository and bench/ on sys.path
from common import ARITHMETIC_FLAGS, Summary, cpu_flags, cpu_model

REPO = common.REPO
DOC = REPO / "docs" / "benchmarks-history.md"
DOC_INTRO = """# Benchmark history

Appended by `bench/run_all.py` (one section per run; `--no-append` to only print). Today's figures
are in [benchmarks.md](benchmarks.md).
"""

#: (bench_throughput flags, bench_index flags) of each preset; explicit flags come after them.
PRESETS: dict[str, tuple[list[str], list[str]]] = {
    "smoke": (["--images", "32", "--concurrency", "1,8", "--seconds", "10"], ["--sizes", "5000"]),
    "default": ([], []),
    "large": (
        ["--images", "1000", "--concurrency", "1,8,32", "--seconds", "120"],
        ["--sizes", "10000,100000,1000000"],
    ),
}


@dataclass
class Section:
    """One benchmark's outcome."""

    name: str
    markdown: str
    summary: list[Summary]
    seconds: float


def cpu_description() -> str:
    """CPU model and which of :data:`ARITHMETIC_FLAGS` it has, e.g. ``... (avx2 avx512f; no amx_bf16)``."""
    flags = cpu_flags()
    present = [flag for flag in ARITHMETIC_FLAGS if flag in flags]
    missing = [flag for flag in ARITHMETIC_FLAGS if flag not in flags]
    return f"{cpu_model()} (has {' '.join(present) or 'none of them'}; lacks {' '.join(missing) or 'none'})"


def gpu() -> str:
    """The first CUDA device torch sees, or ``none``."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (x{torch.cuda.device_count()})"
    return "none (torch.cuda.is_available() is False)"


def git_commit() -> str:
    """The checked-out commit (read only), or ``unknown``."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def version(package: str) -> str:
    """An installed distribution's version."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def machine_lines(model_id: str, load_before: Sequence[float], precision: str = "") -> list[str]:
    """The header facts of one run."""
    load_after = os.getloadavg()
    return [
        f"date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
        f"machine: {platform.node()}, nproc {len(os.sched_getaffinity(0))}, CPU {cpu_model()}",
        f"CPU arithmetic: {cpu_description()}",
        f"GPU: {gpu()}",
        f"model: {model_id}",
        f"precision: {precision or 'not measured (--skip-throughput)'}",
        f"load average (1 min) before / after: {load_before[0]:.2f} / {load_after[0]:.2f}",
        f"software: Python {platform.python_version()}, torch {version('torch')}, "
        f"hnswlib {version('hnswlib')}, numpy {version('numpy')}; commit {git_commit()}",
    ]


def run_throughput(argv: list[str]) -> tuple[Section, str, str]:
    """bench_throughput.py with ``argv``; also returns the model id and precision it measured."""
    import bench_throughput

    started = time.monotonic()
    report = bench_throughput.run(bench_throughput.build_parser().parse_args(argv))
    section = Section("throughput", report.markdown, report.summary, time.monotonic() - started)
    return section, report.model_id, report.precision


def run_index(argv: list[str]) -> Section:
    """bench_index.py with ``argv``."""
    import bench_index

    started = time.monotonic()
    report = bench_index.run(bench_index.build_parser().parse_args(argv))
    return Section("index", report.markdown, report.summary, time.monotonic() - started)


def fmt(value: float) -> str:
    """A table cell: a few significant digits, blank for NaN."""
    if value != value:
        return ""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def combined_table(sections: list[Section]) -> str:
    """Every summary row of every benchmark in one table."""
    lines = [
        "| benchmark | case | metric | ours | bare | ours / bare |",
        "|---|---|---|--:|--:|--:|",
    ]
    for section in sections:
        for case, metric, ours, bare in section.summary:
            share = ours / bare if bare and bare == bare and ours == ours else float("nan")
            lines.append(f"| {section.name} | {case} | {metric} | {fmt(ours)} | {fmt(bare)} | {fmt(share)} |")
    return "\n".join(lines)


def document(title: str, header: list[str], command: str, sections: list[Section]) -> str:
    """The whole markdown of one run."""
    parts = [
        f"## {title}",
        "\n".join(f"- {line}" for line in header) + f"\n- command: `{command}`",
        combined_table(sections),
    ]
    for section in sections:
        parts.append(section.markdown + f"\n\n({section.name} took {section.seconds:.0f} s)")
    return "\n\n".join(parts) + "\n"


def append(text: str, path: Path = DOC) -> None:
    """Append a run to the benchmark history, creating it with its introduction if missing."""
    if not path.exists():
        path.write_text(DOC_INTRO)
    existing = path.read_text()
    with path.open("a") as fh:
        fh.write(("\n" if existing.endswith("\n") else "\n\n") + text)


def build_parser() -> argparse.ArgumentParser:
    """Flags of the combined run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--throughput-args", default="", help="extra flags for bench_throughput.py")
    parser.add_argument("--index-args", default="", help="extra flags for bench_index.py")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-index", action="store_true")
    parser.add_argument("--no-append", action="store_true", help=f"print only; leave {DOC.name} alone")
    parser.add_argument("--doc", type=Path, default=DOC, help="the page to append to")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks, print the combined document, append it unless told not to."""
    args = build_parser().parse_args(argv)
    throughput_argv, index_argv = PRESETS[args.preset]
    throughput_argv = [*throughput_argv, *shlex.split(args.throughput_args)]
    index_argv = [*index_argv, *shlex.split(args.index_args)]
    load_before = os.getloadavg()
    sections: list[Section] = []
    model_id, precision = "not measured (--skip-throughput)", ""
    if not args.skip_throughput:
        section, model_id, precision = run_throughput(throughput_argv)
        sections.append(section)
    if not args.skip_index:
        sections.append(run_index(index_argv))
    command = shlex.join(["bench/run_all.py", *(argv if argv is not None else sys.argv[1:])])
    header = machine_lines(model_id, load_before, precision)
    title = f"{dt.date.today().isoformat()}: {cpu_model()}, {len(os.sched_getaffinity(0))} CPUs"
    text = document(title, header, command, sections)
    print(text)
    if not args.no_append:
        append(text, args.doc)
        print(f"appended to {args.doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
