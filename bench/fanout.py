"""Fan-out capacity: how many WatchJob streams one server process holds, and what they
cost it in memory (RSS) and CPU, at 1,000, 5,000 and 10,000 streams.

Each run: a fresh store and `jobcontrol-server`; one job, claimed by this process as a
worker would (its own store on the same file), watched by every stream. At each level
the streams are opened (in waves, see `streams.py`) and the server measured:

- idle: RSS (VmRSS of /proc/PID/status) and CPU (utime+stime of /proc/PID/stat, in %
  of one core) over WINDOW seconds with nothing happening but the event tail;
- burst: UPDATES progress writes 50 ms apart (a job reporting 20x/s, for 150 ms),
  until every stream has received the last one: the server's CPU time per 1,000
  messages it delivered, how long the last update took to reach every stream, and
  the share of updates an average stream received (the server coalesces progress for
  readers that fall behind; all streams are read by this one Python process, which on
  2 cores is the bottleneck at 10,000).

Run: `.venv/bin/python -m bench.fanout [--runs N] [--levels 1000,5000,10000]`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench import procs, profiling, report, rpc, streams
from bench.progress_latency import percent_of, write_updates
from bench.report import Headline
from bench.stats import Figures
from jobcontrol.store import open_store
from jobcontrol.v1 import job_pb2 as pb

LEVELS = (1_000, 5_000, 10_000)
WINDOW = 2.0
SETTLE = 0.5
UPDATES = 3
SPACING = 0.05
GOAL_MIB = 512


async def one_run(
    directory: Path, levels: Sequence[int], *, profile_level: int | None = None
) -> dict[int, dict[str, float]]:
    found: dict[int, dict[str, float]] = {}
    with procs.deployment("sqlite", directory, metrics=True) as (db, server, _fleet):
        store = await open_store(db.config)
        try:
            async with rpc.stubs(server.address, streams.connections_for(max(levels))) as stubs:
                (job_id,) = await rpc.submit(stubs[0], [rpc.request("bench.fanout")])
                (job,) = await store.claim_jobs(
                    worker_id="bench-fanout",
                    types=["bench.fanout"],
                    limit=1,
                    lease_timeout=timedelta(minutes=10),
                )
                assert job.lease_id is not None
                baseline = server.rss_bytes()
                watching = streams.Streams(stubs, [job_id])
                try:
                    for level in levels:
                        opening = await watching.open(level)
                        await asyncio.sleep(SETTLE)
                        idle = await streams.window(server, WINDOW)
                        with profiling.profile(
                            server.pid if level == profile_level else None,
                            f"fanout-server-{level}",
                        ):
                            burst = await _burst(server, store, job_id, job.lease_id, watching)
                        found[level] = {
                            "open_seconds": opening,
                            "rss_mib": idle["rss_mib"],
                            "rss_kib_per_stream": (idle["rss_mib"] * 2**20 - baseline)
                            / 1024
                            / level,
                            "idle_cpu_percent": idle["cpu_percent"],
                            **burst,
                        }
                        print(
                            f" {level:,}: {idle['rss_mib']:.0f} MiB,"
                            f" {burst['cpu_ms_per_1000_messages']:.0f} ms CPU/1k msgs",
                            end="",
                            flush=True,
                        )
                finally:
                    await watching.close()
        finally:
            await store.close()
    return found


async def _burst(
    server: procs.Server,
    store: Any,
    job_id: str,
    lease_id: str,
    watching: streams.Streams,
) -> dict[str, float]:
    """UPDATES progress writes to the watched job; until every stream had the last."""
    # Each burst climbs to 100% again, so "had the last" is "had 100% in this burst".
    received, cpu, began = watching.received, server.cpu_seconds(), time.perf_counter()
    counted = _LastSeen(watching)
    sent = await write_updates(store, job_id, lease_id, UPDATES, SPACING)
    await rpc.until(counted.all_saw_last, "every stream to see the last update", wait=120)
    reached_all = time.time() - sent[-1]
    elapsed = time.perf_counter() - began
    cpu_used = server.cpu_seconds() - cpu
    messages = watching.received - received
    return {
        "burst_seconds": elapsed,
        "last_update_to_all_ms": 1000 * reached_all,
        "messages": messages,
        "delivered_percent": 100 * messages / (UPDATES * len(watching)),
        "cpu_ms_per_1000_messages": 1000 * cpu_used / messages * 1000,
        "burst_cpu_percent": 100 * cpu_used / elapsed,
    }


class _LastSeen:
    """Counts the streams whose latest progress event is the burst's last update."""

    def __init__(self, watching: streams.Streams) -> None:
        self.watching = watching
        self.final = percent_of(UPDATES, UPDATES)
        self.seen: set[int] = set()
        self.watching.on_event = self._on_event

    def _on_event(self, index: int, event: pb.JobEvent, _: float) -> None:
        if event.kind == pb.EVENT_KIND_PROGRESS:
            if event.job.progress.percent >= self.final:
                self.seen.add(index)
            else:
                self.seen.discard(index)

    def all_saw_last(self) -> bool:
        return len(self.seen) >= len(self.watching)


def main(argv: Sequence[str] | None = None) -> int:
    parser = report.parser("fanout", __doc__)
    streams.add_levels_argument(parser, LEVELS)
    parser.add_argument(
        "--profile",
        type=int,
        default=None,
        metavar="LEVEL",
        help="py-spy the server during the burst at this level, last run (bench/results/profiles)",
    )
    args = parser.parse_args(argv)
    levels = args.levels
    began = time.perf_counter()
    figures = Figures()
    for run, directory in report.run_directories(args.runs):
        profile = args.profile if run == args.runs else None
        found = rpc.run(one_run(directory, levels, profile_level=profile))
        for level, values in found.items():
            figures.add_all(values, prefix=f"{level}.")
    elapsed = time.perf_counter() - began

    def cell(level: int, key: str, digits: int = 0) -> str:
        return figures[f"{level}.{key}"].cell(digits)

    rows = [
        (
            f"{level:,}",
            cell(level, "rss_mib"),
            f"{figures[f'{level}.rss_kib_per_stream'].median:.1f}",
            f"{figures[f'{level}.idle_cpu_percent'].median:.1f}",
            f"{figures[f'{level}.open_seconds'].median:.1f}",
            cell(level, "cpu_ms_per_1000_messages"),
            f"{figures[f'{level}.burst_cpu_percent'].median:.0f}",
            f"{figures[f'{level}.delivered_percent'].median:.0f}%",
            cell(level, "last_update_to_all_ms"),
        )
        for level in levels
    ]
    header = (
        "streams",
        "RSS MiB",
        "KiB/stream",
        "idle CPU %",
        "open s",
        "CPU ms/1k msgs",
        "burst CPU %",
        "delivered",
        "last update to all, ms",
    )
    print(
        report.table(
            f"Fan-out: one server, WatchJob streams on one job, median of {args.runs} runs "
            "(min-max)",
            header,
            rows,
            notes=[
                "RSS, idle CPU: the server process over a "
                f"{WINDOW:g} s window with the streams open and nothing changing;",
                "KiB/stream: RSS above the server's before any stream, per stream;",
                f"burst: {UPDATES} progress writes {SPACING * 1000:.0f} ms apart; server CPU "
                "per 1,000 messages it delivered;",
                "delivered: share of the updates the average stream received (the rest "
                "coalesced); all streams read by this one process.",
            ],
        )
    )
    headlines = []
    top = max(levels)
    rss = figures[f"{top}.rss_mib"]
    headlines.append(
        Headline.of(
            "fan-out",
            f"server RSS with {top:,} streams",
            "sqlite",
            rss,
            "MiB",
            goal=f"<= {GOAL_MIB} MiB",
            met=rss.median <= GOAL_MIB,
        )
    )
    headlines.append(
        Headline.of(
            "fan-out",
            f"server CPU per 1,000 messages at {top:,} streams",
            "sqlite",
            figures[f"{top}.cpu_ms_per_1000_messages"],
            "ms",
        )
    )
    return report.finish(
        "fanout",
        runs=args.runs,
        elapsed=elapsed,
        headlines=headlines,
        workload={"levels": levels, "updates": UPDATES, "spacing_ms": SPACING * 1000},
        figures=figures.to_json(),
    )


if __name__ == "__main__":
    raise SystemExit(main())
