"""Run every benchmark in turn: `python -m bench` (what `make bench` runs)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from bench import progress_latency, store_rates

BENCHMARKS: tuple[Callable[[Sequence[str]], int], ...] = (store_rates.main, progress_latency.main)


def main() -> int:
    for benchmark in BENCHMARKS:
        status = benchmark([])
        if status:
            return status
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
