"""How fast the SQLite JobStore submits, claims and completes jobs.

A baseline for later work on the store: every figure is a rate (operations per second)
on a fresh SQLite file in a temporary directory, the median of several runs with the
min-max spread, printed as a table and written to `bench/results/store_rates.json`.

Claims are measured in worker processes (spawned, each with its own store, as real
workers run), once alone and once four at a time on the same file. Each run has two
phases separated by barriers, so the parent times them without the processes' start-up:
every process claims its share of jobs, then every process completes what it claimed.
The claim table is pre-filled (from one template file) so no claimer ever starves.

Run: `.venv/bin/python -m bench.store_rates [--runs N]`. Figures depend on the machine
and its load; compare runs on the same machine only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import queue
import shutil
import sqlite3
import statistics
import tempfile
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from jobcontrol.jobs import Job, JobSpec
from jobcontrol.store.protocol import MAX_BATCH_SIZE
from jobcontrol.store.sqlite import SqliteJobStore

JOB_TYPE = "demo.sleep"
LEASE_TIMEOUT = timedelta(minutes=10)  # never expires during a run
RESULTS_PATH = Path(__file__).parent / "results" / "store_rates.json"

SINGLE_SUBMITS = 1_000  # create_job calls per run
BATCH_SIZE = 100
BATCHES = 50  # create_jobs calls per run (5,000 jobs)
PREFILL_JOBS = 5_000  # claimable jobs at the start of every claim run
CLAIM_PROCESSES = (1, 4)
CLAIM_LIMITS = (1, 8)
# Jobs claimed (and then completed) per run, over all processes: small enough to keep
# the whole benchmark within about two minutes, well below PREFILL_JOBS.
CLAIMED_PER_RUN = {1: 2_000, 8: 4_000}
PHASE_TIMEOUT = 120.0  # seconds a barrier waits before the run is declared broken

# A child's report: (worker id, "done" or "error", counts or a traceback).
Report = tuple[str, str, Any]


@dataclass(frozen=True, slots=True)
class Metric:
    """One row of the table: a rate measured in every run."""

    key: str
    operation: str
    processes: int
    claim_limit: int | None
    unit: str
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "operation": self.operation,
            "processes": self.processes,
            "claim_limit": self.claim_limit,
            "unit": self.unit,
            "median": round(self.median, 1),
            "min": round(min(self.samples), 1),
            "max": round(max(self.samples), 1),
            "samples": [round(s, 1) for s in self.samples],
        }


def spec(index: int) -> JobSpec:
    return JobSpec(type=JOB_TYPE, payload={"index": index, "input": f"s3://bucket/{index}.mp4"})


# ---- submits (in this process) --------------------------------------------------------


async def submit_rates(db_path: Path) -> dict[str, float]:
    """One run of both submit paths on an empty file: one job per transaction, then
    batches of BATCH_SIZE in one transaction each."""
    store = await SqliteJobStore.open(db_path)
    try:
        start = time.perf_counter()
        for index in range(SINGLE_SUBMITS):
            await store.create_job(spec(index))
        single = SINGLE_SUBMITS / (time.perf_counter() - start)

        start = time.perf_counter()
        for batch in range(BATCHES):
            await store.create_jobs([spec(batch * BATCH_SIZE + i) for i in range(BATCH_SIZE)])
        batched = BATCHES * BATCH_SIZE / (time.perf_counter() - start)
    finally:
        await store.close()
    return {"create_job": single, "create_jobs": batched}


# ---- claims and completes (in worker processes) ---------------------------------------


def claimer(
    db_path: str,
    worker_id: str,
    quota: int,
    limit: int,
    barrier: Barrier,
    reports: Queue[Report],
) -> None:
    """Process target (module level, so spawn can import it): claim `quota` jobs, then
    complete them, meeting the parent at a barrier before and after each phase."""
    try:
        counts = asyncio.run(_claim_then_complete(db_path, worker_id, quota, limit, barrier))
    except BaseException:
        barrier.abort()  # release the parent at once instead of at its timeout
        reports.put((worker_id, "error", traceback.format_exc()))
    else:
        reports.put((worker_id, "done", counts))


async def _claim_then_complete(
    db_path: str, worker_id: str, quota: int, limit: int, barrier: Barrier
) -> dict[str, int]:
    store = await SqliteJobStore.open(db_path)
    try:
        await asyncio.to_thread(barrier.wait, PHASE_TIMEOUT)  # ready: the claim phase starts
        claimed: list[Job] = []
        calls = 0
        while len(claimed) < quota:
            jobs = await store.claim_jobs(
                worker_id=worker_id,
                types=[JOB_TYPE],
                limit=min(limit, quota - len(claimed)),
                lease_timeout=LEASE_TIMEOUT,
            )
            calls += 1
            if not jobs:
                raise RuntimeError(f"{worker_id} starved after {len(claimed)} claims")
            claimed.extend(jobs)
        await asyncio.to_thread(barrier.wait, PHASE_TIMEOUT)  # the complete phase starts
        for job in claimed:
            assert job.lease_id is not None
            await store.complete_job(job_id=job.id, lease_id=job.lease_id, result={"ok": True})
        await asyncio.to_thread(barrier.wait, PHASE_TIMEOUT)  # done
    finally:
        await store.close()
    return {"claim_calls": calls, "claimed": len(claimed), "completed": len(claimed)}


def claim_rates(db_path: Path, processes: int, limit: int) -> dict[str, float]:
    """One run: `processes` claimers share CLAIMED_PER_RUN[limit] jobs of a pre-filled
    file. Rates are totals over all processes divided by each phase's wall time."""
    total = CLAIMED_PER_RUN[limit]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes + 1)
    reports: Queue[Report] = ctx.Queue()
    children = [
        ctx.Process(
            target=claimer,
            args=(str(db_path), f"bench-{n}", total // processes, limit, barrier, reports),
            daemon=True,
        )
        for n in range(processes)
    ]
    try:
        for child in children:
            child.start()
        try:
            barrier.wait(PHASE_TIMEOUT)
            started = time.perf_counter()
            barrier.wait(PHASE_TIMEOUT)
            claimed_at = time.perf_counter()
            barrier.wait(PHASE_TIMEOUT)
            completed_at = time.perf_counter()
        except threading.BrokenBarrierError:
            raise RuntimeError(_child_failure(reports)) from None
        counts = [_expect_done(reports) for _ in children]
    finally:
        for child in children:
            child.join(timeout=10)
            if child.is_alive():
                child.terminate()
                child.join()
        reports.close()
        reports.join_thread()
    claimed = sum(c["claimed"] for c in counts)
    return {
        "claims": claimed / (claimed_at - started),
        "claim_calls": sum(c["claim_calls"] for c in counts) / (claimed_at - started),
        "completes": sum(c["completed"] for c in counts) / (completed_at - claimed_at),
    }


def _expect_done(reports: Queue[Report]) -> dict[str, int]:
    worker_id, kind, body = reports.get(timeout=PHASE_TIMEOUT)
    if kind != "done":
        raise RuntimeError(f"claimer {worker_id} failed:\n{body}")
    counts: dict[str, int] = body
    return counts


def _child_failure(reports: Queue[Report]) -> str:
    try:
        worker_id, _, body = reports.get(timeout=10)
    except queue.Empty:
        return "a claimer process broke the barrier without reporting why"
    return f"claimer {worker_id} failed:\n{body}"


async def prefill(db_path: Path, count: int) -> None:
    store = await SqliteJobStore.open(db_path)
    try:
        for start in range(0, count, MAX_BATCH_SIZE):
            size = min(MAX_BATCH_SIZE, count - start)
            await store.create_jobs([spec(start + i) for i in range(size)])
    finally:
        await store.close()  # the last connection to close checkpoints the WAL into the file


# ---- driver ---------------------------------------------------------------------------


def measure(runs: int) -> list[Metric]:
    metrics = {
        "submit.create_job": Metric(
            "submit.create_job", "submit: create_job (1 job per call)", 1, None, "jobs/s"
        ),
        "submit.create_jobs": Metric(
            "submit.create_jobs",
            f"submit: create_jobs ({BATCH_SIZE} jobs per call)",
            1,
            None,
            "jobs/s",
        ),
    }
    for processes in CLAIM_PROCESSES:
        for limit in CLAIM_LIMITS:
            where = f"p{processes}.limit{limit}"
            metrics[f"claims.{where}"] = Metric(
                f"claims.{where}", "claim: jobs claimed", processes, limit, "jobs/s"
            )
            if limit > 1:
                metrics[f"claim_calls.{where}"] = Metric(
                    f"claim_calls.{where}", "claim: claim_jobs calls", processes, limit, "calls/s"
                )
            metrics[f"completes.{where}"] = Metric(
                f"completes.{where}", "complete: complete_job", processes, limit, "jobs/s"
            )

    with tempfile.TemporaryDirectory(prefix="jobcontrol-bench-") as tmp:
        tmp_dir = Path(tmp)
        template = tmp_dir / "template.db"
        asyncio.run(prefill(template, PREFILL_JOBS))
        for run in range(1, runs + 1):
            print(f"run {run}/{runs}: submits", end="", flush=True)
            rates = asyncio.run(submit_rates(tmp_dir / f"submit-{run}.db"))
            for name, rate in rates.items():
                metrics[f"submit.{name}"].samples.append(rate)
            for processes in CLAIM_PROCESSES:
                for limit in CLAIM_LIMITS:
                    print(f", {processes}p/limit {limit}", end="", flush=True)
                    db_path = tmp_dir / f"claim-{run}-p{processes}-l{limit}.db"
                    shutil.copyfile(template, db_path)  # a fresh, identical pre-filled file
                    rates = claim_rates(db_path, processes, limit)
                    where = f"p{processes}.limit{limit}"
                    for name, rate in rates.items():
                        key = f"{name}.{where}"
                        if key in metrics:
                            metrics[key].samples.append(rate)
            print(flush=True)
    return list(metrics.values())


def render(metrics: Sequence[Metric], runs: int) -> str:
    header = ("operation", "procs", "limit", "median", "min-max", "unit")
    rows = [
        (
            m.operation,
            str(m.processes),
            "-" if m.claim_limit is None else str(m.claim_limit),
            f"{m.median:,.0f}",
            f"{min(m.samples):,.0f}-{max(m.samples):,.0f}",
            m.unit,
        )
        for m in metrics
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    align = ["<", ">", ">", ">", ">", "<"]

    def line(cells: Sequence[str]) -> str:
        padded = [f"{c:{a}{w}}" for c, a, w in zip(cells, align, widths, strict=True)]
        return "  ".join(padded).rstrip()

    title = (
        f"JobStore rates, SQLite {sqlite3.sqlite_version} (WAL), "
        f"median of {runs} run{'s' if runs != 1 else ''} (min-max)"
    )
    rule = "-" * len(line(header))
    notes = [
        "limit: claim_jobs limit (at limit 1 every call claims one job, so calls/s = jobs/s);",
        "procs: worker processes sharing one file; rates are totals over all of them.",
    ]
    return "\n".join([title, rule, line(header), rule, *map(line, rows), rule, *notes])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.store_rates", description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (default 3)")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help="JSON results file")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    began = time.perf_counter()
    metrics = measure(args.runs)
    elapsed = time.perf_counter() - began
    print(render(metrics, args.runs))

    args.output.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "store_rates",
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "runs": args.runs,
        "elapsed_seconds": round(elapsed, 1),
        "machine": {
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "workload": {
            "single_submits": SINGLE_SUBMITS,
            "batch_size": BATCH_SIZE,
            "batches": BATCHES,
            "prefill_jobs": PREFILL_JOBS,
            "claimed_per_run": {str(k): v for k, v in CLAIMED_PER_RUN.items()},
        },
        "metrics": [m.to_json() for m in metrics],
    }
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"{elapsed:.0f} s in all; figures written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
