"""Sampling profiles of running benchmark processes with py-spy (the `bench` extra).

`with profile(pid, name):` runs `py-spy record --format raw` against a process for as
long as the block lasts, into results/profiles/<name>.txt; `top_frames(path)` (and
`python -m bench.profiling FILE`) reads the collapsed stacks back and
ranks functions by the share of samples in which they were running (self) or on the
stack (inclusive). py-spy needs ptrace rights over the process (same user, and
ptrace_scope 0 or root); if it cannot attach, the profile is skipped with a note.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

PY_SPY = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
RATE = 200  # samples per second
PROFILES = Path(__file__).parent / "results" / "profiles"


def profile(pid: int | None, name: str) -> contextlib.AbstractContextManager[object]:
    """Profile process `pid` for the block into PROFILES/<name>.txt (no-op if None)."""
    return Profiler(pid, PROFILES / f"{name}.txt") if pid else contextlib.nullcontext()


class Profiler:
    def __init__(self, pid: int, output: Path, *, threads: bool = False) -> None:
        self.pid = pid
        self.output = output
        self.threads = threads
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Profiler:
        if PY_SPY is None:
            print("py-spy is not installed (pip install -e '.[bench]'): no profile", flush=True)
            return self
        self.output.parent.mkdir(parents=True, exist_ok=True)
        command = [PY_SPY, "record", "--pid", str(self.pid), "--rate", str(RATE)]
        command += ["--format", "raw", "--output", str(self.output), "--nonblocking"]
        if self.threads:
            command.append("--threads")
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is None:
            return
        self._process.send_signal(signal.SIGINT)  # py-spy writes its output on ^C
        try:
            _, stderr = self._process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            _, stderr = self._process.communicate()
        if not self.output.exists():
            print(f"py-spy wrote no profile: {stderr.decode(errors='replace')[-300:]}")


def _frame(frame: str) -> str:
    """`function (path/to/module.py:line)` -> `function (module.py)`."""
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rsplit("/", 1)[-1]
    return f"{name} ({file})" if file else name


def top_frames(path: Path, count: int = 15) -> tuple[int, list[tuple[str, float, float]]]:
    """Samples in all, and the `count` functions with the most samples running (self):
    (function, self share, inclusive share), as shares of all samples taken (py-spy
    leaves out threads it sees idle, unless recorded with --idle)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        n = int(samples)
        total += n
        frames = [_frame(f) for f in stack.split(";") if f]
        if frames:
            own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    ranked = sorted(inclusive, key=lambda f: (-own[f], -inclusive[f]))[:count]
    return total, [(f, own[f] / total, inclusive[f] / total) for f in ranked] if total else []


def describe(path: Path, title: str, count: int = 12) -> str:
    if not path.exists():
        return f"{title}: no profile"
    total, rows = top_frames(path, count)
    lines = [f"{title}: {total:,} samples at {RATE}/s, top functions by self time"]
    lines += [f"  {s:6.1%} self {i:6.1%} incl  {f}" for f, s, i in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bench.profiling FILE...`: the top functions of recorded profiles."""
    parser = argparse.ArgumentParser(prog="python -m bench.profiling", description=main.__doc__)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    for path in args.files:
        print(describe(path, path.stem, args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
