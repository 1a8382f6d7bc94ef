"""Run every benchmark in turn and print the headline figures with their goals:
`python -m bench [--runs N] [--backend sqlite|remote|both] [--only a,b] [--skip a,b]`
(what `make bench` runs). `--runs` goes to every benchmark, `--backend` to those that
run on both backends (the others run on SQLite only). Each benchmark is also a module
of its own (`python -m bench.throughput --help`)."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence

from bench import (
    backends,
    cancel_latency,
    claim_latency,
    cluster,
    fanout,
    processes,
    progress_latency,
    report,
    sdk_choice,
    store_ceiling,
    store_load,
    store_rates,
    throughput,
)

Main = Callable[[Sequence[str]], int]
# name -> (entry point, takes --backend)
BENCHMARKS: dict[str, tuple[Main, bool]] = {
    "store_rates": (store_rates.main, True),
    "store_ceiling": (store_ceiling.main, False),
    "throughput": (throughput.main, True),
    "claim_latency": (claim_latency.main, False),
    "cancel_latency": (cancel_latency.main, False),
    "progress_latency": (progress_latency.main, True),
    "store_load": (store_load.main, False),
    "fanout": (fanout.main, False),
    "processes": (processes.main, False),
    "sdk_choice": (sdk_choice.main, False),
    "cluster": (cluster.main, False),
}
# Extra arguments in a full run, to keep it within ten minutes on two cores.
SUITE_ARGS: dict[str, list[str]] = {"store_rates": ["--remote-budget", "10"]}


def _names(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown benchmark {', '.join(unknown)} (choose from {', '.join(BENCHMARKS)})"
        )
    return names


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (default 3)")
    backends.add_argument(parser)
    parser.add_argument("--only", type=_names, default=None, help="these benchmarks only")
    parser.add_argument("--skip", type=_names, default=[], help="all but these benchmarks")
    args = parser.parse_args(argv)
    chosen = [n for n in (args.only or BENCHMARKS) if n not in args.skip]

    began = time.perf_counter()
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    seconds: dict[str, float] = {}
    for name in chosen:
        entry, both = BENCHMARKS[name]
        print(f"\n== {name} ==", flush=True)
        started = time.perf_counter()
        options = ["--runs", str(args.runs), *SUITE_ARGS.get(name, [])]
        if both:
            options += ["--backend", args.backend]
        status = entry(options)
        seconds[name] = time.perf_counter() - started
        if status:
            return status
    elapsed = time.perf_counter() - began
    load = os.getloadavg()

    latest = report.load_latest()
    headlines = [
        headline
        for name in chosen
        for headline in latest.get("scenarios", {}).get(name, {}).get("headlines", [])
    ]
    print()
    print(report.summary(headlines, f"Headline figures, median of {args.runs} runs (min-max)"))
    times = ", ".join(f"{name} {s:.0f} s" for name, s in seconds.items())
    print(f"{elapsed:.0f} s in all ({times})")
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    latest["suite"] = {
        "runs": args.runs,
        "backend": args.backend,
        "benchmarks": chosen,
        "seconds": {name: round(s, 1) for name, s in seconds.items()},
        "elapsed_seconds": round(elapsed, 1),
        "load_average_after": [round(x, 2) for x in load],
    }
    report.LATEST.write_text(report.json_text(latest))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
