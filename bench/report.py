"""Printing and saving figures: plain-text tables, the machine a run was on, each
benchmark's JSON document, and the headline figures with their goals.

Every benchmark writes `bench/results/<name>.json` and merges the same document into
`bench/results/latest.json` (under "scenarios"), so running one scenario alone updates
its part of the full picture. `python -m bench` prints the headlines of every scenario
in latest.json as one summary table at the end.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import backends
from bench.stats import Figure

RESULTS = Path(__file__).parent / "results"
LATEST = RESULTS / "latest.json"


def table(
    title: str,
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    align: str | None = None,
    notes: Sequence[str] = (),
) -> str:
    """A plain-text table: `align` has one character per column, "<" or ">" (default:
    the first column left, the rest right)."""
    align = align or "<" + ">" * (len(header) - 1)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = [f"{c:{a}{w}}" for c, a, w in zip(cells, align, widths, strict=True)]
        return "  ".join(padded).rstrip()

    rule = "-" * len(line(header))
    return "\n".join([title, rule, line(header), rule, *map(line, rows), rule, *notes])


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _sqld_version() -> str | None:
    try:
        return backends.sqld_version()
    except (RuntimeError, OSError, subprocess.CalledProcessError):
        return None


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    cpu = ""
    with_cpuinfo = Path("/proc/cpuinfo")
    if with_cpuinfo.exists():
        for line in with_cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "jobcontrol": _version("jobcontrol"),
        "grpcio": _version("grpcio"),
        "libsql": _version("libsql"),
        "turso-serverless": _version("turso-serverless"),
        "sqld": _sqld_version(),
        "huey": _version("huey"),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "load_average": load,
    }


@dataclass(frozen=True, slots=True)
class Headline:
    """One figure of the summary table, with the goal it is held against (if any)."""

    scenario: str
    measure: str
    backend: str
    value: str  # formatted: "median (min-max)"
    unit: str
    goal: str = ""
    met: bool | None = None  # None: no goal, or not measurable here

    @classmethod
    def of(
        cls,
        scenario: str,
        measure: str,
        backend: str,
        figure: Figure,
        unit: str,
        *,
        digits: int = 0,
        goal: str = "",
        met: bool | None = None,
    ) -> Headline:
        return cls(scenario, measure, backend, figure.cell(digits), unit, goal, met)


def verdict(met: bool | None) -> str:
    return {True: "met", False: "MISSED", None: ""}[met]


def summary(headlines: Sequence[dict[str, Any]], title: str) -> str:
    rows = [
        (
            h["scenario"],
            h["measure"],
            h["backend"],
            h["value"],
            h["unit"],
            h["goal"],
            verdict(h["met"]),
        )
        for h in headlines
    ]
    header = ("scenario", "figure", "backend", "median (min-max)", "unit", "goal", "")
    return table(title, header, rows, align="<<<><<<")


def json_text(document: Any) -> str:
    return json.dumps(document, indent=2) + "\n"


def save(
    name: str,
    document: dict[str, Any],
    headlines: Sequence[Headline] = (),
    output: Path | None = None,
) -> Path:
    """Write the benchmark's document (with time, machine and headlines added) to
    `output` (default results/<name>.json) and merge it into latest.json."""
    document = {
        "benchmark": name,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        **document,
        "headlines": [asdict(h) for h in headlines],
    }
    output = output or RESULTS / f"{name}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json_text(document))
    latest = load_latest()
    latest["updated"] = document["time"]
    latest.setdefault("scenarios", {})[name] = document
    LATEST.parent.mkdir(parents=True, exist_ok=True)
    LATEST.write_text(json_text(latest))
    return output


def finish(
    name: str,
    *,
    runs: int,
    elapsed: float,
    headlines: Sequence[Headline] = (),
    output: Path | None = None,
    **document: Any,
) -> int:
    """Save a benchmark's figures (see `save`), say where, and return its exit status."""
    path = save(
        name, {"runs": runs, "elapsed_seconds": round(elapsed, 1), **document}, headlines, output
    )
    print(f"{elapsed:.0f} s in all; figures written to {path}")
    return 0


def parser(name: str, description: str | None) -> argparse.ArgumentParser:
    """A benchmark's command line, with --runs (checked to be at least 1)."""
    p = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=description)
    p.add_argument("--runs", type=_runs, default=3, help="runs per figure (default 3)")
    return p


def run_directories(runs: int, label: str = "sqlite") -> Iterator[tuple[int, Path]]:
    """Each run's number and a fresh temporary directory (removed after the run), with
    a progress line per run ("sqlite run 2/3: ..."; the run adds to it)."""
    with tempfile.TemporaryDirectory(prefix="jobcontrol-bench-") as tmp:
        for run in range(1, runs + 1):
            print(f"{label} run {run}/{runs}:", end="", flush=True)
            with tempfile.TemporaryDirectory(dir=tmp) as directory:
                yield run, Path(directory)
            print(flush=True)


def _runs(text: str) -> int:
    runs = int(text)
    if runs < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return runs


def load_latest() -> dict[str, Any]:
    if LATEST.exists():
        try:
            loaded: dict[str, Any] = json.loads(LATEST.read_text())
            return loaded
        except json.JSONDecodeError:
            pass
    return {}
