"""How fast the JobStore submits, claims and completes jobs, on SQLite and remote libSQL.

A baseline for later work on the store: every figure is a rate (operations per second)
on a fresh database in a temporary directory, the median of several runs with the
min-max spread, printed as a table (one row per backend) and written to
`bench/results/store_rates.json`. Backends are described in `bench/backends.py`: remote
is the store's driver over Hrana/HTTP to a real sqld on loopback, and its rows also give
the HTTP requests each operation took ("req/op"), counted by the proxy in front of sqld.

Claims are measured in worker processes (spawned, each opening its own store with
`open_store`, as real workers run), once alone and once four at a time on the same
database. Each run has two phases separated by barriers, so the parent times them
without the processes' start-up: every process claims its share of jobs, then every
process completes what it claimed. The claim table is pre-filled (from one template
database, filled once with create_jobs batches) so no claimer ever starves.

A remote operation costs tens of milliseconds where SQLite takes a fraction of one, so
the full workload would take minutes per remote run. Before the remote runs, a few calls
of each operation estimate how long one full-size run would take; if more than
RUN_BUDGET seconds, every remote job count (pre-fill included) is divided by the
smallest factor in SCALES that fits, and the output says so. Rates stay comparable;
they are simply measured over fewer operations. The factor follows the machine's load,
so pass --remote-scale to hold it fixed when comparing runs.

Run: `.venv/bin/python -m bench.store_rates [--runs N] [--backend sqlite|remote|both]`.
Figures depend on the machine and its load; compare runs on the same machine only.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import queue
import sqlite3
import statistics
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from bench import backends, report
from bench.backends import Database
from bench.report import Headline
from jobcontrol.jobs import Job, JobSpec
from jobcontrol.store import StoreConfig, open_store
from jobcontrol.store.protocol import MAX_BATCH_SIZE

JOB_TYPE = "demo.sleep"
LEASE_TIMEOUT = timedelta(minutes=10)  # never expires during a run
RESULTS_PATH = report.RESULTS / "store_rates.json"

BATCH_SIZE = 100  # jobs per create_jobs call
CLAIM_PROCESSES = (1, 4)
CLAIM_LIMITS = (1, 8)
PHASE_TIMEOUT = 120.0  # seconds a barrier waits before the run is declared broken

RUN_BUDGET = 60.0  # seconds of store operations one remote run should stay within
SCALES = (1, 2, 5, 10, 20, 50, 100)  # divisors tried for the remote job counts
CALIBRATION_CALLS = 20  # calls per operation timed to estimate a remote run

# A child's report: (worker id, "done" or "error", counts or a traceback).
Report = tuple[str, str, Any]
# One run's figure: a rate, and HTTP requests per job or call (None on SQLite).
Sample = tuple[float, float | None]


@dataclass(frozen=True, slots=True)
class Workload:
    """How many jobs one run submits, pre-fills and claims."""

    single_submits: int = 1_000  # create_job calls per run
    batches: int = 50  # create_jobs calls per run (5,000 jobs)
    prefill_jobs: int = 5_000  # claimable jobs at the start of every claim run
    # Jobs claimed (and then completed) per run, over all processes, by claim limit: small
    # enough to keep SQLite's whole benchmark within about two minutes, well below
    # prefill_jobs, and divisible by every process count at every scale.
    claimed_per_run: Mapping[int, int] = field(default_factory=lambda: {1: 2_000, 8: 4_000})
    scale: int = 1  # the full workload divided by this

    def scaled(self, scale: int) -> Workload:
        return Workload(
            single_submits=max(1, self.single_submits // scale),
            batches=max(1, self.batches // scale),
            prefill_jobs=self.prefill_jobs // scale,
            claimed_per_run={limit: n // scale for limit, n in self.claimed_per_run.items()},
            scale=self.scale * scale,
        )

    def describe(self) -> str:
        limits = "/".join(str(limit) for limit in self.claimed_per_run)
        claimed = "/".join(f"{n:,}" for n in self.claimed_per_run.values())
        return (
            f"{self.single_submits:,} + {self.batches:,}x{BATCH_SIZE} jobs submitted, "
            f"{self.prefill_jobs:,} pre-filled, {claimed} claimed at limit {limits}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "single_submits": self.single_submits,
            "batch_size": BATCH_SIZE,
            "batches": self.batches,
            "prefill_jobs": self.prefill_jobs,
            "claimed_per_run": {str(k): v for k, v in self.claimed_per_run.items()},
        }


FULL = Workload()


@dataclass(frozen=True, slots=True)
class Metric:
    """One row of the table: a rate measured in every run on one backend."""

    key: str
    backend: str
    operation: str
    processes: int
    claim_limit: int | None
    unit: str
    samples: list[float] = field(default_factory=list)
    requests: list[float] = field(default_factory=list)  # per job or call, remote only

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def add(self, sample: Sample) -> None:
        rate, requests = sample
        self.samples.append(rate)
        if requests is not None:
            self.requests.append(requests)

    def to_json(self) -> dict[str, Any]:
        document = {
            "key": self.key,
            "backend": self.backend,
            "operation": self.operation,
            "processes": self.processes,
            "claim_limit": self.claim_limit,
            "unit": self.unit,
            "median": round(self.median, 1),
            "min": round(min(self.samples), 1),
            "max": round(max(self.samples), 1),
            "samples": [round(s, 1) for s in self.samples],
        }
        if self.requests:
            document["http_requests_per_op"] = round(statistics.median(self.requests), 2)
        return document


def spec(index: int) -> JobSpec:
    return JobSpec(type=JOB_TYPE, payload={"index": index, "input": f"s3://bucket/{index}.mp4"})


def per(requests: int, operations: int, db: Database) -> float | None:
    return requests / operations if db.remote else None


# ---- submits (in this process) --------------------------------------------------------


async def submit_rates(db: Database, workload: Workload) -> dict[str, Sample]:
    """One run of both submit paths on an empty database: one job per transaction, then
    batches of BATCH_SIZE in one transaction each."""
    store = await open_store(db.config)
    try:
        before = db.requests_so_far()
        start = time.perf_counter()
        for index in range(workload.single_submits):
            await store.create_job(spec(index))
        single = workload.single_submits / (time.perf_counter() - start)
        single_requests = db.requests_so_far() - before

        jobs = workload.batches * BATCH_SIZE
        before = db.requests_so_far()
        start = time.perf_counter()
        for batch in range(workload.batches):
            await store.create_jobs([spec(batch * BATCH_SIZE + i) for i in range(BATCH_SIZE)])
        batched = jobs / (time.perf_counter() - start)
        batched_requests = db.requests_so_far() - before
    finally:
        await store.close()
    return {
        "create_job": (single, per(single_requests, workload.single_submits, db)),
        "create_jobs": (batched, per(batched_requests, jobs, db)),
    }


# ---- claims and completes (in worker processes) ---------------------------------------


def claimer(
    config: StoreConfig,
    worker_id: str,
    quota: int,
    limit: int,
    barrier: Barrier,
    reports: Queue[Report],
) -> None:
    """Process target (module level, so spawn can import it): claim `quota` jobs, then
    complete them, meeting the parent at a barrier before and after each phase."""
    try:
        counts = asyncio.run(_claim_then_complete(config, worker_id, quota, limit, barrier))
    except BaseException:
        barrier.abort()  # release the parent at once instead of at its timeout
        reports.put((worker_id, "error", traceback.format_exc()))
    else:
        reports.put((worker_id, "done", counts))


async def _claim_then_complete(
    config: StoreConfig, worker_id: str, quota: int, limit: int, barrier: Barrier
) -> dict[str, int]:
    store = await open_store(config)
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


def claim_rates(db: Database, processes: int, limit: int, total: int) -> dict[str, Sample]:
    """One run: `processes` claimers share `total` jobs of a pre-filled database. Rates
    are totals over all processes divided by each phase's wall time; requests are what
    the server logged between the same barriers (the children's store opening is
    before the first, closing after the last)."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes + 1)
    reports: Queue[Report] = ctx.Queue()
    children = [
        ctx.Process(
            target=claimer,
            args=(db.config, f"bench-{n}", total // processes, limit, barrier, reports),
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
            started_requests = db.requests_so_far()
            barrier.wait(PHASE_TIMEOUT)
            claimed_at = time.perf_counter()
            claimed_requests = db.requests_so_far()
            barrier.wait(PHASE_TIMEOUT)
            completed_at = time.perf_counter()
            completed_requests = db.requests_so_far()
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
    calls = sum(c["claim_calls"] for c in counts)
    claim_requests = claimed_requests - started_requests
    return {
        "claims": (claimed / (claimed_at - started), per(claim_requests, claimed, db)),
        "claim_calls": (calls / (claimed_at - started), per(claim_requests, calls, db)),
        "completes": (
            claimed / (completed_at - claimed_at),
            per(completed_requests - claimed_requests, claimed, db),
        ),
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


async def prefill(config: StoreConfig, count: int) -> None:
    """Claimable jobs in batches (each one transaction): over HTTP a row-by-row fill
    would cost a transaction's round trips per job."""
    store = await open_store(config)
    try:
        for start in range(0, count, MAX_BATCH_SIZE):
            size = min(MAX_BATCH_SIZE, count - start)
            await store.create_jobs([spec(start + i) for i in range(size)])
    finally:
        await store.close()  # the last connection to close checkpoints the WAL into the file


# ---- sizing the remote workload -------------------------------------------------------


async def seconds_per_job(config: StoreConfig) -> dict[str, float]:
    """Each operation's time per job, from CALIBRATION_CALLS calls in one process on an
    empty database (jobs it submits are the ones it then claims)."""
    calls = CALIBRATION_CALLS
    store = await open_store(config)
    try:
        start = time.perf_counter()
        for index in range(calls):
            await store.create_job(spec(index))
        single = (time.perf_counter() - start) / calls

        start = time.perf_counter()
        await store.create_jobs([spec(calls + i) for i in range(BATCH_SIZE)])
        batched = (time.perf_counter() - start) / BATCH_SIZE

        claimed: list[Job] = []
        timed: dict[int, float] = {}
        for limit in CLAIM_LIMITS:
            before = len(claimed)
            start = time.perf_counter()
            for _ in range(max(1, calls // limit)):
                claimed += await store.claim_jobs(
                    worker_id="bench-calibration",
                    types=[JOB_TYPE],
                    limit=limit,
                    lease_timeout=LEASE_TIMEOUT,
                )
            timed[limit] = (time.perf_counter() - start) / max(1, len(claimed) - before)

        start = time.perf_counter()
        for job in claimed[:calls]:
            assert job.lease_id is not None
            await store.complete_job(job_id=job.id, lease_id=job.lease_id, result={"ok": True})
        complete = (time.perf_counter() - start) / min(calls, len(claimed))
    finally:
        await store.close()
    return {
        "create_job": single,
        "create_jobs": batched,
        **{f"claim.limit{limit}": seconds for limit, seconds in timed.items()},
        "complete_job": complete,
    }


def run_seconds(per_job: Mapping[str, float], workload: Workload) -> float:
    """Store-operation time of one run at `workload` size. Four processes are assumed no
    faster than one: a remote database serializes write transactions."""
    seconds = workload.single_submits * per_job["create_job"]
    seconds += workload.batches * BATCH_SIZE * per_job["create_jobs"]
    for _ in CLAIM_PROCESSES:
        for limit in CLAIM_LIMITS:
            claimed = workload.claimed_per_run[limit]
            seconds += claimed * (per_job[f"claim.limit{limit}"] + per_job["complete_job"])
    return seconds


def remote_workload(
    tmp_dir: Path, forced_scale: int | None, budget: float = RUN_BUDGET
) -> tuple[Workload, float]:
    """The remote workload, scaled down to fit `budget` seconds (or by `forced_scale`),
    and the estimated seconds of one full-size run."""
    with backends.serve("remote", tmp_dir / "remote-calibration.db") as db:
        per_job = asyncio.run(seconds_per_job(db.config))
    estimate = run_seconds(per_job, FULL)
    scale = forced_scale or next((s for s in SCALES if estimate / s <= budget), SCALES[-1])
    return FULL.scaled(scale), estimate


# ---- driver ---------------------------------------------------------------------------


def new_metrics(backend: str) -> dict[str, Metric]:
    def metric(key: str, operation: str, processes: int, limit: int | None, unit: str) -> Metric:
        return Metric(key, backend, operation, processes, limit, unit)

    metrics = {
        "submit.create_job": metric(
            "submit.create_job", "submit: create_job (1 job per call)", 1, None, "jobs/s"
        ),
        "submit.create_jobs": metric(
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
            metrics[f"claims.{where}"] = metric(
                f"claims.{where}", "claim: jobs claimed", processes, limit, "jobs/s"
            )
            if limit > 1:
                metrics[f"claim_calls.{where}"] = metric(
                    f"claim_calls.{where}", "claim: claim_jobs calls", processes, limit, "calls/s"
                )
            metrics[f"completes.{where}"] = metric(
                f"completes.{where}", "complete: complete_job", processes, limit, "jobs/s"
            )
    return metrics


def measure(backend: str, runs: int, workload: Workload, tmp_dir: Path) -> dict[str, Metric]:
    metrics = new_metrics(backend)
    template = tmp_dir / f"{backend}-template.db"
    with backends.serve(backend, template) as db:
        asyncio.run(prefill(db.config, workload.prefill_jobs))
    for run in range(1, runs + 1):
        print(f"{backend} run {run}/{runs}: submits", end="", flush=True)
        with backends.serve(backend, tmp_dir / f"{backend}-submit-{run}.db") as db:
            samples = asyncio.run(submit_rates(db, workload))
        for name, sample in samples.items():
            metrics[f"submit.{name}"].add(sample)
        for processes in CLAIM_PROCESSES:
            for limit in CLAIM_LIMITS:
                print(f", {processes}p/limit {limit}", end="", flush=True)
                db_path = tmp_dir / f"{backend}-claim-{run}-p{processes}-l{limit}.db"
                backends.copy_database(template, db_path)  # fresh, identical, pre-filled
                with backends.serve(backend, db_path) as db:
                    samples = claim_rates(db, processes, limit, workload.claimed_per_run[limit])
                where = f"p{processes}.limit{limit}"
                for name, sample in samples.items():
                    key = f"{name}.{where}"
                    if key in metrics:
                        metrics[key].add(sample)
        print(flush=True)
    return metrics


def _requests(per_op: Sequence[float]) -> str:
    """A req/op cell: one decimal, or two below one request (claims at limit 8)."""
    if not per_op:
        return "-"
    median = statistics.median(per_op)
    return f"{median:.1f}" if median >= 1 else f"{median:.2f}"


def render(
    measured: Mapping[str, Mapping[str, Metric]],
    workloads: Mapping[str, Workload],
    estimate: float | None,
    runs: int,
) -> str:
    header = ("operation", "backend", "procs", "limit", "median", "min-max", "unit", "req/op")
    keys = next(iter(measured.values())).keys()
    rows = [
        (
            m.operation,
            m.backend,
            str(m.processes),
            "-" if m.claim_limit is None else str(m.claim_limit),
            f"{m.median:,.0f}",
            f"{min(m.samples):,.0f}-{max(m.samples):,.0f}",
            m.unit,
            _requests(m.requests),
        )
        for key in keys
        for m in (metrics[key] for metrics in measured.values())
    ]
    title = f"JobStore rates, median of {runs} run{'s' if runs != 1 else ''} (min-max)"
    notes = [
        "limit: claim_jobs limit (at limit 1 every call claims one job, so calls/s = jobs/s);",
        "procs: worker processes sharing one database; rates are totals over all of them.",
    ]
    if "sqlite" in measured:
        notes.append(f"sqlite: a SQLite {sqlite3.sqlite_version} file (WAL), local backend.")
    if "remote" in measured:
        notes += [
            backends.remote_note(),
            "  req/op: HTTP requests sqld received per job (jobs/s) or per call (calls/s).",
        ]
        workload = workloads["remote"]
        if workload.scale > 1 and estimate is not None:
            notes += [
                f"  job counts scaled down {workload.scale}x: a full-size remote run would "
                f"take ~{estimate:,.0f} s of store operations;",
                f"  remote run: {workload.describe()}.",
            ]
    return report.table(title, header, rows, align="<<>>>><>", notes=notes)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.store_rates", description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (default 3)")
    backends.add_argument(parser)
    parser.add_argument(
        "--remote-scale",
        type=int,
        default=None,
        help=f"divide every remote job count by this (default: the smallest of {SCALES} "
        f"that keeps a remote run within ~{RUN_BUDGET:.0f} s)",
    )
    parser.add_argument(
        "--remote-budget",
        type=float,
        default=RUN_BUDGET,
        help="seconds of store operations one remote run should stay within "
        "(default %(default)s; `python -m bench` uses less)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help="JSON results file")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.remote_scale is not None and args.remote_scale < 1:
        parser.error("--remote-scale must be at least 1")
    chosen = backends.chosen(args.backend)

    began = time.perf_counter()
    workloads: dict[str, Workload] = {}
    measured: dict[str, dict[str, Metric]] = {}
    estimate: float | None = None
    with tempfile.TemporaryDirectory(prefix="jobcontrol-bench-") as tmp:
        for backend in chosen:
            if backend == "remote":
                workloads[backend], estimate = remote_workload(
                    Path(tmp), args.remote_scale, args.remote_budget
                )
                if workloads[backend].scale > 1:
                    print(
                        f"remote: a full-size run would take ~{estimate:.0f} s of store "
                        f"operations; job counts scaled down {workloads[backend].scale}x",
                        flush=True,
                    )
            else:
                workloads[backend] = FULL
            measured[backend] = measure(backend, args.runs, workloads[backend], Path(tmp))
    elapsed = time.perf_counter() - began
    print(render(measured, workloads, estimate, args.runs))

    document = {
        "runs": args.runs,
        "backends": list(chosen),
        "elapsed_seconds": round(elapsed, 1),
        "workload": {
            backend: {
                **workload.to_json(),
                **(
                    {"estimated_full_run_seconds": round(estimate, 1)}
                    if backend == "remote" and estimate is not None
                    else {}
                ),
            }
            for backend, workload in workloads.items()
        },
        "metrics": [m.to_json() for metrics in measured.values() for m in metrics.values()],
    }
    headlines = [
        Headline(
            "store rates",
            f"{m.operation}, {m.processes} process{'es' if m.processes > 1 else ''}"
            + (f", limit {m.claim_limit}" if m.claim_limit else ""),
            m.backend,
            f"{m.median:,.0f} ({min(m.samples):,.0f}-{max(m.samples):,.0f})",
            m.unit,
        )
        for metrics in measured.values()
        for key in ("submit.create_jobs", "claims.p4.limit8", "completes.p4.limit8")
        for m in (metrics[key],)
    ]
    path = report.save("store_rates", document, headlines, args.output)
    print(f"{elapsed:.0f} s in all; figures written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
