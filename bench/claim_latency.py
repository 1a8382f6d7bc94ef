"""Claim latency on an idle system: how long a submitted job waits for an idle worker,
with 1 and 8 idle workers polling at 0.25 s and at the SQLite default 0.05 s; and the
store load those idle workers cause.

Each run: a fresh store and `jobcontrol-server`; for each configuration, WORKERS idle
worker processes (`bench.counted_worker`: `jobcontrol-worker` itself, with its store
calls counted by the server's counting wrapper and served on /metrics) are started and
left alone for SETTLE seconds, then:

- idle load: the workers' store calls per second over an IDLE-second window with
  nothing to do, summed over the workers: an idle worker polls with a read
  (has_claimable_jobs) and claims (an UPDATE in a write transaction) only when the read
  finds work;
- claim latency: SAMPLES `demo.sleep` jobs {"seconds": 0, "steps": 0} submitted one at
  a time over gRPC, 100-250 ms apart at random (so submits fall at every phase of the
  polls); latency is the job's start_time minus its create_time, both written by the
  store (the server's clock at submit, the claiming worker's at claim; one machine).

Run: `.venv/bin/python -m bench.claim_latency [--runs N]`.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Sequence
from pathlib import Path

from bench import procs, report, rpc
from bench.report import Headline
from bench.stats import Figures, percentiles_ms
from jobcontrol.worker.runtime import LOCAL_POLL_INTERVAL

CONFIGS = ((1, 0.25), (8, 0.25), (1, 0.05), (8, 0.05))  # (workers, poll interval)
SETTLE = 0.5
IDLE = 1.5
SAMPLES = 10
GOAL_P50_MS = 50.0
DEFAULT_POLL_S = LOCAL_POLL_INTERVAL.total_seconds()


def _key(workers: int, poll: float) -> str:
    return f"w{workers}.poll{poll:g}"


async def measure(
    directory: Path, server: procs.Server, workers: Sequence[procs.Worker]
) -> dict[str, float]:
    await asyncio.sleep(SETTLE)
    before = [w.store_calls() for w in workers]
    began = time.perf_counter()
    await asyncio.sleep(IDLE)
    after = [w.store_calls() for w in workers]
    elapsed = time.perf_counter() - began

    def total(call: str) -> int:
        return sum(a.get(call, 0) - b.get(call, 0) for a, b in zip(after, before, strict=True))

    claims = total("claim_jobs")
    probes = total("has_claimable_jobs")
    calls = sum(sum(a.values()) - sum(b.values()) for a, b in zip(after, before, strict=True))
    async with rpc.stubs(server.address) as (stub,):
        job_ids = []
        for _ in range(SAMPLES):
            job_ids += await rpc.submit(stub, [rpc.request(seconds=0, steps=0)])
            await asyncio.sleep(random.uniform(0.10, 0.25))
    statement = (
        "SELECT start_us - create_us FROM jobs"
        " WHERE id IN (SELECT value FROM json_each(?)) AND start_us IS NOT NULL"
    )
    waits: list[float] = []

    def started() -> bool:
        rows = rpc.query(directory / "sqlite.db", statement, [json.dumps(job_ids)])
        waits[:] = [us / 1e6 for (us,) in rows]
        return len(waits) == len(job_ids)

    await rpc.until(started, "the jobs to be claimed")
    return {
        **percentiles_ms(waits),
        "idle_claims_per_s": claims / elapsed,
        "idle_probes_per_s": probes / elapsed,
        "idle_store_calls_per_s": calls / elapsed,
    }


def one_run(directory: Path) -> dict[str, dict[str, float]]:
    found: dict[str, dict[str, float]] = {}
    with procs.deployment("sqlite", directory) as (db, server, _):
        for count, poll in CONFIGS:
            with procs.fleet() as fleet:
                started = procs.workers(
                    directory,
                    db.config,
                    count,
                    concurrency=1,
                    poll_interval=poll,
                    metrics=True,
                    into=fleet,
                    name=f"worker-{_key(count, poll)}",
                )
                found[_key(count, poll)] = rpc.run(measure(directory, server, started))
            print(f" {count}x{poll:g}s", end="", flush=True)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = report.parser("claim_latency", __doc__)
    args = parser.parse_args(argv)
    began = time.perf_counter()
    figures = Figures()
    for _, directory in report.run_directories(args.runs):
        for key, values in one_run(directory).items():
            figures.add_all(values, prefix=f"{key}.")
    elapsed = time.perf_counter() - began
    rows = [
        (
            f"{count}",
            f"{poll:g}",
            figures[f"{_key(count, poll)}.p50"].cell(),
            figures[f"{_key(count, poll)}.p99"].cell(),
            figures[f"{_key(count, poll)}.idle_claims_per_s"].cell(1),
            figures[f"{_key(count, poll)}.idle_probes_per_s"].cell(1),
            figures[f"{_key(count, poll)}.idle_store_calls_per_s"].cell(1),
        )
        for count, poll in CONFIGS
    ]
    print(
        report.table(
            f"Claim latency on an idle system, median of {args.runs} runs (min-max)",
            (
                "idle workers",
                "poll s",
                "p50 ms",
                "p99 ms",
                "idle claims/s",
                "idle probes/s",
                "idle store calls/s",
            ),
            rows,
            align=">>>>>>>",
            notes=[
                f"latency: start_time - create_time of {SAMPLES} jobs per configuration and "
                "run, submitted one at a time;",
                f"idle: the workers' store calls over {IDLE:.0f} s with nothing to claim, "
                "summed over the workers; claims are write transactions, probes "
                "(has_claimable_jobs) reads.",
            ],
        )
    )
    headlines = []
    for count, poll in CONFIGS:
        key = _key(count, poll)
        p50 = figures[f"{key}.p50"]
        default = poll == DEFAULT_POLL_S
        headlines.append(
            Headline.of(
                "claim latency",
                f"p50 submit -> claimed, {count} idle worker{'s' if count > 1 else ''}, "
                f"poll {poll:g} s{' (default)' if default else ''} "
                f"({figures[f'{key}.idle_claims_per_s'].median:.0f} idle "
                f"claims/s, {figures[f'{key}.idle_probes_per_s'].median:.0f} idle probes/s)",
                "sqlite",
                p50,
                "ms",
                # The goal is for the system as shipped: at the default poll interval.
                goal=f"<= {GOAL_P50_MS:.0f} ms" if default else "",
                met=p50.median <= GOAL_P50_MS if default else None,
            )
        )
    return report.finish(
        "claim_latency",
        runs=args.runs,
        elapsed=elapsed,
        headlines=headlines,
        workload={
            "configs": [{"workers": c, "poll_interval_s": p} for c, p in CONFIGS],
            "samples": SAMPLES,
            "idle_window_s": IDLE,
        },
        figures=figures.to_json(),
    )


if __name__ == "__main__":
    raise SystemExit(main())
