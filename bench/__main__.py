"""Run every benchmark in turn: `python -m bench [--runs N] [--backend sqlite|remote|both]`
(what `make bench` runs, on both backends). The options are passed on to each benchmark."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from bench import backends, progress_latency, store_rates

BENCHMARKS: tuple[Callable[[Sequence[str]], int], ...] = (store_rates.main, progress_latency.main)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (default 3)")
    backends.add_argument(parser)
    args = parser.parse_args(argv)
    for benchmark in BENCHMARKS:
        status = benchmark(["--runs", str(args.runs), "--backend", args.backend])
        if status:
            return status
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
