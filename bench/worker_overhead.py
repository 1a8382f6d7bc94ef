"""What the worker runtime costs per job: CPU time of one process running a `Worker`
(64 slots) over JOBS no-op `demo.sleep` jobs {"seconds": 0, "steps": 0} on a fresh SQLite
file, logging at INFO as `jobcontrol-worker` does (text or JSON, to a file). The jobs are
submitted before the clock starts; the clock stops once every one has run and been
recorded.
The store's own work (SQLite in-process) is in the figure, the same in every run, so
a change to the runtime shows as a change of the whole.

Run: `.venv/bin/python -m bench.worker_overhead [--jobs N] [--runs N] [--log-format F]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import jobcontrol.worker.builtin  # noqa: F401  (registers demo.sleep)
from jobcontrol.jobs import JobSpec, JobState
from jobcontrol.logs import FORMATS, configure_logging
from jobcontrol.store.sqlite import SqliteJobStore
from jobcontrol.worker.handlers import default_registry
from jobcontrol.worker.runtime import Worker, WorkerConfig

JOBS = 10_000
CONCURRENCY = 64
BATCH = 1_000


async def one_run(path: Path, jobs: int) -> tuple[float, float]:
    """(µs of this process's CPU per job, jobs/s) for one fresh store."""
    store = await SqliteJobStore.open(path)
    try:
        spec = JobSpec(type="demo.sleep", payload={"seconds": 0, "steps": 0})
        for start in range(0, jobs, BATCH):
            await store.create_jobs([spec] * min(BATCH, jobs - start))
        worker = Worker(store, default_registry, WorkerConfig(concurrency=CONCURRENCY))
        stop = asyncio.Event()
        cpu, wall = time.process_time(), time.perf_counter()
        task = asyncio.create_task(worker.run(stop))
        while True:
            if await _drained(store, worker):
                break
            await asyncio.sleep(0.05)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        stop.set()
        await task
        return 1e6 * cpu / jobs, jobs / wall
    finally:
        await store.close()


async def _drained(store: SqliteJobStore, worker: Worker) -> bool:
    """Whether every job has run and been recorded. The clock runs meanwhile, so each
    poll is an index probe and the worker's own state; the jobs are counted (a scan of
    them all) only once those say done, since a claim may still be on its way back."""
    if worker.running_jobs or await store.has_claimable_jobs(types=["demo.sleep"]):
        return False
    counts = await store.count_jobs_by_state()
    return not counts.get(JobState.PENDING) and not counts.get(JobState.RUNNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker_overhead", description=__doc__)
    parser.add_argument("--jobs", type=int, default=JOBS)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--log-format", choices=FORMATS, default="text")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="worker-overhead-") as directory:
        log = Path(directory) / "worker.log"
        with log.open("w") as stream, contextlib.redirect_stderr(stream):
            configure_logging("info", args.log_format)
            for run in range(args.runs):
                results.append(asyncio.run(one_run(Path(directory) / f"{run}.db", args.jobs)))
    cpu = statistics.median(r[0] for r in results)
    rate = statistics.median(r[1] for r in results)
    print(
        f"worker runtime, {args.jobs:,} no-op jobs, {CONCURRENCY} slots, {args.log_format} logs:"
        f" {cpu:.1f} µs of CPU per job, {rate:,.0f} jobs/s (medians of {args.runs} runs:"
        f" {', '.join(f'{r[0]:.1f}' for r in results)} µs)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
