"""Store load against open watch streams: store calls per second made by one server with
0, 100, 1,000 and 10,000 WatchJob streams open.

Each run: a fresh store, `jobcontrol-server --metrics-listen ...`, JOBS pending jobs of
a type no worker runs (so the server keeps their queue positions fresh: one query per
tick for all of them), and the streams spread evenly over those jobs. At each level the
streams are opened (in waves, see `streams.py`), left to settle for SETTLE seconds (the
snapshots of new streams are read in batches when they open), and then the server's
`jobcontrol_store_calls_total` is read from /metrics before and after a WINDOW-second
window: calls per second, in all and by operation. The server's own timers (reaper,
health check, job counts) are in every figure, the streams' cost is the difference.

With no stream open the event tailer polls once a second; with any it polls every
50 ms (the SQLite default), so 0 -> 100 is expected to rise by ~19 calls/s and then
stay flat: the design's claim is that 10,000 watchers cost the store what one does.

Run: `.venv/bin/python -m bench.store_load [--runs N] [--levels 0,100,1000,10000]`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

from bench import procs, report, rpc, streams
from bench.report import Headline
from bench.stats import Figure, Figures

LEVELS = (0, 100, 1_000, 10_000)
JOBS = 100
SETTLE = 0.5
WINDOW = 2.0
FLAT = 1.10  # "flat": the top level within 10% of the lowest level with streams


async def one_run(directory: Path, levels: Sequence[int]) -> dict[int, dict[str, float]]:
    found: dict[int, dict[str, float]] = {}
    with procs.deployment("sqlite", directory, metrics=True) as (_, server, _fleet):
        async with rpc.stubs(server.address, streams.connections_for(max(levels))) as stubs:
            job_ids = await rpc.submit(
                stubs[0], [rpc.request("bench.unclaimed", index=i) for i in range(JOBS)]
            )
            watching = streams.Streams(stubs, job_ids)
            try:
                for level in levels:
                    opening = await watching.open(level)
                    await asyncio.sleep(SETTLE)
                    found[level] = await streams.window(server, WINDOW)
                    found[level]["open_seconds"] = opening
                    print(
                        f" {level:,}: {found[level]['store_calls_per_s']:.1f}/s",
                        end="",
                        flush=True,
                    )
            finally:
                await watching.close()
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = report.parser("store_load", __doc__)
    streams.add_levels_argument(parser, LEVELS)
    args = parser.parse_args(argv)
    levels = args.levels
    began = time.perf_counter()
    figures = Figures()
    for _, directory in report.run_directories(args.runs):
        for level, values in rpc.run(one_run(directory, levels)).items():
            figures.add_all(values, prefix=f"{level}.")
    elapsed = time.perf_counter() - began

    operations = sorted(  # those the server made at some level
        {
            key.split(".", 2)[2]
            for key, figure in figures.items()
            if key.split(".", 1)[1].startswith("calls.") and figure.median > 0
        }
    )

    def calls(level: int, operation: str) -> float:
        return figures.get(f"{level}.calls.{operation}", Figure([0.0])).median

    rows = [
        (
            f"{level:,}",
            figures[f"{level}.store_calls_per_s"].cell(1),
            *(
                f"{figures.get(f'{level}.calls.{op}', Figure([0.0])).median:.1f}"
                for op in operations
            ),
            f"{figures[f'{level}.cpu_percent'].median:.1f}",
        )
        for level in levels
    ]
    header = ("streams", "store calls/s", *operations, "server CPU %")
    print(
        report.table(
            f"Server store calls per second by open WatchJob streams, median of {args.runs} "
            "runs (min-max)",
            header,
            rows,
            notes=[
                f"streams spread over {JOBS} pending jobs; {WINDOW:g} s window after "
                f"{SETTLE:g} s settling; from jobcontrol_store_calls_total on /metrics;",
                "per-operation columns: medians; CPU: the server process, % of one core.",
            ],
        )
    )
    with_streams = [level for level in levels if level > 0]
    headlines = []
    if len(with_streams) >= 2:
        low, high = with_streams[0], with_streams[-1]
        lowest = figures[f"{low}.store_calls_per_s"].median
        highest = figures[f"{high}.store_calls_per_s"]
        headlines.append(
            Headline.of(
                "store load",
                f"store calls/s at {high:,} streams (at {low:,}: {lowest:.1f})",
                "sqlite",
                highest,
                "calls/s",
                digits=1,
                goal="flat",
                met=highest.median <= FLAT * lowest,
            )
        )
    return report.finish(
        "store_load",
        runs=args.runs,
        elapsed=elapsed,
        headlines=headlines,
        workload={"levels": levels, "jobs": JOBS, "window_s": WINDOW, "settle_s": SETTLE},
        figures=figures.to_json(),
    )


if __name__ == "__main__":
    raise SystemExit(main())
