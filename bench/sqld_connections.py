"""sqld with its default connection limit against one connection at a time, under
writers in several processes.

Why this exists: sqld 0.24.32 queues the connections that want to write. One that gives
up while queued (it waited behind a checkpoint longer than its busy retries) leaves its
place in the queue; when the queue reaches that place after the connection has closed,
every later write waits for good. `--max-concurrent-connections 1` means no connection
ever waits in that queue. This measures both: does the load finish, and what one
connection at a time costs.

Each run starts a fresh sqld per variant (the variants alternate, the first one rotating
from run to run) and then: PROCESSES claimer processes (spawned), each with its own
store, claim up to CLAIM_LIMIT jobs at a time and complete them in one batch, as a
worker does; this process submits `--jobs` jobs in batches of BATCH while a reader lists
pending jobs (what GetJob, dashboards and queue positions cost sqld) and times each
list. A run ends when every job has SUCCEEDED, or as stalled when no job finished for
STALL seconds (writes time out after 10 s in the driver).

Run: `.venv/bin/python -m bench.sqld_connections [--runs N] [--jobs N]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import tempfile
import time
from collections.abc import Sequence
from datetime import timedelta
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path

from bench import report
from bench.stats import percentile
from jobcontrol.errors import StoreUnavailable
from jobcontrol.jobs import JobSpec, JobState
from jobcontrol.store import StoreConfig, open_store
from jobcontrol.store.protocol import Completion, JobFilter
from tests.sqld import SQLD_OPTIONS, SqldProcess

VARIANTS: dict[str, tuple[str, ...]] = {"sqld default": (), "one connection": SQLD_OPTIONS}
JOB_TYPE = "bench.noop"
PROCESSES = 4
CLAIM_LIMIT = 8
BATCH = 100
STALL = 20.0
IDLE_POLL = 0.005
READ_SPACING = 0.02


def claim_until_stopped(url: str, name: str, ready: Queue[str], stop: Event) -> None:
    """Process target: say it is ready, then claim and complete jobs until `stop` is set
    (store errors are retried: the parent judges the run by what finishes)."""
    asyncio.run(_claim_loop(url, name, ready, stop))


async def _claim_loop(url: str, name: str, ready: Queue[str], stop: Event) -> None:
    store = await open_store(StoreConfig(backend="turso", url=url))
    ready.put(name)
    try:
        while not stop.is_set():
            try:
                jobs = await store.claim_jobs(
                    worker_id=name,
                    types=[JOB_TYPE],
                    limit=CLAIM_LIMIT,
                    lease_timeout=timedelta(seconds=60),
                )
                if not jobs:
                    await asyncio.sleep(IDLE_POLL)
                    continue
                await store.complete_jobs(
                    [Completion(job.id, job.lease_id or "", {}) for job in jobs]
                )
            except StoreUnavailable:  # a stalled sqld: the parent reports the run
                await asyncio.sleep(0.1)
    finally:
        await store.close()


async def one_run(url: str, jobs: int) -> dict[str, float]:
    store = await open_store(StoreConfig(backend="turso", url=url))
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    ready: Queue[str] = context.Queue()
    claimers = [
        context.Process(
            target=claim_until_stopped,
            args=(url, f"claimer-{n}", ready, stop),
            daemon=True,
        )
        for n in range(PROCESSES)
    ]
    reads: list[float] = []
    finished = asyncio.Event()

    async def read_while_running() -> None:
        pending = JobFilter(states=frozenset({JobState.PENDING}))
        while not finished.is_set():
            started = time.perf_counter()
            with contextlib.suppress(StoreUnavailable):  # timed as the stall it is
                await store.list_jobs(job_filter=pending, page_size=50)
            reads.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(READ_SPACING)

    async def unfinished() -> int:
        counts = await store.count_jobs_by_state()
        return sum(counts.get(state, 0) for state in (JobState.PENDING, JobState.RUNNING))

    try:
        for claimer in claimers:
            claimer.start()
        for _ in claimers:
            await asyncio.to_thread(ready.get, True, 60)
        reader = asyncio.create_task(read_while_running())
        started = time.perf_counter()
        left, stalled = jobs, False
        try:
            for first in range(0, jobs, BATCH):
                last = min(first + BATCH, jobs)
                specs = [JobSpec(type=JOB_TYPE, payload={"n": n}) for n in range(first, last)]
                await store.create_jobs(specs)
        except StoreUnavailable:  # the submit timed out: sqld no longer takes writes
            stalled = True
        last_change = time.perf_counter()
        while left and not stalled:
            await asyncio.sleep(0.05)
            try:
                now_left = await unfinished()
            except StoreUnavailable:
                now_left = left
            if now_left < left:
                left, last_change = now_left, time.perf_counter()
            elif time.perf_counter() - last_change > STALL:
                stalled = True
        elapsed = time.perf_counter() - started
        finished.set()
        await reader
    finally:
        stop.set()
        for claimer in claimers:
            claimer.join(15)
            if claimer.is_alive():
                claimer.kill()
        await store.close()
    return {
        "stalled": float(stalled),
        "done": float(jobs - left),
        "jobs_per_s": (jobs - left) / elapsed if not stalled else 0.0,
        "read_p50_ms": percentile(reads, 0.5),
        "read_p99_ms": percentile(reads, 0.99),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = report.parser("sqld_connections", __doc__)
    parser.add_argument("--jobs", type=int, default=4000, help="jobs per run (default 4000)")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    results: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    names = list(VARIANTS)
    with tempfile.TemporaryDirectory(prefix="jobcontrol-bench-") as directory:
        for run in range(args.runs):
            order = names[run % 2 :] + names[: run % 2]
            for name in order:
                print(f"run {run + 1}/{args.runs}: {name} ...", end="", flush=True)
                sqld = SqldProcess(Path(directory), options=VARIANTS[name]).start()
                try:
                    figures = asyncio.run(one_run(sqld.url, args.jobs))
                finally:
                    sqld.kill()  # a stalled sqld does not stop on SIGTERM in time
                results[name].append(figures)
                outcome = "STALLED" if figures["stalled"] else f"{figures['jobs_per_s']:.0f} jobs/s"
                print(f" {outcome}", flush=True)
    rows = []
    for name, runs in results.items():
        done = [r for r in runs if not r["stalled"]]
        rate = [r["jobs_per_s"] for r in done]
        rows.append(
            [
                name,
                f"{len(runs) - len(done)} of {len(runs)}",
                f"{percentile(rate, 0.5):.0f}" if rate else "-",
                f"{percentile([r['read_p50_ms'] for r in done], 0.5):.1f}" if done else "-",
                f"{percentile([r['read_p99_ms'] for r in done], 0.5):.1f}" if done else "-",
            ]
        )
    print(
        report.table(
            f"{PROCESSES} claimer processes and a reader on one sqld, {args.jobs} jobs a run",
            ["sqld", "runs stalled", "jobs/s", "list p50 ms", "list p99 ms"],
            rows,
            notes=[
                "jobs/s and list times: medians over the runs that finished; a run stalls "
                f"when no job finishes for {STALL:.0f} s (sqld no longer accepts writes).",
            ],
        )
    )
    return report.finish(
        "sqld_connections",
        runs=args.runs,
        elapsed=time.perf_counter() - began,
        variants=results,
    )


if __name__ == "__main__":
    raise SystemExit(main())
