"""End-to-end throughput: no-op jobs submitted over gRPC and drained by workers, beside
Huey (SqliteHuey) doing the same number of no-op tasks on the same machine.

jobcontrol: a fresh store, `jobcontrol-server` and WORKERS `jobcontrol-worker`
processes (CONCURRENCY slots each, default poll interval), all started and ready
before the clock starts. The clock starts just before the first SubmitJobs call; JOBS
`demo.sleep` jobs {"seconds": 0, "steps": 0} go in batches of 1,000 (one client, one
call after another) while the workers drain them; the clock stops at the `end_time`
of the last job to succeed (read from the database once every job is SUCCEEDED).

Huey: `huey_consumer bench.huey_tasks.huey` with HUEY_WORKERS workers of HUEY_TYPE on
a fresh SqliteHuey file (WAL, Huey's defaults), quiet logging, polling at most 0.1 s
apart when idle; warmed up with one task before the clock starts. The clock starts
just before the first enqueue; Huey has no bulk enqueue (`task.map` enqueues one at a
time), so the tasks go one per call from one client while the consumer drains them.
Results are not stored (the lighter mode: a result is a second write per task), so the
clock stops when the queue is found empty (polled every 10 ms), which can only flatter
Huey by a few ms.

Both run in every run, one after the other (their order alternating), so the ratio is
measured under the same conditions; the best configurations were found with
`--sweep` on this 2-core machine (see BENCHMARKS.md). On the remote backend (a real
sqld on loopback, see `backends.py`) only jobcontrol runs, with REMOTE_JOBS jobs: every
store operation is an HTTP request, and Huey has no libSQL storage. `bench.cluster` has
the remote end-to-end rate with two servers and two workers, with and without 20 ms of
round trip.

Run: `.venv/bin/python -m bench.throughput [--runs N] [--backend sqlite|remote|both]
[--jobs N] [--sweep] [--profile]`.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import backends, procs, profiling, report, rpc
from bench.report import Headline
from bench.stats import Figures

JOBS = 20_000
REMOTE_JOBS = JOBS  # the same workload: the remote driver takes one request per claim or batch
# The best of the --sweep configurations on the 2-core machine of BENCHMARKS.md (all
# within ~10% of each other: the drain is bound by per-job work, not by slots).
WORKERS = 1
CONCURRENCY = 64
HUEY_WORKERS = 1
HUEY_TYPE = "thread"
GOAL_RATIO = 3.0
WAIT = 600.0

SWEEP_JOBCONTROL = ((1, 16), (1, 64), (2, 8), (2, 16), (2, 32), (3, 16), (4, 16))
SWEEP_HUEY = (
    (1, "thread"),
    (2, "thread"),
    (4, "thread"),
    (1, "process"),
    (2, "process"),
    (3, "process"),
    (4, "process"),
)


@dataclass(frozen=True, slots=True)
class Outcome:
    jobs: int
    seconds: float  # first submit to last success
    submit_seconds: float  # first submit to last submit answered

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds

    @property
    def submit_rate(self) -> float:
        return self.jobs / self.submit_seconds


async def _drain(
    address: str,
    db: backends.Database,
    jobs: int,
    *,
    profile_pids: tuple[int, int] | None = None,
) -> Outcome:
    requests = [rpc.request(seconds=0, steps=0) for _ in range(jobs)]
    worker_pid, server_pid = profile_pids or (None, None)
    async with rpc.stubs(address) as (stub,):
        with (
            profiling.profile(worker_pid, "throughput-worker"),
            profiling.profile(server_pid, "throughput-server"),
        ):
            started = time.time()
            await rpc.submit(stub, requests)
            submitted = time.time()
            finished = 0.0

            def done() -> bool:
                nonlocal finished
                ((count, last_end),) = db.query(
                    "SELECT count(*), max(end_us) FROM jobs WHERE state = 'SUCCEEDED'"
                )
                finished = (last_end or 0) / 1e6
                return bool(count == jobs)

            await rpc.until(done, f"{jobs:,} jobs to succeed", wait=WAIT)
    return Outcome(jobs, finished - started, submitted - started)


def run_jobcontrol(
    backend: str,
    directory: Path,
    jobs: int,
    workers: int,
    concurrency: int,
    *,
    profile: bool = False,
) -> Outcome:
    with procs.deployment(backend, directory) as (db, server, fleet):
        started = procs.workers(directory, db.config, workers, concurrency=concurrency, into=fleet)
        pids = (started[0].pid, server.pid) if profile else None
        return rpc.run(_drain(server.address, db, jobs, profile_pids=pids))


def run_huey(directory: Path, jobs: int, workers: int, kind: str) -> Outcome:
    """Huey in this process (the enqueuer) and a consumer process, on a fresh file."""
    env = {
        "BENCH_HUEY_DB": str(directory / "huey.db"),
        "BENCH_HUEY_RESULTS": "0",
        "PYTHONPATH": str(procs.ROOT),
    }
    os.environ.update(env)
    from bench import huey_tasks  # the bench extra: imported only when Huey runs

    tasks = importlib.reload(huey_tasks)  # a fresh instance, on this run's file
    huey = tasks.huey
    command = [sys.executable, "-m", "huey.bin.huey_consumer", "bench.huey_tasks.huey"]
    command += ["--workers", str(workers), "--worker-type", kind]
    command += ["--delay", "0.01", "--max-delay", "0.1", "--quiet", "--disable-health-check"]
    log_path = directory / "huey-consumer.log"
    consumer = procs.Process(procs.spawn(command, log_path, env), log_path)
    try:

        def drained(what: str) -> None:
            deadline = time.monotonic() + WAIT
            while huey.pending_count() > 0:
                if consumer.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"huey did not drain {what}:\n{consumer.log()}")
                time.sleep(0.01)

        tasks.noop()  # warm-up: the consumer is up and polling
        drained("the warm-up task")
        started = time.time()
        tasks.noop.map([()] * jobs)
        submitted = time.time()
        drained(f"{jobs:,} tasks")
        finished = time.time()
    finally:
        consumer.process.send_signal(2)  # SIGINT: Huey's graceful shutdown
        consumer.stop()
        huey.storage.close()
    return Outcome(jobs, finished - started, submitted - started)


def sweep(directory: Path, jobs: int) -> str:
    """One run of every configuration in SWEEP_*; a table of rates."""
    rows = []
    for workers, concurrency in SWEEP_JOBCONTROL:
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            outcome = run_jobcontrol("sqlite", Path(tmp), jobs, workers, concurrency)
        rows.append(("jobcontrol", f"{workers} x {concurrency} slots", f"{outcome.rate:,.0f}"))
        print(rows[-1], flush=True)
    for workers, kind in SWEEP_HUEY:
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            outcome = run_huey(Path(tmp), jobs, workers, kind)
        rows.append(("huey", f"{workers} {kind}", f"{outcome.rate:,.0f}"))
        print(rows[-1], flush=True)
    return report.table(
        f"Throughput sweep, {jobs:,} no-op jobs, one run each",
        ("system", "workers", "jobs/s"),
        rows,
        align="<<>",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = report.parser("throughput", __doc__)
    backends.add_argument(parser)
    parser.add_argument("--jobs", type=int, default=JOBS, help=f"jobs per run (default {JOBS})")
    parser.add_argument(
        "--remote-jobs", type=int, default=REMOTE_JOBS, help=f"default {REMOTE_JOBS}"
    )
    parser.add_argument("--workers", type=int, default=WORKERS)
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--huey-workers", type=int, default=HUEY_WORKERS)
    parser.add_argument("--huey-type", choices=("thread", "process"), default=HUEY_TYPE)
    parser.add_argument(
        "--sweep", action="store_true", help="one run of each configuration instead"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the first worker and the server during the last SQLite run"
        " (bench/results/profiles)",
    )
    args = parser.parse_args(argv)

    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="jobcontrol-bench-") as tmp:
        if args.sweep:
            print(sweep(Path(tmp), args.jobs))
            return 0
        figures = Figures()
        for backend in backends.chosen(args.backend):
            jobs = args.jobs if backend == "sqlite" else args.remote_jobs
            for run in range(1, args.runs + 1):
                print(f"{backend} run {run}/{args.runs}:", end="", flush=True)
                order = ["jobcontrol", "huey"] if run % 2 else ["huey", "jobcontrol"]
                if backend != "sqlite":
                    order = ["jobcontrol"]
                outcomes: dict[str, Outcome] = {}
                for system in order:
                    with tempfile.TemporaryDirectory(dir=tmp) as directory:
                        if system == "huey":
                            outcomes[system] = run_huey(
                                Path(directory), jobs, args.huey_workers, args.huey_type
                            )
                        else:
                            outcomes[system] = run_jobcontrol(
                                backend,
                                Path(directory),
                                jobs,
                                args.workers,
                                args.concurrency,
                                profile=args.profile and run == args.runs,
                            )
                    outcome = outcomes[system]
                    print(f" {system} {outcome.rate:,.0f}/s", end="", flush=True)
                    figures.add(f"{backend}.{system}.rate", outcome.rate)
                    figures.add(f"{backend}.{system}.submit_rate", outcome.submit_rate)
                    figures.add(f"{backend}.{system}.seconds", outcome.seconds)
                if "huey" in outcomes:
                    ratio = outcomes["jobcontrol"].rate / outcomes["huey"].rate
                    figures.add(f"{backend}.ratio", ratio)
                    print(f", ratio {ratio:.2f}", end="")
                print(flush=True)
    elapsed = time.perf_counter() - began

    rows: list[tuple[str, ...]] = []
    headlines: list[Headline] = []
    for backend in backends.chosen(args.backend):
        jobs = args.jobs if backend == "sqlite" else args.remote_jobs
        systems = ("jobcontrol", "huey") if backend == "sqlite" else ("jobcontrol",)
        for system in systems:
            setup = (
                f"{args.workers} workers x {args.concurrency} slots"
                if system == "jobcontrol"
                else f"{args.huey_workers} {args.huey_type} workers"
            )
            rate = figures[f"{backend}.{system}.rate"]
            rows.append(
                (
                    system,
                    backend,
                    f"{jobs:,}",
                    setup,
                    rate.cell(),
                    figures[f"{backend}.{system}.submit_rate"].cell(),
                    figures[f"{backend}.{system}.seconds"].cell(1),
                )
            )
            measure = "end-to-end rate" if system == "jobcontrol" else "Huey end-to-end rate"
            headlines.append(Headline.of("throughput", measure, backend, rate, "jobs/s"))
        if f"{backend}.ratio" in figures:
            ratios = figures[f"{backend}.ratio"]
            rows.append(("ratio jobcontrol/huey", backend, "", "", ratios.cell(2), "", ""))
            headlines.append(
                Headline.of(
                    "throughput",
                    "jobcontrol / Huey",
                    backend,
                    ratios,
                    "x",
                    digits=2,
                    goal=f">= {GOAL_RATIO:g}x",
                    met=ratios.median >= GOAL_RATIO,
                )
            )
    print(
        report.table(
            f"Throughput, no-op jobs, median of {args.runs} runs (min-max)",
            ("system", "backend", "jobs", "workers", "jobs/s", "submitted/s", "seconds"),
            rows,
            align="<<><>>>",
            notes=[
                "jobs/s: first submit to last job finished; submitted/s: the submit calls",
                "  alone (jobcontrol: SubmitJobs batches of 1,000 over gRPC; Huey: one enqueue",
                "  per task).",
            ],
        )
    )
    return report.finish(
        "throughput",
        runs=args.runs,
        elapsed=elapsed,
        headlines=headlines,
        workload={
            "jobs": {"sqlite": args.jobs, "remote": args.remote_jobs},
            "workers": args.workers,
            "concurrency": args.concurrency,
            "huey_workers": args.huey_workers,
            "huey_type": args.huey_type,
        },
        figures=figures.to_json(),
    )


if __name__ == "__main__":
    raise SystemExit(main())
